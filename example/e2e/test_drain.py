"""Deploys and restarts without loss: SIGTERM to uvicorn under load.

A real uvicorn process serves ``e2e.drain_app`` (one test-only consumer) on the
database of ``DATABASE_URL`` (PostgreSQL in CI, Django's default
``CONN_MAX_AGE=0``; SQLite otherwise). ``CLIENTS`` clients each keep ``WINDOW``
``work`` frames in flight, sending the next as each reply arrives. Each frame's
handler writes a "started" row, sleeps ``HANDLER_SECONDS``, marks the row
finished (both committed), then replies. Once every client has had replies,
the test sends SIGTERM to uvicorn, then checks:

(a) every frame a client got the reply of has its row finished;
(b) no handler was cut mid-way: every started row is finished, and no frame
    started after its connection's ``websocket.disconnect`` arrived;
(c) every client sees close code 1012 (Service Restart: reconnect);
(d) the server exits by itself within ``DRAIN_TIMEOUT`` + ``EXIT_MARGIN`` seconds,
    with no "timeout graceful shutdown exceeded" (uvicorn's own bound is past
    chanx's drain, so only chanx decides), and chanx logs no ERROR on the way;
(e) it prints the figures ("drain figures: {...}", shown with ``-s``): frames
    answered, handlers not finished at the SIGTERM and how many of them finished
    after it, seconds from SIGTERM to the last finish and to the exit.

A second test hangs every handler past a short ``DRAIN_TIMEOUT``: the process
still exits within it (plus the margin), the handlers cut then.

uvicorn closes every socket with 1012 at once on SIGTERM and hands the app
``websocket.disconnect`` (code 1012), then waits for the app's tasks; a reply
sent after that cannot reach the client (the socket is gone), so a handler
that finishes in the drain has its work committed but its client never hears
of it: frames answered are a subset of frames finished, not equal. Frames
queued behind the running one are dropped, unstarted (no row, no reply).
Each of uvicorn's websocket implementations behaves the same way here; the
test runs on each (wsproto only when installed). Daphne is left out: on
SIGTERM it cancels the application task instead of a disconnect, cannot send
1012 (its websocket library refuses the code: clients see 1006), and a
websocket that opened in the last second makes it skip the cancel and exit
with the handlers mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from e2e.servers import ExampleServer, example_env, shell

CLIENTS = 20
WINDOW = 2  # frames each client keeps in flight: one running, one queued
HANDLER_SECONDS = 0.3
REPLIES_BEFORE_STOP = 3  # replies every client has had before the SIGTERM
DRAIN_TIMEOUT = 5.0  # chanx's default settings.CHANX["DRAIN_TIMEOUT"]; the example keeps it
SHORT_DRAIN_TIMEOUT = 1.0  # the bound's test: handlers that outlast the drain
EXIT_MARGIN = 3.0  # seconds past DRAIN_TIMEOUT for the process to exit
GRACEFUL_TIMEOUT = 15  # uvicorn's --timeout-graceful-shutdown: past the drain, never first
# Every timeout bounds a failure; no test waits one out when things work.
LOAD_TIMEOUT = 30.0  # seconds for every client to connect and get its first replies
CLOSE_TIMEOUT = 10.0  # seconds for every client to see the close after the SIGTERM
EXIT_TIMEOUT = GRACEFUL_TIMEOUT + 5.0  # seconds to wait for the exit (to measure a slow one)

_CREATE = (
    "import json\n"
    "from django.db import connection\n"
    "from e2e.drain_app import CREATE_TABLE\n"
    "with connection.cursor() as cursor:\n"
    "    cursor.execute(CREATE_TABLE)\n"
    "print(json.dumps(connection.vendor))\n"
)
_ROWS = (
    "import json\n"
    "from django.db import connection\n"
    "with connection.cursor() as cursor:\n"
    "    cursor.execute('SELECT client, n, started_at, finished_at, after_disconnect '\n"
    "                   'FROM drain_frame')\n"
    "    print(json.dumps(cursor.fetchall()))\n"
)


def _implementations() -> list[Any]:
    wsproto_missing = importlib.util.find_spec("wsproto") is None
    return [
        "websockets-sansio",  # uvicorn's default (--ws auto) with websockets installed
        "websockets",  # the legacy implementation (deprecated in uvicorn 0.35+)
        pytest.param(
            "wsproto",
            marks=pytest.mark.skipif(
                wsproto_missing, reason="uvicorn --ws wsproto needs the wsproto package"
            ),
        ),
    ]


class Client:
    """One connection: keeps ``window`` frames in flight until the server closes."""

    def __init__(self, number: int, load: Load) -> None:
        self.number = number
        self.load = load
        self.sent = 0
        self.started: set[int] = set()  # work_started frames seen
        self.answered: set[int] = set()  # work_done frames seen
        self.close_code: int | None = None

    async def run(self, url: str) -> None:
        async with connect(url, open_timeout=LOAD_TIMEOUT, close_timeout=2) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), LOAD_TIMEOUT))
            assert first["action"] == "authentication", first
            assert first["payload"]["status_code"] == 200, first
            try:
                for _ in range(self.load.window):
                    await self._send(ws)
                async for frame in ws:
                    message = json.loads(frame)
                    action = message.get("action")
                    if action not in ("work_started", "work_done"):
                        continue  # "complete" frames
                    assert message["payload"]["client"] == self.number, message
                    if action == "work_started":
                        self.started.add(message["payload"]["n"])
                    else:
                        self.answered.add(message["payload"]["n"])
                        await self._send(ws)
                    self.load.check()
            except ConnectionClosed:
                pass
            self.close_code = ws.close_code

    async def _send(self, ws: ClientConnection) -> None:
        payload = {"client": self.number, "n": self.sent}
        self.sent += 1
        await ws.send(json.dumps({"action": "work", "payload": payload}))


class Load:
    """``count`` clients; ``ready`` once ``ready_when(client)`` holds for each."""

    def __init__(self, count: int, window: int, ready_when: Callable[[Client], bool]) -> None:
        self.window = window
        self.ready_when = ready_when
        self.clients = [Client(number, self) for number in range(count)]
        self.ready = asyncio.Event()

    def check(self) -> None:
        if all(self.ready_when(client) for client in self.clients):
            self.ready.set()


@dataclass
class Stopped:
    """What a run saw: the rows, the clock of the SIGTERM, the exit."""

    vendor: str
    rows: list[tuple[int, int, float, float | None, bool]]  # client, n, started, finished, late
    stop_wall: float  # time.time() of the SIGTERM (the handlers' clock: same host)
    exit_seconds: float
    returncode: int
    output: str
    errors: list[dict[str, Any]]  # chanx's ERROR/CRITICAL log records


async def load_then_sigterm(
    tmp_path: Path, load: Load, ws_implementation: str, **env: str
) -> Stopped:
    """Serve ``e2e.drain_app``, run ``load`` until ready, SIGTERM, wait for the exit."""
    server_env = example_env(tmp_path / "drain.sqlite3", **env)
    vendor = await asyncio.to_thread(shell, _CREATE, server_env)
    server = ExampleServer(
        server_env,
        "--ws",
        ws_implementation,
        graceful_timeout=GRACEFUL_TIMEOUT,
        app="e2e.drain_app:application",
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(server.start)
        assert server.process is not None and server.output is not None
        url = server.ws_url("/ws/drain/")
        tasks = [asyncio.create_task(client.run(url)) for client in load.clients]
        ready = asyncio.create_task(load.ready.wait())
        await asyncio.wait([ready, *tasks], timeout=LOAD_TIMEOUT, return_when="FIRST_COMPLETED")
        if not ready.done():
            ready.cancel()
            for task in tasks:
                if task.done():
                    task.result()  # a client's failure
            pytest.fail(f"the load was not under way within {LOAD_TIMEOUT}s")

        stop_wall = time.time()
        stop = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        done, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        assert not pending, f"{len(pending)} clients still open {CLOSE_TIMEOUT}s after SIGTERM"
        for task in done:
            task.result()  # a client's own failure (not the close) fails the test
        try:
            returncode = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"uvicorn still running {EXIT_TIMEOUT}s after SIGTERM")
        exit_seconds = time.monotonic() - stop
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(server.stop)
    rows = [
        (client, n, started, finished, bool(late))
        for client, n, started, finished, late in await asyncio.to_thread(shell, _ROWS, server_env)
    ]
    errors = [r for r in server.records() if r.get("level") in ("ERROR", "CRITICAL")]
    output = server.output.text() if server.output else ""
    return Stopped(vendor, rows, stop_wall, exit_seconds, returncode, output, errors)


def assert_exited_by_itself(stopped: Stopped, drain_timeout: float, figures: Any) -> None:
    # uvicorn re-raises the SIGTERM after its graceful shutdown: -15 is a normal exit.
    assert stopped.returncode in (0, -signal.SIGTERM), (stopped.returncode, stopped.output[-3000:])
    assert stopped.exit_seconds <= drain_timeout + EXIT_MARGIN, figures
    # chanx's drain decided, not uvicorn's own bound (which cancels with no cleanup).
    assert "timeout graceful shutdown exceeded" not in stopped.output, stopped.output[-3000:]


@pytest.mark.parametrize("ws_implementation", _implementations())
async def test_sigterm_under_load_finishes_running_handlers(
    ws_implementation: str, tmp_path: Path
) -> None:
    load = Load(CLIENTS, WINDOW, lambda client: len(client.answered) >= REPLIES_BEFORE_STOP)
    stopped = await load_then_sigterm(
        tmp_path, load, ws_implementation, DRAIN_HANDLER_SECONDS=str(HANDLER_SECONDS)
    )
    rows, stop_wall = stopped.rows, stopped.stop_wall

    started = {(client, n): finished for client, n, _, finished, _ in rows}
    finished = {key for key, at in started.items() if at is not None}
    late = sorted((client, n) for client, n, *_, after_disconnect in rows if after_disconnect)
    answered = {(c.number, n) for c in load.clients for n in c.answered}
    sent = sum(client.sent for client in load.clients)
    # Not finished when the SIGTERM was sent: running then, or started in the
    # moment before uvicorn handled the signal (before the disconnect).
    in_flight = [(s, f) for _, _, s, f, _ in rows if f is None or f > stop_wall]
    running_at_sigterm = [f for s, f in in_flight if s <= stop_wall]
    drained = [f for _, f in in_flight if f is not None]
    # Entry to finish: HANDLER_SECONDS plus the wait for a free ORM thread.
    slowest = max((f - s for s, f in in_flight if f is not None), default=0.0)
    close_codes = Counter(client.close_code for client in load.clients)
    figures = {
        "ws": ws_implementation,
        "database": stopped.vendor,
        "clients": CLIENTS,
        "handler_s": HANDLER_SECONDS,
        "frames_sent": sent,
        "frames_answered": len(answered),
        "handlers_started": len(started),
        "handlers_finished": len(finished),
        "running_at_sigterm": len(running_at_sigterm),
        "started_after_sigterm_before_disconnect": len(in_flight) - len(running_at_sigterm),
        "unfinished_at_sigterm_finished_after_it": f"{len(drained)}/{len(in_flight)}",
        "queued_dropped_unstarted": sent - len(started),
        "slowest_of_them_s": round(slowest, 3),
        "last_finish_after_sigterm_s": round(max(drained, default=stop_wall) - stop_wall, 3),
        "sigterm_to_exit_s": round(stopped.exit_seconds, 3),
        "returncode": stopped.returncode,
        "close_codes": dict(close_codes),
    }
    print(f"\ndrain figures: {json.dumps(figures)}")

    # The load really had handlers mid-way at the stop, or the test proves nothing.
    assert len(running_at_sigterm) >= CLIENTS // 2, figures
    # (a) A reply the client got is committed work.
    assert answered <= finished, (sorted(answered - finished)[:10], figures)
    # (b) No handler was cancelled mid-way, and none started after the disconnect.
    unfinished = sorted(key for key, at in started.items() if at is None)
    assert not unfinished, (
        f"{len(unfinished)} handlers started and never finished (cancelled mid-way): "
        f"{unfinished[:10]}",
        figures,
    )
    assert not late, (f"{len(late)} frames started after the disconnect: {late[:10]}", figures)
    # (c) Every client is told to reconnect.
    assert close_codes == {1012: CLIENTS}, figures
    # (d) The process exits by itself, in time, chanx's drain deciding, with no error.
    assert_exited_by_itself(stopped, DRAIN_TIMEOUT, figures)
    assert not stopped.errors, stopped.errors[:3]


async def test_sigterm_cuts_handlers_that_outlast_the_drain(tmp_path: Path) -> None:
    """Handlers that would run for a minute: cut after DRAIN_TIMEOUT, the exit in time."""
    clients = 5
    load = Load(clients, 1, lambda client: bool(client.started))
    stopped = await load_then_sigterm(
        tmp_path,
        load,
        "websockets-sansio",
        DRAIN_HANDLER_SECONDS="60",
        CHANX_DRAIN_TIMEOUT=str(SHORT_DRAIN_TIMEOUT),
    )
    close_codes = Counter(client.close_code for client in load.clients)
    figures = {
        "drain_timeout_s": SHORT_DRAIN_TIMEOUT,
        "handlers_started": len(stopped.rows),
        "handlers_finished": sum(1 for row in stopped.rows if row[3] is not None),
        "sigterm_to_exit_s": round(stopped.exit_seconds, 3),
        "returncode": stopped.returncode,
        "close_codes": dict(close_codes),
    }
    print(f"\ndrain bound figures: {json.dumps(figures)}")

    assert close_codes == {1012: clients}, figures
    assert_exited_by_itself(stopped, SHORT_DRAIN_TIMEOUT, figures)
    # It did wait for them: not an immediate cancel.
    assert stopped.exit_seconds >= SHORT_DRAIN_TIMEOUT, figures
    # Cut after the drain, as documented: started, never finished.
    assert figures["handlers_started"] == clients, figures
    assert figures["handlers_finished"] == 0, figures
