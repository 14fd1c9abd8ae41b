"""The web dashboard in a real browser (Debian's headless Chromium, driven by Playwright).

The browser reaches the page over the TLS listener (``--listen-http``), as a remote
operator would: the page asks for the token, and every API call and stream it makes
carries it.  CI installs Chromium (``.ci/run``); without the binary the test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from corral.api.ui import load_assets

from .conftest import Corral, python_cmd, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000

needs_chromium = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                    reason=f"no browser at {CHROMIUM} (CI installs Debian's "
                                           "chromium package: see .ci/run)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def https_status(url: str) -> int:
    """Status of ``GET url`` over TLS, certificate unchecked (the test only waits on it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def remote(corral_factory: Callable[[], Corral]) -> Iterator[tuple[Corral, str, str]]:
    """A corral with its TLS listener up: (corral, page URL, token)."""
    corral = corral_factory()
    port = free_port()
    corral.start("--listen-http", f"127.0.0.1:{port}")
    url = f"https://127.0.0.1:{port}/"
    wait_for(lambda: https_status(url) == 200, 30, "the TLS listener to serve the page")
    token = yaml.safe_load(corral.ok("print-auth"))["token"]
    yield corral, url, token


def test_assets_ship_in_the_package() -> None:
    """The page, its script, style and icon are package data, read without a network."""
    assets = load_assets()
    assert {"index.html", "app.js", "app.css", "favicon.svg"} <= set(assets)
    page = assets["index.html"][0].decode()
    assert "/assets/app.js" in page and "http://" not in page and "https://" not in page


def test_page_and_assets_over_the_local_socket(corral: Corral) -> None:
    """Over the local socket the page and assets are served with a strict CSP; an
    unknown asset is a JSON 404; the routes are not in the API's OpenAPI document."""
    from .test_metrics import UnixConnection

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        conn = UnixConnection(corral.state_dir / "api.sock")
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            conn.close()

    status, headers, body = get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert b"<title>corral</title>" in body
    status, headers, _ = get("/assets/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    status, _, body = get("/assets/..%2Fmetrics.py")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    paths = json.loads(get("/openapi.json")[2])["paths"]
    assert "/" not in paths and "/assets/{name}" not in paths


def sign_in(page: Page, token: str) -> None:
    """Answer the token dialog: a wrong token first (refused), then the right one."""
    dialog = page.locator("#auth")
    expect(dialog).to_be_visible()
    page.locator("#token").fill("not-the-token")
    page.locator("#auth-form button[type=submit]").click()
    expect(page.locator("#auth-error")).to_contain_text("refused")
    page.locator("#token").fill(token)
    page.locator("#auth-form button[type=submit]").click()
    expect(dialog).to_be_hidden()


@needs_chromium
def test_dashboard_restart_shows_new_pid_and_event(remote: tuple[Corral, str, str]) -> None:
    """1. the page, served over TLS, asks for the token and keeps it in sessionStorage only;
    2. it lists the service with its pid;
    3. clicking Restart gives the service a new pid on the page (the one the CLI sees)
       and a live spawn event for that pid;
    4. selecting the service follows its log."""
    corral, url, token = remote
    corral.ok("svc", "load", "web", "--", *python_cmd(
        "import time\nwhile True: print('hello from web', flush=True); time.sleep(0.2)"))
    old_pid = corral.wait_state("web", "up")["pid"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            sign_in(page, token)
            assert page.evaluate("sessionStorage.getItem('corral.token')") == token
            assert page.evaluate("localStorage.length") == 0

            row = page.locator('tr[data-service="web"]')
            expect(row.locator("td.pid")).to_have_text(str(old_pid))
            expect(row.locator("td.state")).to_have_text("up")

            row.locator('button[data-action="restart"]').click()
            expect(row.locator("td.pid")).not_to_have_text(str(old_pid))
            new_pid = int(row.locator("td.pid").inner_text())
            assert new_pid == corral.status("web")["pid"]
            spawn = page.locator('#events li[data-kind="spawn"][data-service="web"]',
                                 has_text=re.compile(rf"pid {new_pid}\b"))
            expect(spawn).to_have_count(1)

            row.click()
            expect(page.locator("#detail-title")).to_have_text("web")
            expect(page.locator("#log")).to_contain_text("hello from web")
            expect(page.locator("#cpu-chart svg")).to_have_count(1)
            assert not errors, errors
        finally:
            browser.close()
