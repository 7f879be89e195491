"""The web dashboard at /ui in headless Chromium (Debian's, driven by Playwright) against
the real server on the real Docker Engine: log in with a token, the project's capsules
refreshed live from the watch stream, describe, a followed log, a shell in the browser
terminal, create from a pasted template (the server's problems at their lines), delete.

A tenant's own project only, and everything the server shows as text: a label holding
markup stays text. The page's CSP is the server's, never bypassed: Playwright's
string-evaluating helpers (wait_for_function) are refused by it, so the test waits
with locators only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, sleeper, template
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request, expect, sync_playwright

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<img src=x onerror=alert(1)>"
WAIT = 60_000  # ms: a capsule on a busy two-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: scripts/setup.sh installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


class Tenant:
    """A fresh project with a member's token, and what its browser page did."""

    def __init__(self, server: Server, browser: Browser) -> None:
        self.server = server
        self.project = f"ui-{uuid.uuid4().hex[:8]}"
        self.token = server.issue_token(self.project, "alice", "member")
        self.api = server.client(self.token)
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.urls: list[str] = []
        self.dialogs: list[str] = []
        self.csp: list[str] = []
        self.page.on("request", self._request)
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)

    def _request(self, r: Request) -> None:
        self.urls.append(r.url)

    def _dialog(self, d: Dialog) -> None:
        self.dialogs.append(d.message)
        d.dismiss()

    def _console(self, m: ConsoleMessage) -> None:
        if "Content Security Policy" in m.text:
            self.csp.append(m.text)

    def create(self, tmpl: dict[str, Any]) -> str:
        r = self.api.post("/v1/capsules", json={"template": tmpl})
        assert r.status_code == 202, r.text
        return str(r.json()["uuid"])

    def close(self) -> None:
        for c in self.api.get("/v1/capsules").json()["capsules"]:
            self.api.delete(f"/v1/capsules/{c['uuid']}")
        self.context.close()
        self.api.close()


@pytest.fixture()
def tenant(server: Server, browser: Browser) -> Iterator[Tenant]:
    t = Tenant(server, browser)
    yield t
    t.close()


def test_the_page_is_static_strict_and_outside_the_api_document(server: Server) -> None:
    first = httpx.get(f"{server.url}/ui")
    again = httpx.get(f"{server.url}/ui/capsules/whatever/logs/main")  # a route: the page
    assert first.status_code == again.status_code == 200
    assert first.headers["content-type"].startswith("text/html")
    def unnonced(text: str) -> str:
        return re.sub(r'nonce="[^"]*"', 'nonce=""', text)
    assert unnonced(first.text) == unnonced(again.text) and '<div id="app">' in first.text
    csp = first.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    nonce = re.fullmatch(r"'self' 'nonce-([\w-]+)'", directives["style-src"])
    assert nonce is not None and f'nonce="{nonce[1]}"' in first.text
    assert nonce[1] not in again.headers["content-security-policy"]  # fresh per response
    assert first.headers["cache-control"] == "no-store"
    script = re.search(r'src="(/ui/assets/[\w.-]+\.js)"', first.text)
    assert script is not None
    js = httpx.get(server.url + script[1])
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"]
    missing = httpx.get(f"{server.url}/ui/assets/nope.js")
    assert missing.status_code == 404 and "html" not in missing.headers["content-type"]
    # Only the files built into the package: a path climbing out finds none of the others.
    for sneaky in ("/ui/assets/..%2f..%2f__init__.py", "/ui/..%2f..%2fpyproject.toml",
                   "/ui/assets/..%2findex.html"):
        r = httpx.get(server.url + sneaky)
        assert r.status_code == 404 or unnonced(r.text) == unnonced(first.text), sneaky
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")] and "/v1/whoami" in paths


def test_whoami_tells_a_token_its_own_identity(server: Server) -> None:
    project = f"ui-{uuid.uuid4().hex[:8]}"
    with server.client(server.issue_token(project, "bob", "reader")) as c:
        r = c.get("/v1/whoami")
    assert r.status_code == 200, r.text
    assert r.json() == {"project_id": project, "user_id": "bob", "roles": ["reader"],
                        "is_admin": False}
    anonymous = httpx.get(f"{server.url}/v1/whoami")
    assert anonymous.status_code == 401
    assert httpx.get(f"{server.url}/v1/whoami",
                     headers={"X-Auth-Token": "not-a-token"}).status_code == 401


def _log_in(t: Tenant) -> Page:
    page = t.page
    page.goto(f"{t.server.url}/ui")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    page.fill("#token", "wrong-token")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("unknown, revoked or expired")
    page.fill("#token", t.token)
    page.click("button[type=submit]")
    expect(page.locator(".identity")).to_have_text(f"alice in {t.project}")
    expect(page.locator("h1")).to_have_text("Capsules")
    return page


def test_dashboard_end_to_end(tenant: Tenant, server: Server) -> None:
    t = tenant
    name = f"web-{uuid.uuid4().hex[:6]}"
    greeting = f"hello-ui-{uuid.uuid4().hex[:6]}"
    # Another project's capsule: never listed (it fails at once: no Docker work).
    with server.client(server.issue_token(f"ui-{uuid.uuid4().hex[:8]}", "eve", "member")) as eve:
        other = template(f"eve-{uuid.uuid4().hex[:6]}", [sleeper("c")])
        other["availabilityZone"] = "no-such-zone"
        assert eve.post("/v1/capsules", json={"template": other}).status_code == 202
    page = _log_in(t)
    expect(page.locator(".live").first).to_have_text("live")
    # Created by the API while the list is open: it appears, and goes Running, live.
    t.create(template(name, [sleeper("main", command=["sh", "-c", f"echo {greeting}; sleep 3600"])],
                      labels={"app": "web", "note": EVIL}))
    row = page.locator(f'tr[data-capsule="{name}"]')
    expect(row.locator("[data-status]")).to_have_text("Running", timeout=WAIT)
    expect(row.locator("td.ready")).to_have_text("1/1")
    expect(row.locator('[data-label="note"]')).to_have_text(f"note={EVIL}")
    expect(page.locator("tbody tr")).to_have_count(1)  # nothing of the other project
    assert page.locator("img").count() == 0
    # Describe: the member container, its events.
    row.locator("td.name a").click()
    expect(page).to_have_url(re.compile(f"/ui/capsules/{name}$"))
    member = page.locator('tr[data-container="main"]')
    expect(member.locator("[data-status]")).to_have_text("Running")
    expect(page.locator('table.events tr[data-event="Started"]')).to_have_count(1)
    expect(page.locator('[data-label="note"]')).to_have_text(f"note={EVIL}")
    # Its log, followed.
    member.get_by_role("link", name="Logs").click()
    expect(page.locator("pre.log")).to_contain_text(greeting, timeout=WAIT)
    page.go_back()
    # A shell in the browser terminal.
    page.locator('tr[data-container="main"]').get_by_role("link", name="Terminal").click()
    expect(page.locator("[data-live]")).to_have_text("connected", timeout=WAIT)
    screen = page.locator(".xterm-rows")
    expect(screen).to_contain_text("/ #", timeout=WAIT)
    page.locator(".xterm").click()
    page.keyboard.type("echo hi-$RANDOM\n")
    expect(screen).to_contain_text(re.compile(r"^hi-\d+\s*$", re.MULTILINE), timeout=WAIT,
                                   use_inner_text=True)
    _create_from_template(t, page)
    # Delete, with confirmation, from the describe page of the first one.
    page.goto(f"{t.server.url}/ui/capsules/{name}")
    page.click("[data-action=delete]")
    expect(page.locator(".confirm-text")).to_have_text(f"Delete capsule {name}?")
    page.click("[data-action=confirm-delete]")
    expect(page).to_have_url(re.compile(r"/ui$"))
    expect(page.locator(f'tr[data-capsule="{name}"]')).to_have_count(0, timeout=WAIT)
    assert t.api.get(f"/v1/capsules/{name}").status_code in (200, 404)  # Deleting, then gone
    # What the page never did: put the token in a URL, run injected markup, break its CSP.
    assert t.urls and not [u for u in t.urls if t.token in u]
    assert t.token not in page.url
    assert t.dialogs == [] and page.locator("img").count() == 0
    assert t.csp == []


BAD = """kind: capsule
metadata:
  name: {name}
spec:
  restartPolicy: Sometimes
  containers:
  - name: main
    image: busybox
    cpu: lots
    command: [sleep, "3600"]
"""


def _create_from_template(t: Tenant, page: Page) -> None:
    name = f"new-{uuid.uuid4().hex[:6]}"
    page.goto(f"{t.server.url}/ui/new")
    page.fill("textarea[name=template]", BAD.format(name=name))
    page.click("form.create button[type=submit]")
    policy = page.locator('li.problem[data-path="spec.restartPolicy"]')
    expect(policy.locator(".message")).to_have_text(
        "must be one of Always, OnFailure, Never, not 'Sometimes'")
    expect(policy.locator(".at-line")).to_have_text("line 5")
    cpu = page.locator('li.problem[data-path="spec.containers[0].cpu"]')
    expect(cpu.locator(".message")).to_have_text("unknown field")
    expect(cpu.locator(".at-line")).to_have_text("line 9")
    expect(page.locator(".gutter .problem-line")).to_have_text(["! 5", "! 9"])
    assert t.api.get(f"/v1/capsules/{name}").status_code == 404
    good = BAD.format(name=name).replace("  restartPolicy: Sometimes\n", "").replace(
        "    cpu: lots\n", "")
    page.fill("textarea[name=template]", good)
    page.click("form.create button[type=submit]")
    expect(page).to_have_url(re.compile(f"/ui/capsules/{name}$"))
    expect(page.locator(".summary [data-status]")).to_have_text("Running", timeout=WAIT)
    expect(page.locator(".summary .ready")).to_have_text("1/1")
