"""Declarative tables. The Alembic migrations in migrations/versions create the same schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String,
                        Table, Text, UniqueConstraint, false, func, select)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

# MariaDB's FLOAT is single precision and its DATETIME drops the fraction of a second:
# there, these are DOUBLE and DATETIME(6), as the other engines' FLOAT and DATETIME are.
Double = Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# MariaDB tables hold any Unicode and compare strings byte for byte, as SQLite and
# PostgreSQL do: names "web" and "Web" are two names, not a unique-key clash.
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def table(model: type[Base]) -> Table:
    """A model's Table, typed as one (Core statements built once over it)."""
    return cast(Table, model.__table__)


def utcnow() -> datetime:
    """Naive UTC, as Zun shows timestamps (str(datetime) without a zone)."""
    return datetime.utcnow().replace(tzinfo=None)  # noqa: DTZ003


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, float: Double, datetime: Timestamp}


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    roles: Mapped[list[Any]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    host: Mapped[str | None] = mapped_column(String(255))  # agent tokens: their one host


class HostBeat(Base):
    """A host's heartbeats: when it was last seen, and how many beats (registrations
    included) it sent. Apart from `hosts` because every create locks its host's row, or
    every host row (store/hosts.lock_hosts): written here, a batch of heartbeats never
    waits for one.
    No foreign key either: checking one would take a share lock on the host row, which
    waits for the same locks."""

    __tablename__ = "host_beats"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    beats: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    cpus: Mapped[float] = mapped_column(Double, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    availability_zone: Mapped[str] = mapped_column(String(255), default="nova")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    # Read-only, from host_beats (one primary-key lookup a row): usable in queries
    # (`Host.last_seen < cutoff`) as on loaded rows. None: never beaten.
    last_seen: Mapped[datetime | None] = column_property(
        select(HostBeat.last_seen).where(HostBeat.host == name)
        .correlate_except(HostBeat).scalar_subquery())
    report_count: Mapped[int] = column_property(
        select(func.coalesce(func.max(HostBeat.beats), 0)).where(HostBeat.host == name)
        .correlate_except(HostBeat).scalar_subquery())


class Capsule(Base):
    __tablename__ = "capsules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), index=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="Creating")
    status_reason: Mapped[str | None] = mapped_column(Text)
    cpu: Mapped[float] = mapped_column(Double, default=0)
    memory: Mapped[int] = mapped_column(Integer, default=0)
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    # Its agent is draining it (services send it no new connections) before it replaces
    # its containers; as the agent last reported (CapsuleReport.draining).
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    sandbox_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The revision its spec is (capsule_revisions), and while an update or rollback is
    # under way its state (domain.rollout.Rollout as JSON) and deadline (the rollout
    # supervisor's indexed query); both NULL otherwise.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    rollout: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    rollout_deadline: Mapped[datetime | None] = mapped_column(Timestamp, index=True)

    containers: Mapped[list[Container]] = relationship(
        back_populates="capsule", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Container.position")
    volumes: Mapped[list[Volume]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Volume.id")
    label_rows: Mapped[list[CapsuleLabel]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True)
    host_ports: Mapped[list[HostPort]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="HostPort.id")
    # Looked up by name within a project (show, delete, apply): see Container's.
    __table_args__ = (Index("ix_capsules_project_name", "project_id", "name"),)


class CapsuleRevision(Base):
    """One revision of a capsule's spec: the newest `limits.revisions_per_capsule` are kept
    (and always the current one and the one an update under way came from)."""

    __tablename__ = "capsule_revisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capsule_id: Mapped[int] = mapped_column(ForeignKey("capsules.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    change_cause: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # How its rollout ended: Ready, Failed or Superseded (NULL: under way, or not gated).
    outcome: Mapped[str | None] = mapped_column(String(20))
    outcome_reason: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("capsule_id", "revision", name="uq_capsule_revisions"),)


class CapsuleLabel(Base):
    """Labels again, one row each, so a label selector is a portable indexed query."""

    __tablename__ = "capsule_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capsule_id: Mapped[int] = mapped_column(ForeignKey("capsules.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))
    __table_args__ = (Index("ix_capsule_labels_kv", "key", "value"),)


class HostPort(Base):
    """A fixed host port a capsule publishes (a template's hostPort), claimed on its host
    with the capsule (store/host_ports.py) and released with its row. The unique key is
    the backstop of the scheduler's claim: a host hands out each (protocol, port) once."""

    __tablename__ = "host_ports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    protocol: Mapped[str] = mapped_column(String(3))  # TCP | UDP
    port: Mapped[int] = mapped_column(Integer)
    capsule_id: Mapped[int] = mapped_column(ForeignKey("capsules.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(String(255))
    __table_args__ = (UniqueConstraint("host", "protocol", "port",
                                       name="uq_host_ports_host_protocol_port"),)


class CapsuleService(Base):
    """A project's service (/v1/capsule_services): its VIP (unique in the deployment, from
    services.vip_range), label selector and ports (domain/services.py). Which capsules
    serve it is derived when asked, never stored."""

    __tablename__ = "capsule_services"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    ports: Mapped[list[Any]] = mapped_column(JSON)  # domain.services.ServicePort dicts
    vip: Mapped[str] = mapped_column(String(15), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    published: Mapped[list[ServicePublish]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ServicePublish.id")
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_capsule_services_project_name"),)


class ServicePublish(Base):
    """A host port a service publishes on every host, claimed with the service and
    released with it. Capsules' hostPorts (host_ports) and these exclude each other
    (store/capsule_services.py, hosts.capacities); the unique key is the backstop."""

    __tablename__ = "service_host_ports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("capsule_services.id", ondelete="CASCADE"),
                                            index=True)
    protocol: Mapped[str] = mapped_column(String(3))  # TCP | UDP
    port: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[str] = mapped_column(String(255))
    __table_args__ = (UniqueConstraint("protocol", "port", name="uq_service_host_ports_protocol_port"),)


class Container(Base):
    __tablename__ = "containers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    capsule_id: Mapped[int | None] = mapped_column(
        ForeignKey("capsules.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(10))  # init | app | bare
    position: Mapped[int] = mapped_column(Integer, default=0)
    name: Mapped[str] = mapped_column(String(255), index=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    image: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default="Creating")
    status_reason: Mapped[str | None] = mapped_column(Text)
    runtime_id: Mapped[str | None] = mapped_column(String(64))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[str | None] = mapped_column(String(40))
    finished_at: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Its addresses as the agent last saw them (a capsule's members: the sandbox's), a list
    # of domain.addresses.Address dicts; kept while it is stopped, as a port keeps its IP.
    addresses: Mapped[list[Any] | None] = mapped_column(JSON)
    # Its conditions as last reported: {"ready": bool | None, "health": Docker's health
    # status | None, "probes": {purpose: channel.ProbeResult dict}} (None: never reported).
    probe: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A bare container's published ports as the agent last saw them (domain.ports.
    # PublishedPort dicts: the host ports Docker picked for its exposed_ports); empty
    # while it is not running, when Docker holds no binding for it.
    published_ports: Mapped[list[Any] | None] = mapped_column(JSON)
    # Bare containers only (capsule children live in their capsule's spec and host):
    # their own desired state, placement and claim.
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    host: Mapped[str | None] = mapped_column(String(255), index=True)
    cpu: Mapped[float] = mapped_column(Double, default=0)
    memory: Mapped[int] = mapped_column(Integer, default=0)
    disk: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # GiB, own volumes
    desired_state: Mapped[str] = mapped_column(String(10), default="running")  # running|stopped|paused
    generation: Mapped[int] = mapped_column(Integer, default=1)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)

    # The registry (uuid) its image is pulled through, bare or a capsule's: a registry in
    # use cannot be deleted (as Zun's foreign key refuses it).
    registry_id: Mapped[str | None] = mapped_column(String(36), index=True)

    capsule: Mapped[Capsule | None] = relationship(back_populates="containers")
    # A name is looked up within a project (every bare create checks it is free): with
    # only the one-column indexes, SQLite may walk all of a big project's containers.
    __table_args__ = (UniqueConstraint("capsule_id", "name", name="uq_containers_capsule_name"),
                      Index("ix_containers_project_name", "project_id", "name"))


class Registry(Base):
    """A project's private registry. Username and password are encrypted (store/crypto.py)."""

    __tablename__ = "registries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    domain: Mapped[str] = mapped_column(String(255), index=True)
    username_enc: Mapped[str | None] = mapped_column(Text)
    password_enc: Mapped[str | None] = mapped_column(Text)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    # Domain set by someone allowed to reach loopback/private addresses (an admin): image
    # search may reach it there, checked against what the name resolves to at each search.
    allow_private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp, onupdate=utcnow)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_registries_project_name"),)


class SecurityGroup(Base):
    """A project's security group (/v1/security_groups): ingress rules (a list of
    domain.security_groups.Rule dicts) that the capsules and containers naming it in their
    spec's security_groups are guarded by. `default` is implicit and has no row."""

    __tablename__ = "security_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255), default="")
    rules: Mapped[list[Any]] = mapped_column(JSON)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(Timestamp)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_security_groups_project_name"),)


class Volume(Base):
    __tablename__ = "volumes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    capsule_id: Mapped[int] = mapped_column(ForeignKey("capsules.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(20))
    size: Mapped[int | None] = mapped_column(Integer)
    auto_remove: Mapped[bool] = mapped_column(Boolean, default=True)
    docker_volume: Mapped[str | None] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capsule_id: Mapped[int] = mapped_column(ForeignKey("capsules.id", ondelete="CASCADE"), index=True)
    container: Mapped[str | None] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(10))  # Normal | Warning
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # The same event again right after itself (a sync failing on every retry) is counted
    # on one row, as kubelet does: how often, and when last.
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Whose capsule it was: events are per tenant like everything else.
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255))


class ContainerAction(Base):
    """Zun's action history: one row per state-changing request on a container."""

    __tablename__ = "container_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    container_uuid: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    finish_time: Mapped[datetime | None] = mapped_column(Timestamp)
    message: Mapped[str | None] = mapped_column(String(255))  # None on success, "Error" on failure
    detail: Mapped[str | None] = mapped_column(Text)  # why it failed (admins see it as the traceback)


class Quota(Base):
    """A per-project override of a quota limit (absent: the default class's limit)."""

    __tablename__ = "quotas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    resource: Mapped[str] = mapped_column(String(64))
    hard_limit: Mapped[float] = mapped_column(Double)
    __table_args__ = (UniqueConstraint("project_id", "resource", name="uq_quotas_project_resource"),)


class QuotaClass(Base):
    """Named limit sets; the class `default` overrides the configured defaults."""

    __tablename__ = "quota_classes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_name: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(64))
    hard_limit: Mapped[float] = mapped_column(Double)
    __table_args__ = (UniqueConstraint("class_name", "resource", name="uq_quota_classes_name_resource"),)


class ProjectLock(Base):
    """One row per project, updated first by every quota-checked change so that changes
    of one project serialise on every engine (SQLite, PostgreSQL, MariaDB) while other
    projects go on in parallel."""

    __tablename__ = "project_locks"
    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


class ProjectUsage(Base):
    """What a project's capsules and bare containers claim, as a running total that the
    quota check reads instead of summing the rows (store/usage.py keeps it, in the
    transaction of every change of a claim; `usage.recount` is the truth it must equal)."""

    __tablename__ = "project_usage"
    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    capsules: Mapped[int] = mapped_column(Integer, default=0)
    containers: Mapped[int] = mapped_column(Integer, default=0)
    cpu: Mapped[float] = mapped_column(Double, default=0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)  # MiB
    disk: Mapped[int] = mapped_column(BigInteger, default=0)  # GiB


class HostUsage(Base):
    """What is claimed on a host (capsules and bare containers placed there), as a running
    total the scheduler reads (store/usage.py, like ProjectUsage)."""

    __tablename__ = "host_usage"
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    capsules: Mapped[int] = mapped_column(Integer, default=0)
    containers: Mapped[int] = mapped_column(Integer, default=0)
    cpu: Mapped[float] = mapped_column(Double, default=0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    disk: Mapped[int] = mapped_column(BigInteger, default=0)


class TerminalSession(Base):
    """A one-time websocket token (by digest) and the terminal it opens: a container's
    own (attach) or an exec session's. In the database, not in a replica's memory, so the
    URL works through whichever API replica the client reaches."""

    __tablename__ = "terminal_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    container_uuid: Mapped[str] = mapped_column(String(36))
    host: Mapped[str] = mapped_column(String(255))
    runtime_id: Mapped[str] = mapped_column(String(128))
    exec_id: Mapped[str | None] = mapped_column(String(128), index=True)
    expires_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    # A resize asked for before the websocket connected: applied on connect.
    pending_height: Mapped[int | None] = mapped_column(Integer)
    pending_width: Mapped[int | None] = mapped_column(Integer)


class CommittedImage(Base):
    """An image reference (repository:tag) a project made with `commit`: it is that
    project's alone, so no other project may commit over it or run it."""

    __tablename__ = "committed_images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(400), unique=True)  # normalised repository:tag
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    image_id: Mapped[str | None] = mapped_column(String(128))
    container_uuid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class OutboxRecord(Base):
    """One change, as its readers (watch streams; notifiers and webhooks later) see it.

    Written in the transaction that made the change (store/outbox.py), never updated, and
    numbered by `seq` from the one counter row: a record becomes visible only after every
    record with a smaller seq did, so a reader that remembers the last seq it saw misses
    nothing."""

    __tablename__ = "outbox"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(10))  # capsule | container
    object_uuid: Mapped[str] = mapped_column(String(36))
    object_name: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    event_type: Mapped[str] = mapped_column(String(64))  # capsule.create.start, container.update, ...
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    __table_args__ = (Index("ix_outbox_project_seq", "project_id", "seq"),
                      Index("ix_outbox_created_at", "created_at"))


class OutboxCounter(Base):
    """The one row (id 1) that numbers outbox records. Writers update it just before they
    commit, so they take its row lock last and hold it only through their commit: records
    commit in seq order on every engine, and a rolled-back change gives its numbers back."""

    __tablename__ = "outbox_counter"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Records up to here may have been pruned: a reader behind it has lost some (410).
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)


class OutboxReader(Base):
    """A durable reader of the outbox (the AMQP notifier, one webhook subscription): the
    last seq it handled, and which process holds its lease. Pruning keeps every record
    after the slowest reader's `seq` (up to limits.outbox_reader_records)."""

    __tablename__ = "outbox_readers"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)



class Subscription(Base):
    """A project's webhook (/v1/subscriptions): where its events are POSTed, which ones,
    the signing secret (sealed, store/crypto.py), and how delivery stands. Delivery reads
    the outbox as durable reader `webhook:<uuid>` (outbox_readers)."""

    __tablename__ = "subscriptions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(JSON)  # event patterns; empty: every event
    secret_enc: Mapped[str] = mapped_column(Text)
    # Made by someone allowed to reach loopback/private addresses (an admin): checked
    # again at each delivery, against what the URL's host resolves to then.
    allow_private: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # How delivery stands (domain/webhooks.Progress), and what it has done.
    state: Mapped[str] = mapped_column(String(20), default="active")
    retry_seq: Mapped[int | None] = mapped_column(BigInteger)
    retry_attempts: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None] = mapped_column(Timestamp)
    probe_after: Mapped[datetime | None] = mapped_column(Timestamp)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_delivered_seq: Mapped[int | None] = mapped_column(BigInteger)
    last_delivered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    delivered: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    dead_lettered: Mapped[int] = mapped_column(BigInteger, default=0)
    dead_letters_dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_subscriptions_project_name"),)


class DeadLetter(Base):
    """An event a subscription gave up delivering: the body as it was sent (the outbox may
    prune the record meanwhile), kept until redelivered or discarded; at most
    webhooks.dead_letters per subscription (the oldest go first)."""

    __tablename__ = "subscription_dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(10), default="dead")  # dead | queued (redeliver)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    __table_args__ = (UniqueConstraint("subscription_id", "seq", name="uq_dead_letters_sub_seq"),
                      Index("ix_dead_letters_state", "state"))

class OverlayProject(Base):
    """A project's network across hosts (domain/overlay.py): its segment id and subnet,
    allocated once by the control plane for the whole deployment."""

    __tablename__ = "overlay_projects"
    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    vni: Mapped[int] = mapped_column(Integer, unique=True)
    subnet: Mapped[str] = mapped_column(String(18), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class OverlayBlock(Base):
    """One host's block of a project's subnet: the only addresses that host hands out on
    the project's network, and its bridge's own address."""

    __tablename__ = "overlay_blocks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("overlay_projects.project_id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(255), index=True)
    block: Mapped[str] = mapped_column(String(18), unique=True)
    gateway: Mapped[str] = mapped_column(String(15))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    __table_args__ = (UniqueConstraint("project_id", "host", name="uq_overlay_blocks_project_host"),)


for _table in Base.metadata.tables.values():
    _table.dialect_kwargs.update(MYSQL_TABLE)
