"""Building the pieces the `capsuled` commands run: the API (with its services and host
monitor) over a store, and the agent over a channel and a Docker Engine. The only module
besides server.py where concrete classes meet."""

from __future__ import annotations

import gc
import logging
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import uvicorn

from capsuled.cli import host_networking as host_net
from capsuled.config import AgentSettings, Settings
from capsuled.errors import CapsuledError

if TYPE_CHECKING:
    import docker
    from fastapi import FastAPI

    from capsuled.agent.loop import Agent
    from capsuled.api.relay.amqp import Notifications
    from capsuled.api.services.agents import ControlPlane, OpsKeys
    from capsuled.api.relay.supervisor import WebhookSupervisor
    from capsuled.api.services.host_monitor import HostMonitor
    from capsuled.api.services.rollout_supervisor import RolloutSupervisor
    from capsuled.domain.channel import AgentChannel
    from capsuled.domain.services import AgentServiceChannel
    from capsuled.hostops.protocol import ContainerOps
    from capsuled.identity.base import IdentityProvider
    from capsuled.identity.local import LocalIdentity
    from capsuled.store.engine import Store
    from capsuled.store.crypto import SecretBox
    from capsuled.store.notify import PgNotifier

LOG = logging.getLogger("capsuled")


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def setup_logging(settings: Settings) -> None:
    from capsuled import logs

    try:
        logs.setup(settings.log_level, settings.log_format, settings.log_file)
    except OSError as exc:
        raise fail(f"log_file {settings.log_file}: {exc.strerror}") from exc


@dataclass
class Opened:
    store: Store
    instance: str


def open_store(settings: Settings) -> Opened:
    """Migrate, connect, and on an empty database write the bootstrap admin token."""
    from capsuled.identity.local import bootstrap
    from capsuled.paths import ADMIN_TOKEN_FILE, private_dir, private_file
    from capsuled.store.engine import Store, make_engine, upgrade

    private_dir(settings.state_dir)  # the database and the admin token: the owner's only
    private_file(settings.state_dir / ADMIN_TOKEN_FILE)
    try:
        engine = make_engine(settings.effective_database_url())
        upgrade(engine)
        store = Store(engine)
        return Opened(store, bootstrap(store, settings.state_dir, ADMIN_TOKEN_FILE))
    except CapsuledError as exc:
        raise fail(exc.message) from exc


def docker_client(settings: Settings, seed: bool = True) -> docker.APIClient:
    from capsuled.drivers.docker_client import make_client
    from capsuled.drivers.image.seed import seed_images

    client = make_client(settings.docker.host, settings.docker.timeout)
    try:
        client.ping()
        if seed:
            seed_images(client, settings.docker.infra_image)
    except CapsuledError as exc:
        raise fail(exc.message) from exc
    except Exception as exc:  # the SDK raises plain requests errors on ping
        raise fail(f"cannot reach the Docker Engine at {settings.docker.host}: {exc}") from exc
    return client


@dataclass
class Api:
    app: FastAPI
    control: ControlPlane
    monitor: HostMonitor
    webhooks: WebhookSupervisor
    rollouts: RolloutSupervisor
    notifier: PgNotifier | None = None  # wake-ups across replicas (PostgreSQL only)
    notifications: Notifications | None = None  # [notifications] enabled: the AMQP relay

    def start(self) -> None:
        """The API's background work: the host monitor, the rollout supervisor, webhook
        delivery, the cross-replica listener, the notification relay (every replica runs
        it; its lease picks the one that sends)."""
        self.monitor.start()
        self.rollouts.start()
        self.webhooks.start()
        if self.notifier is not None:
            self.notifier.start()
        if self.notifications is not None:
            self.notifications.start()

    def stop(self) -> None:
        self.monitor.stop()
        self.rollouts.stop()
        self.webhooks.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.notifications is not None:
            self.notifications.stop()


def build_api(settings: Settings, store: Store,
              ops_for: Callable[[str], ContainerOps]) -> Api:
    from capsuled.api.app import Services, create_app
    from capsuled.api.metrics import ApiMetrics
    from capsuled.api.policy import Policy
    from capsuled.api.services.agents import ControlPlane
    from capsuled.api.services.capsule_services import CapsuleServices
    from capsuled.api.services.capsules import CapsuleService
    from capsuled.api.services.containers import ContainerService
    from capsuled.api.services.events import EventService, OutboxHub
    from capsuled.api.services.host_monitor import HostMonitor
    from capsuled.api.services.hosts import HostService
    from capsuled.api.services.images import ImageService
    from capsuled.api.services.placement import Placement
    from capsuled.api.services.quotas import QuotaService
    from capsuled.api.relay.egress import HttpPoster, system_resolver, tls_context
    from capsuled.api.relay.supervisor import WebhookSupervisor
    from capsuled.api.services.registries import RegistryService
    from capsuled.api.services.security_groups import SecurityGroupService
    from capsuled.api.services.subscriptions import SubscriptionService
    from capsuled.api.services.rollout_supervisor import RolloutSupervisor
    from capsuled.domain.services import AgentServiceChannel
    from capsuled.api.services.rollouts import RolloutService
    from capsuled.api.services.tokens import TokenService
    from capsuled.domain.template import Limits
    from capsuled.identity.local import LocalIdentity
    from capsuled.store.capsules import Retention, configure_retention
    from capsuled.store.outbox import OutboxRetention
    from capsuled.store.outbox import configure as configure_outbox
    from capsuled.store.overlay import configure as configure_overlay
    from capsuled.domain.overlay import OverlayPool
    from capsuled.store.notify import PgNotifier, supports_notify

    try:
        policy = Policy(settings.policy, settings.policy_file)
    except CapsuledError as exc:
        raise fail(exc.message) from exc
    box = secret_box(settings)
    metrics = ApiMetrics(store, settings.api.metrics_cache)
    control = ControlPlane(store, ops_keys=ops_keys(settings, store), secrets=box,
                           metrics=metrics, vip_range=settings.services.vip_range)
    hub = OutboxHub()
    store.outbox_listeners.append(hub.committed)  # wakes this replica's watch streams
    notifier = None
    if supports_notify(store.engine):
        # Another replica's commit (its assignments and reports come with a notice) also
        # wakes this replica's watch streams at once rather than at their next poll.
        notifier = PgNotifier(store.engine, hub.also_wakes(control.on_notice))
        control.publish = notifier.publish
    local = LocalIdentity(store, ttl=settings.api.token_cache_ttl,
                          agent_ttl=settings.api.agent_token_cache_ttl)
    limits = Limits(**settings.limits.model_dump(include={f.name for f in fields(Limits)}))
    configure_overlay(OverlayPool(settings.overlay.pool, settings.overlay.project_prefix,
                                  settings.overlay.host_prefix))
    configure_outbox(OutboxRetention(
        records=settings.limits.outbox_records,
        max_age=timedelta(seconds=settings.limits.outbox_max_age),
        reader_records=settings.limits.outbox_reader_records))
    configure_retention(Retention(
        events=settings.limits.events_per_capsule, actions=settings.limits.actions_per_container,
        max_age=timedelta(seconds=settings.limits.event_max_age),
        revisions=settings.limits.revisions_per_capsule))
    down_after = timedelta(seconds=settings.api.host_down_after)
    quotas = QuotaService(store, settings.quota.model_dump())
    hooks = settings.webhooks
    try:
        verify = tls_context(hooks.ca_file)
    except (OSError, ValueError) as exc:
        raise fail(f"webhooks.ca_file: {exc}") from exc
    webhooks = WebhookSupervisor(store, box, hooks, HttpPoster(
        hooks.timeout, hooks.max_response_bytes, resolve=system_resolver, verify=verify))
    capsules = CapsuleService(store, control, limits, host_down_after=down_after, policy=policy,
                              quotas=quotas, weigher=settings.api.scheduler_weigher,
                              metrics=metrics)
    services = Services(
        capsules=capsules,
        rollouts=RolloutService(store, control, capsules,
                                Placement(quotas, down_after, settings.api.scheduler_weigher,
                                          metrics=metrics)),
        containers=ContainerService(store, control.notify, ops_for, limits, down_after,
                                    policy=policy, quotas=quotas,
                                    weigher=settings.api.scheduler_weigher, metrics=metrics),
        hosts=HostService(store, down_after),
        images=ImageService(store, ops_for, down_after, secrets=box,
                            search_timeout=settings.api.registry_search_timeout,
                            policy=policy,
                            private_networks=settings.api.registry_search_private_networks),
        registries=RegistryService(store, box, policy),
        tokens=TokenService(store, on_revoke=local.forget),
        quotas=quotas,
        control=control,
        events=EventService(store, policy),
        outbox_hub=hub,
        subscriptions=SubscriptionService(store, box, policy, hooks, system_resolver,
                                          changed=webhooks.rescan),
        security_groups=SecurityGroupService(
            store, quotas, limits, settings.limits.security_groups_per_project, policy,
            notify=control.notify),
        capsule_services=CapsuleServices(store, policy, settings.services,
                                         changed=control.services_changed))
    app = create_app(settings, identity(settings, local), services, policy, metrics)
    return Api(app, control, HostMonitor(store, down_after), webhooks,
               RolloutSupervisor(store, settings.api.rollout_check_interval, control.notify),
               notifier, notifications(settings, store))


def notifications(settings: Settings, store: Store) -> Notifications | None:
    """The AMQP notification relay when [notifications] is enabled. Imported only then:
    oslo.messaging is a large import that an all-in-one without it does not pay for."""
    conf = settings.notifications
    if not conf.enabled:
        return None
    from capsuled.api.relay.amqp import Notifications

    try:
        made = Notifications(store, conf, conf.endpoint_url or f"http://{settings.listen}")
    except CapsuledError as exc:
        raise fail(exc.message) from exc
    LOG.info("publishing notifications (%s) to exchange %s, topics %s", conf.driver,
             conf.control_exchange, ", ".join(conf.topics))
    return made


def identity(settings: Settings, local: LocalIdentity) -> IdentityProvider:
    """The tokens this server issues, and Keystone's too when [keystone] is configured."""
    if settings.keystone is None:
        return local
    from capsuled.identity.chain import LocalThenKeystone
    from capsuled.identity.keystone import KeystoneIdentity

    LOG.info("validating tokens with Keystone at %s", settings.keystone.auth_url)
    return LocalThenKeystone(local, KeystoneIdentity.from_settings(settings.keystone))


def secret_box(settings: Settings) -> SecretBox:
    """What registry credentials are sealed with: api.registry_secret, or the state
    directory's key file (made on first start; one API process only)."""
    from capsuled.paths import private_dir
    from capsuled.store.crypto import SecretBox, key_file_secret

    secret = settings.api.registry_secret
    if secret is not None:
        return SecretBox(secret.get_secret_value())
    try:
        return SecretBox(key_file_secret(private_dir(settings.state_dir)))
    except (OSError, ValueError) as exc:
        raise fail(f"registry key: {exc}") from exc


def ops_keys(settings: Settings, store: Store) -> OpsKeys:
    from capsuled.api.services.agents import OpsKeys

    secret = settings.api.ops_secret
    return OpsKeys(store, secret.get_secret_value() if secret is not None else None)


def remote_ops(store: Store, settings: Settings) -> Callable[[str], ContainerOps]:
    """Host name → the ops client of that host's agent, from what it registered."""
    from capsuled.hostops.client import ops_for_hosts

    ca = settings.api.ops_ca_file
    return ops_for_hosts(ops_keys(settings, store).endpoint, ca_file=str(ca) if ca else None)


def build_agent(settings: Settings, channel: AgentServiceChannel, client: docker.APIClient,
                instance: str, ops_endpoint: tuple[str, str] | None = None,
                on_ops_key: Callable[[str], None] | None = None) -> Agent:
    """`ops_endpoint`: (URL, per-boot nonce) of this agent's ops endpoint; `on_ops_key`
    gets the key the API derived for it at each registration."""
    from capsuled.agent.image_ledger import ImageLedger
    from capsuled.agent.loop import Agent
    from capsuled.agent.pool_claims import ClaimBook
    from capsuled.paths import PRIVATE_IMAGES_FILE, SANDBOX_CLAIMS_FILE, private_dir
    from capsuled.drivers.network.docker import BridgeNetworks
    from capsuled.drivers.runtime.docker import DockerRuntime
    from capsuled.drivers.volume.docker import LocalVolumes

    networks = BridgeNetworks(client, settings.agent.network_pool, settings.agent.network_prefix)
    runtime = DockerRuntime(client, pids_limit=settings.limits.pids_limit)
    return Agent(channel, runtime, LocalVolumes(client), settings.agent, instance,
                 settings.docker.infra_image, networks=networks, ops_endpoint=ops_endpoint,
                 on_ops_key=on_ops_key, probe_driver=runtime,
                 image_ledger=ImageLedger(private_dir(settings.state_dir) / PRIVATE_IMAGES_FILE),
                 claims=ClaimBook(private_dir(settings.state_dir) / SANDBOX_CLAIMS_FILE),
                 overlay=host_net.overlay(settings, instance),
                 firewall=host_net.firewall(settings),
                 services=host_net.service_agent(settings, channel, client, instance))


def agent_token(conf: AgentSettings) -> str:
    """The agent's token from agent.token_file (when --token and CAPSULED_AGENT_TOKEN are
    not given): the unit files keep it out of command lines and environments."""
    if conf.token_file is None:
        raise fail("no agent token: give --token, set CAPSULED_AGENT_TOKEN or agent.token_file")
    try:
        token = conf.token_file.read_text().strip()
    except OSError as exc:
        raise fail(f"agent.token_file {conf.token_file}: {exc.strerror}") from exc
    if not token:
        raise fail(f"agent.token_file {conf.token_file} is empty")
    return token


def new_ops_key() -> str:
    return secrets.token_urlsafe(32)


def serve(app: Any, listen: str, log_level: str, on_exit: Callable[[], None],
          log_format: str, keep_alive: int, log_file: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then run `on_exit` and return (exit status 0)."""
    server = uvicorn.Server(api_server_config(app, listen, log_level, log_format, keep_alive,
                                              log_file))
    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and re-raises
    # the signal. Finding ours, the re-raise unwinds to the `finally` below and the process
    # exits 0 after `on_exit`, instead of being killed by the default action.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Everything built so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise cost list requests tens of milliseconds.
    gc.collect()
    gc.freeze()
    try:
        server.run()
    finally:
        on_exit()


def api_server_config(app: Any, listen: str, log_level: str, log_format: str,
                      keep_alive: int, log_file: Path | None = None) -> uvicorn.Config:
    host, _, port = listen.rpartition(":")
    # Watch streams (and follow-logs, terminals) do not end by themselves: a graceful
    # stop waits this long for them, then cancels them (clients resume with `since`).
    # keep_alive (api.keep_alive) replaces uvicorn's 5 s, which equals the OpenStack CLIs'
    # poll interval: they lost the race and read "Remote end closed connection".
    return uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), log_level=log_level,
                          access_log=False, timeout_graceful_shutdown=5,
                          timeout_keep_alive=keep_alive,
                          **uvicorn_logging(log_format, log_file))


def uvicorn_logging(log_format: str, log_file: Path | None = None) -> dict[str, Any]:
    """uvicorn.Config's logging arguments: with JSON logs or a log file, uvicorn configures
    no handlers of its own and its records reach the root logger's; otherwise its own."""
    return {"log_config": None} if log_format == "json" or log_file is not None else {}


def wait_for_signal(on_exit: Callable[[], None]) -> None:
    """Block (an agent has no HTTP server of its own in the foreground) until SIGTERM/SIGINT."""
    import threading

    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        done.wait()
    finally:
        on_exit()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
