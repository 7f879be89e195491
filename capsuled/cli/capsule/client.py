"""A small synchronous client for the capsuled capsule API.

It speaks only HTTP (the CLI must work against a remote server), so it imports nothing
of ours but `capsuled.paths`, which knows where a local server keeps its admin token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from capsuled import paths

API_VERSION = "container 1.40"
TIMEOUT = 30.0
PAGE_SIZE = 1000
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STATE_DIR_ENV = "CAPSULED_STATE_DIR"


class CliError(Exception):
    """A failure the CLI reports as `error: <title>` with optional indented detail lines."""

    def __init__(self, title: str, detail: str | None = None) -> None:
        super().__init__(title)
        self.title = title
        self.detail = detail

    def lines(self) -> list[str]:
        out = [f"error: {self.title}"]
        # A one-line detail is, in practice, a rewording of the title: not worth the noise.
        if self.detail and self.detail.strip() != self.title and "\n" in self.detail.strip():
            out += [f"  {line}" for line in self.detail.strip().splitlines()]
        return out


class ConnectionFailed(CliError):
    """The server could not be reached at all; nothing after this can succeed."""


class ApiError(CliError):
    """The server answered with a 4xx/5xx status."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(title, detail)
        self.status = status
        self.code = code


def is_default_local(url: str) -> bool:
    """True for the URL of a local all-in-one server on its default port."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    default_port = urlsplit(paths.DEFAULT_URL).port
    return (parts.hostname or "") in LOCAL_HOSTS and port == default_port


def local_token_path(env: Mapping[str, str] | None = None) -> Path:
    """Where a local server writes its admin token (`CAPSULED_STATE_DIR` wins, as for the server)."""
    env = os.environ if env is None else env
    state_dir = env.get(STATE_DIR_ENV)
    base = Path(state_dir).expanduser() if state_dir else paths.default_state_dir()
    return base / paths.ADMIN_TOKEN_FILE


def read_token(path: Path) -> str | None:
    # Unreadable (e.g. root-owned) is the same as absent for us: the caller explains both.
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def resolve_token(url: str, token: str | None) -> str | None:
    """The explicit token, else the local admin token when talking to the local default server."""
    if token:
        return token
    if is_default_local(url):
        return read_token(local_token_path())
    return None


class CapsuleClient:
    """`/v1/capsules` over httpx; raises `ApiError` / `ConnectionFailed`, returns parsed JSON."""

    def __init__(self, url: str, token: str | None, *,
                 transport: httpx.BaseTransport | None = None, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        headers = {"OpenStack-API-Version": API_VERSION, "Accept": "application/json"}
        if token:
            headers["X-Auth-Token"] = token
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> CapsuleClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def create(self, template: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/capsules", json={"template": template})

    def list(self, labels: Mapping[str, str] | None = None,
             all_projects: bool = False) -> list[dict[str, Any]]:
        """Every visible capsule, following the server's `next` links."""
        params: dict[str, str | int] | None = {"limit": PAGE_SIZE}
        if all_projects:
            params["all_projects"] = 1
        if labels:
            params["labels"] = ",".join(f"{k}={v}" for k, v in labels.items())
        found: list[dict[str, Any]] = []
        url: str | None = "/v1/capsules"
        visited: set[str] = set()
        while url is not None:
            visited.add(url)
            page = self._json("GET", url, params=params)
            found += page.get("capsules") or []
            # `next` carries every query parameter already; httpx would replace its query
            # with any `params`, even an empty dict, hence None.
            url, params = page.get("next") or None, None
            if url in visited:
                raise CliError(f"the server sent the same page link twice: {url}")
        return found

    def get(self, ident: str) -> dict[str, Any]:
        return self._json("GET", self._path(ident))

    def events(self, ident: str) -> list[dict[str, Any]]:
        return list(self._json("GET", self._path(ident) + "/events").get("events") or [])

    def delete(self, ident: str, all_projects: bool = False) -> None:
        params = {"all_projects": 1} if all_projects else None
        self._request("DELETE", self._path(ident), params=params)

    @staticmethod
    def _path(ident: str) -> str:
        return f"/v1/capsules/{quote(ident, safe='')}"

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
            raise error_from(response)
        return response


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
