"""`capsuled`'s server-wide options work after the subcommand too."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # osc_lib.version's own deprecation notice
    warnings.simplefilter("ignore", DeprecationWarning)
    from osc_lib import utils as osc_utils

from capsuled.cli import compose
from capsuled.cli.server import hoist_global_options
from capsuled.config import ApiSettings


@pytest.mark.parametrize(("argv", "expected"), [
    (["api", "--database-url", "U", "--listen", "h:1"], ["--database-url", "U", "--listen", "h:1", "api"]),
    (["--state-dir", "/s", "api", "--log-level=debug"], ["--state-dir", "/s", "--log-level=debug", "api"]),
    (["agent", "--api", "http://a", "--log-format", "json", "--token", "t"],
     ["--log-format", "json", "agent", "--api", "http://a", "--token", "t"]),
    (["db", "upgrade", "--database-url", "sqlite:///x"], ["--database-url", "sqlite:///x", "db", "upgrade"]),
    (["doctor", "--json", "--config-file", "/c.toml"], ["--config-file", "/c.toml", "doctor", "--json"]),
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


def test_idle_connections_outlive_the_openstack_clis_polls() -> None:
    """`openstack … --wait` sleeps 5 s between requests on one kept-alive connection; a
    server that closes idle connections at 5 s (uvicorn's default) races it and the CLI
    fails with "Remote end closed connection without response"."""
    poll = inspect.signature(osc_utils.wait_for_status).parameters["sleep_time"].default
    keep_alive = ApiSettings().keep_alive
    config = compose.api_server_config(object(), "127.0.0.1:9517", "info", "text", keep_alive)
    assert config.timeout_keep_alive == keep_alive >= 10 * poll
    assert (config.host, config.port) == ("127.0.0.1", 9517)
