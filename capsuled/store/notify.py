"""Wake-ups across API replicas on PostgreSQL (LISTEN/NOTIFY).

Replicas sharing one database otherwise learn of each other's commits (a new assignment
for an agent that long-polls here, an agent's report for a client waiting on a capsule)
only when they re-read the store, every few hundred milliseconds. With PostgreSQL each
replica publishes a topic after such a commit and listens on one connection of its own;
a notice fires the same in-process signal a local commit would. Other engines keep the
re-reading: SQLite serves one process, MariaDB has nothing like it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine, text

LOG = logging.getLogger(__name__)
CHANNEL = "capsuled"


def supports_notify(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class PgNotifier:
    def __init__(self, engine: Engine, on_notice: Callable[[str], None]) -> None:
        self._engine = engine
        self._on_notice = on_notice
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, topic: str) -> None:
        """Tell every replica (this one too) that `topic` happened. Never raises: the
        others re-read the store anyway."""
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT pg_notify(:channel, :topic)"),
                             {"channel": CHANNEL, "topic": topic})
                conn.commit()
        except Exception as exc:  # noqa: BLE001 - a lost notice costs latency, not correctness
            LOG.warning("could not publish %s to the other API replicas: %s", topic, exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            pooled = None
            try:
                pooled = self._engine.raw_connection()
                raw = pooled.driver_connection  # psycopg's own connection
                pooled.detach()  # autocommit and LISTEN must not go back into the pool
                raw.autocommit = True  # type: ignore[union-attr]
                raw.execute(f"LISTEN {CHANNEL}")  # type: ignore[union-attr]
                delay = 0.5
                while not self._stop.is_set():
                    for notice in raw.notifies(timeout=1.0):  # type: ignore[union-attr]
                        self._on_notice(notice.payload)
            except Exception as exc:  # noqa: BLE001 - keep listening; waiters re-read meanwhile
                LOG.warning("listening for the other API replicas failed: %s; retrying", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if pooled is not None:
                    pooled.close()
