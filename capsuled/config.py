"""Settings: built once in the composition root (cli/server.py) and passed down.

Every field can be set as an environment variable with the CAPSULED_ prefix and `__`
between group and field, e.g. CAPSULED_AGENT__RELIST_INTERVAL=5.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from capsuled.paths import DEFAULT_LISTEN, default_state_dir

DEFAULT_OPS_PORT = 9518


class DockerSettings(BaseModel):
    host: str = Field("unix:///var/run/docker.sock", description="Docker Engine socket the agent drives")
    infra_image: str = Field("capsuled/infra:latest", description="Sandbox image (catatonit -P)")
    timeout: float = Field(60.0, description="Seconds before a Docker API call is abandoned")


class AgentSettings(BaseModel):
    host_name: str = Field(default_factory=socket.gethostname, description="This host's name")
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
    network_pool: IPv4Network = Field(IPv4Network("10.208.0.0/12"), description=(
        "Addresses for project networks, cut into /network_prefix blocks (one per project "
        "with containers on this host); blocks that overlap the host's routes are skipped"))
    # /22: 1,022 addresses per project and host, 1,024 projects in the default pool.
    network_prefix: int = Field(22, ge=8, le=29, description="Size of each project network")
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
                                              "credentials are encrypted under (any text; the "
                                              "same on every API replica); default: a random "
                                              "key made in state_dir/registry.key (0600) on "
                                              "first start")
    registry_search_timeout: float = Field(5.0, gt=0, le=60, description="Seconds an image "
                                           "search waits for one registry's catalog")
    host_down_after: float = Field(60.0, gt=0, description="Seconds without a heartbeat before "
                                   "a host is down: not scheduled to, its capsules Unknown")
    scheduler_weigher: Literal["spread", "pack"] = Field(
        "spread", description="spread: emptiest host first; pack: fullest host that fits")
    token_cache_ttl: float = Field(
        2.0, ge=0, description="Seconds a replica remembers a valid local token; a revoke "
        "made through another replica takes effect within this (0: no cache)")
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
    rollout_check_interval: float = Field(0.5, gt=0, le=30, description="Seconds between "
                                          "checks of capsule updates under way (deadline "
                                          "passed: roll back; ready for minReadySeconds: done)")
    archive_max_bytes: int = Field(64 * 1_048_576, ge=1, description="Largest tar get_archive "
                                   "returns (413 beyond; it is read as a stream and refused "
                                   "once past this)")


class LimitSettings(BaseModel):
    min_cpu: float = 0.1
    max_cpu: float = 16.0
    min_memory: int = 4
    max_memory: int = 8192
    max_containers: int = 24
    # Zun's minimum: a host of 2 CPUs holds 20 containers that ask for nothing; raise it
    # on bigger hosts. It is a hard cap (NanoCpus), not a share.
    default_cpu: float = Field(0.1, gt=0, description="CPUs given to a container that asks "
                               "for none (stored in its spec, charged to quota, claimed on "
                               "its host like an explicit request)")
    default_memory: int = Field(256, gt=0, description="MiB given to a container that asks for none")
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


class QuotaSettings(BaseModel):
    """Default per-project limits (-1: unlimited); admins override them per project."""

    capsules: float = 20
    containers: float = 40
    cpu: float = 20
    memory: float = 51200  # MiB
    disk: float = 100  # GiB


class KeystoneSettings(BaseModel):
    """OpenStack identity: tokens are validated by this Keystone as this service user."""

    auth_url: str = Field(description="Keystone v3 URL, e.g. http://keystone:5000/v3")
    username: str = Field("capsuled", description="Service user (needs the service or admin role)")
    password: SecretStr = Field(description="Service user's password")
    project_name: str = Field("service", description="Service user's project")
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    interface: str = Field("public", description="Catalog interface of the identity endpoint")
    region_name: str | None = None
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSULED_", env_nested_delimiter="__")

    state_dir: Path = Field(default_factory=default_state_dir, description="State directory")
    listen: str = Field(DEFAULT_LISTEN, description="HOST:PORT the API listens on")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in state_dir")
    log_level: str = "info"
    docker: DockerSettings = Field(default_factory=DockerSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    keystone: KeystoneSettings | None = Field(
        None, description="Validate tokens with Keystone (CAPSULED_KEYSTONE__*); unset: standalone")
    policy: dict[str, str] = Field(default_factory=dict,
                                   description="Policy rule overrides: name -> check string")
    policy_file: Path | None = Field(None, description="YAML file of policy rule overrides")

    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'capsuled.db'}"
