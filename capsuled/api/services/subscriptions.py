"""Webhook subscriptions (/v1/subscriptions, an extension): a project's URLs that its
change records are POSTed to, signed, retried, dead-lettered (api/relay/webhooks.py).

The secret is sealed before it is stored and shown once, in the answer to the create
that generated or received it. Who may reach which address is decided here at create
(domain/egress.py, rule `subscription:create:private_address`) and again at every
delivery."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from capsuled.api.policy import Policy
from capsuled.api.relay.egress import Refused, Resolver, Unresolvable, addresses
from capsuled.config import WebhookSettings
from capsuled.domain import egress
from capsuled.domain import webhooks as rules
from capsuled.domain.template import short
from capsuled.errors import Forbidden, InvalidInput
from capsuled.identity.base import Principal
from capsuled.store import quotas
from capsuled.store import subscriptions as repo
from capsuled.store.capsules import UUID_RE
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from capsuled.store.tables import DeadLetter, Subscription

FIELDS = ("name", "url", "events", "secret")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}\Z")
PRIVATE_RULE = "subscription:create:private_address"


@dataclass(frozen=True)
class SubscriptionView:
    uuid: str
    name: str | None
    url: str
    events: list[str]
    project_id: str
    user_id: str
    created_at: datetime
    allow_private: bool
    state: str
    retry_seq: int | None
    retry_attempts: int
    failing_since: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    last_delivered_seq: int | None
    last_delivered_at: datetime | None
    position: int | None
    delivered: int
    failed_attempts: int
    dead_lettered: int
    dead_letters_dropped: int
    dead_letters: int
    secret: str | None = None  # only in the answer to a create


@dataclass(frozen=True)
class DeadLetterView:
    seq: int
    event_type: str
    attempts: int
    last_error: str | None
    state: str
    created_at: datetime
    event: Any


Views = list[SubscriptionView]
Letters = list[DeadLetterView]


class SubscriptionService:
    def __init__(self, store: Store, box: SecretBox, policy: Policy, settings: WebhookSettings,
                 resolve: Resolver, changed: Callable[[], None] = lambda: None) -> None:
        self._store, self._box, self._policy = store, box, policy
        self._settings, self._resolve = settings, resolve
        self._changed = changed  # wakes this replica's supervisor

    def create(self, who: Principal, body: dict[str, Any]) -> SubscriptionView:
        new = self._parse(who, body)
        with self._store.transaction() as s:
            quotas.ensure_lock_row(s, who.project_id)
        with self._store.transaction() as s:
            row = repo.create(s, self._box, new, self._settings.per_project)
            view = self._view(s, row, 0, secret=new.secret)
        self._changed()
        return view

    def list(self, who: Principal, all_projects: bool, limit: int) -> Views:
        scope: str | None = who.project_id
        if all_projects:
            self._policy.enforce("subscription:get_all_all_projects", who)
            scope = None
        with self._store.transaction() as s:
            rows = repo.list_(s, scope, limit)
            counts = repo.dead_letter_counts(s, rows)
            return [self._view(s, r, counts.get(r.id, 0)) for r in rows]

    def get(self, who: Principal, ident: str) -> SubscriptionView:
        with self._store.transaction() as s:
            row = repo.get(s, ident, self._wide(who))
            return self._view(s, row, repo.dead_letter_counts(s, [row]).get(row.id, 0))

    def delete(self, who: Principal, ident: str) -> None:
        with self._store.transaction() as s:
            repo.delete(s, repo.get(s, ident, self._wide(who)))
        self._changed()

    def dead_letters(self, who: Principal, ident: str, after: int | None,
                     limit: int) -> Letters:
        with self._store.transaction() as s:
            row = repo.get(s, ident, self._wide(who))
            return [_letter(d) for d in repo.dead_letters(s, row, after, limit)]

    def redeliver(self, who: Principal, ident: str, seq: int | None) -> int:
        with self._store.transaction() as s:
            queued = repo.queue_redelivery(s, repo.get(s, ident, self._wide(who)), seq)
        self._changed()
        return queued

    def discard(self, who: Principal, ident: str, seq: int | None) -> int:
        with self._store.transaction() as s:
            return repo.discard(s, repo.get(s, ident, self._wide(who)), seq)

    # -- helpers ---------------------------------------------------------------------------
    def _wide(self, who: Principal) -> str | None:
        """Admins reach any one subscription by uuid or name; members their project's."""
        return (None if self._policy.allows("subscription:get_all_all_projects", who)
                else who.project_id)

    def _parse(self, who: Principal, body: dict[str, Any]) -> repo.NewSubscription:
        """Every problem of the body at once; then whether this caller may reach the URL."""
        problems = [f"{_key(k)}: unknown field" for k in sorted(set(body) - set(FIELDS))]
        target: egress.Target | None = None
        url: object = None
        try:
            target = egress.parse_url(body.get("url"))
            url = body["url"]
        except InvalidInput as exc:
            problems += exc.problems
        try:
            events = rules.parse_events(body.get("events"))
        except InvalidInput as exc:
            problems += exc.problems
        name = body.get("name")
        if name is not None and not (isinstance(name, str) and _NAME.match(name)
                                     and not UUID_RE.match(name)):
            problems.append("name: must be 1 to 255 letters, digits, '_', '.' or '-', starting "
                            "with a letter or digit, and not look like a uuid")
        secret = body.get("secret")
        if secret is not None:
            problem = rules.secret_problem(secret)
            if problem:
                problems.append(problem)
        if problems:
            raise InvalidInput(problems)
        assert target is not None and isinstance(url, str)
        allow_private = self._policy.allows(PRIVATE_RULE, who)
        try:
            addresses(target, allow_private, self._resolve)
        except Unresolvable as exc:
            raise InvalidInput(f"url: {exc}") from None
        except Refused as exc:
            raise Forbidden(f"Policy doesn't allow {PRIVATE_RULE} to be performed: "
                            f"{exc}.") from None
        return repo.NewSubscription(
            project_id=who.project_id, user_id=who.user_id, name=name, url=url, events=events,
            secret=secret if isinstance(secret, str) else secrets.token_urlsafe(32),
            allow_private=allow_private)

    def _view(self, s: Session, row: Subscription, dead: int,
              secret: str | None = None) -> SubscriptionView:
        return SubscriptionView(
            uuid=row.uuid, name=row.name, url=row.url, events=list(row.events or []),
            project_id=row.project_id, user_id=row.user_id, created_at=row.created_at,
            allow_private=bool(row.allow_private), state=row.state, retry_seq=row.retry_seq,
            retry_attempts=row.retry_attempts, failing_since=row.failing_since,
            last_error=row.last_error, last_error_at=row.last_error_at,
            last_delivered_seq=row.last_delivered_seq, last_delivered_at=row.last_delivered_at,
            position=repo.position(s, row), delivered=row.delivered,
            failed_attempts=row.failed_attempts, dead_lettered=row.dead_lettered,
            dead_letters_dropped=row.dead_letters_dropped, dead_letters=dead, secret=secret)


def _key(key: str) -> str:
    """A tenant's key as a problem names it: as it is, unless long or unprintable."""
    return key if len(key) <= 64 and key.isprintable() else short(key)


def _letter(d: DeadLetter) -> DeadLetterView:
    try:
        event = json.loads(d.body)
    except ValueError:
        event = None
    return DeadLetterView(seq=d.seq, event_type=d.event_type, attempts=d.attempts,
                          last_error=d.last_error, state=d.state, created_at=d.created_at,
                          event=event)
