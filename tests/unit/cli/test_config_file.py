"""The configuration file: the committed sample is what the models generate, every default
it shows reads back as that default, the sources stack options > environment > file >
defaults, and a wrong key or value stops `capsuled` naming the file, section and key."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capsuled import logs
from capsuled.config import KeystoneSettings, Settings, load_settings
from capsuled.config_file import render_sample
from capsuled.errors import InvalidConfig

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "etc" / "capsuled.conf.sample"
CAPSULED = [sys.executable, "-m", "capsuled"]
# An option line of the sample ("#key = value") or a section header ("#[keystone]").
OPTION = re.compile(r"^#(?=[a-z_\[])")


@pytest.fixture(autouse=True)
def no_capsuled_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.upper().startswith("CAPSULED_"):
            monkeypatch.delenv(var)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("CAPSULED_")}


def test_the_committed_sample_is_what_the_settings_generate() -> None:
    assert SAMPLE.read_text() == render_sample(Settings), (
        "etc/capsuled.conf.sample is stale: capsuled config sample > etc/capsuled.conf.sample")


def test_capsuled_config_sample_prints_it() -> None:
    done = subprocess.run([*CAPSULED, "config", "sample"], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == SAMPLE.read_text()


def test_the_sample_as_shipped_gives_the_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text(SAMPLE.read_text())
    loaded = load_settings(config_file=conf)
    assert loaded.config_file == conf and loaded.keystone is None
    assert loaded.model_copy(update={"config_file": None}) == load_settings()


def test_every_default_the_sample_shows_reads_back_as_that_default(tmp_path: Path) -> None:
    """Uncomment every option (and the optional [keystone] header): each value written
    must parse to the default itself, or the sample documents a lie."""
    text = "\n".join(OPTION.sub("", line) for line in SAMPLE.read_text().splitlines())
    uncommented = sum(1 for line in SAMPLE.read_text().splitlines() if OPTION.match(line))
    assert uncommented > 100  # nearly every option has a literal default
    conf = tmp_path / "capsuled.conf"
    conf.write_text(text)
    loaded = load_settings(config_file=conf)
    keystone = KeystoneSettings(auth_url="http://keystone:5000/v3", password="CHANGE-ME")  # type: ignore[arg-type]
    assert loaded.keystone == keystone
    assert loaded.model_copy(update={"keystone": None, "config_file": None}) == load_settings()


def test_every_setting_is_in_the_sample_with_its_variable() -> None:
    text = SAMPLE.read_text()
    for name, field in Settings.model_fields.items():
        model = field.annotation
        sub = [m for m in (model, *getattr(model, "__args__", ())) if hasattr(m, "model_fields")]
        if sub:
            for key in sub[0].model_fields:
                assert f"CAPSULED_{name.upper()}__{key.upper()}\n" in text, (name, key)
        elif name != "config_file":
            assert f"CAPSULED_{name.upper()}\n" in text, name


def test_options_beat_the_environment_which_beats_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text('listen = "127.0.0.1:1111"\nlog_level = "debug"\n'
                    '[agent]\nrelist_interval = 3.0\nworkers = 4\nlabels = { ssd = "yes" }\n'
                    '[quota]\ncpu = 7\n')
    monkeypatch.setenv("CAPSULED_AGENT__RELIST_INTERVAL", "5")
    monkeypatch.setenv("CAPSULED_LOG_LEVEL", "warning")
    s = load_settings(config_file=conf, listen="127.0.0.1:2222")
    assert s.listen == "127.0.0.1:2222"                  # option over file
    assert s.log_level == "warning"                      # environment over file
    assert s.agent.relist_interval == 5.0                # environment over file, same section
    assert s.agent.workers == 4 and s.agent.labels == {"ssd": "yes"}  # the file's others stay
    assert s.quota.cpu == 7
    assert s.api.keep_alive == 75                        # defaults below all
    assert s.config_file == conf


def test_the_file_can_be_named_by_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "elsewhere.toml"
    conf.write_text('[api]\nmax_limit = 50\n')
    monkeypatch.setenv("CAPSULED_CONFIG_FILE", str(conf))
    assert load_settings().api.max_limit == 50
    monkeypatch.setenv("CAPSULED_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(InvalidConfig, match=r"missing\.toml: no such file"):
        load_settings()


@pytest.mark.parametrize(("text", "expected"), [
    ('listn = "x"\n', r"listn: unknown key \(did you mean listen\?\)"),
    ('[agnet]\nworkers = 2\n', r"\[agnet\]: unknown section \(did you mean \[agent\]\?\)"),
    ('[api]\nkeep_alvie = 5\n', r"\[api\] keep_alvie: unknown key \(did you mean keep_alive\?\)"),
    ('config_file = "/x"\n', r"config_file: cannot be set in the file"),
    ('agent = 3\n', r"agent: is a section"),
    ('[agent]\nworkers = { a = 1 }\n', r"\[agent\] workers: a value is expected here"),
    ('[api]\nkeep_alive = 0\n', r"\[api\] keep_alive: Input should be greater than or equal to 1"),
    ('log_format = "xml"\n', r"log_format: Input should be 'text' or 'json'"),
    ('[agent]\nops_cert_file = "/c.pem"\n', r"\[agent\]: Value error, ops_cert_file and "
     r"ops_key_file go together"),
    ('[services]\nvip_range = "10.208.0.0/16"\n', r"overlaps agent.network_pool"),
    ('[limits\n', r"not valid TOML"),
])
def test_a_wrong_file_is_refused_naming_file_section_and_key(
        tmp_path: Path, text: str, expected: str) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text(text)
    with pytest.raises(InvalidConfig) as caught:
        load_settings(config_file=conf)
    assert re.search(expected, caught.value.message), caught.value.message
    if "overlaps" not in expected:  # a rule across sections is the settings', not one key's
        assert str(conf) in caught.value.message


def test_a_bad_value_is_named_by_where_it_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text("[agent]\nworkers = 3\n")
    monkeypatch.setenv("CAPSULED_AGENT__HEARTBEAT_INTERVAL", "-1")
    with pytest.raises(InvalidConfig) as caught:
        load_settings(config_file=conf, log_format="yaml")
    problems = caught.value.problems
    assert any(p.startswith("--log-format: ") for p in problems), problems
    assert any(p.startswith("CAPSULED_AGENT__HEARTBEAT_INTERVAL: Input should be greater")
               for p in problems), problems
    assert not any(str(conf) in p for p in problems)


def test_capsuled_refuses_to_start_on_a_wrong_file_with_exit_status_78(tmp_path: Path) -> None:
    """78 (EX_CONFIG): the systemd units do not restart after it (RestartPreventExitStatus)."""
    conf = tmp_path / "capsuled.conf"
    conf.write_text('[api]\nkeep_alive = 5\nmax_limitt = 3\n')
    done = subprocess.run([*CAPSULED, "api", "--config-file", str(conf)], capture_output=True,
                          text=True, timeout=60, env=_env())
    assert done.returncode == 78, done.stderr
    assert f"error: {conf}: [api] max_limitt: unknown key (did you mean max_limit?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_capsuled_prints_its_version() -> None:
    from capsuled import __version__

    done = subprocess.run([*CAPSULED, "--version"], capture_output=True, text=True, timeout=60,
                          env={**_env(), "CAPSULED_CONFIG_FILE": "/nonexistent"})
    assert done.returncode == 0 and done.stdout.strip() == f"capsuled {__version__}"


def test_an_agent_needs_its_api_and_token_from_somewhere(tmp_path: Path) -> None:
    conf = tmp_path / "capsuled.conf"
    conf.write_text(f'[agent]\napi_url = "http://127.0.0.1:9"\ntoken_file = "{tmp_path}/tok"\n')
    done = subprocess.run([*CAPSULED, "--config-file", str(conf), "agent"], capture_output=True,
                          text=True, timeout=60, env=_env())
    assert done.returncode == 1
    assert f"agent.token_file {tmp_path}/tok: No such file or directory" in done.stderr
    conf.write_text("")
    done = subprocess.run([*CAPSULED, "--config-file", str(conf), "agent"], capture_output=True,
                          text=True, timeout=60, env=_env())
    assert done.returncode == 2 and "agent.api_url" in done.stderr


def test_logs_go_to_the_file_and_follow_logrotate(tmp_path: Path) -> None:
    """With log_file, a moved file (logrotate without copytruncate) is reopened: later lines
    land in the new file, none in the rotated one."""
    log = tmp_path / "capsuled.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("info", "text", log)
        logging.getLogger("capsuled.test").info("before rotation")
        log.rename(tmp_path / "capsuled.log.1")
        logging.getLogger("capsuled.test").info("after rotation")
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    assert "before rotation" in (tmp_path / "capsuled.log.1").read_text()
    assert "after rotation" not in (tmp_path / "capsuled.log.1").read_text()
    assert "after rotation" in log.read_text()
