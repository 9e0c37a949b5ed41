"""End to end: the example served by uvicorn, driven by a real Chromium.

Starts its own server on a free loopback port with a fresh SQLite file, then
two browser contexts (alice and bob) chat in the Lobby, reload it and see the
stored history, alice (the Lobby's owner) removes bob, who is told so and can
no longer send, bob leaves by himself, and alice watches a streamed assistant
reply arrive word by word. The pages log in with the DRF token offered as the
``chanx.auth.<base64url>`` subprotocol (never in the URL or the server's
output), and session cookies still work alone. No page request fails (the
favicon included). Each test leaves the demo data as it found it, so the order
does not matter.

Skipped when Playwright or /usr/bin/chromium is missing, unless
CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from e2e.servers import ExampleServer, chromium, example_env, prepare_demo_db, require_browser

UI_TIMEOUT = 15_000  # milliseconds, for every Playwright wait

require_browser(__name__)

from playwright.sync_api import Browser, Page, Response, expect  # noqa: E402

from assistants.generator import reply_for  # noqa: E402


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ExampleServer, dict[str, Any]]]:
    """Migrate a fresh database, load the demo data, serve with uvicorn."""
    sqlite_path = tmp_path_factory.mktemp("e2e") / "db.sqlite3"
    demo = prepare_demo_db(sqlite_path)
    # No REDIS_URL: one process, the in-memory channel layer will do.
    env = example_env(sqlite_path, ASSISTANT_TOKEN_DELAY="0.1")  # slow enough to watch
    with ExampleServer(env) as server:
        yield server, demo


@pytest.fixture(scope="module")
def base_url(site: tuple[ExampleServer, dict[str, Any]]) -> str:
    return site[0].base_url


@pytest.fixture(scope="module")
def lobby(site: tuple[ExampleServer, dict[str, Any]]) -> str:
    """The Lobby's page (alice and bob are members, alice owns it)."""
    return f"/chat/{site[1]['lobby']}/"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


# Per page: HTTP responses >= 400 and JavaScript errors, checked by `close()`.
PROBLEMS: dict[Page, list[str]] = {}


def login(browser: Browser, base_url: str, username: str) -> Page:
    """A fresh browser context logged in as `username` (password: <username>-password)."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(UI_TIMEOUT)
    expect.set_options(timeout=UI_TIMEOUT)
    page = context.new_page()
    problems = PROBLEMS[page] = []

    def check(response: Response) -> None:
        if response.status >= 400:
            problems.append(f"{response.status} {response.request.method} {response.url}")

    context.on("response", check)
    page.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
    return page


def close(*pages: Page) -> None:
    """Close the pages' contexts; fail if any request of theirs failed."""
    problems = []
    for page in pages:
        page.context.close()
        problems += PROBLEMS.pop(page, [])
    assert problems == []


def open_lobby(page: Page) -> None:
    page.click("#rooms >> text=Lobby")
    page.wait_for_selector("#status[data-state=open]")


def chat(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def member(page: Page, username: str) -> Any:
    return page.locator(f"#members li:has-text('{username}')")


def add_member(page: Page, username: str) -> None:
    page.fill("#username", username)
    page.press("#username", "Enter")
    member(page, username).wait_for()


def expect_closed(page: Page, code: int, text: str) -> None:
    """The status line explains the close, and nothing can be sent any more."""
    status = page.locator("#status")
    expect(status).to_have_attribute("data-code", str(code))
    expect(status).to_have_text(text)
    expect(status).to_have_attribute("data-state", "closed")
    expect(page.locator("#text")).to_be_disabled()
    expect(page.locator("#send-form button")).to_be_disabled()


def test_two_users_chat_in_a_room(browser: Browser, base_url: str) -> None:
    alice = login(browser, base_url, "alice")
    bob = login(browser, base_url, "bob")
    open_lobby(alice)
    open_lobby(bob)
    assert alice.url == bob.url

    # Unique texts: the room keeps its history (and a database may be reused).
    hello, reply = f"hello from alice {uuid.uuid4().hex[:8]}", f"hi alice {uuid.uuid4().hex[:8]}"
    chat(alice, hello)
    bob_copy = bob.locator("#messages li", has_text=hello)
    alice_copy = alice.locator("#messages li", has_text=hello)
    bob_copy.wait_for()
    alice_copy.wait_for()
    assert "mine" in (alice_copy.get_attribute("class") or "").split()
    assert "mine" not in (bob_copy.get_attribute("class") or "").split()

    chat(bob, reply)
    alice_reply = alice.locator("#messages li", has_text=reply)
    alice_reply.wait_for()
    assert "mine" not in (alice_reply.get_attribute("class") or "").split()
    assert (
        "mine" in (bob.locator("#messages li", has_text=reply).get_attribute("class") or "").split()
    )

    # Membership changes made over HTTP reach the other member's page live.
    add_member(alice, "admin")
    member(bob, "admin").wait_for()
    expect(member(bob, "admin").locator("button")).to_have_count(0)  # bob may not remove
    member(alice, "admin").locator("button.remove").click()  # alice owns the Lobby
    member(bob, "admin").wait_for(state="detached")
    close(alice, bob)


# Opens a websocket from the page (protocols null: with the page's own openSocket),
# returns [negotiated subprotocol, authentication status].
PROBE = """async ([path, protocols]) => {
    const socket = protocols === null ? openSocket(path) : new WebSocket(wsUrl(path), protocols);
    const frame = await new Promise((resolve, reject) => {
        socket.onmessage = (event) => resolve(JSON.parse(event.data));
        socket.onclose = (event) => reject(new Error(`closed with ${event.code} before a frame`));
    });
    socket.onclose = null;
    socket.close();
    return [socket.protocol, frame.payload.status_code];
}"""


def test_pages_log_in_with_the_token_subprotocol_and_cookies_still_work(
    browser: Browser, site: tuple[ExampleServer, dict[str, Any]], lobby: str
) -> None:
    server, demo = site
    key = demo["tokens"]["alice"]
    alice = login(browser, server.base_url, "alice")
    with alice.expect_websocket() as socket_info:
        alice.goto(lobby)
    alice.wait_for_selector("#status[data-state=open]")
    assert socket_info.value.url == server.ws_url(f"/ws/chat/{demo['lobby']}/")  # no token
    assert alice.locator("meta[name=ws-token]").get_attribute("content") == key
    assert alice.evaluate("socket.protocol") == "chanx"  # the page offered chanx + chanx.auth.*
    offered = alice.evaluate("(key) => ['chanx', 'chanx.auth.' + b64url('Token ' + key)]", key)
    assert offered == ["chanx", "chanx.auth." + b64url(f"Token {key}")]
    path = f"/ws/chat/{demo['lobby']}/"

    # The session cookie alone still logs in (a socket without subprotocols)...
    assert alice.evaluate(PROBE, [path, []]) == ["", 200]
    # ...and without cookies the token does, while chanx alone is anonymous.
    alice.context.clear_cookies()
    assert alice.evaluate(PROBE, [path, None]) == ["chanx", 200]  # what the page itself does
    assert alice.evaluate(PROBE, [path, offered]) == ["chanx", 200]
    assert alice.evaluate(PROBE, [path, ["chanx"]]) == ["chanx", 401]
    assert alice.evaluate(PROBE, [path, ["chanx", "chanx.auth." + b64url("Token bogus")]]) == [
        "chanx",
        401,
    ]

    # The token never shows in the server's output (access log, chanx's records).
    assert server.output is not None
    output = server.output.text()
    assert key not in output and offered[1].removeprefix("chanx.auth.") not in output
    close(alice)


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_history_survives_a_reload_and_stays_text(browser: Browser, base_url: str) -> None:
    alice = login(browser, base_url, "alice")
    bob = login(browser, base_url, "bob")
    open_lobby(alice)
    open_lobby(bob)
    marker = uuid.uuid4().hex[:8]
    probe = f"<img src=x onerror=window.__pwned=1> {marker}"
    chat(bob, probe)
    chat(alice, f"answer {marker}")
    alice.locator("#messages li", has_text=f"answer {marker}").wait_for()

    # A reload shows both, once each (the page's history, then load_history over the socket).
    for page, mine in ((alice, f"answer {marker}"), (bob, probe)):
        with page.expect_websocket() as socket_info:
            page.reload()
        socket = socket_info.value
        with socket.expect_event("framereceived", lambda p: "chat_history" in str(p)):
            page.wait_for_selector("#status[data-state=open]")
        items = page.locator("#messages li", has_text=marker)
        expect(items).to_have_count(2)
        assert items.nth(0).text_content() == f"bob: {probe}"
        assert items.nth(1).text_content() == f"alice: answer {marker}"
        own = page.locator("#messages li.mine", has_text=marker)
        expect(own).to_have_count(1)
        expect(own).to_contain_text(mine)
        assert page.locator("#messages img").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
    close(alice, bob)


def test_removed_member_is_told_and_cannot_send(browser: Browser, base_url: str) -> None:
    alice = login(browser, base_url, "alice")
    bob = login(browser, base_url, "bob")
    open_lobby(alice)
    open_lobby(bob)
    # Only the buttons each may use: bob (a member) may leave, alice (the owner) remove.
    expect(bob.locator("#members button")).to_have_count(1)
    expect(member(bob, "bob").locator("button.leave")).to_have_count(1)
    expect(member(alice, "bob").locator("button.remove")).to_have_count(1)

    member(alice, "bob").locator("button.remove").click()
    expect_closed(bob, 4403, "You were removed from this room.")
    expect(bob.locator("#add-form input")).to_be_disabled()
    expect(bob.locator("#members button")).to_have_count(0)
    member(alice, "bob").wait_for(state="detached")

    # Reopened, the page says why the room refuses him.
    bob.reload()
    expect_closed(bob, 4403, "You are not allowed in this room.")
    expect(bob.locator("#not-member")).to_have_text("You are not a member of this room.")

    # Added back, he may leave by himself.
    add_member(alice, "bob")
    bob.reload()
    bob.wait_for_selector("#status[data-state=open]")
    member(bob, "bob").locator("button.leave").click()
    expect_closed(bob, 4403, "You left this room.")
    member(alice, "bob").wait_for(state="detached")
    add_member(alice, "bob")  # as the demo had it
    close(alice, bob)


def test_every_close_code_gets_a_human_message(browser: Browser, base_url: str, lobby: str) -> None:
    # Staff need not be members: the socket is refused, the member controls stay.
    admin = login(browser, base_url, "admin")
    admin.goto(lobby)
    expect_closed(admin, 4403, "You are not allowed in this room.")
    expect(admin.locator("#members button.remove")).to_have_count(2)
    expect(admin.locator("#add-form input")).to_be_enabled()

    messages = admin.evaluate(
        "[4401, 4403, 4404, 4500, 1000, 1006].map((code) => closeMessage(code, 'room'))"
    )
    assert messages == [
        "You are not logged in (or your session ended): log in again.",
        "You are not allowed in this room.",
        "There is no such room: it may have been deleted.",
        "The server failed to open the connection: try again later.",
        "Disconnected.",
        "Connection lost (code 1006): reload the page to reconnect.",
    ]
    # 4401 comes with a link to log in again, back to this page.
    admin.evaluate("showClosed(4401, closeMessage(4401, 'room'))")
    link = admin.locator("#status a")
    expect(link).to_have_text("Log in")
    assert link.get_attribute("href") == f"/login/?next={quote(lobby, safe='')}"

    # The favicon every page links (and browsers ask for anyway) is served.
    icon = admin.evaluate(
        """async () => {
            const href = document.querySelector("link[rel=icon]").href;
            const response = await fetch(href);
            return [new URL(href).pathname, response.status, response.headers.get("content-type")];
        }"""
    )
    assert icon == ["/favicon.ico", 200, "image/svg+xml"]
    close(admin)


def test_assistant_reply_streams_token_by_token(browser: Browser, base_url: str) -> None:
    page = login(browser, base_url, "alice")
    page.goto("/assistants/")
    with page.expect_websocket(lambda ws: "/ws/assistants/" in ws.url) as socket_info:
        page.click("#new-conversation")
    socket = socket_info.value
    assert "token" not in socket.url
    frames: list[dict[str, Any]] = []
    socket.on("framereceived", lambda payload: frames.append(_json(payload)))
    page.wait_for_selector("#status[data-state=open]")
    assert page.evaluate("socket.protocol") == "chanx"  # logged in with the token subprotocol

    question = "what is the weather like on the moon"
    with socket.expect_event("framereceived", lambda p: "complete_streaming" in str(p)):
        page.fill("#content", question)
        page.press("#content", "Enter")
        # Two partial states of the same reply, each read while it is still streaming.
        first = partial_reply(page, min_chunks=1)
        second = partial_reply(page, min_chunks=3)

    page.locator("li.assistant.complete").wait_for()
    final = page.locator("li.assistant.complete").text_content() or ""
    expected = reply_for(question)
    assert final == expected
    assert first and second != first and second.startswith(first)
    assert expected.startswith(second) and second != expected

    # The socket saw the reply as ordered word tokens, then one completion.
    streamed = [f["payload"]["content"] for f in frames if f.get("action") == "streaming"]
    assert len(streamed) == len(expected.split())
    assert "".join(streamed) == expected
    completes = [f for f in frames if f.get("action") == "complete_streaming"]
    assert [c["payload"]["reply"]["content"] for c in completes] == [expected]
    close(page)


def partial_reply(page: Page, min_chunks: int) -> str:
    """The text of the reply being streamed, once it has `min_chunks` tokens."""
    handle = page.wait_for_function(
        """(min) => {
            const li = document.querySelector("li.assistant.streaming");
            return li && Number(li.dataset.chunks) >= min ? li.textContent : null;
        }""",
        arg=min_chunks,
    )
    text: str = handle.json_value()
    return text


def _json(payload: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
