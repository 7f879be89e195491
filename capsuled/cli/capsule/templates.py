"""Template files for `capsule create`, `update`, `apply` and `diff`: read (files,
directories, stdin) and decoded with the server's budgets, every one up front. A file
holds capsule templates or Kubernetes Pod manifests (the server tells them apart), one
or several (`---`), and a Kubernetes `kind: List` stands for its items."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from capsuled import documents
from capsuled.cli.capsule.client import CliError

TEMPLATE_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 16 * 1024 * 1024  # one file of templates; each template has its own budget
MAX_DIR_FILES = 256  # files read from one directory
MAX_TEMPLATES = 1000  # objects in one command's files, Lists' items included
STDIN = "-"


@dataclass(frozen=True)
class Template:
    source: str  # the file, and which document in it when it holds several
    body: dict[str, Any]


def load_templates(sources: Sequence[str]) -> list[Template]:
    """Read and parse every template up front, so a bad file means nothing is created."""
    templates: list[Template] = []
    for source in sources:
        for path in _template_files(source):
            templates += _parse_file(path)
            if len(templates) > MAX_TEMPLATES:
                raise CliError(f"{path}: more than {MAX_TEMPLATES} templates in all; "
                               "give fewer files")
    return templates


def _template_files(source: str) -> list[str]:
    if source == STDIN:
        return [source]
    path = Path(source)
    if not path.is_dir():
        return [source]
    files = sorted(str(p) for p in path.iterdir()
                   if p.suffix.lower() in TEMPLATE_SUFFIXES and p.is_file())
    if not files:
        raise CliError(f"{source}: no *.yaml, *.yml or *.json file in this directory")
    if len(files) > MAX_DIR_FILES:
        raise CliError(f"{source}: {len(files)} template files; at most {MAX_DIR_FILES} "
                       "are read from one directory")
    return files


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == STDIN else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text") from None


def _parse_file(path: str) -> list[Template]:
    name = "<stdin>" if path == STDIN else path
    text = _read(path)
    try:
        docs = [d for d in _parse_text(text, name) if d is not None]  # `---` at the end yields None
    except json.JSONDecodeError as exc:
        raise CliError(f"{name}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None
    except documents.DocumentError as exc:  # over a budget: alias bombs, deep nesting, huge files
        raise CliError(exc.message) from None
    if not docs:
        raise CliError(f"{name}: no template in this file")
    templates = []
    for number, doc in enumerate(docs, 1):
        source = name if len(docs) == 1 else f"{name}, document {number}"
        for where, item in _items(doc, source):
            if not isinstance(item, dict):
                raise CliError(f"{where}: a template is a mapping, not {type(item).__name__}")
            # YAML has dates and non-string keys that JSON has not: make them plain strings now.
            templates.append(Template(where, json.loads(json.dumps(item, default=str))))
    return templates


def _items(doc: Any, source: str) -> list[tuple[str, Any]]:
    """A Kubernetes `kind: List` → its items (each sent on its own); anything else → itself."""
    if not (isinstance(doc, dict) and doc.get("kind") == "List"):
        return [(source, doc)]
    items = doc.get("items")
    if not isinstance(items, list):
        raise CliError(f"{source}: a List needs items: a list of Pods or templates")
    return [(f"{source}, item {i}", item) for i, item in enumerate(items)]


def _parse_text(text: str, name: str) -> list[Any]:
    """Decoded with the server's budgets (size, depth, alias expansion), so a hostile file
    cannot hang or exhaust the client either; the server decides on what it parses itself."""
    if text.lstrip().startswith("{"):
        if not documents.json_depth_ok(text):
            raise documents.DocumentError(f"{name}: nested deeper than {documents.MAX_DEPTH} levels")
        return [json.loads(text)]
    documents.check_yaml_syntax(text, name)  # syntax first, for a file-line-column message
    return documents.load_yaml_all(text, name, max_bytes=MAX_FILE_BYTES)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # The default str() spans several lines with a source excerpt; one line is enough.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())
