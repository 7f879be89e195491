"""`capsuled`: the composition root. The only module where concrete classes meet.

    capsuled [--state-dir DIR] [--listen HOST:PORT]   all-in-one: API + agent, SQLite
    capsuled image seed                               build the offline images
    capsuled db upgrade [--database-url URL]          create or migrate the schema
"""

from __future__ import annotations

import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from capsuled.config import Settings

if TYPE_CHECKING:
    from capsuled.identity.base import IdentityProvider
    from capsuled.store.engine import Store

app = typer.Typer(help=__doc__, no_args_is_help=False, add_completion=False)
image_app = typer.Typer(help="Offline images.")
app.add_typer(image_app, name="image")
LOG = logging.getLogger("capsuled")


def _settings(state_dir: Path | None, listen: str | None, log_level: str | None,
              database_url: str | None = None) -> Settings:
    overrides: dict[str, object] = {}
    if database_url is not None:
        overrides["database_url"] = database_url
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    if listen is not None:
        overrides["listen"] = listen
    if log_level is not None:
        overrides["log_level"] = log_level
    return Settings(**overrides)  # type: ignore[arg-type]


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    state_dir: Annotated[Path | None, typer.Option(help="State directory (database, admin token). "
                                                   "Default: /var/lib/capsuled as root, else a per-user data dir.")] = None,
    listen: Annotated[str | None, typer.Option(help="HOST:PORT for the API. Default 127.0.0.1:9517.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL: postgresql+psycopg://USER:PASSWORD@HOST/DB, "
             "mysql+pymysql://USER:PASSWORD@HOST/DB (MariaDB). Default: SQLite in the state "
             "directory.")] = None,
) -> None:
    """Run the all-in-one server: the Zun-compatible API and the agent for this host."""
    ctx.obj = _settings(state_dir, listen, log_level, database_url)
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
    from capsuled.agent.loop import Agent
    from capsuled.api.app import Services, create_app
    from capsuled.api.policy import Policy
    from capsuled.api.services.agents import ControlPlane
    from capsuled.api.services.capsules import CapsuleService
    from capsuled.api.services.containers import ContainerService
    from capsuled.api.services.hosts import HostService
    from capsuled.api.services.images import ImageService
    from capsuled.api.services.quotas import QuotaService
    from capsuled.api.services.tokens import TokenService
    from capsuled.domain.template import Limits
    from capsuled.drivers.docker_client import make_client
    from capsuled.drivers.image.seed import seed_images
    from capsuled.drivers.network.docker import BridgeNetworks
    from capsuled.drivers.runtime.docker import DockerRuntime
    from capsuled.drivers.volume.docker import LocalVolumes
    from capsuled.errors import CapsuledError
    from capsuled.identity.local import bootstrap
    from capsuled.paths import ADMIN_TOKEN_FILE
    from capsuled.store.engine import Store, make_engine, upgrade

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url())
    upgrade(engine)
    store = Store(engine)
    instance = bootstrap(store, settings.state_dir, ADMIN_TOKEN_FILE)

    docker_api = make_client(settings.docker.host, settings.docker.timeout)
    try:
        docker_api.ping()
        seed_images(docker_api, settings.docker.infra_image)
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    except Exception as exc:  # the SDK raises plain requests errors on ping
        typer.echo(f"error: cannot reach the Docker Engine at {settings.docker.host}: {exc}", err=True)
        raise typer.Exit(1) from exc

    try:
        policy = Policy(settings.policy, settings.policy_file)
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    control = ControlPlane(store)
    limits = Limits(**settings.limits.model_dump())
    down_after = timedelta(seconds=180)
    runtime = DockerRuntime(docker_api)
    quotas = QuotaService(store, settings.quota.model_dump())
    services = Services(
        capsules=CapsuleService(store, control, limits, host_down_after=down_after, policy=policy,
                                quotas=quotas),
        # All in one: the only host is this one, and its runtime serves the host calls.
        containers=ContainerService(store, control.notify, lambda host: runtime, limits, down_after,
                                    policy=policy, quotas=quotas),
        hosts=HostService(store, down_after),
        images=ImageService(store, lambda host: runtime, down_after),
        tokens=TokenService(store),
        quotas=quotas)
    api = create_app(settings, _identity(settings, store), services, policy)
    agent = Agent(control, runtime, LocalVolumes(docker_api), settings.agent,
                  instance, settings.docker.infra_image, networks=BridgeNetworks(docker_api))
    agent.start()

    host, _, port = settings.listen.rpartition(":")
    LOG.info("capsuled listening on http://%s admin token in %s", settings.listen,
             settings.state_dir / ADMIN_TOKEN_FILE)
    server = uvicorn.Server(uvicorn.Config(api, host=host or "127.0.0.1", port=int(port),
                                           log_level=settings.log_level, access_log=False))
    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and re-raises
    # the signal. Finding ours, the re-raise unwinds to the `finally` below and the process
    # exits 0 after the agent stopped, instead of being killed by the default action.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.run()
    finally:
        agent.stop()


def _identity(settings: Settings, store: Store) -> IdentityProvider:
    """The tokens this server issues, and Keystone's too when [keystone] is configured."""
    from capsuled.identity.local import LocalIdentity

    local = LocalIdentity(store)
    if settings.keystone is None:
        return local
    from capsuled.identity.chain import LocalThenKeystone
    from capsuled.identity.keystone import KeystoneIdentity

    LOG.info("validating tokens with Keystone at %s", settings.keystone.auth_url)
    return LocalThenKeystone(local, KeystoneIdentity.from_settings(settings.keystone))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


db_app = typer.Typer(help="The database.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL (postgresql+psycopg://…, mysql+pymysql://…, sqlite:///PATH). "
             "Default: the server's, from --database-url before `db` or $CAPSULED_DATABASE_URL, "
             "else SQLite in the state directory.")] = None) -> None:
    """Create the schema on an empty database or migrate it to this version (idempotent)."""
    from capsuled.errors import CapsuledError
    from capsuled.store.engine import make_engine, safe_url, upgrade

    settings: Settings = ctx.obj
    url = database_url or settings.effective_database_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = make_engine(url)
        try:
            done = upgrade(engine)
        finally:
            engine.dispose()
    except CapsuledError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    where = safe_url(url)
    if done.before is None:
        typer.echo(f"{where}: created the schema at revision {done.after}")
    elif done.changed:
        typer.echo(f"{where}: migrated from revision {done.before} to {done.after}")
    else:
        typer.echo(f"{where}: already at revision {done.after}, nothing to do")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
