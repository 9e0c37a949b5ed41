"""End to end: the example served by uvicorn, driven by a real Chromium.

Starts its own server on a free loopback port with a fresh SQLite file, then
two browser contexts (alice and bob) chat in the Lobby, and alice watches a
streamed assistant reply arrive word by word.

Skipped when Playwright or /usr/bin/chromium is missing, unless
CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.servers import ExampleServer, chromium, example_env, prepare_demo_db, require_browser

UI_TIMEOUT = 15_000  # milliseconds, for every Playwright wait

require_browser(__name__)

from playwright.sync_api import Browser, Page  # noqa: E402

from assistants.generator import reply_for  # noqa: E402


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Migrate a fresh database, load the demo data, serve with uvicorn."""
    sqlite_path = tmp_path_factory.mktemp("e2e") / "db.sqlite3"
    prepare_demo_db(sqlite_path)
    # No REDIS_URL: one process, the in-memory channel layer will do.
    env = example_env(sqlite_path, ASSISTANT_TOKEN_DELAY="0.1")  # slow enough to watch
    with ExampleServer(env) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def login(browser: Browser, base_url: str, username: str) -> Page:
    """A fresh browser context logged in as `username` (password: <username>-password)."""
    context = browser.new_context(base_url=base_url)
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-password")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")
    return page


def open_lobby(page: Page) -> None:
    page.click("#rooms >> text=Lobby")
    page.wait_for_selector("#status[data-state=open]")


def test_two_users_chat_in_a_room(browser: Browser, base_url: str) -> None:
    alice = login(browser, base_url, "alice")
    bob = login(browser, base_url, "bob")
    open_lobby(alice)
    open_lobby(bob)
    assert alice.url == bob.url

    alice.fill("#text", "hello from alice")
    alice.press("#text", "Enter")
    bob_copy = bob.locator("#messages li", has_text="hello from alice")
    alice_copy = alice.locator("#messages li", has_text="hello from alice")
    bob_copy.wait_for()
    alice_copy.wait_for()
    assert "mine" in (alice_copy.get_attribute("class") or "").split()
    assert "mine" not in (bob_copy.get_attribute("class") or "").split()

    bob.fill("#text", "hi alice")
    bob.press("#text", "Enter")
    alice_reply = alice.locator("#messages li", has_text="hi alice")
    alice_reply.wait_for()
    assert "mine" not in (alice_reply.get_attribute("class") or "").split()
    assert (
        "mine"
        in (bob.locator("#messages li", has_text="hi alice").get_attribute("class") or "").split()
    )

    # Membership changes made over HTTP reach the other member's page live.
    alice.fill("#username", "admin")
    alice.press("#username", "Enter")
    bob.locator("#members li", has_text="admin").wait_for()
    alice.locator("#members li", has_text="admin").locator("button.remove").click()
    bob.locator("#members li", has_text="admin").wait_for(state="detached")

    alice.context.close()
    bob.context.close()


def test_assistant_reply_streams_token_by_token(browser: Browser, base_url: str) -> None:
    page = login(browser, base_url, "alice")
    page.goto("/assistants/")
    with page.expect_websocket(lambda ws: "/ws/assistants/" in ws.url) as socket_info:
        page.click("#new-conversation")
    socket = socket_info.value
    frames: list[dict[str, Any]] = []
    socket.on("framereceived", lambda payload: frames.append(_json(payload)))
    page.wait_for_selector("#status[data-state=open]")

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
    page.context.close()


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
