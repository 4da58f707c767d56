"""The admin dashboard (`/admin`) in a real browser: Debian's Chromium
(`/usr/bin/chromium`, never a downloaded browser) driven by Playwright, against
a real hfms started with `--admin-key`.

The story a user lives through: sign in with the admin key (the session cookie
is HttpOnly and SameSite=Strict; a state-changing request without the CSRF
header is refused), create a key in the UI and copy its secret from the page,
use it with the official `openai` SDK, watch its usage appear on the usage
page, lower its RPM to 1 in the UI and get a 429, revoke it in the UI and get
a 401. No console errors and no CSP violations along the way. A full-page
screenshot of each page goes to `test-artifacts/dashboard/`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from playwright import sync_api  # pinned in tests/python/requirements.txt; the browser is Debian's
from playwright.sync_api import expect

from conftest import CHAT_MODEL, CHAT_MODEL_ID, EMBED_MODEL, EMBED_MODEL_ID, REPO, start_server

CHROMIUM = Path(os.environ.get("HFMS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
ADMIN_KEY = "hfms-dashboard-test-" + secrets.token_urlsafe(24)
TIMEOUT_MS = 20_000



@pytest.fixture(scope="module")
def admin_server():
    srv = start_server(["--admin-key", ADMIN_KEY, "--usage-commit-ms", "200"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    # Missing Chromium fails the test: make test installs it.
    assert CHROMIUM.is_file(), f"{CHROMIUM} is not installed (scripts/install-deps.sh chromium)"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Watch:
    """Console errors, uncaught exceptions and CSP violations of one page."""

    # The only failed loads a clean run makes: the session check before
    # signing in, and the wrong key the test tries on purpose.
    EXPECTED = re.compile(r"Failed to load resource: the server responded with a status of 401")

    def __init__(self, page):
        self.errors: list[str] = []
        self.page = page
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught exception: {e}"))
        # Runs before the page's own scripts, outside its CSP.
        page.add_init_script(
            "window.__csp = [];"
            "document.addEventListener('securitypolicyviolation', e =>"
            " window.__csp.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +"
            " ' at ' + e.sourceFile + ':' + e.lineNumber));"
        )

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if self.EXPECTED.search(msg.text) and url.endswith("/admin/session"):
            return
        self.errors.append(f"console.error: {msg.text} ({url})")

    def check(self) -> None:
        csp = self.page.evaluate("window.__csp")
        assert csp == [], f"CSP violations (or the listener is missing): {csp}"
        assert not self.errors, "console errors:\n" + "\n".join(self.errors)


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def goto_page(page, name: str) -> None:
    page.get_by_test_id(f"nav-{name}").click()
    expect(page.get_by_test_id(f"page-{name}")).to_be_visible()
    expect(page).to_have_url(re.compile(f"#{name}$"))


def number(text: str) -> int:
    digits = re.sub(r"\D", "", text)
    assert digits, f"not a number: {text!r}"
    return int(digits)


def status_of(url: str) -> int:
    """The status of a plain GET (no cookie, no key)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def sdk(base: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=120)


def test_dashboard_in_chromium(admin_server, browser):
    base = admin_server.base_url
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light", locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = Watch(page)
    try:
        _story(base, context, page, watch)
    finally:
        context.close()
    assert not [line for line in admin_server.errors if "panicked" in line], admin_server.log_tail()


def _story(base: str, context, page, watch: Watch) -> None:
    # ---- the page and its headers
    resp = page.goto(f"{base}/admin")
    assert resp is not None and resp.status == 200
    csp = resp.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp, csp
    expect(page.get_by_test_id("signin")).to_be_visible()

    # ---- a wrong key is refused with the server's message
    page.get_by_test_id("signin-key").fill("sk-hfms-" + "x" * 44)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_be_visible()
    expect(page.get_by_test_id("shell")).to_be_hidden()
    assert not context.cookies(), "a refused sign-in must not set a cookie"

    # ---- sign in with the admin key
    page.get_by_test_id("signin-key").fill(ADMIN_KEY)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("shell")).to_be_visible()
    expect(page.get_by_test_id("page-overview")).to_be_visible()
    expect(page.get_by_test_id("session-key")).not_to_have_text("—")

    # The session cookie: HttpOnly (no script can read it), SameSite=Strict.
    cookies = {c["name"]: c for c in context.cookies()}
    assert "hfms_session" in cookies, cookies
    session = cookies["hfms_session"]
    assert session["httpOnly"] is True, session
    assert session["sameSite"] == "Strict", session
    assert session["path"] == "/", session
    assert "hfms_session" not in page.evaluate("document.cookie")

    # A state-changing request with the cookie but without x-csrf-token: 403,
    # and nothing was created. (context.request shares the browser's cookies.)
    probe = f"csrf-probe-{secrets.token_hex(4)}"
    r = context.request.post(f"{base}/admin/keys", data=json.dumps({"name": probe}),
                             headers={"content-type": "application/json"})
    assert r.status == 403, (r.status, r.text())
    assert "error" in r.json() and r.json()["error"]["message"], r.text()
    r = context.request.get(f"{base}/admin/keys")
    assert r.status == 200, (r.status, r.text())
    assert probe not in [k["name"] for k in r.json()["data"]]
    # Without the cookie the same API is closed altogether.
    assert status_of(f"{base}/admin/keys") == 401

    # ---- create a key in the UI; its secret is shown once, on the page
    goto_page(page, "keys")
    # Markup in a name is text, never HTML (and the CSP would block it too).
    name = f"dash-{secrets.token_hex(3)} <img src=x onerror=window.__xss=1>"
    page.get_by_test_id("key-name").fill(name)
    page.get_by_test_id("key-create").click()
    expect(page.get_by_test_id("secret-box")).to_be_visible()
    secret = page.get_by_test_id("secret-value").inner_text().strip()
    assert re.fullmatch(r"sk-hfms-[0-9A-Za-z]{44}", secret), secret
    key_id = secret[len("sk-hfms-"):][:12]
    row = page.locator(f'[data-testid="key-row"][data-key-id="{key_id}"]')
    expect(row).to_be_visible()
    expect(row.get_by_test_id("row-name")).to_have_text(name)
    expect(row.get_by_test_id("row-status")).to_have_text("active")
    expect(row.get_by_test_id("row-rpm")).to_have_text("∞")
    assert page.evaluate("window.__xss") is None
    shoot(page, "keys")

    # ---- the key works with the official SDK
    client = sdk(base, secret)
    chat = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.usage.completion_tokens > 0
    emb = client.embeddings.create(model=EMBED_MODEL, input=["Hello, world!"])
    assert len(emb.data[0].embedding) == 384

    # ---- its usage shows on the usage page (records commit every 200 ms)
    goto_page(page, "usage")
    usage_row = page.locator(f'[data-testid="usage-key-row"][data-key="{key_id}"]')
    deadline = time.monotonic() + 30
    requests = 0
    while True:
        page.get_by_test_id("usage-refresh").click()
        page.wait_for_timeout(500)
        if usage_row.count() == 1:
            requests = number(usage_row.get_by_test_id("usage-key-requests").inner_text())
            if requests >= 2:
                break
        assert time.monotonic() < deadline, f"the usage page did not show the key's 2 requests (saw {requests})"
    expect(usage_row.get_by_test_id("usage-key-name")).to_have_text(name)
    expect(page.locator('[data-testid="usage-model-row"][data-model="%s"]' % CHAT_MODEL_ID)).to_be_visible()
    expect(page.locator('[data-testid="usage-model-row"][data-model="%s"]' % EMBED_MODEL_ID)).to_be_visible()
    assert number(page.get_by_test_id("usage-total-requests").inner_text()) >= 2
    for chart in ["chart-usage-requests", "chart-usage-tokens", "chart-usage-cost"]:
        expect(page.get_by_test_id(chart).locator("canvas")).to_have_count(1)
    # The export link is a CSV of the same totals, fetched with the session.
    href = page.get_by_test_id("usage-csv").get_attribute("href")
    assert href and "format=csv" in href, href
    r = context.request.get(base + href)
    assert r.status == 200 and r.headers["content-type"].startswith("text/csv"), (r.status, r.headers)
    lines = r.text().strip().splitlines()
    assert lines[0].startswith("group,requests"), lines
    assert sum(int(line.split(",")[1]) for line in lines[1:]) >= 2, lines
    shoot(page, "usage")

    # ---- lower its RPM to 1 in the UI: the next request(s) get 429
    goto_page(page, "keys")
    row.get_by_test_id("key-edit").click()
    expect(page.get_by_test_id("edit-dialog")).to_be_visible()
    page.get_by_test_id("edit-rpm").fill("1")
    page.get_by_test_id("edit-save").click()
    expect(page.get_by_test_id("edit-dialog")).to_be_hidden()
    expect(row.get_by_test_id("row-rpm")).to_have_text("1")
    limited = None
    for _ in range(3):
        try:
            client.embeddings.create(model=EMBED_MODEL, input=["rate me"])
        except openai.RateLimitError as e:
            limited = e
            break
    assert limited is not None, "an RPM of 1 set in the dashboard did not limit the key"
    assert limited.status_code == 429

    # ---- revoke it in the UI (an in-page confirmation): the key gets 401
    row.get_by_test_id("key-revoke").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    expect(page.get_by_test_id("confirm-message")).to_contain_text("cannot be undone")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
    expect(row.get_by_test_id("row-status")).to_have_text("revoked")
    expect(row.get_by_test_id("key-revoke")).to_have_count(0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.embeddings.create(model=EMBED_MODEL, input=["after revoking"])
    assert e.value.status_code == 401
    client.close()

    # ---- models: both test models, loaded, with Load / Unload
    goto_page(page, "models")
    for model_id in (CHAT_MODEL_ID, EMBED_MODEL_ID):
        mrow = page.locator(f'[data-testid="model-row"][data-model="{model_id}"]')
        expect(mrow.get_by_test_id("model-state")).to_have_text("loaded")
        expect(mrow.get_by_test_id("model-device")).to_have_text("cpu")
        expect(mrow.get_by_test_id("model-unload")).to_be_enabled()
        expect(mrow.get_by_test_id("model-load")).to_be_disabled()
    shoot(page, "models")

    # ---- hardware: the CPU and its budget
    goto_page(page, "hardware")
    expect(page.locator('[data-testid="device-row"][data-device="cpu"]')).to_be_visible()
    expect(page.locator('[data-testid="platform-row"][data-platform="cpu"]')).to_contain_text("present")
    expect(page.get_by_test_id("hw-cpu")).not_to_contain_text("—")
    shoot(page, "hardware")

    # ---- overview: live numbers from /metrics (scraped every 2 s since sign-in)
    # Fresh traffic first, from a key made through the API with the session
    # and its CSRF token (the header the dashboard sends).
    csrf = context.request.get(f"{base}/admin/session").json()["csrf_token"]
    assert csrf
    r = context.request.post(f"{base}/admin/keys", data=json.dumps({"name": "overview-traffic"}),
                             headers={"content-type": "application/json", "x-csrf-token": csrf})
    assert r.status == 201, (r.status, r.text())
    traffic = sdk(base, r.json()["secret"])
    goto_page(page, "overview")
    # About 8 s of mixed traffic while the page scrapes: new inputs (cache
    # misses), repeated ones (hits), and a few generations.
    end = time.monotonic() + 8
    i = 0
    while time.monotonic() < end:
        traffic.embeddings.create(model=EMBED_MODEL, input=[f"traffic {i % 7}"])
        if i % 5 == 0:
            traffic.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": f"Count to {i}."}],
                                            max_tokens=12, temperature=0.7, seed=i)
        i += 1
        time.sleep(0.1)
    traffic.close()
    expect(page.get_by_test_id("live-state")).to_contain_text("live")
    expect(page.get_by_test_id("stat-rps")).not_to_have_text("—")
    expect(page.get_by_test_id("stat-p99")).not_to_have_text("—")
    for chart in ["chart-requests", "chart-tokens", "chart-latency", "chart-rates"]:
        expect(page.get_by_test_id(chart).locator("canvas")).to_have_count(1)
    page.wait_for_timeout(2500)  # one more scrape, for the picture
    shoot(page, "overview")

    watch.check()

    # ---- sign out: the session ends on the server too
    page.get_by_test_id("signout").click()
    expect(page.get_by_test_id("signin")).to_be_visible()
    assert context.request.get(f"{base}/admin/keys").status == 401
    assert "hfms_session" not in {c["name"] for c in context.cookies() if c["value"]}
    watch.check()
