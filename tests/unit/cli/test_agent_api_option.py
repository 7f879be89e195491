"""`capsuled agent --api`: repeated and comma-separated replicas reach the channel in order;
a bad URL is refused before anything starts, naming --api."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from capsuled.cli import compose
from capsuled.cli.server import app
from capsuled.errors import NotAuthenticated

CAPSULED = [sys.executable, "-m", "capsuled"]


@pytest.fixture(autouse=True)
def _only_this_tests_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """None from the machine's configuration file or environment."""
    for name in [k for k in os.environ if k.upper().startswith("CAPSULED_")]:
        monkeypatch.delenv(name)
    (tmp_path / "capsuled.conf").write_text("")
    monkeypatch.setenv("CAPSULED_CONFIG_FILE", str(tmp_path / "capsuled.conf"))
    monkeypatch.setenv("CAPSULED_STATE_DIR", str(tmp_path / "state"))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


class _Channel:
    """Stands in for HttpChannel: records what it was given, then stops the command at its
    first call (before an engine or an ops endpoint would be needed)."""

    given: list[list[str]] = []

    def __init__(self, urls: list[str], token: str, **_: Any) -> None:
        _Channel.given.append(list(urls))

    def instance_id(self, host: str) -> str:
        raise NotAuthenticated("stopped by the test")


@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    import capsuled.agent.http_channel as http_channel

    _Channel.given = []
    monkeypatch.setattr(http_channel, "HttpChannel", _Channel)
    monkeypatch.setattr(compose, "docker_client", lambda *a, **k: object())
    monkeypatch.setattr(compose, "setup_logging", lambda settings: None)
    return _Channel.given


def _run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), env=_env(**env))


def test_api_repeats_and_splits_commas(fake_agent: list[list[str]]) -> None:
    result = _run("agent", "--api", "http://a:1", "--api", "http://b:2/,https://c:3",
                  "--token", "t")
    assert result.exit_code == 1 and "stopped by the test" in result.output
    assert fake_agent == [["http://a:1", "http://b:2", "https://c:3"]]


def test_the_setting_is_used_without_api(fake_agent: list[list[str]]) -> None:
    result = _run("agent", "--token", "t",
                  CAPSULED_AGENT__API_URL="http://a:1, http://b:2")
    assert result.exit_code == 1, result.output
    assert fake_agent == [["http://a:1", "http://b:2"]]


def test_api_overrides_the_setting(fake_agent: list[list[str]]) -> None:
    result = _run("agent", "--api", "http://c:3", "--token", "t",
                  CAPSULED_AGENT__API_URL="http://a:1,http://b:2")
    assert result.exit_code == 1, result.output
    assert fake_agent == [["http://c:3"]]


def test_a_bad_api_url_is_a_usage_error_naming_the_option() -> None:
    done = subprocess.run([*CAPSULED, "agent", "--api", "http://a:1", "--api", "api-b:9517",
                           "--token", "t"], capture_output=True, text=True, timeout=60,
                          env=_env())
    assert done.returncode == 2, done.stderr
    assert "--api" in done.stderr and "'api-b:9517' is not an http(s) URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_url_in_the_setting_names_the_setting() -> None:
    done = subprocess.run([*CAPSULED, "agent", "--token", "t"], capture_output=True, text=True,
                          timeout=60, env=_env(CAPSULED_AGENT__API_URL="http://a:1,ftp://b"))
    assert done.returncode != 0
    assert "CAPSULED_AGENT__API_URL" in done.stderr and "'ftp://b' is not" in done.stderr
    assert "Traceback" not in done.stderr
