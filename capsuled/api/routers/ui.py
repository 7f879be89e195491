"""/ui: the web dashboard's files (built from ui/ into capsuled/ui_static by
scripts/build-ui.sh), outside the OpenAPI document and open to anyone: the files hold no
data, and every call the page makes goes through the API with the token it keeps.

index.html answers every path under /ui that is not one of the built files (the page
routes itself), with a fresh CSP nonce per response for the <style> elements xterm.js
makes at run time.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Response

STATIC = Path(__file__).resolve().parent.parent.parent / "ui_static"
NONCE_PLACEHOLDER = b"CAPSULED_CSP_NONCE"  # ui/vite.config.ts: html.cspNonce
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

# Same-origin only. connect-src 'self' covers the terminal's ws:/wss: to this origin
# (CSP Level 3); no inline script at all, inline style only with the response's nonce.
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
             "connect-src 'self'; img-src 'self'; font-src 'self'; "
             "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_FILE_CSP = "default-src 'none'; frame-ancestors 'none'"
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Resource-Policy": "same-origin"}


@dataclass(frozen=True)
class Dashboard:
    """The built files, read once (a few hundred KB, served from memory): index.html and
    the other files by their path under /ui (assets/…, favicon.svg). Only the files found
    at start are ever served: no path from a request reaches the file system."""

    index: bytes | None
    files: dict[str, tuple[bytes, str]]

    @classmethod
    def load(cls, root: Path = STATIC) -> Dashboard:
        files: dict[str, tuple[bytes, str]] = {}
        for folder, prefix in ((root, ""), (root / "assets", "assets/")):
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.name != "index.html" and _FILE_NAME.match(f.name):
                    media = _TYPES.get(f.suffix) or mimetypes.guess_type(f.name)[0]
                    files[prefix + f.name] = (f.read_bytes(), media or "application/octet-stream")
        index = root / "index.html"
        return cls(index.read_bytes() if index.is_file() else None, files)

    def page(self) -> Response:
        if self.index is None:
            return _not_found("The dashboard is not built: run scripts/build-ui.sh.\n")
        nonce = secrets.token_urlsafe(18)
        return Response(self.index.replace(NONCE_PLACEHOLDER, nonce.encode()),
                        media_type="text/html; charset=utf-8",
                        headers={**_COMMON, "Cache-Control": "no-store",
                                 "Content-Security-Policy": _PAGE_CSP.format(nonce=nonce)})

    def file(self, name: str) -> Response | None:
        """The file at /ui/`name`; None for a path that is the page's own (a route)."""
        found = self.files.get(name)
        if found is None:
            # A missing asset is a 404, never the page: a script tag must not get HTML.
            return _not_found("No such file.\n") if name.startswith("assets/") else None
        body, media = found
        # Assets have content hashes in their names: cached for good. Others for an hour.
        cache = ("public, max-age=31536000, immutable" if name.startswith("assets/")
                 else "public, max-age=3600")
        return Response(body, media_type=media,
                        headers={**_COMMON, "Content-Security-Policy": _FILE_CSP,
                                 "Cache-Control": cache})


def _not_found(text: str) -> Response:
    return Response(text, status_code=404, media_type="text/plain",
                    headers={**_COMMON, "Content-Security-Policy": _FILE_CSP})


def router(dashboard: Dashboard) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.api_route("/ui", methods=["GET", "HEAD"])
    async def page() -> Response:
        return dashboard.page()

    @routes.api_route("/ui/{rest:path}", methods=["GET", "HEAD"])
    async def under(rest: str) -> Response:
        return dashboard.file(rest) or dashboard.page()

    return routes
