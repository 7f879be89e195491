"""/ui behind the API's middleware, on a folder of files made here: the page for every
route with a fresh nonce, only the files that were there at start, nothing from a path
that climbs out, and a plain 404 when the dashboard was never built."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from capsuled.api.middleware import ApiMiddleware
from capsuled.api.routers.ui import STATIC, Dashboard, router

INDEX = ('<html><head><meta property="csp-nonce" nonce="CAPSULED_CSP_NONCE">'
         '<script type="module" src="/ui/assets/app-1.js" nonce="CAPSULED_CSP_NONCE"></script>'
         '</head><body><div id="app"></div></body></html>')


def _client(root: Path) -> TestClient:
    app = FastAPI()
    app.add_middleware(ApiMiddleware)
    app.include_router(router(Dashboard.load(root)))
    return TestClient(app)


def _built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "app-1.js").write_text("export {};")
    (tmp_path / "favicon.svg").write_text("<svg/>")
    (tmp_path.parent / "secret.txt").write_text("not for the web")
    return tmp_path


def test_every_route_is_the_page_with_a_nonce_of_its_own(tmp_path: Path) -> None:
    client = _client(_built(tmp_path))
    nonces = set()
    for path in ("/ui", "/ui/", "/ui/login", "/ui/capsules/a%20b/exec/main"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        found = re.search(r"style-src 'self' 'nonce-([\w-]+)'", csp)
        assert found is not None and r.text.count(f'nonce="{found[1]}"') == 2
        assert "CAPSULED_CSP_NONCE" not in r.text
        assert "script-src 'self';" in csp and "unsafe" not in csp
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-content-type-options"] == "nosniff"
        nonces.add(found[1])
    assert len(nonces) == 4


def test_files_are_those_built_and_nothing_else(tmp_path: Path) -> None:
    client = _client(_built(tmp_path))
    js = client.get("/ui/assets/app-1.js")
    assert js.status_code == 200 and js.text == "export {};"
    assert js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"]
    icon = client.get("/ui/favicon.svg")
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.headers["content-security-policy"].startswith("default-src 'none'")
    # Made after start: not served (the files are read once).
    (tmp_path / "assets" / "late.js").write_text("late")
    assert client.get("/ui/assets/late.js").status_code == 404
    for sneaky in ("/ui/assets/nope.js", "/ui/assets/..%2f..%2fsecret.txt",
                   "/ui/assets/%2e%2e/%2e%2e/secret.txt", "/ui/assets/..%2findex.html"):
        r = client.get(sneaky)
        assert r.status_code == 404, sneaky
        assert r.headers["content-type"].startswith("text/plain")
    for sneaky in ("/ui/..%2f..%2fsecret.txt", "/ui/%2e%2e/secret.txt"):
        r = client.get(sneaky)
        assert "not for the web" not in r.text, sneaky


def test_unbuilt_dashboard_says_so(tmp_path: Path) -> None:
    r = _client(tmp_path).get("/ui/capsules")
    assert r.status_code == 404 and "scripts/build-ui.sh" in r.text


def test_the_committed_build_is_complete() -> None:
    """What index.html references was built and committed with it."""
    built = Dashboard.load(STATIC)
    assert built.index is not None
    referenced = re.findall(rb'(?:src|href)="/ui/([^"]+)"', built.index)
    assert referenced and all(name.decode() in built.files for name in referenced)
    chunks = set()  # what the scripts load later: the terminal's and the editor's modules
    for body, _ in built.files.values():
        chunks |= {f"assets/{c.decode()}" for c in re.findall(rb'"\./([\w.-]+\.(?:js|css))"', body)}
        chunks |= {c.decode() for c in re.findall(rb'"(assets/[\w.-]+\.(?:js|css))"', body)}
    assert any("terminal" in c for c in chunks)
    assert chunks <= set(built.files)
