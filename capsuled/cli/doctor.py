"""`capsuled doctor`: what is wrong with this installation, in words.

Each check reads (never changes) one piece: the configuration, the Docker Engine and
the kernel tools the agent drives, the database and its schema, Keystone, the agents'
heartbeats, the free disk. It ends ok, warn (works, but look), fail (does not work) or
skip (not used here), with a sentence saying what it found and, when it is not ok, what
to do. Which pieces are checked depends on what runs on this machine (`Mode`): an API
server has no Docker Engine to drive, an agent no database to read.

Part of the composition root: it builds the concrete clients itself, bounded in time
(a dead database or engine must not hang the doctor).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capsuled.config import Settings
from capsuled.errors import CapsuledError

if TYPE_CHECKING:
    from capsuled.store.engine import SchemaStatus, Store

Status = Literal["ok", "warn", "fail", "skip"]
Mode = Literal["all-in-one", "api", "agent"]
DOCKER_TIMEOUT = 10.0  # seconds: the doctor asks, it does not wait a minute as the agent may
GiB = 1024 ** 3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str

    def __post_init__(self) -> None:
        # Drivers' messages carry newlines (libpq's hints): one line per check.
        object.__setattr__(self, "message", " ".join(self.message.split()))

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def guess_mode(settings: Settings) -> Mode:
    """An agent when it is told where its API is, else the all-in-one server."""
    return "agent" if settings.agent.api_url else "all-in-one"


def run(settings: Settings, mode: Mode, token: str | None = None) -> list[Check]:
    """Every check that applies to `mode`, in the order a person would look."""
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")  # libpq: a dead host fails in seconds
    checks = [config(settings)]
    if mode != "api":
        checks += docker(settings)
    if mode == "agent":
        checks.append(api(settings, token))
    else:
        checks += database(settings)
        checks.append(keystone(settings))
    checks.append(disk("state directory", settings.state_dir))
    return checks


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status:<5} {c.name:<{width}}  {c.message}" for c in checks)


# ---- configuration ----------------------------------------------------------------------

def config(settings: Settings) -> Check:
    from capsuled.config_file import config_path

    path = config_path(settings.config_file)
    if path is None:
        return Check("config", "ok", "no configuration file (/etc/capsuled/capsuled.conf is "
                     "absent): defaults and CAPSULED_* variables")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_IROTH:
        return Check("config", "warn", f"{path} is readable by every user and may hold "
                     f"secrets (database password, registry secret): chmod 640 {path}")
    return Check("config", "ok", f"{path} read, no unknown keys or bad values")


# ---- Docker and the kernel tools ---------------------------------------------------------

def docker(settings: Settings) -> list[Check]:
    from capsuled.drivers.docker_client import make_client

    host = settings.docker.host
    client = make_client(host, min(settings.docker.timeout, DOCKER_TIMEOUT))
    try:
        version, info = client.version(), client.info()
    except Exception as exc:  # the SDK raises requests' and its own errors alike
        return [Check("docker", "fail", f"cannot reach the Docker Engine at {host} ({exc}): "
                      "start it (systemctl start docker) or set docker.host")]
    finally:
        client.close()
    checks = [_engine(host, version, info), _infra_image(settings)]
    checks += [_iptables(settings), _nftables(settings)]
    root = info.get("DockerRootDir")
    if root and host.startswith("unix://"):  # an engine on this machine: its disk is ours
        checks.append(disk("docker root", Path(root)))
    return checks


def _engine(host: str, version: dict[str, Any], info: dict[str, Any]) -> Check:
    driver = info.get("Driver", "?")
    about = (f"Docker Engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"
             f" at {host}, storage driver {driver}")
    if driver == "vfs":
        return Check("docker", "warn", f"{about}: vfs copies every image layer for every "
                     "container (slow, large); configure overlay2 in /etc/docker/daemon.json")
    return Check("docker", "ok", about)


def _infra_image(settings: Settings) -> Check:
    from capsuled.drivers.docker_client import make_client

    image = settings.docker.infra_image
    client = make_client(settings.docker.host, DOCKER_TIMEOUT)
    try:
        client.inspect_image(image)
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 404:
            return Check("infra image", "warn", f"{image} is not in the engine: the server "
                         "builds it when it starts, or run `capsuled image seed`")
        return Check("infra image", "fail", f"cannot inspect {image}: {exc}")
    finally:
        client.close()
    return Check("infra image", "ok", f"{image} present")


def _iptables(settings: Settings) -> Check:
    from capsuled.drivers.firewall.iptables import Commands, bridged_traffic_filtered

    if not settings.agent.security_groups:
        return Check("iptables", "skip", "agent.security_groups is false: security groups "
                     "are not enforced on this host")
    netns = settings.agent.host_netns
    try:
        Commands(str(netns) if netns else None).save()
    except CapsuledError as exc:
        return Check("iptables", "fail", f"security groups need iptables: {exc.message}; "
                     "install the iptables package and run as root, or set "
                     "agent.security_groups = false")
    if netns is None and not bridged_traffic_filtered():
        return Check("iptables", "warn", "iptables works, but net.bridge.bridge-nf-call-"
                     "iptables is not 1: security groups do not filter traffic between "
                     "containers of one project network on this host (modprobe br_netfilter; "
                     "sysctl -w net.bridge.bridge-nf-call-iptables=1)")
    return Check("iptables", "ok", "iptables-save works; bridged traffic passes iptables")


def _nftables(settings: Settings) -> Check:
    from capsuled.drivers.lb.nft import NftLoadBalancer

    if not settings.services.enabled:
        return Check("nftables", "skip", "services.enabled is false: capsule services "
                     "forward no traffic on this host")
    why = NftLoadBalancer("capsuled_doctor", netns=settings.agent.host_netns).available()
    if why is not None:
        return Check("nftables", "warn", f"capsule services forward no traffic on this host: "
                     f"{why}; install nftables and run as root, or set services.enabled = false")
    return Check("nftables", "ok", "nft works: capsule services can be programmed")


# ---- the database, Keystone, the agents --------------------------------------------------

def database(settings: Settings) -> list[Check]:
    from capsuled.store.engine import Store, make_engine, safe_url, schema_status

    url = settings.effective_database_url()
    where = safe_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return [Check("database", "fail", f"no database at {url.removeprefix('sqlite:///')}: "
                      "the server creates it when it first starts, or run `capsuled db "
                      "upgrade`; if it lives elsewhere, set state_dir or database_url"),
                Check("agents", "skip", "no database to read the hosts from")]
    try:
        engine = make_engine(url)
    except CapsuledError as exc:
        return [Check("database", "fail", f"{exc.message}; fix database_url"),
                Check("agents", "skip", "no database to read the hosts from")]
    try:
        try:
            status = schema_status(engine)
        except CapsuledError as exc:
            return [Check("database", "fail", f"{exc.message}. Check database_url (host, "
                          "port, user, password, database name) and that the database "
                          "server is running and lets this user in"),
                    Check("agents", "skip", "no database to read the hosts from")]
        checks = [_schema(where, status)]
        if status.current is None or not status.known:
            return checks + [Check("agents", "skip", "the schema is not usable yet")]
        try:
            return checks + [agents(Store(engine), timedelta(seconds=settings.api.host_down_after))]
        except CapsuledError as exc:
            return checks + [Check("agents", "fail", f"cannot read the hosts: {exc.message}")]
    finally:
        engine.dispose()


def _schema(where: str, status: SchemaStatus) -> Check:
    if status.current is None:
        return Check("database", "fail", f"{where} is reachable but empty (no schema): run "
                     "`capsuled db upgrade`, or start the server, which migrates at start")
    if not status.known:
        return Check("database", "fail", f"{where} is at schema revision {status.current}, "
                     f"which this version (newest {status.head}) does not know: a newer "
                     "capsuled migrated it; run that version or newer")
    if status.behind:
        return Check("database", "warn", f"{where} is at schema revision {status.current}, "
                     f"{status.behind} migration(s) behind this version ({status.head}): run "
                     "`capsuled db upgrade`, or restart the server, which migrates at start")
    return Check("database", "ok", f"{where} reachable, schema at {status.head} (current)")


def agents(store: Store, down_after: timedelta) -> Check:
    """Every registered host's last heartbeat; the silent ones named."""
    from capsuled.store import hosts
    from capsuled.store.tables import utcnow

    now = utcnow()
    down, up = [], []
    with store.transaction() as s:
        for host in hosts.list_hosts(s):
            age = (now - host.last_seen).total_seconds() if host.last_seen else None
            if host.forced_down or age is None or age > down_after.total_seconds():
                why = ("forced down by an admin" if host.forced_down else
                       "never sent a heartbeat" if age is None else
                       f"last heartbeat {_ago(age)} ago")
                down.append(f"{host.name} ({why}; {hosts.placed_count(s, host.name)} "
                            "capsules and containers placed there are Unknown)")
            else:
                up.append(f"{host.name} ({_ago(age)} ago)")
    if not up and not down:
        return Check("agents", "warn", "no host has registered: start the all-in-one server "
                     "or `capsuled agent` on each compute host")
    if down:
        return Check("agents", "fail", f"down: {'; '.join(down)}. Start the agent on each "
                     "(systemctl start capsuled-agent, or capsuled for the all-in-one) and "
                     "check it reaches the API; up: " + (", ".join(up) or "none"))
    return Check("agents", "ok", f"{len(up)} up, last heartbeats: {', '.join(up)}")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def keystone(settings: Settings) -> Check:
    if settings.keystone is None:
        return Check("keystone", "skip", "not configured: tokens are the ones this server "
                     "issues")
    from capsuled.identity.keystone import check_service_user

    try:
        return Check("keystone", "ok", check_service_user(settings.keystone))
    except CapsuledError as exc:
        return Check("keystone", "fail", f"{exc.message}. Check [keystone] auth_url, username, "
                     "password, project_name and their domains")


def api(settings: Settings, token: str | None) -> Check:
    """An agent: its API replicas answer and accept this host's token. One that does not
    is a warning while another does (the agent fails over to it), a failure when none does."""
    from capsuled.agent.http_channel import HttpChannel

    urls = settings.agent.api_url
    if not urls:
        return Check("api", "fail", "no API URL: set agent.api_url")
    if token is None:
        token = _token_from_file(settings)
        if token is None:
            return Check("api", "fail", "no agent token: set agent.token_file (or "
                         "CAPSULED_AGENT_TOKEN)")
    host = settings.agent.host_name
    good, bad = [], []
    for url in urls:
        channel = HttpChannel(url, token, timeout=DOCKER_TIMEOUT)
        try:
            instance = channel.instance_id(host)
            good.append(url)
        except CapsuledError as exc:
            bad.append(exc.message)
        finally:
            channel.close()
    if not good:
        return Check("api", "fail", f"{'; '.join(bad)}. An admin issues the token with "
                     f"`capsule token create --role agent --host {host}`")
    accepted = (f"{', '.join(good)} accept{'s' if len(good) == 1 else ''} the agent token of "
                f"host {host} (deployment {instance})")
    if bad:
        return Check("api", "warn", f"{accepted}; but {'; '.join(bad)}")
    return Check("api", "ok", accepted)


def _token_from_file(settings: Settings) -> str | None:
    path = settings.agent.token_file
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


# ---- disk ------------------------------------------------------------------------------

def disk(name: str, path: Path) -> Check:
    """Free space where `path` lives (its nearest existing parent before it is made)."""
    existing = next(_self_and_parents(path), None)
    if existing is None:
        return Check(name, "fail", f"{path}: no part of it exists")
    usage = shutil.disk_usage(existing)
    free, share = usage.free, usage.free / usage.total if usage.total else 0.0
    about = f"{path}: {free / GiB:.1f} GiB free ({share:.0%})"
    if free < GiB or share < 0.02:
        return Check(name, "fail", f"{about}: free space there now, writes are about to fail")
    if free < 5 * GiB or share < 0.10:
        return Check(name, "warn", f"{about}: running low, free some space")
    if existing != path:
        return Check(name, "warn", f"{about}; it does not exist yet (the server makes it)")
    return Check(name, "ok", about)


def _self_and_parents(path: Path) -> Iterator[Path]:
    for p in (path, *path.parents):
        if p.exists():
            yield p

