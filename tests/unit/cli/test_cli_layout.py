"""The `capsule` CLI's layout: its modules import each other without a cycle, none grows
past 400 lines, and it loads nothing of the server."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from capsuled import paths
from capsuled.cli.capsule import settings

CLI = Path(__file__).resolve().parents[3] / "capsuled" / "cli"
PACKAGE = "capsuled.cli.capsule"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    """The modules of PACKAGE that `path` imports, wherever in the file (lazy ones too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from capsuled.cli.capsule import render` names a module, `from x.y import f` not.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.startswith(PACKAGE + ".")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"{PACKAGE}.{p.stem}": p for p in (CLI / "capsule").glob("*.py")
               if p.stem != "__init__"}
    return {name: _imports(path) & modules.keys() for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph`, as the modules along it, or None."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return trail[trail.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, trail + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_capsule_cli_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert f"{PACKAGE}.main" in graph and graph[f"{PACKAGE}.main"]
    assert _cycle(graph) is None


def test_no_cli_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(CLI)): len(p.read_text(encoding="utf-8").splitlines())
             for p in CLI.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_cli_loads_nothing_of_the_server() -> None:
    code = ("import json, sys, capsuled.cli.capsule.main; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('capsuled'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                       capture_output=True, text=True).stdout)
    allowed = {"capsuled", "capsuled.documents", "capsuled.cli", "capsuled.cli.helptext", PACKAGE}
    assert [m for m in loaded if m not in allowed and not m.startswith(PACKAGE + ".")] == []


def test_the_cli_settings_agree_with_the_server_paths() -> None:
    # The CLI keeps its own copy so as not to import the server: the two must not drift.
    assert settings.DEFAULT_URL == paths.DEFAULT_URL
    assert settings.ADMIN_TOKEN_FILE == paths.ADMIN_TOKEN_FILE
    assert settings.default_state_dir() == paths.default_state_dir()


def test_the_state_dir_variable_names_where_the_admin_token_is(tmp_path: Path) -> None:
    assert settings.local_token_path({"CAPSULED_STATE_DIR": str(tmp_path)}) == tmp_path / "admin-token"
    assert settings.local_token_path({}) == paths.default_state_dir() / "admin-token"
