"""At most ``ORM_THREADS`` database connections per process, with Django's psycopg pool.

A real uvicorn process serves ``e2e.pool_app`` (one test-only consumer) with
``e2e.pool_settings``: the example's settings plus ``OPTIONS["pool"]`` (Django
>= 5.1, ``psycopg_pool``; ``CONN_MAX_AGE=0``, as Django requires with it) of
``max_size`` ``POOL_MAX_SIZE``, and ``CHANX["ORM_THREADS"]``. ``CLIENTS``
websockets each send ``FRAMES`` ``work`` frames at once; each frame's handler
reads (async ORM), sleeps ``SLEEP_SECONDS`` in ``pg_sleep`` (``sync_to_async``)
and writes a row (``database_sync_to_async``). More websockets than pool slots,
more pending frames than ORM threads. The test checks:

(a) the connections the process has checked out of the psycopg pool, counted
    exactly in it (``getconn``/``putconn``), never exceed ``ORM_THREADS`` (1 for
    ``None``: Channels' one shared thread), and reach it (the meter can see more
    than one: with ``ORM_THREADS=8`` the same load has 8 out, past the 4 case);
(b) pg_stat_activity, sampled every ``SAMPLE_SECONDS`` by application_name,
    agrees from the server's side: sessions not ``idle`` (a query running or a
    transaction open) never exceed that bound, sessions in all never exceed
    ``max_size``;
(c) every frame is answered and its row committed, with no error frame, no
    checkout that timed out (``PoolTimeout``), and no ERROR or traceback in the
    server's output.

It prints the figures ("psycopg pool figures: {...}", shown with ``-s``).
With the pool, a connection "closed" goes back to psycopg's pool (which keeps
``min_size`` or more open on the server): what chanx bounds is the checkouts.

A second test gives the pool fewer slots than ORM threads, as Django's
``"pool": True`` (4) does under chanx's default ``ORM_THREADS`` (8): a thread gives
its connection back when its unit ends (as at a request's end), so units waiting
for one get it, and nothing stays checked out once the load is over (before that
fix, an idle thread kept its connection and the waiting units hit ``PoolTimeout``).

PostgreSQL only: skipped ("database: ...") when ``DATABASE_URL`` is not a
PostgreSQL URL; skipped (a failure under ``CHANX_REQUIRE_ALL=1``) when Django is
older than 5.1 or ``psycopg_pool`` is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest
from websockets.asyncio.client import connect

from e2e.postgres import postgres_url
from e2e.servers import ExampleServer, example_env

CLIENTS = 50
FRAMES = 4  # work frames each client sends at once
SLEEP_SECONDS = 0.02  # pg_sleep in each handler
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
POOL_TIMEOUT = 5.0  # seconds a checkout may wait; every wait here is far shorter
SAMPLE_SECONDS = 0.01
LOAD_TIMEOUT = 60.0  # seconds for every frame to be answered (a failure's bound)
CREATE_TABLE = (  # e2e.pool_app.PoolFrame's (not imported here: it starts Django)
    "CREATE TABLE pool_frame (id bigserial PRIMARY KEY, client integer NOT NULL, "
    "n integer NOT NULL, seen integer NOT NULL)"
)

if postgres_url() is None:
    pytestmark = pytest.mark.skip(
        reason="database: Django's psycopg pool needs PostgreSQL (DATABASE_URL=postgres://...)"
    )
elif django.VERSION < (5, 1):
    pytestmark = pytest.mark.skip(
        reason=f"Django's psycopg pool needs Django >= 5.1 (this is {django.get_version()})"
    )
elif importlib.util.find_spec("psycopg_pool") is None:
    pytestmark = pytest.mark.skip(
        reason="Django's psycopg pool needs psycopg_pool (pip install psycopg-pool)"
    )


class Sampler:
    """pg_stat_activity of one application_name, every ``SAMPLE_SECONDS``, on a thread."""

    QUERY = (
        "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') "
        "FROM pg_stat_activity WHERE application_name = %s"
    )

    def __init__(self, url: str, application_name: str) -> None:
        self.url = url
        self.application_name = application_name
        self.sessions = 0  # the most sessions at once
        self.busy = 0  # the most sessions not idle at once
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(self.QUERY, [self.application_name]).fetchone()
                assert row is not None
                self.sessions = max(self.sessions, row[0])
                self.busy = max(self.busy, row[1])
                self.samples += 1
                time.sleep(SAMPLE_SECONDS)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def client(
    url: str, number: int, frames: int = FRAMES
) -> tuple[list[int], list[dict[str, Any]]]:
    """Send ``frames`` frames at once; the ``n`` of each reply, and the error frames."""
    answered: list[int] = []
    errors: list[dict[str, Any]] = []
    async with connect(url, open_timeout=LOAD_TIMEOUT, close_timeout=2) as ws:
        first = json.loads(await ws.recv())
        assert first["action"] == "authentication", first
        assert first["payload"]["status_code"] == 200, first
        for n in range(frames):
            await ws.send(json.dumps({"action": "work", "payload": {"client": number, "n": n}}))
        while len(answered) + len(errors) < frames:
            message = json.loads(await ws.recv())
            if message["action"] == "work_done":
                assert message["payload"]["client"] == number, message
                answered.append(message["payload"]["n"])
            elif message["action"] == "error":
                errors.append(message)
    return answered, errors


def create_table(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_TABLE.encode())


def count_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pool_frame").fetchone()
        assert row is not None
        return int(row[0])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class Run:
    """What one server run saw."""

    results: list[tuple[list[int], list[dict[str, Any]]]]  # per client: replies' n, errors
    seconds: float  # the load's, connects to last reply
    pool: dict[str, Any]  # GET /pool/ after the load
    sampler: Sampler
    rows: int
    output: str

    @property
    def answered(self) -> int:
        return sum(len(answered) for answered, _ in self.results)

    @property
    def error_frames(self) -> list[dict[str, Any]]:
        return [error for _, errors in self.results for error in errors]

    def figures(self, **extra: Any) -> dict[str, Any]:
        return {
            **extra,
            "frames_answered": self.answered,
            "error_frames": len(self.error_frames),
            "rows": self.rows,
            "load_s": round(self.seconds, 3),
            "checked_out_peak": self.pool["peak"],
            "checked_out_after": self.pool["checked_out"],
            "checkouts": self.pool["checkouts"],
            "checkout_timeouts": self.pool["timeouts"],
            "checkout_threads": self.pool["threads"],
            "pg_sessions_peak": self.sampler.sessions,
            "pg_busy_peak": self.sampler.busy,
            "pg_samples": self.sampler.samples,
            "pool_stats": self.pool["stats"],
        }


async def run_load(
    tmp_path: Path,
    orm_threads: int | None,
    clients: int = CLIENTS,
    frames: int = FRAMES,
    min_size: int = POOL_MIN_SIZE,
    max_size: int = POOL_MAX_SIZE,
    timeout: float = POOL_TIMEOUT,
    sleep: float = SLEEP_SECONDS,
    settle: float = 0.0,
) -> Run:
    """Serve ``e2e.pool_app`` with these settings; ``clients`` clients send ``frames`` each.

    ``settle``: then wait up to that long for the process to have no connection
    checked out (``Run.pool`` is the last look either way).
    """
    application_name = f"chanx-pool-{uuid.uuid4().hex[:12]}"
    env = example_env(
        tmp_path / "pool.sqlite3",  # a fresh database of DATABASE_URL's server
        DJANGO_SETTINGS_MODULE="e2e.pool_settings",
        POOL_ORM_THREADS=str(orm_threads),
        POOL_MIN_SIZE=str(min_size),
        POOL_MAX_SIZE=str(max_size),
        POOL_TIMEOUT=str(timeout),
        POOL_APPLICATION_NAME=application_name,
        POOL_SLEEP_SECONDS=str(sleep),
    )
    database = env["DATABASE_URL"]
    await asyncio.to_thread(create_table, database)
    server = ExampleServer(env, app="e2e.pool_app:application")
    await asyncio.to_thread(server.start)
    try:
        url = server.ws_url("/ws/pool/")
        with Sampler(database, application_name) as sampler:
            started = time.monotonic()
            results = await asyncio.wait_for(
                asyncio.gather(*(client(url, number, frames) for number in range(clients))),
                LOAD_TIMEOUT,
            )
            seconds = time.monotonic() - started
        pool = await asyncio.to_thread(get_json, server.base_url + "/pool/")
        deadline = time.monotonic() + settle
        while pool["checked_out"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pool = await asyncio.to_thread(get_json, server.base_url + "/pool/")
    finally:
        await asyncio.to_thread(server.stop)
    rows = await asyncio.to_thread(count_rows, database)
    output = server.output.text() if server.output else ""
    return Run(list(results), seconds, pool, sampler, rows, output)


@pytest.mark.parametrize("orm_threads", [4, 8, None], ids=["4", "8", "None"])
async def test_checkouts_bounded_by_orm_threads(orm_threads: int | None, tmp_path: Path) -> None:
    run = await run_load(tmp_path, orm_threads)
    pool, sampler = run.pool, run.sampler
    bound = orm_threads or 1  # None: Channels' one shared thread
    figures = run.figures(
        orm_threads=orm_threads,
        pool_max_size=POOL_MAX_SIZE,
        clients=CLIENTS,
        frames_sent=CLIENTS * FRAMES,
    )
    print(f"\npsycopg pool figures: {json.dumps(figures)}")

    # (c) Every frame answered and committed, nothing failed on the way.
    assert not run.error_frames, (run.error_frames[:3], figures)
    assert run.answered == CLIENTS * FRAMES, figures
    assert all(sorted(answered) == list(range(FRAMES)) for answered, _ in run.results), figures
    assert run.rows == CLIENTS * FRAMES, figures
    assert pool["timeouts"] == 0, figures
    assert pool["stats"].get("requests_errors", 0) == 0, figures
    bad = [line for line in run.output.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, bad[:10]
    # (a) The bound, and the load reached it: the meter would see more.
    assert pool["peak"] <= bound, (
        f"{pool['peak']} connections checked out at once, past ORM_THREADS={orm_threads}",
        figures,
    )
    assert pool["peak"] == bound, figures
    assert len(pool["threads"]) == bound, figures
    # (b) The server's side: no more sessions at work than that, none past max_size.
    assert sampler.samples > 0, figures
    assert sampler.busy <= bound, figures
    assert sampler.sessions <= POOL_MAX_SIZE, figures


async def test_idle_orm_threads_give_their_connection_back(tmp_path: Path) -> None:
    """Django's default pool (``"pool": True``: min_size = max_size = 4) under chanx's
    default ``ORM_THREADS=8``: 8 websockets, one frame each, all at once (a 0.3 s
    ``pg_sleep`` so that they overlap). Four units get a connection; the other four
    wait for one and get it as the first four end, and none stays checked out after
    (``checked_out_after``). Before a unit's end gave its connection back, an idle
    thread kept it: the other four waited until ``PoolTimeout``, and so would a
    Django view of the same process."""
    clients, threads, slots, timeout = 8, 8, 4, 2.0
    run = await run_load(
        tmp_path,
        threads,
        clients,
        frames=1,
        min_size=slots,
        max_size=slots,
        timeout=timeout,
        sleep=0.3,
        settle=1.0,
    )
    figures = run.figures(
        orm_threads=threads, pool_max_size=slots, clients=clients, frames_sent=clients
    )
    print(f"\npsycopg pool (max_size < ORM_THREADS) figures: {json.dumps(figures)}")
    assert run.pool["peak"] <= slots, figures
    assert not run.error_frames, (run.error_frames[:3], figures)
    assert run.answered == clients, figures
    # Nothing runs any more: no connection should stay out of the pool.
    assert run.pool["checked_out"] == 0, figures
