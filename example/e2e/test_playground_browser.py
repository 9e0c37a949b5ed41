"""End to end: chanx's websocket playground page, driven by a real Chromium.

Serves the example project with uvicorn on a free loopback port (fresh SQLite
file, DEBUG off so only staff may open the playground), logs in as the demo
staff user, opens /playground/websocket/ and talks to the echo assistant
(/ws/assistants/) through the page: authentication frame, ping/pong, an invalid
message, and a reply carrying HTML that must show as text. With
CHANX_UPDATE_SCREENSHOT=1 it also refreshes the README's docs/playground.png.

Skipped when Playwright or /usr/bin/chromium is missing, unless
CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
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
EXAMPLE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = EXAMPLE_DIR.parent
SCREENSHOT = REPO_DIR / "docs" / "playground.png"
SERVER_START_TIMEOUT = 30.0  # seconds
UI_TIMEOUT = 15_000  # milliseconds, for every Playwright wait
XSS = "<img src=x onerror=window.__pwned=1>"

_missing = [
    reason
    for reason, ok in [
        ("the playwright package is not installed", importlib.util.find_spec("playwright")),
        (f"{CHROMIUM} is missing", CHROMIUM.exists()),
    ]
    if not ok
]
if _missing:
    reason = "playground browser test needs Playwright and Chromium: " + "; ".join(_missing)
    if os.environ.get("CHANX_REQUIRE_ALL") == "1":
        pytest.fail(reason + " (CHANX_REQUIRE_ALL=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def _manage(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr}"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate a fresh database, load the demo users, serve with uvicorn."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR), str(EXAMPLE_DIR)]),
        "SQLITE_PATH": str(tmp_path_factory.mktemp("playground") / "db.sqlite3"),
        "DJANGO_DEBUG": "0",  # the playground then answers staff users only
    }
    env.pop("REDIS_URL", None)  # one process: the in-memory channel layer will do
    _manage(["migrate", "--verbosity=0"], env)
    _manage(["demo"], env)

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--lifespan",
            "off",
        ],
        cwd=EXAMPLE_DIR,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:  # keep reading, so the pipe never fills up
        assert server.stderr is not None
        for line in server.stderr:
            output.append(line)
            lines.put(line)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        while True:  # uvicorn prints the port it bound: "Uvicorn running on http://..."
            try:
                line = lines.get(timeout=SERVER_START_TIMEOUT)
            except queue.Empty:
                pytest.fail("uvicorn did not start:\n" + "".join(output))
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                break
        yield match.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        pumper.join(timeout=10)  # the pipe ends with the server
        if server.stderr is not None and not pumper.is_alive():
            server.stderr.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 1100})
    context.set_default_timeout(UI_TIMEOUT)
    expect.set_options(timeout=UI_TIMEOUT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def login(page: Page, base_url: str, username: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def select_option_starting_with(page: Page, selector: str, prefix: str) -> None:
    labels = [text.strip() for text in page.locator(f"{selector} option").all_text_contents()]
    matching = [label for label in labels if label.startswith(prefix)]
    assert matching, f"no {selector} option starts with {prefix!r}: {labels}"
    page.select_option(selector, label=matching[0])


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_playground_talks_to_the_echo_assistant(page: Page, base_url: str) -> None:
    # DEBUG is off: anonymous visitors get a 404, staff get the page.
    response = page.goto("/playground/websocket/")
    assert response is not None and response.status == 404
    login(page, base_url, "admin")
    response = page.goto("/playground/websocket/")
    assert response is not None and response.ok

    # Every example endpoint is listed.
    endpoints = page.locator("#endpoint option")
    expect(endpoints.first).to_be_attached()
    labels = [text.strip() for text in endpoints.all_text_contents()]
    for expected in ("/ws/assistants/", "/ws/chat/"):
        assert any(label.startswith(expected) for label in labels), labels
    assert len(labels) >= 3, labels  # echo assistant, conversation assistant, chat room

    # Path parameters get an input each (the conversation endpoint has one).
    conversation = next(
        label for label in labels if label.startswith("/ws/assistants/") and "<" in label
    )
    page.select_option("#endpoint", label=conversation)
    expect(page.locator("#params input")).to_have_count(1)

    # The echo assistant: no parameters, authentication frame on connect.
    select_option_starting_with(page, "#endpoint", "/ws/assistants/ ")
    expect(page.locator("#params input")).to_have_count(0)
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open")
    received = page.locator("#log .entry.received")
    expect(received.first).to_contain_text('"action": "authentication"')
    expect(received.first).to_contain_text('"status_code": 200')

    # The ping template is a ready-to-send message; the server answers pong.
    select_option_starting_with(page, "#template", "ping")
    expect(page.locator("#message")).to_have_value(re.compile(r'"action": "ping"'))
    page.click("#send")
    expect(page.locator("#log .entry.sent").last).to_contain_text('"action": "ping"')
    expect(received.filter(has_text='"action": "pong"')).to_have_count(1)

    # An invalid message gets an error frame; the connection stays open.
    send(page, '{"action":"new_message","payload":{}}')
    expect(received.filter(has_text='"action": "error"')).to_have_count(1)
    expect(page.locator("#status")).to_have_text("open")

    # HTML in a frame is shown as text, never parsed.
    send(page, json.dumps({"action": "new_message", "payload": {"content": XSS}}))
    reply = received.filter(has_text='"action": "reply"')
    expect(reply).to_have_count(1)
    expect(reply).to_contain_text(XSS)
    expect(reply).to_contain_text("<img")
    assert page.locator("#log img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"

    if os.environ.get("CHANX_UPDATE_SCREENSHOT") == "1":
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Disconnect reports the close code; Clear empties the log.
    page.click("#disconnect")
    expect(page.locator("#status")).to_contain_text("closed (code 1000")
    expect(page.locator("#log .entry.system").last).to_contain_text("code 1000")
    page.click("#clear")
    expect(page.locator("#log .entry")).to_have_count(0)
    assert page.evaluate("typeof window.__pwned") == "undefined"
