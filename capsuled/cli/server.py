"""`capsuled`: the composition root. The only module where concrete classes meet.

    capsuled [--state-dir DIR] [--listen HOST:PORT]   all-in-one: API + agent, SQLite
    capsuled --database-url URL api                   a stateless API server (multi-host)
    capsuled agent --api URL[,URL…] --token T         the agent of one compute host
    capsuled image seed                               build the offline images
    capsuled db upgrade [--database-url URL]          create or migrate the schema
    capsuled sweep INSTANCE [--netns PATH]            remove a dead deployment's host networking
    capsuled db recount [--repair]                    check (repair) the running usage totals
    capsuled doctor [--json] [--mode MODE]            check Docker, the database, Keystone, agents
    capsuled config sample                            the documented configuration file

Settings come from the options, CAPSULED_* variables and the configuration file
(--config-file, default /etc/capsuled/capsuled.conf), in that order.
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from capsuled import __version__
from capsuled.cli import compose, maintenance
from capsuled.cli.helptext import App
from capsuled.config import AgentSettings, Settings, api_urls, load_settings
from capsuled.errors import CapsuledError, InvalidConfig

HELP = """Run capsuled: the Zun-compatible API server and the agent of each compute host.

Without a command, one process runs both the API and the agent of this host, on SQLite in
the state directory, and writes an admin token there for the local `capsule` CLI.

Example:

  capsuled                                         all in one: API and agent, SQLite
  capsuled --database-url URL api                  a stateless API server (multi-host)
  capsuled agent --api URL --token TOKEN           the agent of one compute host
  capsuled image seed                              build the offline images
  capsuled db upgrade --database-url URL           create or migrate the schema
"""

# Help is reflowed (helptext.App) so that docstrings can be wrapped in the source.
app = App(help=HELP, no_args_is_help=False, add_completion=False)
image_app = App(help="Offline images.")
app.add_typer(image_app, name="image")
LOG = logging.getLogger("capsuled")
EX_CONFIG = 78  # sysexits.h: the units' RestartPreventExitStatus, no restart loop on a typo
# They report a configuration that does not load themselves (doctor: as a failed check).
LOADS_ITS_OWN_SETTINGS = ("config", "doctor")


class LogFormatChoice(str, Enum):  # typer offers an Enum's values as the choices
    text = "text"
    json = "json"


def settings_of(ctx: typer.Context) -> Settings:
    """The settings of this run (options > environment > file > defaults), or exit 78
    naming every problem."""
    if isinstance(ctx.obj, Settings):
        return ctx.obj
    root = ctx.find_root()
    try:
        settings = load_settings(**root.meta.get("overrides", {}))
    except InvalidConfig as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EX_CONFIG) from exc
    ctx.obj = root.obj = settings
    return settings


def _version(value: bool) -> None:
    if value:
        typer.echo(f"capsuled {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    state_dir: Annotated[Path | None, typer.Option(help="State directory (database, admin token). "
                                                   "Default: /var/lib/capsuled as root, else a per-user data dir.")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT for the API. Default 127.0.0.1:9517.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    log_format: Annotated[LogFormatChoice | None, typer.Option(
        help="text (default) or json: one JSON object per line with time, level, logger, "
             "message and the request_id of the request that logged it.")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL: postgresql+psycopg://USER:PASSWORD@HOST/DB, "
             "mysql+pymysql://USER:PASSWORD@HOST/DB (MariaDB). Default: SQLite in the state "
             "directory.")] = None,
    config_file: Annotated[Path | None, typer.Option(
        help="Configuration file (TOML; `capsuled config sample` documents it). Default: "
             "$CAPSULED_CONFIG_FILE, else /etc/capsuled/capsuled.conf when it exists.")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Run the all-in-one server: the Zun-compatible API and the agent for this host."""
    ctx.meta["overrides"] = {
        "state_dir": state_dir, "listen": listen, "log_level": log_level,
        "database_url": database_url, "config_file": config_file,
        "log_format": None if log_format is None else log_format.value}
    if ctx.invoked_subcommand not in LOADS_ITS_OWN_SETTINGS:
        settings_of(ctx)
    if ctx.invoked_subcommand is None:
        run_all_in_one(ctx.obj)


@image_app.command("seed")
def image_seed(ctx: typer.Context,
               force: Annotated[bool, typer.Option(help="Re-import even if up to date.")] = False) -> None:
    """Build busybox:latest and the sandbox infra image offline (docker import; idempotent)."""
    from capsuled.drivers.docker_client import make_client
    from capsuled.drivers.image.seed import seed_images
    from capsuled.errors import CapsuledError

    settings: Settings = ctx.obj
    try:
        results = seed_images(make_client(settings.docker.host, settings.docker.timeout),
                              settings.docker.infra_image, force=force)
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for r in results:
        typer.echo(f"{r.image}: {'imported' if r.created else 'up to date'}")


def run_all_in_one(settings: Settings) -> None:
    from capsuled.drivers.runtime.docker import DockerRuntime
    from capsuled.paths import ADMIN_TOKEN_FILE

    compose.setup_logging(settings)
    opened = compose.open_store(settings)
    client = compose.docker_client(settings)
    runtime = DockerRuntime(client)
    # All in one: the only host is this one, and its runtime serves the host calls.
    api = compose.build_api(settings, opened.store, lambda host: runtime)
    agent = compose.build_agent(settings, api.control, client, opened.instance)
    agent.start()
    api.start()
    LOG.info("capsuled listening on http://%s admin token in %s", settings.listen,
             settings.state_dir / ADMIN_TOKEN_FILE)

    def stop() -> None:
        api.stop()
        agent.stop()
    compose.serve(api.app, settings.listen, settings.log_level, stop, settings.log_format,
                  settings.api.keep_alive, settings.log_file)


@app.command("api")
def api_command(ctx: typer.Context) -> None:
    """Run a stateless API server (multi-host). Any number may share one database
    (--database-url); agents on the compute hosts connect to them with
    `capsuled agent`. The first to start on an empty database writes the admin token."""
    from capsuled.paths import ADMIN_TOKEN_FILE

    settings: Settings = ctx.obj
    compose.setup_logging(settings)
    opened = compose.open_store(settings)
    api = compose.build_api(settings, opened.store, compose.remote_ops(opened.store, settings))
    api.start()
    LOG.info("capsuled api listening on http://%s (admin token, if this one made it: %s)",
             settings.listen, settings.state_dir / ADMIN_TOKEN_FILE)
    compose.serve(api.app, settings.listen, settings.log_level, api.stop, settings.log_format,
                  settings.api.keep_alive, settings.log_file)


@app.command("agent")
def agent_command(
    ctx: typer.Context,
    api_url: Annotated[list[str] | None, typer.Option("--api", help=(
        "An API replica's URL, e.g. http://api1:9517; repeat, or separate with commas, "
        "to fail over between replicas (default: agent.api_url)."))] = None,
    token: Annotated[str | None, typer.Option(envvar="CAPSULED_AGENT_TOKEN", help=(
        "This host's agent token (capsule token create --role agent --host NAME); "
        "default: the content of agent.token_file."))] = None,
    host: Annotated[str | None, typer.Option(help="This host's name (default: hostname).")] = None,
    docker_host: Annotated[str | None, typer.Option(help="Docker Engine URL, e.g. unix:///run/docker.sock.")] = None,
    availability_zone: Annotated[str | None, typer.Option(help="Availability zone (default nova).")] = None,
    label: Annotated[list[str] | None, typer.Option(help="Host label k=v for scheduling; repeat.")] = None,
    ops_listen: Annotated[str | None, typer.Option(help=(
        "HOST:PORT for the ops endpoint the API uses for logs/exec/attach (default: the "
        "host and port of --ops-url, else 127.0.0.1:9518, reachable from this machine only)."))] = None,
    ops_url: Annotated[str | None, typer.Option(help="URL the API reaches the ops endpoint at "
                                                "(default http(s)://HOST:PORT of --ops-listen).")] = None,
    ops_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve the ops endpoint "
                                                  "over TLS (with --ops-key).")] = None,
    ops_key: Annotated[Path | None, typer.Option(help="PEM private key of --ops-cert.")] = None,
) -> None:
    """Run the agent of one compute host (multi-host). It talks only to the API, never
    to the database: registers this host, heartbeats, watches its assignments, reconciles
    them on the local Docker Engine, reports what it sees, and serves logs/exec/attach/…
    for the API on its ops endpoint."""
    from capsuled.agent.http_channel import HttpChannel
    from capsuled.hostops.server import OpsKey, create_ops_app, owned_by, serve_ops, stop_ops
    from capsuled.drivers.runtime.docker import DockerRuntime
    from capsuled.errors import Unavailable

    settings: Settings = ctx.obj
    if not api_url and not settings.agent.api_url:
        raise typer.BadParameter("no API URL: give --api or set agent.api_url", param_hint="--api")
    try:  # the file's agent.api_url was checked as the settings were read
        urls = api_urls(api_url) if api_url else list(settings.agent.api_url or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--api") from None
    token = token or compose.agent_token(settings.agent)
    try:
        agent_settings = AgentSettings.model_validate({**settings.agent.model_dump(), **{
            k: v for k, v in {"host_name": host, "availability_zone": availability_zone,
                              "ops_listen": ops_listen, "ops_url": ops_url,
                              "ops_cert_file": ops_cert, "ops_key_file": ops_key}.items()
            if v is not None}})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if label:
        agent_settings.labels = {**agent_settings.labels, **_labels(label)}
    settings = settings.model_copy(update={"agent": agent_settings})
    if docker_host is not None:
        settings.docker.host = docker_host
    compose.setup_logging(settings)
    client = compose.docker_client(settings)
    channel = HttpChannel(urls, token)
    name = agent_settings.host_name
    while True:
        try:
            instance = channel.instance_id(name)
            break
        except Unavailable as exc:
            LOG.warning("waiting for the API: %s", exc.message)
            time.sleep(2.0)
        except CapsuledError as exc:
            raise compose.fail(exc.message) from exc
    # The API derives the ops key from this nonce and answers the registration with it;
    # until then the endpoint refuses everything.
    nonce = compose.new_ops_key()
    key = OpsKey()
    runtime = DockerRuntime(client)

    # Only containers of this deployment (by id, never by name): not the host's others.
    owns = owned_by(lambda: (s.id for s in runtime.list_summaries(instance)))

    bind_host, port = agent_settings.ops_bind()
    cert, tls_key = agent_settings.ops_cert_file, agent_settings.ops_key_file
    try:
        ops_server, ops_thread = serve_ops(create_ops_app(runtime, key, owns), bind_host, port,
                                           ssl_certfile=str(cert) if cert else None,
                                           ssl_keyfile=str(tls_key) if tls_key else None,
                                           log_to_root=settings.log_format == "json"
                                           or settings.log_file is not None)
    except OSError as exc:
        raise compose.fail(str(exc)) from exc
    url = agent_settings.ops_endpoint_url()
    if bind_host in ("127.0.0.1", "::1", "localhost"):
        LOG.warning("the ops endpoint listens on %s only: API replicas on other machines cannot "
                    "reach it (set --ops-listen or --ops-url)", bind_host)
    agent = compose.build_agent(settings, channel, client, instance, ops_endpoint=(url, nonce),
                                on_ops_key=key.set)
    try:
        agent.start()
    except CapsuledError as exc:
        raise compose.fail(exc.message) from exc
    LOG.info("capsuled agent for host %s: API %s (now %s), ops endpoint %s", name,
             ", ".join(urls), channel.current, url)

    def stop() -> None:
        agent.stop()
        stop_ops(ops_server, ops_thread)
        channel.close()
    compose.wait_for_signal(stop)


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--label {value!r}: expected KEY=VALUE")
        out[key] = rest
    return out


class DoctorMode(str, Enum):
    all_in_one = "all-in-one"
    api = "api"
    agent = "agent"


@app.command("doctor")
def doctor_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: ok and the checks.")] = False,
    mode: Annotated[DoctorMode | None, typer.Option(help=(
        "What runs on this machine: all-in-one (Docker, database, Keystone, agents), api "
        "(no Docker) or agent (Docker and the API). Default: agent when agent.api_url is "
        "set, else all-in-one."))] = None,
) -> None:
    """Check Docker, the database and its schema, Keystone, the agents and the free disk,
    and say what is wrong in words. Exit status 1 when a check fails."""
    import json

    from capsuled.cli import doctor

    root = ctx.find_root()
    try:
        settings = load_settings(**root.meta.get("overrides", {}))
    except InvalidConfig as exc:
        checks = [doctor.Check("config", "fail", p) for p in exc.problems]
    else:
        checks = doctor.run(settings, mode.value if mode else doctor.guess_mode(settings))
    if as_json:
        typer.echo(json.dumps({"ok": not doctor.failed(checks),
                               "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        typer.echo(doctor.render(checks))
    if doctor.failed(checks):
        raise typer.Exit(1)


app.add_typer(maintenance.db_app, name="db")
app.add_typer(maintenance.config_app, name="config")
app.command("sweep")(maintenance.sweep_command)


# The server-wide options (main_command's) may also follow the subcommand, as people type
# them: `capsuled api --database-url URL --listen H:P`. They are moved before it; click
# has no options shared between a group and its commands.
GLOBAL_OPTIONS = ("--state-dir", "--listen", "--log-level", "--log-format", "--database-url",
                  "--config-file")
SUBCOMMANDS = ("api", "agent", "image", "db", "sweep", "doctor", "config")


def hoist_global_options(argv: list[str]) -> list[str]:
    """argv with every server-wide option after the subcommand moved before it."""
    at = next((i for i, a in enumerate(argv) if a in SUBCOMMANDS), None)
    if at is None:
        return argv
    before, after, moved = argv[:at], argv[at:], []
    rest: list[str] = []
    i = 0
    while i < len(after):
        arg = after[i]
        if arg == "--":  # what follows is an argument, never an option
            rest += after[i:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in arg or i + 1 >= len(after):
                moved.append(arg)
                i += 1
            else:
                moved += after[i:i + 2]
                i += 2
            continue
        rest.append(arg)
        i += 1
    return before + moved + rest


def main() -> None:
    import sys

    app(args=hoist_global_options(sys.argv[1:]), prog_name="capsuled")


if __name__ == "__main__":
    main()
