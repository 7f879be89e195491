"""A small synchronous client for the capsuled API: capsules and containers.

It speaks only HTTP (the CLI must work against a remote server), so it imports nothing
of the server; `settings` knows where a local server keeps its admin token.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, unquote, urlsplit

import httpx

from capsuled.cli.capsule.settings import DEFAULT_URL, STATE_DIR_ENV, local_token_path

API_VERSION = "container 1.40"
TIMEOUT = 30.0
PAGE_SIZE = 1000
OCTET = "application/octet-stream"

# Named here: inside the client classes `list` is the method of that name.
Bodies = list[dict[str, Any]]
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
UNKNOWN_ROUTE = "The resource could not be found."  # capsuled's 404 for a path it has not


class CliError(Exception):
    """A failure the CLI reports as `error: <title>` with optional indented detail lines."""

    def __init__(self, title: str, detail: str | None = None,
                 hints: list[str] | None = None) -> None:
        super().__init__(title)
        self.title = title
        self.detail = detail
        self.hints = list(hints or [])  # what to type instead, a line each

    def lines(self) -> list[str]:
        out = [f"error: {self.title}"]
        # A one-line detail is, in practice, a rewording of the title: not worth the noise.
        if self.detail and self.detail.strip() != self.title and "\n" in self.detail.strip():
            out += [f"  {line}" for line in self.detail.strip().splitlines()]
        return out + [f"  hint: {hint}" for hint in self.hints]


class ConnectionFailed(CliError):
    """The server could not be reached at all; nothing after this can succeed."""


class ApiError(CliError):
    """The server answered with a 4xx/5xx status."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(title, detail)
        self.status = status
        self.code = code
        # A capsule or container the server did not find, as (kind, what was asked for):
        # shared.report looks for names like it.
        self.missing: tuple[str, str] | None = None


def is_default_local(url: str) -> bool:
    """True for the URL of a local all-in-one server on its default port."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    default_port = urlsplit(DEFAULT_URL).port
    return (parts.hostname or "") in LOCAL_HOSTS and port == default_port


def read_token(path: Path) -> str | None:
    # Unreadable (e.g. root-owned) is the same as absent for us: the caller explains both.
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def resolve_token(url: str, token: str | None) -> str | None:
    """The explicit token, else the local admin token when talking to the local default
    server, or to any local server while $CAPSULED_STATE_DIR names its state directory."""
    if token:
        return token
    if is_default_local(url) or (os.environ.get(STATE_DIR_ENV) and _is_local(url)):
        return read_token(local_token_path())
    return None


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


class _Api:
    """The plumbing both clients share: headers, errors, JSON bodies, paging."""

    KIND: str | None = None  # what /v1/<KIND>s/<ident> names, for a 404's `missing`

    def __init__(self, url: str, token: str | None, *,
                 transport: httpx.BaseTransport | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"OpenStack-API-Version": API_VERSION, "Accept": "application/json"}
        if token:
            headers["X-Auth-Token"] = token
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _pages(self, url: str, key: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
        """Every item under `key`, following the server's `next` links."""
        found: list[dict[str, Any]] = []
        next_url: str | None = url
        query: dict[str, str | int] | None = {"limit": PAGE_SIZE, **params}
        visited: set[str] = set()
        while next_url is not None:
            visited.add(next_url)
            page = self._json("GET", next_url, params=query)
            found += page.get(key) or []
            # `next` carries every query parameter already; httpx would replace its query
            # with any `params`, even an empty dict, hence None.
            next_url, query = page.get("next") or None, None
            if next_url in visited:
                raise CliError(f"the server sent the same page link twice: {next_url}")
        return found

    def first_page(self) -> list[dict[str, Any]]:
        """At most PAGE_SIZE of what /v1/<KIND>s lists: enough to suggest a name, bounded."""
        return list(self._json("GET", f"/v1/{self.KIND}s", params={"limit": PAGE_SIZE})
                    .get(f"{self.KIND}s") or [])

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, url, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise CliError(f"unexpected non-JSON answer from {method} {url}: "
                           f"{_snippet(response.text)}") from None
        if not isinstance(body, dict):
            raise CliError(f"unexpected answer from {method} {url}: {_snippet(response.text)}")
        return body

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise ConnectionFailed(f"capsuled at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach capsuled at {self.url} ({_reason(exc)})") from None
        if response.status_code >= 400:
            raise self._explained(url, error_from(response))
        return response

    def _explained(self, url: str, exc: ApiError) -> ApiError:
        """`exc` with what the CLI can tell beyond the server's words."""
        path = urlsplit(url).path
        prefix = f"/v1/{self.KIND}s/"
        if exc.status == 404 and exc.title == UNKNOWN_ROUTE:
            exc.hints.append(f"the server at {self.url} has no {path}: a capsuled extension that "
                             "it lacks (an older capsuled, or a Zun server); upgrade the server")
        elif exc.status == 404 and self.KIND and path.startswith(prefix) \
                and exc.title.lower().startswith(f"{self.KIND} "):
            exc.missing = (self.KIND, unquote(path[len(prefix):].split("/")[0]))
        elif exc.status == 406 and "supported range" in exc.title:
            exc.hints.append(f"this client speaks {API_VERSION}: use a capsuled server of its "
                             "release or later, or a client as old as the server")
        return exc


class CapsuleClient(_Api):
    """`/v1/capsules` over httpx; raises `ApiError` / `ConnectionFailed`, returns parsed JSON."""

    KIND = "capsule"

    def create(self, template: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/capsules", json={"template": template})

    def list(self, labels: Mapping[str, str] | None = None,
             all_projects: bool = False) -> list[dict[str, Any]]:
        """Every visible capsule, following the server's `next` links."""
        params: dict[str, str | int] = {}
        if all_projects:
            params["all_projects"] = 1
        if labels:
            params["labels"] = ",".join(f"{k}={v}" for k, v in labels.items())
        return self._pages("/v1/capsules", "capsules", params)

    def get(self, ident: str) -> dict[str, Any]:
        return self._json("GET", self._path(ident))

    def get_when_not(self, ident: str, status: str, seconds: float) -> dict[str, Any]:
        """The capsule once its status is not `status`, held by the server for at most
        `seconds` (a capsuled extension: other servers answer at once)."""
        return self._json("GET", self._path(ident),
                          params={"wait_while": status, "wait_timeout": f"{seconds:.3f}"},
                          timeout=httpx.Timeout(self.timeout, read=seconds + self.timeout))

    def events(self, ident: str) -> Bodies:
        return list(self._json("GET", self._path(ident) + "/events").get("events") or [])

    def delete(self, ident: str, all_projects: bool = False) -> None:
        params = {"all_projects": 1} if all_projects else None
        self._request("DELETE", self._path(ident), params=params)

    @staticmethod
    def _path(ident: str) -> str:
        return f"/v1/capsules/{quote(ident, safe='')}"


class ContainerClient(_Api):
    """`/v1/containers` over httpx: bare containers, and a capsule's with `capsule`.

    `capsule` (a capsule's name or uuid) is the server's extension that finds a container
    of that capsule by name; a uuid finds any container without it.
    """

    KIND = "container"

    def create(self, body: Mapping[str, Any], run: bool = True) -> dict[str, Any]:
        params = {"run": "true"} if run else None
        return self._json("POST", "/v1/containers", params=params, json=dict(body))

    def list(self, capsule: str | None = None, all_projects: bool = False) -> list[dict[str, Any]]:
        """Bare containers, or with `capsule` that capsule's; every page."""
        params: dict[str, str | int] = {}
        if capsule:
            params["capsule"] = capsule
        if all_projects:
            params["all_projects"] = 1
        return self._pages("/v1/containers", "containers", params)

    def get(self, ident: str, capsule: str | None = None) -> dict[str, Any]:
        return self._json("GET", self._path(ident), params=only(capsule=capsule))

    def delete(self, ident: str, force: bool = False, stop: bool = False) -> None:
        params = {k: "true" for k, on in (("force", force), ("stop", stop)) if on}
        self._request("DELETE", self._path(ident), params=params or None)

    def action(self, ident: str, action: str, **params: str | int | None) -> None:
        """start, stop, reboot, pause, unpause or kill (with `timeout` / `signal`)."""
        self._request("POST", self._path(ident, action), params=only(**params))

    def rebuild(self, ident: str, image: str | None) -> None:
        self._request("POST", self._path(ident, "rebuild"), params=only(image=image), json={})

    def commit(self, ident: str, repository: str) -> dict[str, Any]:
        """`repository` may carry its tag (repo:tag): the server splits it."""
        return self._json("POST", self._path(ident, "commit"), params={"repository": repository}, json={})

    def rename(self, ident: str, name: str) -> dict[str, Any]:
        return self._json("POST", self._path(ident, "rename"), params={"name": name})

    def update(self, ident: str, changes: Mapping[str, Any], capsule: str | None = None) -> dict[str, Any]:
        return self._json("PATCH", self._path(ident), params=only(capsule=capsule), json=dict(changes))

    def logs(self, ident: str, capsule: str | None = None, **params: str | int | None) -> bytes:
        """The exact bytes (stdout/stderr/timestamps/tail/since as the API takes them)."""
        return self._request("GET", self._path(ident, "logs"), headers={"Accept": OCTET},
                             params=only(capsule=capsule, **params)).content

    def follow_logs(self, ident: str, capsule: str | None = None,
                    **params: str | int | None) -> Iterator[bytes]:
        """The logs as they are written, until the container stops or the caller stops reading."""
        query = only(capsule=capsule, follow="true", **params)
        try:
            with self._http.stream("GET", self._path(ident, "logs"), params=query,
                                   headers={"Accept": OCTET},
                                   timeout=httpx.Timeout(self.timeout, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._explained(self._path(ident, "logs"), error_from(response))
                yield from response.iter_bytes()
        except httpx.TimeoutException:
            raise ConnectionFailed(f"capsuled at {self.url} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"lost the log stream from capsuled at {self.url} "
                                   f"({_reason(exc)})") from None

    def execute(self, ident: str, command: str, interactive: bool = False,
                capsule: str | None = None) -> dict[str, Any]:
        """Run `command` (one shell-quoted string; the server splits it into words)."""
        body: dict[str, Any] = {"command": command, "interactive": interactive}
        if capsule:
            body["capsule"] = capsule
        return self._json("POST", self._path(ident, "execute"), params={"run": "true"}, json=body)

    def attach(self, ident: str) -> str:
        """The websocket URL of the container's terminal (one use, short-lived)."""
        response = self._request("GET", self._path(ident, "attach"))
        try:
            url = response.json()
        except ValueError:
            url = None
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise CliError(f"unexpected answer to attach: {_snippet(response.text)}")
        return url

    def resize(self, ident: str, width: int, height: int) -> None:
        self._request("POST", self._path(ident, "resize"), json={"w": width, "h": height})

    def execute_resize(self, ident: str, exec_id: str, width: int, height: int) -> None:
        self._request("POST", self._path(ident, "execute_resize"),
                      json={"exec_id": exec_id, "w": width, "h": height})

    def top(self, ident: str, ps_args: str | None = None, capsule: str | None = None) -> dict[str, Any]:
        return self._json("GET", self._path(ident, "top"), params=only(ps_args=ps_args, capsule=capsule))

    def stats(self, ident: str, capsule: str | None = None) -> dict[str, Any]:
        return self._json("GET", self._path(ident, "stats"), params=only(capsule=capsule))

    def get_archive(self, ident: str, path: str,
                    capsule: str | None = None) -> tuple[bytes, dict[str, Any]]:
        """A tar of `path` (its last component at the top) and the path's stat."""
        body = self._json("GET", self._path(ident, "get_archive"),
                          params=only(path=path, capsule=capsule))
        try:
            data = base64.b64decode(str(body["data"]), validate=True)
        except (KeyError, binascii.Error, ValueError):
            raise CliError("unexpected answer to get_archive: no base64 `data`") from None
        stat = body.get("stat")
        return data, stat if isinstance(stat, dict) else {}

    def put_archive(self, ident: str, path: str, data: bytes, capsule: str | None = None) -> None:
        """Unpack a tar into the directory `path` of the container."""
        body: dict[str, Any] = {"path": path, "data": base64.b64encode(data).decode()}
        if capsule:
            body["capsule"] = capsule
        self._request("POST", self._path(ident, "put_archive"), json=body)

    def actions(self, ident: str) -> Bodies:
        return list(self._json("GET", self._path(ident, "container_actions")).get("containerActions") or [])

    @staticmethod
    def _path(ident: str, sub: str | None = None) -> str:
        path = f"/v1/containers/{quote(ident, safe='')}"
        return f"{path}/{sub}" if sub else path


def only(**params: str | int | None) -> dict[str, str | int] | None:
    """Query parameters without the unset ones (None when nothing is left)."""
    out = {k: v for k, v in params.items() if v is not None}
    return out or None


def error_from(response: httpx.Response) -> ApiError:
    """Turn an error response into an ApiError, whatever shape its body has."""
    status = response.status_code
    try:
        first = response.json()["errors"][0]
        title = str(first.get("title") or first.get("detail") or f"HTTP {status}")
        detail = first.get("detail")
        return ApiError(status, title, str(detail) if detail is not None else None, first.get("code"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    # Not ours (a proxy, a crashed server): show what came back.
    head = f"HTTP {status} {response.reason_phrase}".rstrip()
    text = response.text.strip()
    if not text:
        return ApiError(status, head)
    if "\n" not in text:
        return ApiError(status, f"{head}: {_snippet(text, 500)}")
    return ApiError(status, head, _snippet(text, 2000))


def _reason(exc: Exception) -> str:
    # httpx wraps OS errors as "[Errno 111] Connection refused"; users only need the words.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip()) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _snippet(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"
