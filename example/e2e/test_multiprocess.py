"""Real servers, real sockets: the example under uvicorn, across processes.

- Two uvicorn processes share a Redis channel layer: alice on one, bob on the
  other, chat in the Lobby; a third process (``manage.py shell``) broadcasts
  an event both receive. A UUID/datetime/Decimal event survives msgpack.
- An idle connection logs no channel-layer failure (no outage, no record).
- Redis restarts under a connected client: the socket stays open, chanx logs
  the failure once and the recovery, re-joins its groups, and later
  broadcasts arrive; once recovered, an idle connection logs nothing more.
- Every connection a client closes is finished on the server ("Websocket
  disconnected"), also right after a frame, with the Redis layer; a client
  that closes with frames in flight causes no ERROR record.
- The ASGI app refuses cross-origin handshakes (403) and serves same-origin.
- Bob cannot watch alice's conversation (4403), and a token in the query
  string never reaches chanx's log lines.

Every server binds 127.0.0.1 on a free port and is stopped in teardown.
Skipped when redis-server is missing, unless CHANX_REQUIRE_ALL=1 (then it fails).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from e2e.servers import (
    REDIS_SERVER,
    ExampleServer,
    RedisServer,
    ShellWorker,
    example_env,
    prepare_demo_db,
    redis_available,
    shell,
    wait_until,
)

# Every timeout bounds a failure; no test waits one out when things work.
FRAME_TIMEOUT = 10.0  # seconds for any expected frame
RECOVERY_TIMEOUT = 15.0  # seconds for a broadcast to arrive again after Redis restarts
LOG_TIMEOUT = 15.0  # seconds for an expected log line
READ_CYCLE_TIMEOUT = 20.0  # seconds for channels_redis's 5 s blocking read to time out
CLEANUP_TIMEOUT = 15.0  # seconds for closed connections' consumers to finish

_REDIS_MISSING = f"these tests need a Redis server and {REDIS_SERVER} is missing"


@pytest.fixture(scope="module")
def needs_redis() -> None:
    if not redis_available():
        if os.environ.get("CHANX_REQUIRE_ALL") == "1":
            pytest.fail(_REDIS_MISSING + " (CHANX_REQUIRE_ALL=1)", pytrace=False)
        pytest.skip(_REDIS_MISSING)


# Servers #####################################################################


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A migrated SQLite file with the demo data and a DRF token per user."""
    sqlite_path = tmp_path_factory.mktemp("multiprocess") / "db.sqlite3"
    info = prepare_demo_db(sqlite_path)
    info["sqlite_path"] = sqlite_path
    return info


@pytest.fixture(scope="module")
def redis(needs_redis: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with server:
        yield server


@pytest.fixture(scope="module")
def servers(demo: dict[str, Any], redis: RedisServer) -> Iterator[list[ExampleServer]]:
    """Two uvicorn processes of the example on one Redis channel layer."""
    env = example_env(demo["sqlite_path"], redis.url)
    started: list[ExampleServer] = []
    try:
        for _ in range(2):
            started.append(ExampleServer(env).start())
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, demo: dict[str, Any]) -> Iterator[ExampleServer]:
    """One server: the first Redis-backed one, or an in-memory one without Redis."""
    if redis_available():
        yield request.getfixturevalue("servers")[0]
        return
    with ExampleServer(example_env(demo["sqlite_path"])) as memory_server:
        yield memory_server


# Client helpers ##############################################################


@asynccontextmanager
async def ws_client(
    server: ExampleServer,
    path: str,
    token: str | None = None,
    origin: str | None = None,
) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Token {token}"} if token else {}
    async with connect(
        server.ws_url(path),
        origin=origin or server.origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=FRAME_TIMEOUT,
        close_timeout=2,
    ) as ws:
        yield ws


async def recv_json(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    value = json.loads(frame)
    assert isinstance(value, dict), frame
    return value


async def recv_action(
    ws: ClientConnection, action: str, timeout: float = FRAME_TIMEOUT
) -> dict[str, Any]:
    """The next frame with ``action``, skipping others (pongs and the like)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"no {action!r} frame within {timeout}s")
        frame = await recv_json(ws, remaining)
        if frame.get("action") == action:
            return frame


async def authenticated(ws: ClientConnection) -> None:
    frame = await recv_json(ws)
    assert frame == {
        "action": "authentication",
        "payload": {"status_code": 200, "status_text": "OK", "data": {"detail": "OK"}},
    }


async def close_code(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> int | None:
    """Read until the server closes; its close code."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code


def connection_id(
    server: ExampleServer, path: str, user_id: int, known: Collection[str] = ()
) -> str:
    """conn_id of a connection to ``path`` by ``user_id`` (from the JSON log), not in ``known``."""
    assert server.output is not None

    def connected(line: str) -> str | None:
        record = _record(line)
        if (
            record.get("message") == "Websocket connected"
            and record.get("path") == path
            and record.get("user_id") == str(user_id)
            and record.get("conn_id") not in known
        ):
            return str(record["conn_id"])
        return None

    conn_id: str = server.output.wait_for(connected, LOG_TIMEOUT, f"{path} connected")
    return conn_id


def _record(line: str) -> dict[str, Any]:
    if not line.startswith("{"):
        return {}
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def broadcast_code(lobby: int, username: str, user_id: int = 999) -> str:
    """Python for a third process: RoomConsumer.broadcast_event_sync(member added)."""
    return (
        "from chat.consumers import RoomConsumer\n"
        "from chat.messages import MemberAddedEvent, MemberPayload\n"
        "RoomConsumer.broadcast_event_sync(\n"
        f"    MemberAddedEvent(payload=MemberPayload(user_id={user_id}, username={username!r})),\n"
        f"    ['room_{lobby}'],\n"
        ")\n"
        "result = 'sent'\n"
    )


# 1. Two server processes, one Redis layer ####################################


async def test_chat_and_events_cross_server_processes(
    servers: list[ExampleServer], redis: RedisServer, demo: dict[str, Any]
) -> None:
    first, second = servers
    assert first.pid != second.pid
    lobby, tokens = demo["lobby"], demo["tokens"]
    path = f"/ws/chat/{lobby}/"

    async with (
        ws_client(first, path, tokens["alice"]) as alice,
        ws_client(second, path, tokens["bob"]) as bob,
    ):
        await authenticated(alice)
        await authenticated(bob)

        await alice.send(json.dumps({"action": "send_chat", "payload": {"text": "hi from 1"}}))
        mine = await recv_action(alice, "chat_message")
        theirs = await recv_action(bob, "chat_message")
        # The message is stored (chat history): its id comes with it.
        assert isinstance(mine["payload"].get("id"), int), mine
        payload = {"id": mine["payload"]["id"], "author": "alice", "text": "hi from 1"}
        assert mine == {
            "action": "chat_message",
            "payload": payload,
            "is_mine": True,
            "is_current": True,
        }
        assert theirs == {
            "action": "chat_message",
            "payload": payload,
            "is_mine": False,
            "is_current": False,
        }

        await bob.send(json.dumps({"action": "send_chat", "payload": {"text": "hi from 2"}}))
        assert (await recv_action(alice, "chat_message"))["is_mine"] is False
        assert (await recv_action(bob, "chat_message"))["is_mine"] is True

        # A third process (think: a WSGI worker or a task) broadcasts an event.
        env = example_env(demo["sqlite_path"], redis.url)
        code = broadcast_code(lobby, "carol", 4242) + "print('\"sent\"')"
        assert await asyncio.to_thread(shell, code, env) == "sent"
        expected = {"action": "member_added", "payload": {"user_id": 4242, "username": "carol"}}
        assert await recv_action(alice, "member_added") == expected
        assert await recv_action(bob, "member_added") == expected

    # Each server logged its own user's connection.
    assert connection_id(first, path, demo["user_ids"]["alice"])
    assert connection_id(second, path, demo["user_ids"]["bob"])


_MSGPACK_PROBE = """
import asyncio, datetime, decimal, json, uuid
from typing import Literal
from channels.testing import WebsocketCommunicator
from pydantic import BaseModel
from rest_framework.permissions import AllowAny
from chanx import AsyncJsonWebsocketConsumer, BaseChannelEvent, BaseMessage, event_handler

class ProbePayload(BaseModel):
    id: uuid.UUID
    at: datetime.datetime
    amount: decimal.Decimal

class ProbeEvent(BaseChannelEvent):
    action: Literal["probe_event"] = "probe_event"
    payload: ProbePayload

class ProbeReply(BaseMessage):
    action: Literal["probe_reply"] = "probe_reply"
    payload: dict

SENT = ProbePayload(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    at=datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc),
    amount=decimal.Decimal("12345.6789"),
)

class Probe(AsyncJsonWebsocketConsumer[ProbeEvent]):
    authentication_classes = []
    permission_classes = [AllowAny]
    groups = ["msgpack_probe"]

    @event_handler
    async def on_probe(self, event: ProbeEvent) -> ProbeReply:
        got = event.payload
        return ProbeReply(payload={
            "types": [type(got.id).__name__, type(got.at).__name__, type(got.amount).__name__],
            "equal": got == SENT,
            "echo": got.model_dump(mode="json"),
        })

async def main():
    communicator = WebsocketCommunicator(Probe.as_asgi(), "/ws/probe/")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    auth = await communicator.receive_json_from(timeout=10)
    assert auth["payload"]["status_code"] == 200, auth
    await Probe.broadcast_event(ProbeEvent(payload=SENT), ["msgpack_probe"])
    reply = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    return reply

print(json.dumps(asyncio.run(main())))
"""


def test_uuid_datetime_decimal_event_survives_msgpack(
    redis: RedisServer, demo: dict[str, Any]
) -> None:
    """No example event carries these types, so a probe consumer does (real Redis)."""
    env = example_env(demo["sqlite_path"], redis.url)
    reply = shell(_MSGPACK_PROBE, env)  # a sync test: blocking is fine
    assert reply == {
        "action": "probe_reply",
        "payload": {
            "types": ["UUID", "datetime", "Decimal"],
            "equal": True,
            "echo": {
                "id": "12345678-1234-5678-1234-567812345678",
                "at": "2024-02-29T23:59:58.123456Z",
                "amount": "12345.6789",
            },
        },
    }


async def test_an_idle_connection_logs_no_layer_failure(
    servers: list[ExampleServer], redis: RedisServer, demo: dict[str, Any]
) -> None:
    """No outage, no failure record: an idle socket outlives channels_redis's 5 s
    blocking read (BZPOPMIN) without "Channel layer failed; retrying".

    No time window: the test waits until Redis has seen the connection's blocking
    read time out and be issued again, then closes the connection and reads its
    records up to "Websocket disconnected", its last."""
    server = servers[1]
    path = f"/ws/chat/{demo['lobby']}/"
    bob_id = demo["user_ids"]["bob"]
    known = [r["conn_id"] for r in server.records() if r.get("message") == "Websocket connected"]
    async with ws_client(server, path, demo["tokens"]["bob"]) as bob:
        await authenticated(bob)
        conn_id = connection_id(server, path, bob_id, known)
        await asyncio.to_thread(_wait_for_a_blocking_read_cycle, redis.url)
        await bob.send(json.dumps({"action": "ping"}))
        await recv_action(bob, "pong")
    messages = await asyncio.to_thread(_records_until_disconnected, server, conn_id)
    assert "Channel layer failed; retrying" not in messages, (
        "an idle connection logged a channel-layer failure without any outage: "
        + _failure_causes(server, conn_id)
    )


# 2. Redis restarts under a connected client ##################################


async def test_redis_restart_keeps_socket_and_rejoins_groups(
    needs_redis: None, demo: dict[str, Any], tmp_path: Path
) -> None:
    lobby, alice_id = demo["lobby"], demo["user_ids"]["alice"]
    path = f"/ws/chat/{lobby}/"
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = example_env(demo["sqlite_path"], redis.url)
    server = worker = None
    try:
        server = ExampleServer(env).start()
        worker = ShellWorker(env).start()  # the third process, alive across the restart

        async with ws_client(server, path, demo["tokens"]["alice"]) as alice:
            await authenticated(alice)
            conn_id = connection_id(server, path, alice_id)
            before = await asyncio.to_thread(worker.run, broadcast_code(lobby, "before"))
            assert before == (True, "sent")
            assert (await recv_action(alice, "member_added"))["payload"]["username"] == "before"

            redis.stop()  # SIGTERM; the group memberships die with it (no persistence)
            ok, detail = await asyncio.to_thread(worker.run, broadcast_code(lobby, "while-down"))
            assert not ok, "a broadcast cannot succeed while Redis is down"
            assert "Connection" in detail or "Error" in detail, detail
            failed = await asyncio.to_thread(
                _wait_record, server, conn_id, "Channel layer failed; retrying"
            )
            assert failed["path"] == path and failed["user_id"] == str(alice_id)
            assert "exc_info" in failed

            redis.start()  # same port, empty
            received = await _broadcast_until_received(worker, alice, lobby)
            assert received["payload"]["username"].startswith("after-")

            # Still the same open socket: it answers a ping.
            await alice.send(json.dumps({"action": "ping"}))
            assert await recv_action(alice, "pong") == {"action": "pong", "payload": None}

            recovered = await asyncio.to_thread(
                _wait_record, server, conn_id, "Channel layer recovered"
            )
            assert recovered["path"] == path

            # One outage, one failure record: the idle, recovered connection stays
            # quiet through a whole blocking read (channels_redis's 5 s timeout)
            # on the restarted Redis.
            await asyncio.to_thread(_wait_for_a_blocking_read_cycle, redis.url)
            messages = [r["message"] for r in server.records() if r.get("conn_id") == conn_id]
            assert "Websocket disconnected" not in messages  # the same socket all along
        # its records are complete once it is closed ("Websocket disconnected")
        messages = await asyncio.to_thread(_records_until_disconnected, server, conn_id)
        assert messages.count("Channel layer failed; retrying") == 1, (
            "one Redis outage must be logged once; got "
            f"{messages.count('Channel layer failed; retrying')} failure records: "
            + _failure_causes(server, conn_id)
        )
        assert messages.count("Channel layer recovered") == 1, messages
    finally:
        for process in (worker, server, redis):
            if process is not None:
                process.stop()


def _wait_record(
    server: ExampleServer,
    conn_id: str,
    message: str,
    timeout: float = LOG_TIMEOUT,
    nth: int = 1,
) -> dict[str, Any]:
    """The ``nth`` record of ``message`` for connection ``conn_id``."""
    assert server.output is not None
    seen: list[dict[str, Any]] = []

    def match(line: str) -> dict[str, Any] | None:
        record = _record(line)
        if record.get("conn_id") == conn_id and record.get("message") == message:
            seen.append(record)
            if len(seen) == nth:
                return record
        return None

    found: dict[str, Any] = server.output.wait_for(match, timeout, repr(message))
    return found


def _records_until_disconnected(server: ExampleServer, conn_id: str) -> list[str]:
    """Every record of connection ``conn_id`` once it has logged "Websocket
    disconnected", its last (logged after its tasks ended and its groups were left):
    nothing it logs can come later."""
    _wait_record(server, conn_id, "Websocket disconnected", CLEANUP_TIMEOUT)
    return [r["message"] for r in server.records() if r.get("conn_id") == conn_id]


def _blocking_reads(redis_url: str) -> tuple[int, int]:
    """(blocking reads Redis was sent, clients blocked in one now): BZPOPMIN is how
    channels_redis receives, with a 5 s timeout; Redis counts a call when it starts."""
    from redis import Redis

    with Redis.from_url(redis_url) as client:
        calls = client.info("commandstats").get("cmdstat_bzpopmin", {}).get("calls", 0)
        blocked = [c for c in client.client_list() if c.get("cmd") == "bzpopmin"]
        return int(calls), len(blocked)


def _wait_for_a_blocking_read_cycle(redis_url: str) -> None:
    """Until a channel-layer read blocked in Redis has ended (its 5 s timeout, with
    nothing to read) and the next one has started: whatever the server does when
    a blocking read times out (log a failure, say) is done by then."""
    calls, _ = wait_until(
        lambda: (reads := _blocking_reads(redis_url))[1] and reads,
        READ_CYCLE_TIMEOUT,
        "a channel-layer read blocked in Redis",
    )
    wait_until(
        lambda: _blocking_reads(redis_url)[0] > calls,
        READ_CYCLE_TIMEOUT,
        "a blocking read to time out and the next to start",
    )


def _failure_causes(server: ExampleServer, conn_id: str) -> str:
    """The last line of each failure's traceback, e.g. redis TimeoutError."""
    causes = [
        (r.get("exc_info") or "").strip().splitlines()[-1:]
        for r in server.records()
        if r.get("conn_id") == conn_id and r.get("message") == "Channel layer failed; retrying"
    ]
    return "; ".join(c[0] if c else "?" for c in causes)


async def _broadcast_until_received(
    worker: ShellWorker, ws: ClientConnection, lobby: int
) -> dict[str, Any]:
    """Broadcast again and again (a rejoin may not have happened yet) until one arrives."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        await asyncio.to_thread(worker.run, broadcast_code(lobby, f"after-{attempt}"))
        try:
            return await recv_action(ws, "member_added", timeout=0.5)
        except TimeoutError:
            continue
    raise AssertionError(f"no broadcast arrived within {RECOVERY_TIMEOUT}s of the restart")


# Closing is final ############################################################


async def test_every_closed_connection_is_cleaned_up_with_redis_layer(
    redis: RedisServer, demo: dict[str, Any]
) -> None:
    """Clients that close right after the authentication frame or right after a
    reply: every consumer finishes ("Websocket disconnected": tasks awaited, groups
    left), on a fresh server process (its first Redis reads are the racy ones)."""
    lobby, alice_id = demo["lobby"], demo["user_ids"]["alice"]
    path = f"/ws/chat/{lobby}/"
    cycles = 30
    with ExampleServer(example_env(demo["sqlite_path"], redis.url)) as server:
        for cycle in range(cycles):
            async with ws_client(server, path, demo["tokens"]["alice"]) as alice:
                await authenticated(alice)
                if cycle % 2:
                    await alice.send(json.dumps({"action": "ping"}))
                    await recv_action(alice, "pong")

        def connected() -> list[str]:
            return [
                r["conn_id"]
                for r in server.records()
                if r.get("message") == "Websocket connected" and r.get("path") == path
            ]

        assert server.output is not None
        server.output.wait_for(
            lambda _: len(connected()) >= cycles, LOG_TIMEOUT, f"{cycles} connections"
        )
        conn_ids = connected()
        assert len(conn_ids) == cycles and all(
            r.get("user_id") == str(alice_id)
            for r in server.records()
            if r.get("message") == "Websocket connected"
        )
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        for index, conn_id in enumerate(conn_ids):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                await asyncio.to_thread(
                    _wait_record, server, conn_id, "Websocket disconnected", remaining
                )
            except TimeoutError:
                later = [r["message"] for r in server.records() if r.get("conn_id") == conn_id]
                raise AssertionError(
                    f"connection {conn_id} ({index + 1} of {cycles}) closed but its consumer "
                    f"never finished within {CLEANUP_TIMEOUT}s; its records: {later}"
                ) from None


async def test_a_client_closing_with_frames_in_flight_is_not_an_error(
    server: ExampleServer, demo: dict[str, Any]
) -> None:
    """A client sends a burst of pings and closes after the first pong: the server
    finds the peer gone while it still answers. That is routine, not a "Failed to
    handle a websocket frame" ERROR (with a traceback) per frame left."""
    path = f"/ws/chat/{demo['lobby']}/"
    bob_id = demo["user_ids"]["bob"]
    conn_ids: list[str] = []
    for _ in range(5):
        async with ws_client(server, path, demo["tokens"]["bob"]) as bob:
            await authenticated(bob)
            conn_ids.append(connection_id(server, path, bob_id, conn_ids))
            for _ in range(20):
                await bob.send(json.dumps({"action": "ping"}))
            await recv_action(bob, "pong")  # then close with 19 pings in flight
    # Each connection's records are complete once it has logged "Websocket
    # disconnected" (its tasks ended): then nothing more of it can be logged.
    for conn_id in conn_ids:
        await asyncio.to_thread(_records_until_disconnected, server, conn_id)
    records = [r for r in server.records() if r.get("conn_id") in conn_ids]
    errors = [r for r in records if r.get("message") == "Failed to handle a websocket frame"]
    assert not errors, (
        f"{len(errors)} 'Failed to handle a websocket frame' records for "
        f"{len({r['conn_id'] for r in errors})} of {len(conn_ids)} routine client closes; "
        f"e.g. {(errors[0].get('exc_info') or '').strip().splitlines()[-1:]}"
    )
    assert [(r["level"], r["message"]) for r in records if r.get("level") == "ERROR"] == []


# 3. Origin checks ############################################################


async def test_cross_origin_handshake_is_refused(
    server: ExampleServer, demo: dict[str, Any]
) -> None:
    path = f"/ws/chat/{demo['lobby']}/"
    with pytest.raises(InvalidStatus) as refused:
        async with ws_client(server, path, demo["tokens"]["alice"], origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403

    async with ws_client(server, path, demo["tokens"]["alice"]) as same_origin:
        await authenticated(same_origin)


# 4. Isolation and log hygiene ################################################


async def test_bob_cannot_watch_alices_conversation_and_query_tokens_stay_out_of_logs(
    server: ExampleServer, demo: dict[str, Any]
) -> None:
    secret = f"secret-token-value-{uuid.uuid4().hex[:8]}"
    conversation = demo["alice_conversation"]
    path = f"/ws/assistants/{conversation}/"
    tokens = demo["tokens"]

    async with ws_client(server, f"{path}?token={secret}", tokens["bob"]) as bob:
        frame = await recv_json(bob)
        assert frame["action"] == "authentication"
        assert frame["payload"]["status_code"] == 403
        assert await close_code(bob) == 4403

    missing = f"/ws/assistants/{uuid.uuid4()}/"
    async with ws_client(server, f"{missing}?token={secret}", tokens["bob"]) as bob:
        assert (await recv_json(bob))["payload"]["status_code"] == 404
        assert await close_code(bob) == 4404

    # The owner gets in, with the same query string.
    async with ws_client(server, f"{path}?token={secret}", tokens["alice"]) as alice:
        await authenticated(alice)
        await alice.send(json.dumps({"action": "ping"}))
        assert await recv_action(alice, "pong") == {"action": "pong", "payload": None}
    connection_id(server, path, demo["user_ids"]["alice"])

    assert server.output is not None
    refused = server.output.wait_for(
        lambda line: (
            (r := _record(line)).get("message") == "Websocket authentication refused"
            and r.get("path") == path
            and r
        ),
        LOG_TIMEOUT,
        "the refusal's log line",
    )
    assert refused["status_code"] == 403 and refused["conn_id"]
    lines = server.output.text().splitlines()
    # The query string did reach the server: uvicorn's own access log prints it.
    assert any(secret in line and "WebSocket" in line for line in lines)
    chanx_lines = [line for line in lines if _record(line).get("logger") == "chanx"]
    assert chanx_lines
    for line in chanx_lines:
        assert secret not in line
        assert tokens["bob"] not in line and tokens["alice"] not in line
