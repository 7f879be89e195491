"""`capsuled`'s server-wide options work after the subcommand too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capsuled.cli.server import hoist_global_options


@pytest.mark.parametrize(("argv", "expected"), [
    (["api", "--database-url", "U", "--listen", "h:1"], ["--database-url", "U", "--listen", "h:1", "api"]),
    (["--state-dir", "/s", "api", "--log-level=debug"], ["--state-dir", "/s", "--log-level=debug", "api"]),
    (["agent", "--api", "http://a", "--log-format", "json", "--token", "t"],
     ["--log-format", "json", "agent", "--api", "http://a", "--token", "t"]),
    (["db", "upgrade", "--database-url", "sqlite:///x"], ["--database-url", "sqlite:///x", "db", "upgrade"]),
    (["api", "--", "--listen"], ["api", "--", "--listen"]),  # after --, an argument
    (["--listen", "h:1"], ["--listen", "h:1"]),  # all-in-one: nothing to move
    (["api", "--help"], ["api", "--help"]),
])
def test_options_after_the_subcommand_move_before_it(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_options(argv) == expected


def test_db_upgrade_takes_the_database_and_state_dir_after_the_subcommand(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    done = subprocess.run([sys.executable, "-m", "capsuled", "db", "upgrade", "--log-level",
                           "warning", "--database-url", f"sqlite:///{db}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "created the schema" in done.stdout and db.exists()


def test_an_unknown_option_is_still_refused_by_name() -> None:
    done = subprocess.run([sys.executable, "-m", "capsuled", "api", "--databse-url", "x"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--databse-url" in done.stderr


def test_capsule_offers_shell_completion() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "capsule"), "--show-completion",
                           "bash"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "_CAPSULE_COMPLETE" in done.stdout and "complete" in done.stdout
