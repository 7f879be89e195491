"""Container use cases: bare containers (create, lifecycle actions, update, delete),
containers added to capsules (`run --capsule`), and the reads every container allows
(logs, exec, top, stats, archives).

Desired state (running / stopped / paused, cpu and memory, existence) goes to the store
for the agent to converge; imperative calls (stop now, kill with this signal, read the
logs) go to the container's host through `ContainerOps`, after the desired state that
keeps the agent from undoing them has been committed.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import io
import logging
import posixpath
import re
import shlex
import secrets
import tarfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from capsuled.api.policy import Policy
from capsuled.api.metrics import ApiMetrics
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import Delta, QuotaService
from capsuled.config import QuotaSettings
from capsuled.domain.container_request import parse_container_request
from capsuled.domain.host_access import bare_spec_asks, request_asks
from capsuled.domain.image_ref import normalise, parse_commit_target
from capsuled.domain.status import Status
from capsuled.domain.resources import bare_with_default_limits
from capsuled.domain.spec import BareSpec, CapsuleSpec
from capsuled.domain.template import Limits, short, whole_number
from capsuled.errors import (CapsuledError, Conflict, InvalidInput,
                             NotAuthenticated, OverQuota, Unavailable)
from capsuled.hostops.protocol import (ARCHIVE_MAX_BYTES, EXEC_MAX_OUTPUT, EXEC_TIMEOUT,
                                       ContainerOps, ExecResult, ImageInfo, RawStream)
from capsuled.identity.base import Principal
from capsuled.scheduler.select import Request, Weigher
from capsuled.store import capsules as capsule_repo
from capsuled.store import committed_images, outbox
from capsuled.store import containers as repo
from capsuled.store import registries as registry_repo
from capsuled.store import security_groups as sg_repo
from capsuled.store import terminal_sessions as terminals
from capsuled.store.capsules import Page
from capsuled.store.engine import Store
from capsuled.store.tables import Container, ContainerAction, utcnow
from capsuled.store.terminal_sessions import Terminal

MiB = 1024 * 1024
LOG = logging.getLogger(__name__)

# Zun's valid states per action (zun-spec §4).
VALID: dict[str, tuple[str, ...]] = {
    "start": ("Created", "Stopped", "Error"),
    "stop": ("Running", "Paused", "Restarting"),
    "reboot": ("Created", "Running", "Stopped", "Error"),
    "pause": ("Running",),
    "unpause": ("Paused",),
    "kill": ("Running",),
    "delete": ("Created", "Error", "Stopped", "Deleted", "Dead"),
    "delete_stop": ("Running", "Created", "Error", "Stopped", "Deleted", "Dead", "Paused",
                    "Restarting"),
    "update": ("Created", "Running", "Stopped", "Paused"),
    "logs": ("Created", "Error", "Paused", "Running", "Stopped", "Unknown", "Restarting"),
    "execute": ("Running",),
    "top": ("Running",),
    "stats": ("Running",),
    "archive": ("Created", "Paused", "Running", "Stopped"),
    "rebuild": ("Created", "Running", "Stopped", "Error"),
    "commit": ("Running", "Stopped", "Paused"),
    "resize_container": ("Created", "Running", "Stopped", "Paused"),
}
# Lifecycle actions a capsule's container does not take on its own: it lives and dies
# with its capsule (the seed's rule).
CAPSULE_OWNED = {"delete", "delete_stop", "start", "stop", "reboot", "pause", "unpause", "kill",
                 "rename", "rebuild"}


SESSION_TTL = timedelta(seconds=60)  # how long a websocket URL stays usable


@dataclass(frozen=True)
class LogRequest:
    stdout: bool = True
    stderr: bool = True
    timestamps: bool = False
    tail: int | None = None
    since: int | None = None


class ContainerService:
    def __init__(self, store: Store, notify: Callable[[], None], ops_for: Callable[[str], ContainerOps],
                 limits: Limits, host_down_after: timedelta = timedelta(seconds=180),
                 policy: Policy | None = None, quotas: QuotaService | None = None,
                 weigher: Weigher = "spread", metrics: ApiMetrics | None = None) -> None:
        self._store = store
        self._policy = policy or Policy()
        quotas = quotas or QuotaService(store, QuotaSettings().model_dump())
        self._placement = Placement(quotas, host_down_after, weigher, metrics)
        self._notify = notify
        self._ops_for = ops_for
        self._limits = limits
        self._down_after = host_down_after

    def shows_host(self, who: Principal) -> bool:
        return self._policy.allows("container:get_one:host", who)

    def _scope(self, who: Principal, asked: bool = True,
               wide_rule: str = "container:get_one_all_projects") -> str | None:
        """The project a query is limited to. Those allowed `wide_rule` (admins) reach any
        one container; lists stay in the caller's project unless asked, as for capsules."""
        return None if asked and self._policy.allows(wide_rule, who) else who.project_id

    # -- create / read ----------------------------------------------------------------------
    def create(self, who: Principal, body: dict[str, Any], run: bool, request_id: str,
               command_as_string: bool = False) -> Container:
        self._policy.check_host_access(who, request_asks(body))
        spec = parse_container_request(body, self._limits, command_as_string)
        self._policy.check_host_access(who, bare_spec_asks(spec))
        spec = bare_with_default_limits(spec, self._limits)
        if spec.host is not None:
            self._policy.enforce("container:create:requested_destination", who)
        if spec.capsule is not None:
            return self._add_to_capsule(who, spec, request_id)
        try:
            row = self._create_bare(who, spec, run, request_id)
        except OverQuota as exc:
            with self._store.transaction() as s:  # the refusal is a change record too
                outbox.refused(s, project_id=who.project_id, kind="container",
                               name=spec.container.name, message=exc.message)
            raise
        self._notify()
        # As written (nothing but its agent, whose report is newer than this answer, has
        # changed it since): a read less.
        return row

    def _create_bare(self, who: Principal, asked: BareSpec, run: bool,
                     request_id: str) -> Container:
        def work(s: Session) -> Container:
            # The project's lock first, so every read below is of what was committed before
            # it (on SQLite a read first would make the later write fail on a busy database).
            self._placement.lock(s, who.project_id)
            spec = asked.model_copy(update={
                "container": registry_repo.resolve(s, who.project_id, asked.container)})
            self._check_image(s, spec.container.image, who.project_id)
            self._placement.check_quota(s, who.project_id, Delta(
                containers=1, cpu=spec.container.cpu or 0.0, memory=spec.container.memory or 0,
                disk=spec.disk))
            # Under the project's lock: a group cannot be deleted while this create runs.
            sg_repo.check_names(s, who.project_id, spec.security_groups, "security_groups")
            name = spec.container.name or _default_name(s)
            if s.query(Container).filter_by(role=repo.BARE, name=name,
                                            project_id=who.project_id).first() is not None:
                raise Conflict(f"A container named {name} already exists in this project.")
            req = Request(cpu=spec.container.cpu or 0.0, memory=spec.container.memory or 0,
                          availability_zone=spec.availability_zone, disk=spec.disk,
                          labels=spec.node_selector)
            placed = self._placement.choose(s, req, f"container {name}", who.project_id,
                                            only_host=spec.host)
            row = repo.create_bare(s, spec, name, who.project_id, who.user_id, placed.host,
                                   "running" if run else "stopped", placed.status, placed.reason)
            # Why no host fits, host by host, goes to the admin-only action detail.
            repo.record_action(s, row.uuid, "create", request_id, who.project_id, who.user_id,
                               finished=placed.host is None, error=placed.detail)
            _ = row.capsule  # None (no query): the view reads it once the session is closed
            return row
        return self._placement.run(self._store, work)

    def _add_to_capsule(self, who: Principal, spec: BareSpec, request_id: str) -> Container:
        assert spec.capsule is not None
        with self._store.transaction() as s:
            capsule = capsule_repo.get_capsule(s, spec.capsule, self._scope(who))
            project = capsule.project_id
            self._check_image(s, spec.container.image, project)
        with self._store.transaction() as s:
            self._placement.admit(s, project, Delta(
                containers=1, cpu=spec.container.cpu or 0.0, memory=spec.container.memory or 0))
            capsule = capsule_repo.get_capsule(s, spec.capsule, self._scope(who))
            if capsule.host is None:
                raise Conflict(f"Capsule {spec.capsule} has no host ({capsule.status}); "
                               "a container cannot join it.")
            self._placement.ensure_room(s, capsule.host, "capsule's", spec.container.cpu or 0.0,
                                 spec.container.memory or 0)
            name = spec.container.name or _default_name(s)
            member = registry_repo.resolve(s, project, spec.container)
            row = repo.add_member(s, capsule, member.model_copy(update={"name": name}),
                                  who.user_id)
            repo.record_action(s, row.uuid, "create", request_id, who.project_id, who.user_id)
            uuid = row.uuid
        self._notify()
        return self.get(who, uuid)

    def get(self, who: Principal, ident: str, capsule: str | None = None,
            all_projects: bool = False) -> Container:
        with self._store.transaction() as s:
            owner = capsule_repo.get_capsule(s, capsule, self._scope(who)) if capsule else None
            row = repo.get_container(s, ident, self._scope(who), owner)
            _ = row.capsule
            return row

    def list(self, who: Principal, page: Page, all_projects: bool, capsule: str | None,
             filters: dict[str, str]) -> list[Container]:
        if all_projects:
            self._policy.enforce("container:get_all_all_projects", who)
        with self._store.transaction() as s:
            owner = capsule_repo.get_capsule(s, capsule, self._scope(who)) if capsule else None
            return repo.list_containers(s, self._scope(who, all_projects, "container:get_all_all_projects"), page, owner, filters)

    # -- desired-state changes ----------------------------------------------------------------
    def delete(self, who: Principal, ident: str, force: bool, stop: bool, request_id: str,
               all_projects: bool = False) -> None:
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            self._check(row, "delete_stop" if stop else "delete", force=force)
            if force and capsule_repo.host_gone(s, row.host, utcnow(), self._down_after):
                # Unplaced, or nothing but its own agent could ever remove it: the row goes
                # now (quota released); a returning agent removes the container as an orphan.
                repo.force_delete(s, row)
                return
            if force:
                self._policy.enforce("container:delete_force", who, why=(
                    "force: the container's host is up; delete it without force"))
            repo.mark_deleting(s, row)
            repo.record_action(s, row.uuid, "delete", request_id, who.project_id, who.user_id,
                               finished=row.host is None)
        self._notify()

    def action(self, who: Principal, ident: str, action: str, request_id: str,
               timeout: int | None = None, signal: str | None = None) -> None:
        """start, stop, reboot, pause, unpause, kill: desired state first, then the host."""
        desired = {"start": "running", "stop": "stopped", "reboot": "running",
                   "pause": "paused", "unpause": "running", "kill": None}[action]
        sig = _signal(signal) if action == "kill" else None  # a bad one: 400 before anything
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            self._check(row, action)
            if desired is not None and desired != row.desired_state:
                repo.set_desired(s, row, desired)
            host, runtime_id, uuid = row.host, row.runtime_id, row.uuid
        self._notify()
        error: str | None = None
        try:
            ops, _, placed_id = self._ops(host, runtime_id, ident)
            if action == "start":
                ops.start(placed_id)
            elif action == "stop":
                ops.stop(placed_id, _timeout(timeout))
            elif action == "reboot":
                ops.restart(placed_id, _timeout(timeout))
            elif action == "pause":
                _unless_already(ops.pause, placed_id, "is already paused")
            elif action == "unpause":
                _unless_already(ops.unpause, placed_id, "is not paused")
            else:
                ops.kill(placed_id, sig)
        except Exception as exc:
            error = getattr(exc, "message", str(exc))
            raise
        finally:
            with self._store.transaction() as s:
                repo.record_action(s, uuid, action, request_id, who.project_id, who.user_id,
                                   finished=True, error=error)

    def update(self, who: Principal, ident: str, body: dict[str, Any], capsule: str | None) -> Container:
        unknown = sorted(set(body) - {"cpu", "memory", "name", "auto_heal", "capsule"})
        if unknown:
            raise InvalidInput([f"{k}: cannot be updated" for k in unknown])
        changes = {k: body[k] for k in ("cpu", "memory", "name") if body.get(k) is not None}
        if not changes:
            raise InvalidInput("body: give at least one of cpu, memory, name")
        probe = parse_container_request({"image": "x", **{k: v for k, v in changes.items()}},
                                        self._limits)
        with self._store.transaction() as s:
            owner = capsule_repo.get_capsule(s, capsule, self._scope(who)) if capsule else None
            project = repo.get_container(s, ident, self._scope(who), owner).project_id
        with self._store.transaction() as s:
            if {"cpu", "memory"} & changes.keys():
                self._placement.lock(s, project)
            owner = capsule_repo.get_capsule(s, capsule, self._scope(who)) if capsule else None
            row = repo.get_container(s, ident, self._scope(who), owner)
            if row.capsule is not None:
                if capsule is None:
                    raise Conflict(f"Container {ident} belongs to capsule "
                                   f"{row.capsule.name or row.capsule.uuid}; name it with "
                                   "capsule=<capsule> to update the container.")
                named = capsule_repo.get_capsule(s, capsule, self._scope(who))
                if named.id != row.capsule.id:
                    raise InvalidInput(f"capsule: container {ident} does not belong to {capsule}")
                if "name" in changes:
                    raise Conflict(f"Container {ident} belongs to capsule "
                                   f"{row.capsule.name or row.capsule.uuid}; its name is part "
                                   "of the capsule's template.")
            self._check(row, "update")
            if "name" in changes and changes["name"] != row.name:
                self._rename(s, who, row, probe.container.name)
            if {"cpu", "memory"} & changes.keys():
                self._resize(s, who, row, probe.container.cpu if "cpu" in changes else None,
                             probe.container.memory if "memory" in changes else None)
            uuid = row.uuid
        self._notify()
        return self.get(who, uuid)

    def rename(self, who: Principal, ident: str, name: Any) -> Container:
        if not isinstance(name, str):
            raise InvalidInput("name: is required")
        probe = parse_container_request({"image": "x", "name": name}, self._limits)
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            self._check(row, "rename")
            self._rename(s, who, row, probe.container.name)
            uuid = row.uuid
        return self.get(who, uuid)

    def _rename(self, s: Any, who: Principal, row: Container, name: str) -> None:
        clash = s.query(Container).filter_by(role=repo.BARE, name=name,
                                             project_id=row.project_id).first()
        if clash is not None and clash.id != row.id:
            raise Conflict(f"A container named {name} already exists in this project.")
        row.name = name
        row.updated_at = utcnow()

    def _resize(self, s: Any, who: Principal, row: Container, cpu: float | None,
                memory: int | None) -> None:
        old_cpu, old_memory = _claim(row)
        quota = Delta(cpu=max(0.0, (cpu if cpu is not None else old_cpu) - old_cpu),
                      memory=max(0, (memory if memory is not None else old_memory) - old_memory))
        if row.capsule is None:
            spec = BareSpec.model_validate(row.spec)
            c = spec.container.model_copy(update={
                k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None})
            self._placement.grow(s, row.project_id, quota, row.host, "container's",
                                 (c.cpu or 0.0) - old_cpu, (c.memory or 0) - old_memory)
            repo.set_desired(s, row, spec=spec.model_copy(update={"container": c}))
            return
        capsule = row.capsule
        cspec = CapsuleSpec.model_validate(capsule.spec)
        apps = [c.model_copy(update={k: v for k, v in (("cpu", cpu), ("memory", memory))
                                     if v is not None}) if c.uuid == row.uuid else c
                for c in cspec.containers]
        new = cspec.model_copy(update={"containers": apps})
        self._placement.grow(s, row.project_id, quota, capsule.host, "capsule's",
                             new.total_cpu() - float(capsule.cpu),
                             new.total_memory() - int(capsule.memory))
        capsule_repo.change_spec(s, capsule, new, user_id=who.user_id,
                                 cause=f"resized container {row.name}")

    # -- reads through the host ------------------------------------------------------------
    def logs(self, who: Principal, ident: str, req: LogRequest, capsule: str | None = None) -> bytes:
        ops, cid = self._target(who, ident, "logs", capsule)
        return ops.logs(cid, req.stdout, req.stderr, req.timestamps, req.tail, req.since)

    def follow_logs(self, who: Principal, ident: str, req: LogRequest,
                    capsule: str | None = None) -> Iterator[bytes]:
        ops, cid = self._target(who, ident, "logs", capsule)
        return ops.follow_logs(cid, req.stdout, req.stderr, req.timestamps, req.tail, req.since)

    def execute(self, who: Principal, ident: str, command: Any, capsule: str | None = None,
                max_output: int = EXEC_MAX_OUTPUT, timeout: int = EXEC_TIMEOUT) -> ExecResult:
        """Run a command to its end, reading at most `max_output` bytes of its output and
        waiting at most `timeout` seconds (the result says which bound cut it short)."""
        argv = _argv(command)
        ops, cid = self._target(who, ident, "execute", capsule)
        return ops.exec_run(cid, argv, max_output, timeout)

    def top(self, who: Principal, ident: str, ps_args: str | None,
            capsule: str | None = None) -> dict[str, Any]:
        ops, cid = self._target(who, ident, "top", capsule)
        return ops.top(cid, ps_args)

    def stats(self, who: Principal, ident: str, capsule: str | None = None) -> dict[str, Any]:
        ops, cid = self._target(who, ident, "stats", capsule)
        return zun_stats(ident, ops.stats(cid))

    def get_archive(self, who: Principal, ident: str, path: Any, capsule: str | None = None,
                    max_bytes: int = ARCHIVE_MAX_BYTES) -> tuple[bytes, dict[str, Any]]:
        """The tar of `path`; PayloadTooLarge once it grows past `max_bytes`."""
        ops, cid = self._target(who, ident, "archive", capsule)
        return ops.get_archive(cid, _container_path(path), max_bytes)

    def project_of(self, container_uuid: str) -> str | None:
        """The project a container belongs to (for counting a terminal session's stream,
        whose token names only the container); None if it is gone."""
        with self._store.transaction() as s:
            row = s.query(Container).filter_by(uuid=container_uuid).first()
            return None if row is None else str(row.project_id)

    def put_archive(self, who: Principal, ident: str, path: Any, data: Any,
                    capsule: str | None = None) -> None:
        raw = _archive_bytes(data)
        ops, cid = self._target(who, ident, "archive", capsule)
        ops.put_archive(cid, _container_path(path), raw)

    # -- interactive sessions (websocket) ---------------------------------------------------
    def attach_token(self, who: Principal, ident: str) -> tuple[str, str]:
        """A one-time token for the container's terminal, and the container uuid."""
        row = self.get(who, ident)
        self._check(row, "execute")
        if not _interactive(row):
            raise InvalidInput(f"Container {ident} was not created interactive (interactive/tty); "
                               "there is no terminal to attach to. Use logs instead.")
        host = row.capsule.host if row.capsule is not None else row.host
        _, placed_host, runtime_id = self._ops(host, row.runtime_id, ident)
        return self._new_session(row.uuid, placed_host, runtime_id, None), row.uuid

    def exec_interactive(self, who: Principal, ident: str, command: Any,
                         capsule: str | None = None) -> tuple[str, str, str]:
        """Start a TTY exec session: (exec id, one-time token, container uuid)."""
        argv = _argv(command)
        row = self.get(who, ident, capsule)
        self._check(row, "execute")
        host = row.capsule.host if row.capsule is not None else row.host
        ops, placed_host, runtime_id = self._ops(host, row.runtime_id, ident)
        exec_id = ops.exec_interactive(runtime_id, argv)
        return exec_id, self._new_session(row.uuid, placed_host, runtime_id, exec_id), row.uuid

    def open_session(self, ident: str, token: str) -> tuple[RawStream, Terminal]:
        """Use up a websocket token (issued by any replica) and open what it stands for."""
        with self._store.transaction() as s:
            session = terminals.take(s, token, utcnow())
        if session is None or session.container_uuid != ident:
            raise NotAuthenticated("This terminal URL is unknown, used or expired; ask for a new one.")
        ops = _HostHidden.of(self._ops_for, session.host)
        if session.exec_id is None:
            return ops.attach(session.runtime_id), session
        stream = ops.exec_stream(session.exec_id)
        if session.pending_size is not None:
            try:
                ops.exec_resize(session.exec_id, *session.pending_size)
            except CapsuledError:
                pass  # the client resizes again on its next SIGWINCH
        return stream, session

    def resize(self, who: Principal, ident: str, width: Any, height: Any,
               exec_id: str | None = None) -> None:
        w, h = _dimension(width, "w"), _dimension(height, "h")
        ops, cid = self._target(who, ident, "execute", None)
        if exec_id:
            # Not started yet (the client resizes before it connects): applied on connect.
            # Docker would hold a resize of an unstarted exec for seconds, then fail.
            with self._store.transaction() as s:
                if terminals.hold_resize(s, exec_id, h, w, utcnow()):
                    return
            ops.exec_resize(exec_id, h, w)
        else:
            ops.resize(cid, h, w)

    def _new_session(self, uuid: str, host: str, runtime_id: str, exec_id: str | None) -> str:
        token = secrets.token_urlsafe(24)
        with self._store.transaction() as s:
            terminals.add(s, token, uuid, host, runtime_id, exec_id, utcnow() + SESSION_TTL)
        return token

    def actions(self, who: Principal, ident: str, limit: int | None = None,
                marker: str | None = None) -> builtins.list[ContainerAction]:
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            return repo.list_actions(s, row.uuid, limit, marker)

    def action_detail(self, who: Principal, ident: str, request_id: str) -> ContainerAction:
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            return repo.get_action(s, row.uuid, request_id)

    # -- rebuild, commit, resize_container ---------------------------------------------------
    def rebuild(self, who: Principal, ident: str, image: Any, image_driver: Any,
                request_id: str) -> None:
        """Replace the Docker container with one from `image` (or the same image): the
        spec's rebuild count changes its runtime hash, so the agent removes and re-creates
        it from the stored spec, whatever happens to the agent in between."""
        probe = parse_container_request(
            {"image": "x" if image in (None, "") else image, "image_driver": image_driver},
            self._limits)
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            self._check(row, "rebuild")
            if row.host is None:
                raise Conflict(f"Cannot rebuild container {row.uuid}: it has no host yet.")
            spec = BareSpec.model_validate(row.spec)
            if spec.auto_remove:
                raise Conflict(f"Cannot rebuild container {row.uuid}: it is removed when it "
                               "exits (auto_remove); create it again instead.")
            new_image = spec.container.image if image in (None, "") else probe.container.image
            self._check_image(s, new_image, row.project_id)
            new = spec.model_copy(update={
                "container": spec.container.model_copy(update={"image": new_image}),
                "rebuilds": spec.rebuilds + 1})
            # Zun's rule: it runs again only if it was running; otherwise it is left created.
            repo.set_desired(s, row, "running" if row.status == Status.RUNNING.value
                             else "stopped", spec=new)
            row.image = new_image
            row.status, row.status_reason = Status.REBUILDING.value, None
            repo.record_action(s, row.uuid, "rebuild", request_id, who.project_id, who.user_id)
        self._notify()

    def commit(self, who: Principal, ident: str, repository: Any, tag: Any,
               request_id: str) -> tuple[str, ImageInfo]:
        """`docker commit` on the container's host; the image is this project's: (host, image)."""
        repo_name, tag_name = parse_commit_target(repository, tag)
        ref = normalise(f"{repo_name}:{tag_name}")
        row = self.get(who, ident)
        self._check(row, "commit")
        host = row.capsule.host if row.capsule is not None else row.host
        ops, placed_host, runtime_id = self._ops(host, row.runtime_id, ident)
        project, uuid = row.project_id, row.uuid
        with self._store.transaction() as s:
            fresh = committed_images.claim(s, ref, project, uuid)
        error: str | None = None
        try:
            info = ops.commit(runtime_id, repo_name, tag_name, project)
        except Exception as exc:
            error = getattr(exc, "message", str(exc))
            raise
        finally:
            with self._store.transaction() as s:
                if error is not None and fresh:
                    committed_images.give_back(s, ref, project)
                repo.record_action(s, uuid, "commit", request_id, who.project_id, who.user_id,
                                   finished=True, error=error)
        with self._store.transaction() as s:
            committed_images.record(s, ref, project, placed_host, info.id, uuid)
        return placed_host, info

    def resize_container(self, who: Principal, ident: str, body: dict[str, Any]) -> Container:
        """Zun's resize_container: cpu and/or memory, as PATCH does them."""
        unknown = sorted(set(body) - {"cpu", "memory"})
        if unknown:
            raise InvalidInput([f"{k}: resize_container takes only cpu and memory" for k in unknown])
        if body.get("cpu") is None and body.get("memory") is None:
            raise InvalidInput("body: give cpu, memory or both")
        with self._store.transaction() as s:
            row = repo.get_container(s, ident, self._scope(who))
            self._check(row, "resize_container")
        return self.update(who, ident, {k: v for k, v in body.items() if v is not None}, None)

    def _check_image(self, s: Any, image: str, project_id: str) -> None:
        owner = committed_images.owner(s, normalise(image))
        if owner is not None and owner != project_id:
            raise InvalidInput(f"image: {short(image)} is not available to this project")

    # -- helpers ----------------------------------------------------------------------------
    def _target(self, who: Principal, ident: str, action: str,
                capsule: str | None) -> tuple[ContainerOps, str]:
        row = self.get(who, ident, capsule)
        self._check(row, action)
        host = row.capsule.host if row.capsule is not None else row.host
        ops, _, runtime_id = self._ops(host, row.runtime_id, ident)
        return ops, runtime_id

    def _ops(self, host: str | None, runtime_id: str | None,
             ident: str) -> tuple[ContainerOps, str, str]:
        """The operations of the container's host, the host and the container's runtime id:
        Conflict while the container is not placed and created yet."""
        if host is None or runtime_id is None:
            raise Conflict(f"Container {ident} does not exist on a host yet.")
        return _HostHidden.of(self._ops_for, host), host, runtime_id

    @staticmethod
    def _check(row: Container, action: str, force: bool = False) -> None:
        if row.capsule is not None and action in CAPSULE_OWNED:
            owner = row.capsule.name or row.capsule.uuid
            verb = "delete" if action == "delete_stop" else action
            raise Conflict(f"Cannot {verb} container {row.name}: it belongs to capsule {owner}; "
                           f"its lifecycle follows the capsule (delete or recreate the capsule instead).")
        if row.deleting and action != "delete":
            raise Conflict(f"Container {row.name} is being deleted.")
        valid = VALID.get(action)
        if force or valid is None or row.status in valid:
            return
        verb = "delete" if action == "delete_stop" else action
        raise Conflict(f"Cannot {verb} container {row.uuid} in {row.status} state.")


class _HostHidden:
    """A host's ContainerOps whose Unavailable errors name neither the host nor its agent's
    address: members read them. The detail is logged for administrators."""

    def __init__(self, ops: ContainerOps) -> None:
        self._inner = ops

    @classmethod
    def of(cls, ops_for: Callable[[str], ContainerOps], host: str) -> ContainerOps:
        return cls(_hidden(lambda: ops_for(host), "connect"))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _hidden(lambda: attr(*args, **kwargs), name)


def _hidden(call: Callable[[], Any], what: str) -> Any:
    try:
        return call()
    except Unavailable as exc:
        LOG.warning("%s: %s", what, exc.message)
        raise Unavailable(f"{what}: the container's host cannot be reached now; "
                          "try again later") from exc


def _claim(row: Container) -> tuple[float, int]:
    """The CPU and MiB a container holds now (a capsule member's live in its capsule's spec)."""
    if row.capsule is None:
        return float(row.cpu or 0.0), int(row.memory or 0)
    for c in CapsuleSpec.model_validate(row.capsule.spec).all_containers:
        if c.uuid == row.uuid:
            return float(c.cpu or 0.0), int(c.memory or 0)
    return 0.0, 0


def _default_name(s: Any) -> str:
    # Zun names unnamed containers after a random word; a short uuid reads as well in `docker ps`.
    return f"container-{uuidlib.uuid4().hex[:8]}"


def _argv(command: Any) -> list[str]:
    if not isinstance(command, str) or not command.strip():
        raise InvalidInput("command: is required (a command line, e.g. \"ls -l /\")")
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InvalidInput(f"command: cannot be split into words: {exc}") from None


def _interactive(row: Container) -> bool:
    if row.capsule is not None:
        spec = next((c for c in CapsuleSpec.model_validate(row.capsule.spec).all_containers
                     if c.uuid == row.uuid), None)
        return spec is not None and spec.stdin
    return BareSpec.model_validate(row.spec).container.stdin


MAX_DIMENSION = 65535  # Docker keeps a terminal's size in uint16s


def _dimension(value: Any, name: str) -> int:
    # Not int(): it takes '²', truncates 1.5 and raises OverflowError on Infinity.
    out = whole_number(value, strings=True)
    if out is None or not 1 <= out <= MAX_DIMENSION:
        raise InvalidInput(f"{name}: must be a whole number from 1 to {MAX_DIMENSION}")
    return out


def _timeout(value: int | None) -> int:
    return 10 if value is None else value


# A stop or reboot holds a thread (and the caller's connection) for up to its timeout.
MAX_STOP_TIMEOUT = 300


def parse_stop_timeout(value: str | None) -> int | None:
    """stop/reboot `timeout`: whole seconds from 0 to MAX_STOP_TIMEOUT (None: the default)."""
    if value is None or value == "":
        return None
    seconds = whole_number(value, strings=True)
    if seconds is None or seconds > MAX_STOP_TIMEOUT:
        raise InvalidInput(f"timeout: must be a whole number of seconds from 0 to {MAX_STOP_TIMEOUT}")
    return seconds


MAX_SIGNAL = 64  # Linux: 1-31 and the real-time signals up to 64
_SIGNAL_NAME = re.compile(r"[A-Z][A-Z0-9+-]{0,15}", re.ASCII)  # TERM, SIGKILL, SIGRTMIN+3


def _signal(value: str | None) -> str | int | None:
    """A signal number or name, checked here so that Docker is never asked with '²'."""
    if value is None or value == "":
        return None
    v = value.strip().upper()
    number = whole_number(v, strings=True)
    if number is not None:
        if not 1 <= number <= MAX_SIGNAL:
            raise InvalidInput(f"signal: a signal number is from 1 to {MAX_SIGNAL}")
        return number
    if not _SIGNAL_NAME.fullmatch(v):
        raise InvalidInput(f"signal: must be a signal name (KILL, SIGTERM) or number, "
                           f"not {short(value)}")
    return v if v.startswith("SIG") else f"SIG{v}"


def _container_path(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput("path: must be an absolute path inside the container")
    if ".." in path.split("/"):
        raise InvalidInput(f"path: {path!r} must not contain '..'")
    return posixpath.normpath(path)


def _archive_bytes(data: Any) -> bytes:
    if not isinstance(data, str) or not data:
        raise InvalidInput("data: is required (a base64-encoded tar archive)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("data: is not valid base64") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                if member.name.startswith("/") or ".." in parts:
                    raise InvalidInput(f"data: archive member {member.name!r} would land "
                                       "outside the target directory")
                if (member.issym() or member.islnk()) and (
                        member.linkname.startswith("/") or ".." in member.linkname.split("/")):
                    raise InvalidInput(f"data: link {member.name!r} points outside the target "
                                       f"directory ({member.linkname})")
    except tarfile.TarError as exc:
        raise InvalidInput(f"data: not a tar archive ({exc})") from None
    return raw


def zun_stats(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Docker's stats document → the flat summary `zun stats` prints."""
    cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage", {}).get("total_usage", 0)
                 - pre.get("cpu_usage", {}).get("total_usage", 0))
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    ncpu = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
    cpu_pct = (cpu_delta / sys_delta) * ncpu * 100.0 if cpu_delta > 0 and sys_delta > 0 else 0.0
    mem = raw.get("memory_stats") or {}
    usage = mem.get("usage", 0) - (mem.get("stats") or {}).get("inactive_file", 0)
    limit = mem.get("limit", 0) or 1
    blk = (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    read = sum(e.get("value", 0) for e in blk if str(e.get("op", "")).lower() == "read")
    write = sum(e.get("value", 0) for e in blk if str(e.get("op", "")).lower() == "write")
    nets = (raw.get("networks") or {}).values()
    rx = sum(n.get("rx_bytes", 0) for n in nets)
    tx = sum(n.get("tx_bytes", 0) for n in nets)
    return {"CONTAINER": name, "CPU %": round(cpu_pct, 3),
            "MEM USAGE(MiB)": round(usage / MiB, 3), "MEM LIMIT(MiB)": round(limit / MiB, 3),
            "MEM %": round(usage / limit * 100.0, 3), "BLOCK I/O(B)": f"{read}/{write}",
            "NET I/O(B)": f"{rx}/{tx}"}


def parse_since(value: str | None) -> int | None:
    """Zun's `since`: epoch seconds, or 'YYYY-MM-DD HH:MM:SS,mmm'."""
    if value is None or value == "":
        return None
    seconds = whole_number(value, strings=True)  # not isdigit(): '²' is a digit to Python
    if seconds is not None:
        return seconds
    try:
        return int(datetime.strptime(value.split(",")[0], "%Y-%m-%d %H:%M:%S").timestamp())
    except (ValueError, OverflowError):
        raise InvalidInput("since: must be epoch seconds or 'YYYY-MM-DD HH:MM:SS,mmm'") from None


def parse_tail(value: str | None) -> int | None:
    if value is None or value in ("", "all"):
        return None
    tail = whole_number(value, strings=True)
    if tail is None:
        raise InvalidInput("tail: must be 'all' or a non-negative integer")
    return tail


def _unless_already(call: Callable[[str], None], container_id: str, already: str) -> None:
    """A pause or unpause that finds the container as asked is done: the agent, woken by
    the desired state saved just before, may have got there first. Docker says so only in
    its message (409 for pause, 500 for unpause), which crosses the ops wire unchanged."""
    try:
        call(container_id)
    except CapsuledError as exc:
        if already not in exc.message:
            raise
