"""The configuration file (TOML, default /etc/capsuled/capsuled.conf): one source of the
settings, and the documented sample that is generated from them.

Precedence: command-line options > CAPSULED_* environment variables > this file > the
defaults. Top-level keys are the settings' own (listen, database_url, …); each nested group
is a section ([agent], [api], …). The file is checked before anything is validated, so an
unknown key or section is refused with the file, the section and the key named (a typo
that silently kept a default would be worse than no file at all); bad values are named the
same way once pydantic has judged them (`explain`).

Models are passed in as arguments: config.py imports this module, never the reverse.
"""

from __future__ import annotations

import difflib
import json
import os
import textwrap
import tomllib
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from capsuled.errors import InvalidConfig

DEFAULT_CONFIG_FILE = Path("/etc/capsuled/capsuled.conf")
CONFIG_FILE_ENV = "CAPSULED_CONFIG_FILE"
ENV_PREFIX = "CAPSULED_"
# The file names itself only from outside (option or environment).
NOT_IN_FILE = frozenset({"config_file"})
# A field whose default is computed where capsuled runs (a host name, root or not) says
# so here, in its json_schema_extra: the sample must not depend on the machine it was
# generated on.
COMPUTED = "sample_default"
WIDTH = 88


def config_path(explicit: Path | str | None) -> Path | None:
    """The file to read: the option, else $CAPSULED_CONFIG_FILE (either must exist), else
    the default path when it exists, else none."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def read_config(path: Path, settings_cls: type[BaseModel]) -> dict[str, Any]:
    """The file's values, its keys checked against the models (InvalidConfig otherwise)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidConfig(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidConfig(f"{path}: not valid TOML: {exc}") from None
    problems = _check_table(data, settings_cls, None)
    if problems:
        raise InvalidConfig([f"{path}: {p}" for p in problems])
    return data


def section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a section field ([agent]: AgentSettings), None for a plain value."""
    for candidate in (field.annotation, *get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_table_value(field: FieldInfo) -> bool:
    """A value that is itself a TOML table (agent.labels, policy): its keys are data."""
    return any(get_origin(t) in (dict, Mapping) or t is dict
               for t in (field.annotation, *get_args(field.annotation)))


def _check_table(table: dict[str, Any], model: type[BaseModel], section: str | None) -> list[str]:
    fields = model.model_fields
    problems = []
    for key, value in table.items():
        where = f"[{section}] {key}" if section else key
        field = fields.get(key)
        if field is None or (section is None and key in NOT_IN_FILE):
            problems.append(_unknown(key, value, fields, section))
            continue
        sub = section_model(field) if section is None else None
        if sub is not None:
            if not isinstance(value, dict):
                problems.append(f"{key}: is a section; write it as [{key}] with its keys below")
            else:
                problems += _check_table(value, sub, key)
        elif isinstance(value, dict) and not _is_table_value(field):
            problems.append(f"{where}: a value is expected here, not a table")
    return problems


def _unknown(key: str, value: object, fields: Mapping[str, FieldInfo],
             section: str | None) -> str:
    if section is None and key in NOT_IN_FILE:
        return f"{key}: cannot be set in the file (give --config-file or {CONFIG_FILE_ENV})"
    is_section = section is None and isinstance(value, dict)
    names = [n for n, f in fields.items()
             if n not in NOT_IN_FILE and (section_model(f) is not None) == is_section]
    close = difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.6)
    if is_section:
        return f"[{key}]: unknown section" + (f" (did you mean [{close[0]}]?)" if close else "")
    where = f"[{section}] {key}" if section else key
    return f"{where}: unknown key" + (f" (did you mean {close[0]}?)" if close else "")


class ConfigFileSource(PydanticBaseSettingsSource):
    """The file as a pydantic-settings source, below the environment and above the defaults."""

    def __init__(self, settings_cls: type[BaseSettings], explicit: Path | str | None) -> None:
        super().__init__(settings_cls)
        path = config_path(explicit)
        self.path = path
        self.values = read_config(path, settings_cls) if path is not None else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def explain(exc: ValidationError, settings_cls: type[BaseModel], overrides: Mapping[str, Any],
            path: Path | None, file_values: Mapping[str, Any]) -> InvalidConfig:
    """pydantic's errors, each named by where its value came from: a command-line option,
    an environment variable, or the file's section and key."""
    sections = {n for n, f in settings_cls.model_fields.items() if section_model(f)}
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"]]
        origin = _origin(loc, sections, overrides, path, file_values)
        problems.append(f"{origin}: {error['msg']}")
    return InvalidConfig(problems)


def _origin(loc: list[str], sections: set[str], overrides: Mapping[str, Any],
            path: Path | None, file_values: Mapping[str, Any]) -> str:
    if not loc:
        return "settings"
    if loc[0] in overrides:
        return f"--{loc[0].replace('_', '-')}"
    environ = {k.upper() for k in os.environ}
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(loc[:depth]).upper()
        if name in environ:
            return name
    key = f"[{loc[0]}] {'.'.join(loc[1:])}" if loc[0] in sections and len(loc) > 1 else (
        f"[{loc[0]}]" if loc[0] in sections else ".".join(loc))
    if path is not None and _given(file_values, loc):
        return f"{path}: {key}"
    return key


def _given(values: Mapping[str, Any], loc: list[str]) -> bool:
    """Whether the file gave the value at `loc` (or the value that contains it)."""
    node: Any = values
    for depth, part in enumerate(loc):
        if not isinstance(node, Mapping) or part not in node:
            return depth > 0 and not isinstance(node, Mapping)
        node = node[part]
    return True


# ---- the sample ---------------------------------------------------------------------------

SAMPLE_HEADER = """\
# Capsuled's configuration file: /etc/capsuled/capsuled.conf (TOML).
#
# Generated from the settings' definitions (capsuled/config.py) by
#     capsuled config sample > capsuled.conf
# Every option is listed, commented out, with its default and its environment variable.
# Precedence: command-line options > CAPSULED_* environment variables > this file >
# the defaults. Another file: capsuled --config-file PATH, or CAPSULED_CONFIG_FILE=PATH.
# An unknown key or a bad value stops capsuled with the file, section and key named.
# The file may hold secrets (database_url's password, api.registry_secret,
# keystone.password): keep it readable by root and the capsuled group only (0640).
"""


def render_sample(settings_cls: type[BaseModel]) -> str:
    """The documented sample: every option, its default and its description."""
    out = [SAMPLE_HEADER]
    fields = settings_cls.model_fields
    for name, field in fields.items():
        if name not in NOT_IN_FILE and section_model(field) is None:
            out.append(_option(name, field, ENV_PREFIX + name.upper()))
    for name, field in fields.items():
        model = section_model(field)
        if model is None:
            continue
        optional = field.default is None
        about = _own_doc(model) or field.description or ""
        lines = [_rule(), *_comment(about)]
        if optional:
            lines.append("# Optional: uncomment the section header and its required keys.")
        lines.append(f"{'#' if optional else ''}[{name}]")
        out.append("\n".join(lines) + "\n")
        for sub, subfield in model.model_fields.items():
            out.append(_option(sub, subfield, f"{ENV_PREFIX}{name.upper()}__{sub.upper()}"))
    return "\n".join(out)


def _rule() -> str:
    return "# " + "-" * (WIDTH - 2)


def _own_doc(model: type[BaseModel]) -> str | None:
    doc = model.__dict__.get("__doc__")
    return " ".join(doc.split()) if doc else None


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2)] if text else []


def _option(name: str, field: FieldInfo, env: str) -> str:
    if not field.description:
        raise ValueError(f"{env}: the setting has no description; give its Field one")
    text = field.description.rstrip(".") + "."
    choices = _choices(field)
    if choices:
        text += f" One of: {', '.join(choices)}."
    lines = _comment(text) + [f"# Environment: {env}"]
    lines.append(_default_line(name, field))
    return "\n".join(lines) + "\n"


def _choices(field: FieldInfo) -> list[str]:
    for t in (field.annotation, *get_args(field.annotation)):
        if get_origin(t) is Literal:
            return [str(a) for a in get_args(t)]
    return []


def _default_line(name: str, field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if COMPUTED in extra:
        return f"# {name} = <{extra[COMPUTED]}>"
    if field.default is PydanticUndefined and field.default_factory is None:
        example = field.examples[0] if field.examples else "..."
        return f"#{name} = {toml_value(example)}    # required"
    default = field.get_default(call_default_factory=True)
    if default is None:
        return f"# {name} = <unset>"
    return f"#{name} = {toml_value(default)}"


def toml_value(value: Any) -> str:
    """A default as TOML text (tomllib reads it back to what pydantic accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, SecretStr):
        return json.dumps(value.get_secret_value())
    if isinstance(value, str | Path | IPv4Address | IPv4Network):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ValueError(f"no TOML form for a default of type {type(value).__name__}")
