"""Engines and sessions for SQLite (embedded), PostgreSQL and MariaDB, and running migrations.

Every engine runs at READ COMMITTED or stronger, and every change that must see the
latest rows takes a row lock first (quotas.lock_project, hosts.capacities): on PostgreSQL
and MariaDB each later statement then reads what the previous holder committed; on
SQLite the first write takes the database's single write lock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from capsuled.errors import InvalidInput, Unavailable
from capsuled.paths import private_file
from capsuled.store import outbox, quotas, security_groups, usage

LOG = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6361_7073  # "caps": the advisory lock that serialises concurrent upgrades
SUPPORTED = ("sqlite", "postgresql", "mysql", "mariadb")
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql",
                   "mariadb": "mariadb+pymysql"}


def make_engine(url: str) -> Engine:
    """An engine for `url`: sqlite:///PATH, postgresql+psycopg://… or mysql+pymysql://…
    (MariaDB). Connection errors surface later, as Unavailable, on first use."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput("database URL: cannot parse it; expected sqlite:///PATH, "
                           "postgresql+psycopg://USER:PASSWORD@HOST/DB or "
                           "mysql+pymysql://USER:PASSWORD@HOST/DB") from exc
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise InvalidInput(f"database URL: {backend} is not supported; use sqlite:///PATH, "
                           "postgresql+psycopg://… or mysql+pymysql://…")
    try:
        if backend == "sqlite":
            _private_sqlite_files(parsed.database)
            engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                                   pool_size=20, max_overflow=20)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        if parsed.drivername in DEFAULT_DRIVERS:  # the drivers we ship, not SQLAlchemy's defaults
            parsed = parsed.set(drivername=DEFAULT_DRIVERS[parsed.drivername])
        if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
        # MariaDB defaults to REPEATABLE READ, whose snapshot would hide rows committed by
        # the transaction we waited for on a row lock; READ COMMITTED reads them, as PG does.
        # 20 kept, up to 30 at once: with 10 kept, a replica serving a thousand agents
        # opened and closed some twenty PostgreSQL connections a second (a process
        # forked for each), as its worker threads' transactions overlapped beyond ten.
        return create_engine(parsed, pool_pre_ping=True, pool_size=20, max_overflow=10,
                             pool_timeout=30, pool_recycle=1800, isolation_level="READ COMMITTED")
    except (NoSuchModuleError, ImportError) as exc:
        raise InvalidInput(f"database URL: no driver for {parsed.drivername} ({exc}); use "
                           "postgresql+psycopg://… or mysql+pymysql://…") from exc


def _private_sqlite_files(database: str | None) -> None:
    """The database file 0600 before SQLite first opens it (SQLite gives its -wal, -shm
    and -journal files the database's mode), and those of an older install tightened."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():  # else SQLite fails on first use, with its own message
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        private_file(Path(database + suffix))


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparsable database URL>"
    return parsed.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the agent's reports write; foreign keys for the cascades.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@dataclass(frozen=True)
class Upgraded:
    """What `upgrade` did: the schema revision before (None: empty database) and after."""

    url: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade(engine: Engine) -> Upgraded:
    """Bring the schema to the newest migration (idempotent). API servers starting at
    once on one PostgreSQL or MariaDB database take turns on an advisory lock."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.connect() as conn, _migration_lock(conn), conn.begin():
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise unavailable(engine.url, exc) from exc
    return Upgraded(safe_url(engine.url), before, after)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this version's migrations."""

    current: str | None   # None: no schema yet (an empty database)
    head: str
    behind: int           # migrations this version would run (0: up to date)
    known: bool           # False: a revision this version has never heard of (a newer one)


def schema_status(engine: Engine) -> SchemaStatus:
    """Read the database's revision (connecting, never changing anything)."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    assert head is not None  # the package ships its migrations
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise unavailable(engine.url, exc) from exc
    chain = [r.revision for r in script.walk_revisions("base", "heads")]  # newest first
    if current is None:
        return SchemaStatus(None, head, len(chain), True)
    if current not in chain:
        return SchemaStatus(current, head, 0, False)
    return SchemaStatus(current, head, chain.index(current), True)


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the migration lock, at the session's level, until the upgrade's transaction
    has committed. MariaDB commits each DDL statement at once but the last
    `alembic_version` update only with the transaction: a lock released before that
    commit let the next server read the previous revision and run the newest migration
    a second time."""
    name = conn.dialect.name
    if name == "postgresql":
        take = text("SELECT pg_advisory_lock(:k)").bindparams(k=MIGRATION_LOCK)
        release = text("SELECT pg_advisory_unlock(:k)").bindparams(k=MIGRATION_LOCK)
    elif name in ("mysql", "mariadb"):
        take = text("SELECT GET_LOCK('capsuled.migrate', 300)")
        release = text("SELECT RELEASE_LOCK('capsuled.migrate')")
    else:
        yield
        return
    got = conn.execute(take).scalar()
    conn.commit()  # the lock is the session's; the upgrade opens its own transaction
    if name != "postgresql" and got != 1:
        raise Unavailable("database: another server has been migrating it for 5 minutes")
    try:
        yield
    finally:
        try:
            conn.execute(release)
            conn.commit()
        except DBAPIError as exc:  # a lost connection has dropped its locks with it
            LOG.warning("releasing the migration lock: %s", exc.orig)


def unavailable(url: URL, exc: DBAPIError) -> Unavailable:
    return Unavailable(f"database {safe_url(url)} unavailable: {exc.orig}")


def _rollback(session: Session) -> None:
    """Roll back, unless the database has dropped the connection: then the server ended
    the transaction with it, and the caller's own error (a 409, a 503) is the answer, not
    the rollback's (which was a 500 when the database died under a refused update)."""
    try:
        session.rollback()
    except OperationalError as exc:
        LOG.warning("rollback on a lost database connection: %s", exc.orig)


class Store:
    """A session factory; `transaction()` commits on success and rolls back on error."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # Called (from the committing thread) with the newest outbox seq after a commit
        # that wrote outbox records: the API's watchers subscribe here.
        self.outbox_listeners: list[Callable[[int], None]] = []
        # Claims' running totals first: their rows are written just before the outbox's
        # counter, which must be the last lock a transaction takes.
        usage.install(self._sessions)
        quotas.install(self._sessions)
        outbox.install(self._sessions, self._outbox_committed)
        security_groups.install(self._sessions)  # agents woken after a membership change

    def _outbox_committed(self, newest: int) -> None:
        for listener in list(self.outbox_listeners):
            listener(newest)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:  # also deadlocks and lock wait timeouts: retry
            _rollback(session)
            raise unavailable(self.engine.url, exc) from exc
        except PoolTimeout as exc:
            _rollback(session)
            raise Unavailable(f"database {safe_url(self.engine.url)} busy: no free "
                              "connection in the pool") from exc
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()
