"""Settings: built once in the composition root (cli/server.py) and passed down.

Every field can be set in the configuration file (TOML, default
/etc/capsuled/capsuled.conf: top-level keys, then a section per group such as [agent]) and
as an environment variable with the CAPSULED_ prefix and `__` between group and field,
e.g. CAPSULED_AGENT__RELIST_INTERVAL=5. Precedence: options > environment > file >
defaults (config_file.py). Every field has a description: the sample file
(etc/capsuled.conf.sample, `capsuled config sample`) is generated from them.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, InitSettingsSource, NoDecode,
                               PydanticBaseSettingsSource, SettingsConfigDict, SettingsError)

from capsuled.config_file import COMPUTED, ConfigFileSource, config_path, explain, read_config
from capsuled.errors import InvalidConfig
from capsuled.logs import LogFormat
from capsuled.paths import DEFAULT_LISTEN, default_state_dir

DEFAULT_OPS_PORT = 9518


def api_urls(values: str | Sequence[str]) -> list[str]:
    """The API replicas' URLs from one comma-separated string or several (repeated --api,
    a list in the file), in order, without duplicates or trailing slashes. ValueError
    names the first that is not an http(s) URL with a host: found at start-up, not when
    the agent first fails over to it."""
    parts = [values] if isinstance(values, str) else list(values)
    urls: list[str] = []
    for part in parts:
        for raw in part.split(","):
            url = raw.strip().rstrip("/")
            if not url:
                continue
            try:
                split = urlsplit(url)
                _ = split.port  # raises on a port that is not a number
            except ValueError as exc:
                raise ValueError(f"{raw.strip()!r} is not a URL: {exc}") from None
            if split.scheme not in ("http", "https") or not split.hostname:
                raise ValueError(f"{raw.strip()!r} is not an http(s) URL with a host "
                                 "(e.g. http://api:9517)")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no API URL given")
    return urls


class DockerSettings(BaseModel):
    """The Docker Engine the agent drives (all-in-one and `capsuled agent`)."""

    host: str = Field("unix:///var/run/docker.sock", description="Docker Engine socket the agent drives")
    infra_image: str = Field("capsuled/infra:latest", description="Sandbox image (catatonit -P)")
    timeout: float = Field(60.0, description="Seconds before a Docker API call is abandoned")


class AgentSettings(BaseModel):
    """This host's agent: how it reconciles, what it offers the scheduler, its networks and
    its ops endpoint (all-in-one and `capsuled agent`)."""

    host_name: str = Field(default_factory=socket.gethostname, description="This host's name",
                           json_schema_extra={COMPUTED: "this machine's host name"})
    # Multi-host: what `capsuled agent` connects with when --api/--token are not given,
    # so that a unit file needs no secret on its command line.
    # NoDecode: the environment's value is the comma-separated list itself, not JSON.
    api_url: Annotated[list[str] | None, NoDecode] = Field(None, description=(
        "`capsuled agent`: the API replicas' URLs (e.g. http://api1:9517), as a list or "
        "one string with commas between them, when --api is not given; the agent fails "
        "over between them"))
    token_file: Path | None = Field(None, description="`capsuled agent`: file holding this "
                                    "host's agent token (keep it 0600), when neither --token "
                                    "nor CAPSULED_AGENT_TOKEN is given")
    availability_zone: str = Field("nova", description="Availability zone this host is in")
    relist_interval: float = Field(15.0, description="Seconds between full relists (repairs missed events)")
    workers: int = Field(16, description="Capsules reconciled in parallel")
    probe_concurrency: int = Field(8, ge=1, le=256, description=(
        "Container probes (exec, HTTP, TCP) run at once on this host; each is bounded by "
        "its timeoutSeconds"))
    backoff_initial: float = Field(1.0, description="First delay before retrying a failed capsule sync")
    backoff_max: float = Field(60.0, description="Longest delay between retries of a failed sync")
    stop_timeout: int = Field(5, description="Seconds a container gets to stop on delete before SIGKILL")
    heartbeat_interval: float = Field(10.0, gt=0, description="Seconds between heartbeats")
    cpu_allocation_ratio: float = Field(1.0, gt=0, le=64, description=(
        "CPUs this host offers the scheduler per physical core (as Nova's "
        "cpu_allocation_ratio): 1 claims real cores; 4 lets a 2-core host hold 80 containers "
        "of the default 0.1 CPU. Memory is never overcommitted"))
    labels: dict[str, str] = Field(default_factory=dict, description="Host labels for scheduling")
    sandbox_pool_size: int = Field(0, ge=0, le=256, description=(
        "Idle sandboxes kept ready on this host, all projects together, shared among the "
        "projects with a capsule here now or within sandbox_pool_idle_seconds; a new capsule "
        "without hostPorts then only makes its members. Its hostname is then the sandbox's "
        "container id, not its name, and its interface eth1 (docs/architecture.md). 0: no pool"))
    sandbox_pool_idle_seconds: float = Field(600.0, gt=0, le=86400, description=(
        "Seconds an idle pooled sandbox is kept (then replaced: it carries the /etc/hosts of "
        "when it was made), and a project keeps its share after its last capsule here went"))
    security_groups: bool = Field(True, description=(
        "Enforce security groups in this host's kernel (iptables, filter table: a chain per "
        "capsule or bare container, jumped to from DOCKER-USER); off: every container is "
        "reachable as Docker's networks allow"))
    publish_address: IPv4Address = Field(IPv4Address("0.0.0.0"), description=(
        "Host address published ports bind to (a template's hostPort, a bare container's "
        "exposed_ports); 0.0.0.0 is every IPv4 address of the host"))
    network_pool: IPv4Network = Field(IPv4Network("10.208.0.0/12"), description=(
        "Addresses for project networks, cut into /network_prefix blocks (one per project "
        "with containers on this host); blocks that overlap the host's routes are skipped"))
    # /22: 1,022 addresses per project and host, 1,024 projects in the default pool.
    network_prefix: int = Field(22, ge=8, le=29, description="Size of each project network")
    # Project networks across hosts (docs/networking.md): without an underlay address a
    # host's project networks are its own; with one, the control plane allocates their
    # addresses and the agent joins them to the other hosts' with VXLAN.
    underlay_address: IPv4Address | None = Field(None, description=(
        "This host's address that the other hosts send VXLAN traffic to (UDP 4789); set "
        "on every host to make project networks span hosts. Unset: host-local networks"))
    host_netns: Path | None = Field(None, description=(
        "Network namespace (a path such as /run/netns/NAME) the Docker Engine's bridges "
        "live in, when it is not the agent's own: VXLAN links, firewall rules and the DNS "
        "responder are made there"))
    overlay_mtu: int = Field(1450, ge=576, le=9000, description=(
        "MTU of project networks that span hosts: the underlay's MTU less VXLAN's 50 "
        "bytes (1450 on a 1500-byte network)"))
    # Multi-host only: where the API reaches this agent for logs, exec, attach, top, …
    # Loopback unless told otherwise: the endpoint runs commands in containers, so it is
    # exposed only on the address the operator names.
    ops_listen: str | None = Field(None, description="HOST:PORT the agent's ops endpoint "
                                   "listens on; default: the host and port of ops_url when "
                                   "set, else 127.0.0.1:9518 (this machine only)")
    ops_url: str | None = Field(None, description="URL the API replicas use to reach the ops "
                                "endpoint; default http(s)://<listen host>:<port>")
    ops_cert_file: Path | None = Field(None, description="PEM certificate (chain) the ops "
                                       "endpoint serves TLS with (with ops_key_file)")
    ops_key_file: Path | None = Field(None, description="PEM private key of ops_cert_file")

    @field_validator("api_url", mode="before")
    @classmethod
    def _split_api_urls(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) or (isinstance(value, Sequence)
                                      and all(isinstance(v, str) for v in value)):
            return api_urls(value)
        return value  # not strings: pydantic names what is wrong

    def ops_bind(self) -> tuple[str, int]:
        """(host, port) the ops endpoint listens on (see ops_listen)."""
        listen = self.ops_listen
        if listen is None and self.ops_url is not None:
            url = urlsplit(self.ops_url)
            if url.hostname:
                listen = f"{url.hostname}:{url.port or DEFAULT_OPS_PORT}"
        host, _, port = (listen or f"127.0.0.1:{DEFAULT_OPS_PORT}").rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    def ops_endpoint_url(self) -> str:
        """The URL the API reaches the ops endpoint at (see ops_url)."""
        if self.ops_url:
            return self.ops_url
        host, port = self.ops_bind()
        if host in ("0.0.0.0", "::"):
            host = self.host_name  # every address: the API reaches it by this host's name
        scheme = "https" if self.ops_cert_file else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    @model_validator(mode="after")
    def _ops_tls_is_whole(self) -> Self:
        if (self.ops_cert_file is None) != (self.ops_key_file is None):
            raise ValueError("ops_cert_file and ops_key_file go together")
        return self

    @model_validator(mode="after")
    def _prefix_fits_the_pool(self) -> Self:
        if self.network_prefix < self.network_pool.prefixlen:
            raise ValueError(f"network_prefix /{self.network_prefix} is larger than the "
                             f"network_pool {self.network_pool}")
        return self


class ApiSettings(BaseModel):
    """The API server (all-in-one and every `capsuled api` replica): limits on what one
    request may take, secrets, and how hosts are judged."""

    max_limit: int = Field(1000, description="Largest page a list returns")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted "
                                "(413 before it is read in full)")
    max_agent_body_bytes: int = Field(16 * 1_048_576, gt=0, description="Largest body an "
                                      "agent may send (its reports cover a whole host)")
    ops_ca_file: Path | None = Field(None, description="PEM CA bundle that agents' TLS ops "
                                     "endpoints (https:// ops URLs) are verified against; "
                                     "default: the system's CAs")
    ops_secret: SecretStr | None = Field(None, description="Secret agents' ops keys derive from "
                                         "(the same on every API replica); default: one kept in "
                                         "the database, which a copy of it then reveals")
    registry_secret: SecretStr | None = Field(None, description="Secret that registry "
                                              "credentials and webhook signing secrets are "
                                              "encrypted under (any text; the "
                                              "same on every API replica); default: a random "
                                              "key made in state_dir/registry.key (0600) on "
                                              "first start")
    registry_search_timeout: float = Field(5.0, gt=0, le=60, description="Seconds an image "
                                           "search waits for one registry's catalog")
    registry_search_private_networks: bool = Field(
        False, description="Let members' image searches reach registries (and their token "
        "services) at private-network addresses (RFC 1918, IPv6 ULA), for tenants whose "
        "registries live on the site's private network. This lets any member make the API "
        "replicas open connections to those networks (their databases and services "
        "included); loopback, link-local (cloud metadata), multicast, reserved and "
        "unspecified addresses stay refused. Registries made by an admin, and admins' "
        "searches, reach any address whatever this says")
    host_down_after: float = Field(60.0, gt=0, description="Seconds without a heartbeat before "
                                   "a host is down: not scheduled to, its capsules Unknown")
    scheduler_weigher: Literal["spread", "pack"] = Field(
        "spread", description="spread: emptiest host first; pack: fullest host that fits")
    token_cache_ttl: float = Field(
        2.0, ge=0, description="Seconds a replica remembers a valid local token; a revoke "
        "made through another replica takes effect within this (0: no cache)")
    agent_token_cache_ttl: float = Field(
        30.0, ge=0, description="Seconds a replica remembers a valid agent token (one bound "
        "to a host), keyed by the token's digest: agents authenticate every heartbeat and "
        "long poll. A revoked agent token is refused at once by the replica that revoked "
        "it and by the others within this (0: no cache, every request reads the database)")
    # Long-lived work (follow-log streams, terminals, waits) runs on thread pools of its
    # own, so that one tenant's streams never starve the requests of the others.
    streams_per_project: int = Field(10, ge=1, description="Follow-log streams and terminal "
                                     "sessions one project may have open at once on one API "
                                     "replica (429 beyond)")
    streams_total: int = Field(200, ge=1, description="Follow-log streams and terminal sessions "
                               "open at once on one API replica, all projects together (429 beyond)")
    wait_threads: int = Field(64, ge=1, description="Requests that wait on a container at once "
                              "(stop/reboot with a timeout, execute, other lifecycle actions); "
                              "more queue, without holding the threads ordinary requests use")
    exec_max_output: int = Field(1_048_576, ge=1, description="Bytes of output a non-interactive "
                                 "execute returns; reading stops there and the answer says "
                                 "output_truncated")
    exec_timeout: int = Field(60, ge=1, le=3600, description="Seconds a non-interactive execute "
                              "is waited for; then the answer says timed_out")
    watch_heartbeat: float = Field(15.0, gt=0, le=300, description="Seconds between "
                                   "heartbeat lines on an idle event watch stream")
    watch_poll: float = Field(1.0, gt=0, le=60, description="Seconds between a watch stream's "
                              "re-reads of the outbox when no local commit woke it (sees other "
                              "API replicas' changes)")
    metrics_cache: float = Field(2.0, ge=0, le=60, description="Seconds a scrape of /metrics "
                                 "reuses the store's counts (capsules and containers by status "
                                 "per project, the outbox and its readers): a storm of scrapes "
                                 "costs the database one set of queries per period")
    rollout_check_interval: float = Field(0.5, gt=0, le=30, description="Seconds between "
                                          "checks of capsule updates under way (deadline "
                                          "passed: roll back; ready for minReadySeconds: done)")
    archive_max_bytes: int = Field(64 * 1_048_576, ge=1, description="Largest tar get_archive "
                                   "returns (413 beyond; it is read as a stream and refused "
                                   "once past this)")
    keep_alive: int = Field(75, ge=1, le=3600, description="Seconds an idle client "
                            "connection stays open for its next request: well above the 5 s "
                            "the OpenStack CLIs' --wait polls sleep between requests on one "
                            "connection (at 5 s the server closes it just as they reuse it), "
                            "and above a load balancer's usual idle timeout (60 s)")


class OverlaySettings(BaseModel):
    """The control plane's address plan for project networks that span hosts (hosts with
    agent.underlay_address): one subnet per project, one block of it per host."""

    pool: IPv4Network = Field(IPv4Network("10.224.0.0/12"), description=(
        "Addresses for project networks across hosts; reserve it on every host (no route "
        "or other network may overlap it)"))
    project_prefix: int = Field(20, ge=8, le=29, description=(
        "Size of each project's subnet (the same on every host): /20 gives 256 projects "
        "in the default pool"))
    host_prefix: int = Field(24, ge=8, le=29, description=(
        "Size of each host's block of a project subnet: with /20 subnets, /24 blocks let "
        "a project span 16 hosts with 253 addresses on each"))

    @model_validator(mode="after")
    def _nested(self) -> Self:
        if not self.pool.prefixlen <= self.project_prefix <= self.host_prefix:
            raise ValueError("need pool prefix <= project_prefix <= host_prefix")
        return self


class LimitSettings(BaseModel):
    """What one tenant's request may ask for, and how much history is kept."""

    min_cpu: float = Field(0.1, description="Fewest CPUs a container may ask for")
    max_cpu: float = Field(16.0, description="Most CPUs a container may ask for")
    min_memory: int = Field(4, description="Least memory (MiB) a container may ask for")
    max_memory: int = Field(8192, description="Most memory (MiB) a container may ask for")
    max_containers: int = Field(24, description="Containers (init and app) one capsule may hold")
    # Zun's minimum: a host of 2 CPUs holds 20 containers that ask for nothing; raise it
    # on bigger hosts. It is a hard cap (NanoCpus), not a share.
    default_cpu: float = Field(0.1, gt=0, description="CPUs given to a container that asks "
                               "for none (stored in its spec, charged to quota, claimed on "
                               "its host like an explicit request)")
    default_memory: int = Field(256, gt=0, description="MiB given to a container that asks for none")
    min_host_port: int = Field(1024, ge=1, le=65536, description="Lowest host port a "
                               "template's hostPort may publish without host-level access "
                               "(container:create:privileged, admins): the privileged ports "
                               "stay the operator's")
    max_host_ports: int = Field(16, ge=0, le=1024, description="Host ports one capsule "
                                "(hostPort) or bare container (exposed_ports) may publish")
    max_security_groups: int = Field(8, ge=1, le=64, description="Security groups one capsule "
                                     "(spec.securityGroups) or bare container may be in")
    max_security_group_rules: int = Field(64, ge=1, le=1024, description="Rules one security "
                                          "group may hold")
    security_groups_per_project: int = Field(50, ge=0, description="Security groups one "
                                             "project may make (default, implicit, not counted)")
    pids_limit: int = Field(1024, ge=1, description="Processes each container (sandboxes too) "
                            "may have at once; read by the agent and applied to the containers "
                            "it creates")
    events_per_capsule: int = Field(200, ge=1, description="Newest events kept per capsule "
                                    "(older ones are pruned as new ones come)")
    event_max_age: float = Field(7 * 86400, gt=0, description="Seconds an event (or a finished "
                                 "container action) is kept")
    actions_per_container: int = Field(200, ge=1, description="Newest actions kept per container")
    revisions_per_capsule: int = Field(10, ge=2, le=1000, description="Newest revisions kept "
                                       "per capsule (what rollback can go back to; the current "
                                       "one and an update's starting point are always kept)")
    outbox_records: int = Field(100_000, ge=100, description="Newest change records kept "
                                "in the outbox (what watch streams resume from)")
    outbox_max_age: float = Field(7 * 86400, gt=0, description="Seconds a change record is "
                                  "kept in the outbox")
    outbox_reader_records: int = Field(1_000_000, ge=1000, description="Records kept for a "
                                       "durable reader (notifier, webhook) that has not read "
                                       "them yet, at most (beyond it the oldest are lost)")


class WebhookSettings(BaseModel):
    """Webhook subscriptions (/v1/subscriptions): how many, how they are retried, and the
    bounds of each delivery (a tenant chooses the URL: every wait has a limit)."""

    per_project: int = Field(10, ge=0, description="Subscriptions one project may have "
                             "(403 beyond; 0: none)")
    workers: int = Field(8, ge=1, le=256, description="Threads of one API replica that POST "
                         "webhooks, all subscriptions together")
    project_workers: int = Field(2, ge=1, description="Of those, how many one project's "
                                 "subscriptions may occupy at once (a slow receiver delays "
                                 "only its own project)")
    timeout: float = Field(10.0, gt=0, le=120, description="Seconds one delivery may take in "
                           "all (connect, send, answer); longer is a failed attempt")
    max_response_bytes: int = Field(65_536, ge=0, description="Bytes of a receiver's answer "
                                    "read (the rest is not read; only the status counts)")
    retry_initial: float = Field(1.0, gt=0, description="Seconds before the first retry of a "
                                 "failed delivery; doubled after each failure")
    retry_max: float = Field(300.0, gt=0, description="Longest wait between retries; also how "
                             "often a dead-lettering subscription tries its endpoint again")
    retry_window: float = Field(3600.0, gt=0, description="Seconds an event is retried before "
                                "it goes to the dead letters (a receiver down for less loses "
                                "nothing)")
    max_attempts: int = Field(100, ge=1, description="Failed attempts at one event after "
                              "which it goes to the dead letters even within retry_window")
    dead_letters: int = Field(1000, ge=1, description="Dead letters kept per subscription "
                              "(the oldest are dropped beyond, and counted)")
    poll: float = Field(1.0, gt=0, le=60, description="Seconds between looks at the outbox for "
                        "other API replicas' changes and for new or deleted subscriptions")
    ca_file: Path | None = Field(None, description="PEM CA bundle https receivers are "
                                 "verified against; default: the system's CAs")

    @model_validator(mode="after")
    def _retry_is_ordered(self) -> Self:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must be at least retry_initial")
        return self


class ServiceSettings(BaseModel):
    """Capsule services (/v1/capsule_services): virtual addresses the agents' load
    balancers (nftables NAT) spread over ready capsules; see README "Services"."""

    enabled: bool = Field(True, description="The agent programs this host's load balancer "
                          "(nftables; needs the nft command and CAP_NET_ADMIN); off: "
                          "services exist in the API but no host forwards their traffic")
    vip_range: IPv4Network = Field(IPv4Network("10.96.0.0/16"), description=(
        "Addresses services' VIPs are taken from (one per service, unique in the "
        "deployment); must overlap no project network (agent.network_pool, overlay.pool) "
        "and no network the capsules need to reach: traffic to it never leaves the host"))
    publish_min: int = Field(30000, ge=1, le=65535, description="Lowest host port a service "
                             "may publish (on every host)")
    publish_max: int = Field(32767, ge=1, le=65535, description="Highest host port a service "
                             "may publish; keep the range clear of ports the hosts' own "
                             "programs listen on (a published port takes the port over) "
                             "and of the kernel's ephemeral range (32768-60999)")
    per_project: int = Field(20, ge=0, description="Services one project may have (403 beyond)")
    max_ports: int = Field(16, ge=1, le=256, description="Ports one service may have")
    drain_timeout: float = Field(30.0, ge=0, le=3600, description="Seconds the agent waits at "
                                 "most, before it stops a serving capsule (delete, or its "
                                 "containers replaced), for the connections it holds to end")
    drain_grace: float = Field(1.0, ge=0, le=60, description="Seconds other hosts' agents "
                               "are given to stop sending a draining capsule new connections "
                               "once the API no longer lists it; the drain goes on until none "
                               "has come for this long")

    @model_validator(mode="after")
    def _publish_range_is_ordered(self) -> Self:
        if self.publish_max < self.publish_min:
            raise ValueError("publish_max must be at least publish_min")
        return self


class QuotaSettings(BaseModel):
    """Default per-project limits (-1: unlimited); admins override them per project."""

    capsules: float = Field(20, description="Capsules per project")
    containers: float = Field(40, description="Containers per project (bare ones and "
                              "capsules' members)")
    cpu: float = Field(20, description="CPUs per project")
    memory: float = Field(51200, description="Memory per project, in MiB")
    disk: float = Field(100, description="Disk per project, in GiB")


class KeystoneSettings(BaseModel):
    """OpenStack identity: tokens are validated by this Keystone as this service user."""

    auth_url: str = Field(description="Keystone v3 URL, e.g. http://keystone:5000/v3",
                          examples=["http://keystone:5000/v3"])
    username: str = Field("capsuled", description="Service user (needs the service or admin role)")
    password: SecretStr = Field(description="Service user's password", examples=["CHANGE-ME"])
    project_name: str = Field("service", description="Service user's project")
    user_domain_name: str = Field("Default", description="Domain of the service user")
    project_domain_name: str = Field("Default", description="Domain of the service user's "
                                     "project")
    interface: str = Field("public", description="Catalog interface of the identity endpoint")
    region_name: str | None = Field(None, description="Region of the identity endpoint "
                                    "in the catalog (unset: any)")
    timeout: float = Field(10.0, gt=0, description="Seconds before a Keystone call is abandoned")
    # Short: a token revoked in Keystone keeps working here until its cache entry ends.
    cache_ttl: float = Field(30.0, ge=0, description="Seconds a validated token is trusted; "
                             "a token revoked in Keystone is refused within this (0: no cache)")
    # OpenStack's is_admin_project idea: `admin` on any project (every project owner may
    # hold it) does not make a cloud administrator, only `admin` on this one does.
    admin_project_name: str = Field("admin", description="Project whose `admin` role makes a "
                                    "Capsuled admin; `admin` on any other project is a member")
    admin_project_domain_name: str = Field("Default", description="Domain of admin_project_name")
    admin_project_id: str | None = Field(None, description="The admin project by id (wins over "
                                         "admin_project_name when set)")
    cache_size: int = Field(10_000, ge=1, description="Tokens the cache holds")


class NotificationSettings(BaseModel):
    """OpenStack notifications: the outbox's changes published with oslo.messaging's
    notifier (api/relay/amqp.py) by every API process (a lease picks the one that sends)."""

    enabled: bool = Field(False, description="Publish every change (capsule.*, container.*) "
                          "as an OpenStack notification")
    # A URL carries the broker's password: a SecretStr stays out of reprs and logs.
    transport_url: SecretStr = Field(SecretStr("rabbit://guest:guest@127.0.0.1:5672/"),
                                     description="oslo.messaging transport URL of the broker")
    topics: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=lambda: ["notifications"], min_length=1,
        description="Topics each notification goes to (consumers read the queues "
        "<topic>.info and <topic>.error)")
    driver: Literal["messagingv2", "messaging", "log", "noop"] = Field(
        "messagingv2", description="oslo.messaging notification driver: messagingv2 (the "
        "2.0 envelope OpenStack services use), messaging (1.0, no envelope), log, noop")
    control_exchange: str = Field("capsuled", min_length=1, max_length=255, description=(
        "AMQP exchange the notifications are published to (oslo.messaging's "
        "control_exchange; Nova's is nova)"))
    publisher_id: str = Field(default_factory=lambda: f"capsuled.{socket.gethostname()}",
                              description="publisher_id of every notification",
                              json_schema_extra={COMPUTED:
                                                 "capsuled.<this machine's host name>"})
    # Both bound how long the relay's thread can be held by a broker that is down or slow:
    # a failed publish is retried later from the same change, never waited for.
    retry: int = Field(0, ge=0, le=10, description="Connection retries within one publish "
                       "before it counts as failed (the relay then retries it with back-off)")
    send_timeout: int = Field(10, ge=1, le=600, description="Seconds a publish may wait on "
                              "the broker (its socket timeout and AMQP heartbeat; connecting "
                              "is bounded at 5 s)")
    retry_max: float = Field(30.0, ge=0.5, le=600, description="Longest wait between two tries "
                             "of a failed publish (back-off from 0.5 s)")
    endpoint_url: str | None = Field(None, description="Base of the `links` in payloads "
                                     "(default: http://<listen>)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSULED_", env_nested_delimiter="__")

    config_file: Path | None = Field(None, description="The configuration file read (TOML); "
                                     "default /etc/capsuled/capsuled.conf when it exists")
    state_dir: Path = Field(default_factory=default_state_dir, description="State directory",
                            json_schema_extra={COMPUTED: "$STATE_DIRECTORY (systemd), "
                                               "else /var/lib/capsuled as root, else a "
                                               "per-user data directory"})
    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT the API listens on")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in state_dir")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Least severe log records written")
    log_format: LogFormat = Field("text", description="text: one plain line per record; json: "
                                  "one JSON object per line (time, level, logger, message, and "
                                  "request_id for what a request logged)")
    log_file: Path | None = Field(None, description="File the logs are appended to (reopened "
                                  "when logrotate moves it away); unset: stderr, which systemd "
                                  "sends to the journal")
    docker: DockerSettings = Field(default_factory=DockerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    overlay: OverlaySettings = Field(default_factory=OverlaySettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    services: ServiceSettings = Field(default_factory=ServiceSettings)
    keystone: KeystoneSettings | None = Field(
        None, description="Validate tokens with Keystone (CAPSULED_KEYSTONE__*); unset: standalone")
    notifications: NotificationSettings = Field(
        default_factory=NotificationSettings,
        description="OpenStack notifications on RabbitMQ (CAPSULED_NOTIFICATIONS__*); off by default")
    policy: dict[str, str] = Field(default_factory=dict,
                                   description="Policy rule overrides: name -> check string")
    policy_file: Path | None = Field(None, description="YAML file of policy rule overrides")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _vips_are_not_project_addresses(self) -> Self:
        for name, pool in (("agent.network_pool", self.agent.network_pool),
                           ("overlay.pool", self.overlay.pool)):
            if self.services.vip_range.overlaps(pool):
                raise ValueError(f"services.vip_range {self.services.vip_range} overlaps "
                                 f"{name} {pool}")
        return self

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file named by --config-file (an init value) or $CAPSULED_CONFIG_FILE, below
        # the environment; pydantic-settings deep-merges the sources, so a section's keys
        # may come from both.
        given = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        explicit = given.get("config_file")
        return init_settings, env_settings, ConfigFileSource(settings_cls, explicit)

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'capsuled.db'}"


def load_settings(**overrides: object) -> Settings:
    """The settings from the command line's `overrides`, the environment, the configuration
    file and the defaults; InvalidConfig names every bad key and where it came from."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        path = config_path(given.get("config_file"))  # type: ignore[arg-type]
        values = read_config(path, Settings) if path is not None else {}
        raise explain(exc, Settings, given, path, values) from None
    except SettingsError as exc:  # an environment variable that is not JSON where needed
        raise InvalidConfig(str(exc)) from None
