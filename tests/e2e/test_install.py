"""scripts/install.sh into a temporary prefix (--no-system: no apt, no user, no systemctl):
the virtualenv runs the installed capsuled, the configuration comes from the sample and
is never overwritten, the units it renders pass `systemd-analyze verify`, a second run
changes nothing, and the installed server starts from the installed configuration and
its doctor says all is well."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
from conftest import ROOT, Server, free_port, remove_instance_objects, wait_for

from capsuled import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
INSTALL = ROOT / "scripts" / "install.sh"


@dataclass(frozen=True)
class Installed:
    prefix: Path
    etc: Path
    state: Path
    output: str

    @property
    def capsuled(self) -> Path:
        return self.prefix / "venv" / "bin" / "capsuled"

    @property
    def conf(self) -> Path:
        return self.etc / "capsuled.conf"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The installed capsuled, as a unit runs it: its own configuration, no test env."""
        return subprocess.run([str(self.capsuled), "--config-file", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout, env=_clean_env())


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CAPSULED_") and k != "PYTHONPATH"}


def install(tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL), "--no-system", "--prefix", str(tmp / "opt"),
                           "--etc-dir", str(tmp / "etc"), "--state-dir", str(tmp / "state"),
                           *extra], capture_output=True, text=True, timeout=1800,
                          env=_clean_env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("install")
    done = install(tmp)  # a fresh virtualenv: minutes (pip fetches every pinned package)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Installed(tmp / "opt", tmp / "etc", tmp / "state", done.stdout)


def test_the_virtualenv_runs_the_installed_capsuled(installed: Installed) -> None:
    done = installed.run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"capsuled {__version__}"
    # The package itself, not this checkout: the checkout can go away.
    where = subprocess.run([str(installed.prefix / "venv" / "bin" / "python"), "-c",
                            "import capsuled; print(capsuled.__file__)"],
                           capture_output=True, text=True, env=_clean_env(), timeout=60,
                           cwd=installed.prefix)
    assert where.stdout.startswith(str(installed.prefix / "venv" / "lib")), where
    assert (installed.prefix / "venv" / "bin" / "capsule").exists()


def test_the_configuration_comes_from_the_sample(installed: Installed) -> None:
    sample = (ROOT / "etc" / "capsuled.conf.sample").read_text()
    assert (installed.prefix / "share" / "capsuled.conf.sample").read_text() == sample
    conf = installed.conf.read_text()
    assert stat.S_IMODE(installed.conf.stat().st_mode) == 0o640
    # The one line set: the state directory install.sh was given.
    assert [line for line in conf.splitlines() if line not in sample.splitlines()] == [
        f'state_dir = "{installed.state}"']
    assert stat.S_IMODE(installed.state.stat().st_mode) == 0o700
    assert "wrote " + str(installed.conf) in installed.output


def test_the_rendered_units_pass_systemd_analyze_verify(installed: Installed) -> None:
    units = sorted((installed.prefix / "share" / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["capsuled-agent.service", "capsuled-api.service",
                                       "capsuled.service"]
    for unit in units:
        text = unit.read_text()
        assert f"ExecStart={installed.capsuled} --config-file {installed.conf}" in text
        assert "/opt/capsuled" not in text and "/etc/capsuled/" not in text
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "User=capsuled" in (installed.prefix / "share/systemd/capsuled-api.service").read_text()
    assert "User=" not in (installed.prefix / "share/systemd/capsuled.service").read_text()
    logrotate = installed.prefix / "share" / "logrotate"
    done = subprocess.run(["logrotate", "--debug", str(logrotate)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "error" not in done.stderr.lower(), done.stderr


def test_a_second_run_changes_nothing_and_keeps_the_configuration(
        installed: Installed) -> None:
    # The last section of the sample is [notifications]: an operator's change there.
    edited = installed.conf.read_text() + "\nretry = 2\n"
    installed.conf.write_text(edited)
    stamp = (installed.prefix / ".installed-from").read_text()
    venv_python = (installed.prefix / "venv" / "bin" / "python").stat().st_mtime
    done = install(installed.prefix.parent)
    assert done.returncode == 0, done.stderr
    assert f"{installed.prefix / 'venv'} is up to date" in done.stdout
    assert f"kept {installed.conf}" in done.stdout
    assert installed.conf.read_text() == edited
    assert installed.run("doctor", "--mode", "api").stdout.startswith(f"ok    config ")
    assert (installed.prefix / ".installed-from").read_text() == stamp
    assert (installed.prefix / "venv" / "bin" / "python").stat().st_mtime == venv_python


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    done = install(tmp_path, "--mode", "controller")
    assert done.returncode == 2
    assert "--mode must be all-in-one, api or agent, not controller" in done.stderr
    done = install(tmp_path, "--frobnicate")
    assert done.returncode == 2 and "unknown argument --frobnicate" in done.stderr
    assert not (tmp_path / "opt").exists()


def test_the_installed_server_starts_and_its_doctor_is_content(
        installed: Installed, docker_api: docker.APIClient) -> None:
    done = installed.run("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["database"]["message"].startswith(
        f"no database at {installed.state / 'capsuled.db'}"), checks["database"]
    port = free_port()
    log = installed.state.parent / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(installed.capsuled), "--config-file", str(installed.conf),
                                 "--listen", f"127.0.0.1:{port}"], stdout=out,
                                stderr=subprocess.STDOUT, env=_clean_env())
    srv = Server(url=f"http://127.0.0.1:{port}", state_dir=installed.state, port=port)
    srv.proc = proc
    try:
        _wait_up(srv, proc, log)
        done = installed.run("doctor", "--json")
        body = json.loads(done.stdout)
        assert done.returncode == 0 and body["ok"], done.stdout
        statuses = {c["name"]: c["status"] for c in body["checks"]}
        assert set(statuses.values()) <= {"ok", "skip"}, statuses
        assert statuses["agents"] == statuses["database"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if (installed.state / "capsuled.db").exists():
            remove_instance_objects(docker_api, srv.instance)


def _wait_up(srv: Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the installed capsuled exited: {log.read_text()[-3000:]}")
        try:
            with srv.client() as api:
                return bool(api.get("/v1/hosts", timeout=2).json().get("hosts"))
        except (httpx.HTTPError, OSError, ValueError):
            return False
    wait_for(up, timeout=120, interval=0.5, what="the installed capsuled to answer")
