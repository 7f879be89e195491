"""OpenStack notifications: the outbox's changes published with oslo.messaging's Notifier,
the library OpenStack services publish theirs with.

`Notifications` serves one durable outbox reader (`READER`) with `OutboxRelay`: a change
is published after it committed, in seq order (so each capsule's in order), at least
once, and a broker that is down or slow holds up only the relay's thread, never the API
or an agent; what could not be sent is sent when the broker is back. Each change becomes
one notification on every configured topic:

- event_type: the record's, in Zun/Nova style (capsule.create.start, capsule.update,
  capsule.delete.end, container.create.error, …); priority ERROR for `*.error`, else INFO;
- payload: the object's Zun body as it is when published (the newest microversion and the
  admin view: the bus is the operators'), whose `status` is the record's, and an `event`
  block: seq, type, reason, message, status, created_at. A change may be published twice
  (a send that failed after one of several topics, a replica that died before it moved
  its cursor): consumers dedupe on `event.seq`. An object gone by then (delete.end, a
  refused create) gets a minimal body from the record: uuid, name, project_id, labels;
- context: the record's project and the object's user.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from oslo_config import cfg
from oslo_context.context import RequestContext

from capsuled.api.microversions import MAX, ApiVersion
from capsuled.api.relay.worker import Change, DeliveryFailed, OutboxRelay
from capsuled.api.views import any_container_view, capsule_view, ts
from capsuled.config import NotificationSettings
from capsuled.domain.backoff import Backoff
from capsuled.errors import InvalidInput
from capsuled.store import capsules as capsule_repo
from capsuled.store import containers as container_repo
from capsuled.store.engine import Store

with warnings.catch_warnings():
    # oslo.messaging imports oslo.service, which imports eventlet, which warns that it is
    # deprecated. Nothing here runs on eventlet: the relay is a plain thread, and so is
    # the rabbit driver's heartbeat.
    warnings.simplefilter("ignore")
    import oslo_messaging
    from oslo_messaging import opts as oslo_opts

LOG = logging.getLogger(__name__)
READER = "notifications"  # the durable outbox reader: one cursor per deployment
NEWEST = ApiVersion(*MAX)
# Where oslo.messaging's notifier and its messaging drivers report a failed send.
_FAILURE_LOGGERS = ("oslo_messaging.notify.messaging", "oslo_messaging.notify.notifier")


class _SendFailures(logging.Filter):
    """oslo.messaging's Notifier never raises a failed send: its driver logs the exception,
    with the whole payload, and returns. Installed on the loggers it logs to, this filter
    turns such a record, in a thread that is `watching`, into the failure of that send (so
    the change is retried rather than lost), and keeps the payload (containers'
    environments) out of the log. Records of other threads pass untouched. The logger
    names are oslo.messaging's: tests/unit/api/test_amqp_notifications.py fails a send
    through the pinned version's driver to hold them true."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextmanager
    def watching(self) -> Iterator[list[str]]:
        failures: list[str] = []
        self._local.failures = failures
        try:
            yield failures
        finally:
            self._local.failures = None

    def filter(self, record: logging.LogRecord) -> bool:
        failures: list[str] | None = getattr(self._local, "failures", None)
        if failures is None or record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        failures.append(f"{type(exc).__name__}: {exc}" if exc is not None
                        else "the notifier reported a failed send")
        return False


class _ContextAsDict:
    """The request context on the wire as the dict consumers read (what Nova's context
    serializer does; with `user_id` beside oslo.context's `user`, as Nova's has it);
    payloads are plain JSON already."""

    def serialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity

    def deserialize_entity(self, ctxt: Any, entity: Any) -> Any:
        return entity

    def serialize_context(self, ctxt: RequestContext) -> dict[str, Any]:
        return {**ctxt.to_dict(), "user_id": ctxt.user_id}

    def deserialize_context(self, ctxt: dict[str, Any]) -> RequestContext:
        return RequestContext.from_dict(ctxt)


def make_transport(settings: NotificationSettings) -> Any:
    """An oslo.messaging notification transport on a configuration of its own (nothing is
    read from oslo config files or the global CONF). Connects lazily, at the first send."""
    conf = cfg.ConfigOpts()
    for group, options in oslo_opts.list_opts():
        conf.register_opts(options, group=group)
    conf(args=[], project="capsuled", default_config_files=[], default_config_dirs=[])
    conf.set_override("control_exchange", settings.control_exchange)
    # The rabbit driver's socket timeout on a publish (and its heartbeat): a broker that
    # accepts and then stalls fails the send after this, instead of holding the relay.
    conf.set_override("heartbeat_timeout_threshold", settings.send_timeout,
                      group="oslo_messaging_rabbit")
    try:
        return oslo_messaging.get_notification_transport(
            conf, url=settings.transport_url.get_secret_value())
    except (oslo_messaging.InvalidTransportURL, oslo_messaging.DriverLoadFailure) as exc:
        # Not the exception's text: it quotes the URL, password included.
        raise InvalidInput("notifications.transport_url: not a transport oslo.messaging can "
                           f"use ({type(exc).__name__}); expected e.g. "
                           "rabbit://USER:PASSWORD@HOST:5672/") from None


class AmqpSink:
    """Publishes changes (a relay's batch) as notifications; see the module's docstring."""

    def __init__(self, store: Store, settings: NotificationSettings, base_url: str,
                 transport: Any | None = None) -> None:
        self._store, self._base = store, base_url.rstrip("/")
        self._transport = transport if transport is not None else make_transport(settings)
        self._notifier = oslo_messaging.Notifier(
            self._transport, publisher_id=settings.publisher_id, driver=settings.driver,
            serializer=_ContextAsDict(), retry=settings.retry, topics=list(settings.topics))
        self._failures = _SendFailures()
        for name in _FAILURE_LOGGERS:
            logging.getLogger(name).addFilter(self._failures)

    def close(self) -> None:
        for name in _FAILURE_LOGGERS:
            logging.getLogger(name).removeFilter(self._failures)
        self._transport.cleanup()

    def deliver(self, changes: Sequence[Change]) -> None:
        bodies = self._bodies(changes)
        for sent, change in enumerate(changes):
            body = bodies.get((change.kind, change.uuid))
            with self._failures.watching() as failed:
                self._publish(change, payload(change, body),
                              body.get("user_id") if body is not None else None)
            if failed:
                raise DeliveryFailed(f"seq {change.seq} ({change.event_type}): {failed[0]}",
                                     delivered=sent)

    def _publish(self, change: Change, body: dict[str, Any], user_id: str | None) -> None:
        context = RequestContext(project_id=change.project_id, user_id=user_id,
                                 overwrite=False)  # not this thread's "current" context
        send = (self._notifier.error if change.event_type.endswith(".error")
                else self._notifier.info)
        send(context, change.event_type, body)

    def _bodies(self, changes: Sequence[Change]) -> dict[tuple[str, str], dict[str, Any]]:
        """The Zun bodies of the batch's objects that still exist, read at once."""
        wanted: dict[str, set[str]] = {"capsule": set(), "container": set()}
        for c in changes:
            wanted.setdefault(c.kind, set()).add(c.uuid)
        out: dict[tuple[str, str], dict[str, Any]] = {}
        with self._store.transaction() as s:
            for capsule in capsule_repo.by_uuids(s, wanted["capsule"]):
                out["capsule", capsule.uuid] = capsule_view(capsule, NEWEST, True, self._base)
            for container in container_repo.bare_by_uuids(s, wanted["container"]):
                out["container", container.uuid] = any_container_view(container, True,
                                                                       self._base)
        return out


def payload(change: Change, body: dict[str, Any] | None) -> dict[str, Any]:
    """What one notification carries: `body` (the object as it is now) or, when it is gone,
    what the record knows; the record's status, and the record itself as `event`."""
    out = dict(body) if body is not None else {
        "uuid": change.uuid, "name": change.name, "project_id": change.project_id,
        "labels": dict(change.labels)}
    if change.status is not None:
        out["status"] = change.status  # the status this change left it in
    out["event"] = {"seq": change.seq, "type": change.event_type, "reason": change.reason,
                    "message": change.message, "status": change.status,
                    "created_at": ts(change.created_at)}
    return out


class Notifications:
    """The notification relay of one API process: start with the API, stop with it."""

    def __init__(self, store: Store, settings: NotificationSettings, base_url: str) -> None:
        self.sink = AmqpSink(store, settings, base_url)
        self.relay = OutboxRelay(store, READER, self.sink, retry=Backoff(0.5, settings.retry_max))

    def start(self) -> None:
        self.relay.start()

    def stop(self) -> None:
        self.relay.stop()
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - stopping must not fail on a broker that is gone
            LOG.warning("closing the notification transport failed", exc_info=True)
