"""End to end: chanx's websocket playground page, driven by a real Chromium.

Serves the example project with uvicorn on a free loopback port (fresh SQLite
file, DEBUG off so only staff may open the playground), logs in as the demo
staff user, opens /playground/websocket/ and talks to the echo assistant
(/ws/assistants/) through the page: authentication frame, ping/pong, a question
and its reply, an invalid message, and a reply carrying HTML that must show as
text. With CHANX_UPDATE_SCREENSHOT=1 it also refreshes the README's
docs/playground.png, taken after the question's reply (before the probes).

Skipped when Playwright or /usr/bin/chromium is missing, unless
CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest

from e2e.servers import (
    REPO_DIR,
    ExampleServer,
    chromium,
    example_env,
    prepare_demo_db,
    require_browser,
)

SCREENSHOT = REPO_DIR / "docs" / "playground.png"
UI_TIMEOUT = 15_000  # milliseconds, for every Playwright wait
XSS = "<img src=x onerror=window.__pwned=1>"
QUESTION = "Hello! What can you do?"

require_browser(__name__)

from playwright.sync_api import Browser, Page, expect  # noqa: E402


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate a fresh database, load the demo users, serve with uvicorn."""
    sqlite_path = tmp_path_factory.mktemp("playground") / "db.sqlite3"
    prepare_demo_db(sqlite_path)
    # DEBUG off: the playground then answers staff users only.
    with ExampleServer(example_env(sqlite_path, DJANGO_DEBUG="0")) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


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

    # A real question: the new_message template, filled in, gets the echo's reply.
    select_option_starting_with(page, "#template", "new_message")
    expect(page.locator("#message")).to_have_value(re.compile(r'"action": "new_message"'))
    send(page, json.dumps({"action": "new_message", "payload": {"content": QUESTION}}, indent=2))
    reply = received.filter(has_text='"action": "reply"')
    expect(reply).to_have_count(1)
    expect(reply).to_contain_text(f"Reply: {QUESTION}")

    # The README's screenshot shows this session: a product, not a probe.
    if os.environ.get("CHANX_UPDATE_SCREENSHOT") == "1":
        page.set_viewport_size({"width": 1280, "height": 860})  # the session, little blank
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    # An invalid message gets an error frame; the connection stays open.
    send(page, '{"action":"new_message","payload":{}}')
    expect(received.filter(has_text='"action": "error"')).to_have_count(1)
    expect(page.locator("#status")).to_have_text("open")

    # HTML in a frame is shown as text, never parsed.
    send(page, json.dumps({"action": "new_message", "payload": {"content": XSS}}))
    expect(reply).to_have_count(2)
    expect(reply.last).to_contain_text(XSS)
    expect(reply.last).to_contain_text("<img")
    assert page.locator("#log img").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"

    # Disconnect reports the close code; Clear empties the log.
    page.click("#disconnect")
    expect(page.locator("#status")).to_contain_text("closed (code 1000")
    expect(page.locator("#log .entry.system").last).to_contain_text("code 1000")
    page.click("#clear")
    expect(page.locator("#log .entry")).to_have_count(0)
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_playground_guards_its_socket_and_path_parameters(page: Page, base_url: str) -> None:
    """Switching the endpoint closes the socket (its messages would go to the wrong
    consumer); an empty or malformed path parameter never connects; a token typed
    in goes out as the chanx.auth subprotocol and authenticates."""
    login(page, base_url, "admin")
    page.goto("/playground/websocket/")
    expect(page.locator("#endpoint option").first).to_be_attached()
    labels = [t.strip() for t in page.locator("#endpoint option").all_text_contents()]

    select_option_starting_with(page, "#endpoint", "/ws/assistants/ ")
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open")
    room = next(label for label in labels if label.startswith("/ws/chat/"))
    page.select_option("#endpoint", label=room)
    expect(page.locator("#status")).to_contain_text("closed (code 1000")
    expect(page.locator("#log .entry.system").filter(has_text="switched endpoint")).to_have_count(1)
    expect(page.locator("#connect")).to_be_enabled()
    expect(page.locator("#send")).to_be_disabled()

    # The room's <pk> is empty: no socket; then not a number: still none.
    entries = page.locator("#log .entry")
    before = entries.count()
    page.click("#connect")
    expect(entries).to_have_count(before + 1)
    expect(entries.last).to_contain_text("fill in every path parameter")
    expect(page.locator("#params input.bad")).to_have_count(1)
    page.fill("#params input", "abc")
    page.click("#connect")
    expect(entries).to_have_count(before + 2)
    expect(page.locator("#status")).not_to_have_text("open")
    assert "connecting to" not in " ".join(entries.all_text_contents()[before:])

    # A value typed in the Authorization field goes out as the chanx.auth subprotocol:
    # DRF's TokenAuthentication then reads it (a bogus token is a 401, session or not).
    page.evaluate(
        """() => {
            const Native = window.WebSocket;
            window.__protocols = [];
            window.WebSocket = function (url, protocols) {
                window.__protocols.push(protocols);
                return new Native(url, protocols);
            };
            window.WebSocket.OPEN = Native.OPEN;
        }"""
    )
    select_option_starting_with(page, "#endpoint", "/ws/assistants/ ")
    page.fill("#token", "Token not-a-real-token")
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("closed (code 4401")
    auth = page.locator("#log .entry.received").filter(has_text='"action": "authentication"')
    expect(auth.last).to_contain_text('"status_code": 401')
    expect(auth.last).to_contain_text("Invalid token.")
    protocols = page.evaluate("window.__protocols")
    assert protocols == [["chanx", "chanx.auth.VG9rZW4gbm90LWEtcmVhbC10b2tlbg"]], protocols


def test_playground_shows_failures_in_red(page: Page, base_url: str) -> None:
    """A received frame reporting a failure (action "error", or a payload status_code
    >= 400 such as a refused authentication) gets the err class (red), not the
    success's green; a successful authentication frame does not."""
    login(page, base_url, "admin")
    page.goto("/playground/websocket/")
    expect(page.locator("#endpoint option").first).to_be_attached()
    select_option_starting_with(page, "#endpoint", "/ws/assistants/ ")
    received = page.locator("#log .entry.received")
    auth = received.filter(has_text='"action": "authentication"')

    # Accepted: the authentication frame (status 200) is a success.
    page.click("#connect")
    expect(page.locator("#status")).to_have_text("open")
    expect(auth).to_have_count(1)
    expect(auth).to_contain_text('"status_code": 200')
    expect(auth).not_to_contain_class("err")

    # Text that is not JSON gets an error frame, shown as a failure; the socket stays open.
    send(page, "{")
    error = received.filter(has_text='"action": "error"')
    expect(error).to_have_count(1)
    expect(error).to_contain_class("err")
    expect(page.locator("#status")).to_have_text("open")

    # Refused: a bogus token's authentication frame (status 401) is a failure too.
    page.click("#disconnect")
    expect(page.locator("#status")).to_contain_text("closed (code 1000")
    page.fill("#token", "Token not-a-real-token")
    page.click("#connect")
    expect(page.locator("#status")).to_contain_text("closed (code 4401")
    expect(auth).to_have_count(2)
    expect(auth.last).to_contain_text('"status_code": 401')
    expect(auth.last).to_contain_class("err")

    # Only those two are red: not the success, nor what was sent.
    expect(page.locator("#log .entry.err")).to_have_count(2)
