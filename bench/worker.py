"""One benchmark process, run by run.py with the python of a peer's venv.

    worker.py info
    worker.py inproc --peer P --sizes JSON --scenarios seq,pipe,...   (prints JSON)
    worker.py serve  --peer P --ready-file F                           (uvicorn)
    worker.py client --url U --server-pid PID ...                      (prints JSON)
    worker.py pgsample --url DB --ready-file F --out F   (PostgreSQL backends, until SIGTERM)
    worker.py chanxinfo                                  (the chanx.py on PYTHONPATH: settings)

``inproc`` drives the peer's ASGI application directly: the scope, ``receive``
(an ``asyncio.Queue.get``) and ``send`` (a ``put_nowait``) are all the
driver there is, so nearly all measured time is the application's.
``serve`` runs the same application under uvicorn on 127.0.0.1, port 0.
``client`` is the websockets load client (it runs in the "current" venv for
every peer, so the client side is identical).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

TEXT = "hello world"
cpu = time.process_time_ns  # CPU time of the whole process, all threads
ECHO_FRAME = json.dumps({"action": "echo", "payload": {"text": TEXT}})
perf = time.perf_counter_ns


class BenchError(Exception):
    pass


# --------------------------------------------------------------------- setup
def setup_peer(peer: str):
    os.environ["BENCH_PEER"] = peer
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsettings")
    import django

    django.setup()
    return importlib.import_module(f"peers.{peer}")


def ensure_tokens(n: int) -> list[tuple]:
    """Migrate this peer's database and return n users' DRF token headers.

    One user and one token per header (created once per run: the SQLite file
    lives in the run's temp dir).
    """
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    call_command("migrate", run_syncdb=True, verbosity=0)
    User = get_user_model()
    have = User.objects.filter(username__startswith="bench-").count()
    if have < n:
        users = User.objects.bulk_create(
            [User(username=f"bench-{i}", password="!") for i in range(have, n)]
        )
        users = list(User.objects.filter(username__in=[u.username for u in users]))
        Token.objects.bulk_create([Token(key=Token.generate_key(), user=u) for u in users])
    keys = list(
        Token.objects.filter(user__username__startswith="bench-")
        .order_by("user__username")
        .values_list("key", flat=True)[:n]
    )
    return [((b"authorization", f"Token {key}".encode()),) for key in keys]


def db_setup(rows: int) -> dict:
    """The DB job's schema and rows 1..rows (run once per run, on PostgreSQL)."""
    from benchapp.models import Row
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", run_syncdb=True, verbosity=0)
    have = Row.objects.count()
    if have < rows:
        Row.objects.bulk_create([Row(text="bench") for _ in range(rows - have)])
    return {"rows": Row.objects.count(), "vendor": connection.vendor,
            "server_version": connection.pg_version if connection.vendor == "postgresql" else None}  # fmt: skip


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "executable": sys.executable}
    for dist in (
        "Django",
        "channels",
        "djangorestframework",
        "pydantic",
        "pydantic_core",
        "uvicorn",
        "websockets",
        "uvloop",
        "httptools",
        "psutil",
        "psycopg",
        "chanx",
        "djangochannelsrestframework",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


# ------------------------------------------------------------ lean ASGI driver
class Conn:
    """One websocket connection to an ASGI app, driven through asyncio queues."""

    __slots__ = ("inq", "outq", "sink", "task")

    def __init__(self, app, path: str, headers: tuple = ()):
        self.inq: asyncio.Queue = asyncio.Queue()
        self.outq: asyncio.Queue = asyncio.Queue()
        self.sink = None
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"origin", b"http://127.0.0.1:8000"),
                *headers,
            ],
            "subprotocols": [],
            "state": {},
        }
        self.task = asyncio.get_running_loop().create_task(app(scope, self.inq.get, self._send))

    async def _send(self, message):
        sink = self.sink
        if sink is not None and message["type"] == "websocket.send":
            sink(message)
        else:
            self.outq.put_nowait(message)

    async def connect(self, frames: int) -> list[str]:
        self.inq.put_nowait({"type": "websocket.connect"})
        msg = await self.outq.get()
        if msg["type"] != "websocket.accept":
            raise BenchError(f"connect not accepted: {msg}")
        return [await self.recv() for _ in range(frames)]

    async def recv(self) -> str:
        msg = await self.outq.get()
        if msg["type"] != "websocket.send":
            raise BenchError(f"expected a frame, got {msg}")
        return msg["text"]

    def disconnect(self) -> None:
        self.inq.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def close(self) -> None:
        self.disconnect()
        await asyncio.wait_for(self.task, 30)


async def close_all(conns) -> None:
    for c in conns:
        c.disconnect()
    await asyncio.wait_for(asyncio.gather(*(c.task for c in conns), return_exceptions=True), 120)


# --------------------------------------------------------- in-process scenarios
async def verify(peer, app) -> dict:
    """Check the echo reply; count thread hops per message (both routes) and per connect."""
    from asgiref.sync import SyncToAsync

    out: dict = {}
    c = Conn(app, "/ws/echo/")
    out["connect_frames"] = [json.loads(f) for f in await c.connect(peer.CONNECT_FRAMES)]
    got = json.loads(await _echo_once(c))
    if got != peer.expected_reply(TEXT):
        raise BenchError(f"echo reply {got!r} != expected {peer.expected_reply(TEXT)!r}")
    await c.close()

    # Thread hops: every sync_to_async / database_sync_to_async call goes
    # through SyncToAsync.__call__ (Channels' aclose_old_connections is one).
    real = SyncToAsync.__call__
    calls = [0]

    async def counting(self, *args, **kwargs):
        calls[0] += 1
        return await real(self, *args, **kwargs)

    SyncToAsync.__call__ = counting
    try:
        for route in ("echo", "echo-nohop"):
            c = Conn(app, f"/ws/{route}/")
            await c.connect(peer.CONNECT_FRAMES)
            calls[0] = 0
            for _ in range(20):
                await _echo_once(c)
            out[f"hops_per_msg_{route.replace('-', '_')}"] = calls[0] / 20
            await c.close()
        c = Conn(app, "/ws/connect/")
        calls[0] = 0
        await c.connect(peer.CONNECT_FRAMES)
        out["hops_per_connect"] = calls[0]
        await c.close()
        (headers,) = await asyncio.to_thread(_tokens, 1)
        c = Conn(app, "/ws/auth/", headers)
        calls[0] = 0
        await c.connect(peer.CONNECT_FRAMES)
        out["hops_per_connect_token"] = calls[0]
        got = json.loads(await _echo_once(c))
        if got != peer.expected_reply(TEXT):
            raise BenchError(f"ws/auth/ echo reply {got!r} != {peer.expected_reply(TEXT)!r}")
        await c.close()
    finally:
        SyncToAsync.__call__ = real
    return out


async def _echo_once(c: Conn) -> str:
    c.inq.put_nowait({"type": "websocket.receive", "text": ECHO_FRAME})
    return await c.recv()


async def _open_echo(peer, app, route: str):
    """Connect, check one reply, and return (conn, the reply text to expect)."""
    c = Conn(app, f"/ws/{route}/")
    await c.connect(peer.CONNECT_FRAMES)
    ref = await _echo_once(c)
    if json.loads(ref) != peer.expected_reply(TEXT):
        raise BenchError(f"{route}: echo reply {ref!r} != {peer.expected_reply(TEXT)!r}")
    return c, ref


def _bad_reply(route: str, got: str, ref: str) -> BenchError:
    return BenchError(f"{route}: reply {got!r} differs from the first reply {ref!r}")


async def seq(peer, app, route: str, n: int, warm: int) -> dict:
    c, ref = await _open_echo(peer, app, route)
    put, recv = c.inq.put_nowait, c.recv
    msg = {"type": "websocket.receive", "text": ECHO_FRAME}
    for _ in range(warm):
        put(dict(msg))
        await recv()
    bad = None
    c0, t0 = cpu(), perf()
    for _ in range(n):
        put(dict(msg))
        got = await recv()
        if got != ref:
            bad = got
    dt, dc = perf() - t0, cpu() - c0
    await c.close()
    if bad is not None:
        raise _bad_reply(route, bad, ref)
    return {
        "us_per_msg": dt / n / 1e3,
        "cpu_us_per_msg": dc / n / 1e3,
        "msgs_per_s": n / (dt / 1e9),
    }


async def pipe(peer, app, route: str, batch: int, batches: int) -> dict:
    c, ref = await _open_echo(peer, app, route)
    put, recv = c.inq.put_nowait, c.recv
    msg = {"type": "websocket.receive", "text": ECHO_FRAME}
    total = total_cpu = 0
    bad = None
    for b in range(batches + 1):  # batch 0 is the warm-up
        c0, t0 = cpu(), perf()
        for _ in range(batch):
            put(dict(msg))
        for _ in range(batch):
            got = await recv()
            if got != ref:
                bad = got
        if b:
            total += perf() - t0
            total_cpu += cpu() - c0
    await c.close()
    if bad is not None:
        raise _bad_reply(route, bad, ref)
    n = batch * batches
    return {
        "us_per_msg": total / n / 1e3,
        "cpu_us_per_msg": total_cpu / n / 1e3,
        "msgs_per_s": n / (total / 1e9),
    }


def _tokens(n: int) -> list[tuple]:
    from django.db import close_old_connections

    try:
        return ensure_tokens(n)
    finally:
        close_old_connections()


async def connect(peer, app, n: int, warm: int, token: bool = False) -> dict:
    """Mean time of n sequential connects on ws/connect/ (or ws/auth/ with a DRF token)."""
    frames = peer.CONNECT_FRAMES
    times = []
    cpus = 0
    pool = await asyncio.to_thread(_tokens, min(100, warm + n)) if token else [()]
    for i in range(warm + n):
        c = Conn(app, "/ws/auth/", pool[i % len(pool)]) if token else Conn(app, "/ws/connect/")
        c0, t0 = cpu(), perf()
        await c.connect(frames)
        dt, dc = perf() - t0, cpu() - c0
        await c.close()
        if i >= warm:
            times.append(dt)
            cpus += dc
    return {
        "us_per_connect": statistics.fmean(times) / 1e3,
        "cpu_us_per_connect": cpus / n / 1e3,
        "p50_us": statistics.median(times) / 1e3,
    }


async def fanout(peer, app, nconns: int, rounds: int, warm: int, kind: str) -> dict:
    """Time from the trigger until all nconns connections got their frame.

    kind "fanout": server-side ``peer.broadcast()`` (group_send / broadcast_event);
    "fanout_nohop": the same on the no-hop consumers;
    "chat": connection 0 sends a "shout" frame that its consumer relays to the group.
    """
    from channels.layers import get_channel_layer

    route = {"fanout": "/ws/fanout/", "fanout_nohop": "/ws/fanout-nohop/", "chat": "/ws/chat/"}[
        kind
    ]
    group = peer.CHAT_GROUP if kind == "chat" else peer.FANOUT_GROUP
    expected = peer.expected_chat if kind == "chat" else peer.expected_fanout
    state = {"count": 0, "target": nconns, "event": None, "last": None}

    def sink(message):
        state["count"] += 1
        if state["count"] >= state["target"]:
            state["last"] = message["text"]
            state["event"].set()

    conns = []
    for _ in range(nconns):
        c = Conn(app, route)
        await c.connect(peer.CONNECT_FRAMES)
        c.sink = sink
        conns.append(c)
    layer = get_channel_layer()
    deadline = time.monotonic() + 60
    while len(layer.groups.get(group, ())) < nconns:
        if time.monotonic() > deadline:
            raise BenchError(
                f"only {len(layer.groups.get(group, ()))} of "
                f"{nconns} connections joined group {group!r}"
            )
        await asyncio.sleep(0.01)
    times, cpus = [], []
    for i in range(warm + rounds):
        state["count"] = 0
        state["event"] = asyncio.Event()
        text = f"{TEXT} {i}"
        c0, t0 = cpu(), perf()
        if kind == "chat":
            conns[0].inq.put_nowait(
                {
                    "type": "websocket.receive",
                    "text": json.dumps({"action": "shout", "payload": {"text": text}}),
                }
            )
        else:
            await peer.broadcast(text, kind == "fanout_nohop")
        await asyncio.wait_for(state["event"].wait(), 120)
        dt, dc = perf() - t0, cpu() - c0
        await asyncio.sleep(0)  # a frame beyond nconns would show up here
        if state["count"] != nconns:
            raise BenchError(f"{state['count']} frames for {nconns} connections")
        got, want = json.loads(state["last"]), expected(text)
        if {k: got.get(k) for k in want} != want:
            raise BenchError(f"{kind} frame {got!r} does not contain {want!r}")
        if i >= warm:
            times.append(dt)
            cpus.append(dc)
    await close_all(conns)
    return {
        "ms": statistics.median(times) / 1e6,
        "cpu_ms": statistics.median(cpus) / 1e6,
        "us_per_conn": statistics.median(times) / 1e3 / nconns,
    }


async def memory(peer, app, nconns: int, token: bool = True) -> dict:
    """Bytes per idle connection that went through the peer's connect (auth included).

    token: ws/auth/, each connection with its own user's DRF token;
    otherwise ws/echo/ as an anonymous user.
    """
    import tracemalloc

    import psutil

    proc = psutil.Process()
    route = "/ws/auth/" if token else "/ws/echo/"
    pool = await asyncio.to_thread(_tokens, nconns) if token else [()] * nconns

    async def open_n(n):
        conns = []
        for i in range(n):
            c = Conn(app, route, pool[i])
            await c.connect(peer.CONNECT_FRAMES)
            conns.append(c)
        for _ in range(5):
            await asyncio.sleep(0)
        return conns

    await close_all(await open_n(min(50, nconns)))  # warm caches, lazy imports
    gc.collect()
    driver = await _driver_bytes(nconns, pool)
    # pass 1: RSS (no tracemalloc overhead in the process)
    rss0 = proc.memory_info().rss
    conns = await open_n(nconns)
    gc.collect()
    rss1 = proc.memory_info().rss
    await close_all(conns)
    del conns
    gc.collect()
    # pass 2: Python heap, traced
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    conns = await open_n(nconns)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    await close_all(conns)
    return {
        "traced_bytes_per_conn": (traced - driver) / nconns,
        "traced_incl_driver_bytes_per_conn": traced / nconns,
        "driver_bytes_per_conn": driver / nconns,
        "rss_bytes_per_conn": (rss1 - rss0) / nconns,
    }


async def _driver_bytes(nconns: int, pool: list) -> int:
    """Traced bytes the driver itself holds for nconns idle connections (a null app)."""
    import tracemalloc

    async def null_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    conns = []
    for i in range(nconns):
        c = Conn(null_app, "/ws/echo/", pool[i])
        await c.connect(0)
        conns.append(c)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    await close_all(conns)
    return held


async def log_verify(peer, app, n: int = 20) -> dict:
    """Log records written per echo frame on ws/echo-log/ (the logging job's config)."""
    import logging

    path = os.environ["BENCH_LOG_FILE"]

    def records() -> list[bytes]:
        for h in logging.getLogger("chanx").handlers + logging.getLogger("bench.raw").handlers:
            h.flush()
        with open(path, "rb") as f:
            return f.read().splitlines()

    c = Conn(app, "/ws/echo-log/")
    await c.connect(peer.CONNECT_FRAMES)
    await _echo_once(c)  # connect's own records are written by now
    before = len(records())
    for _ in range(n):
        await _echo_once(c)
    after = records()
    await c.close()
    last = json.loads(after[-1]) if len(after) > before else {}
    if last.get("message") != "Sent websocket message":
        raise BenchError(f"the last log record of an echo is {last!r}")
    after = len(after)
    return {"records_per_msg": (after - before) / n, "record_keys": " ".join(sorted(last))}


async def run_inproc(peer_name: str, scenarios: list[str], sizes: dict) -> dict:
    peer = setup_peer(peer_name)
    app = peer.application
    res: dict = {}
    s = sizes
    for name in scenarios:
        if name == "verify":
            res[name] = await verify(peer, app)
        elif name == "seq":
            res[name] = await seq(peer, app, "echo", s["seq_n"], s["seq_warm"])
        elif name == "pipe":
            res[name] = await pipe(peer, app, "echo", s["pipe_batch"], s["pipe_batches"])
        elif name == "nohop_seq":
            res[name] = await seq(peer, app, "echo-nohop", s["seq_n"], s["seq_warm"])
        elif name == "nohop_pipe":
            res[name] = await pipe(peer, app, "echo-nohop", s["pipe_batch"], s["pipe_batches"])
        elif name == "connect":
            res[name] = await connect(peer, app, s["connect_n"], s["connect_warm"])
        elif name == "connect_token":
            res[name] = await connect(peer, app, s["connect_n"], s["connect_warm"], token=True)
        elif name == "log_verify":
            res[name] = await log_verify(peer, app)
        elif name == "log_seq":
            res[name] = await seq(peer, app, "echo-log", s["seq_n"], s["seq_warm"])
        elif name == "log_nohop_seq":
            res[name] = await seq(peer, app, "echo-log-nohop", s["seq_n"], s["seq_warm"])
        elif name == "log_nohop_pipe":
            res[name] = await pipe(peer, app, "echo-log-nohop", s["pipe_batch"], s["pipe_batches"])
        elif name in ("fanout", "fanout_nohop", "chat"):
            res[name] = await fanout(
                peer, app, s["fanout_conns"], s["fanout_bcasts"], s["fanout_warm"], name
            )
        elif name == "memory":
            res[name] = await memory(peer, app, s["mem_conns"], token=True)
        elif name == "memory_anon":
            res[name] = await memory(peer, app, s["mem_conns"], token=False)
        else:
            raise SystemExit(f"unknown scenario {name}")
        gc.collect()
    return res


# --------------------------------------------------------------------- server
STATS_PATH = "/__bench_stats__/"


def with_stats(app):
    """Count thread hops and DB connects in this process; a websocket on STATS_PATH reads them.

    Every ``sync_to_async`` / ``database_sync_to_async`` call goes through
    ``SyncToAsync.__call__`` (the ORM's ``aget``/``asave`` too); the counting
    wrapper is one plain function call per hop, the same for every peer.
    New DB connections are counted by Django's ``connection_created`` signal.
    From the first connection on, a task (``_monitor``) samples the event
    loop's lag and the ORM threads' load every 10 ms.
    """
    from asgiref.sync import SyncToAsync
    from django.db.backends.signals import connection_created

    stats = {"hops": 0, "db_connects": 0, "lag_s": 0.0, "lag_max_s": 0.0, "ticks": 0,
             "orm_busy": 0, "orm_waiting": 0}  # fmt: skip
    monitor: list = []
    real = SyncToAsync.__call__

    def counting(self, *args, **kwargs):
        stats["hops"] += 1
        return real(self, *args, **kwargs)

    SyncToAsync.__call__ = counting

    def on_connect(sender, connection, **kwargs):
        stats["db_connects"] += 1

    connection_created.connect(on_connect, weak=False)

    async def wrapped(scope, receive, send):
        if not monitor:
            monitor.append(asyncio.get_running_loop().create_task(_monitor(stats)))
        if scope["type"] == "websocket" and scope["path"] == STATS_PATH:
            await receive()
            await send({"type": "websocket.accept"})
            extra = {}
            chanx = sys.modules.get("chanx")
            tracked = getattr(chanx, "_DB_CONNECTIONS", None)
            if tracked is not None:  # chanx.py's connection tracking, while it has one
                with contextlib.suppress(TypeError):
                    extra["chanx_tracked_connections"] = len(tracked)
            extra.update(_orm_threads(chanx))
            await send({"type": "websocket.send", "text": json.dumps({**stats, **extra})})
            stats["lag_max_s"] = 0.0  # the next read reports the most since this one
            await send({"type": "websocket.close", "code": 1000})
            return
        await app(scope, receive, send)

    return wrapped


async def _monitor(stats: dict, tick: float = 0.01) -> None:
    """Every ``tick``: the event loop's lag (how late a ``sleep(tick)`` wakes up: time the
    loop spent on other callbacks, or waiting for the GIL held by a thread), and the
    ORM threads' load: chanx's pool threads busy and units waiting for one, or the
    calls queued for asgiref's one shared thread (Channels; ``ORM_THREADS=None``)."""
    from asgiref.sync import SyncToAsync

    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(tick)
        lag = max(0.0, loop.time() - t - tick)
        stats["lag_s"] += lag
        stats["lag_max_s"] = max(stats["lag_max_s"], lag)
        stats["ticks"] += 1
        pools = getattr(sys.modules.get("chanx"), "_POOLS", None) or {}
        # a pool of ORM_THREADS=None runs its units on the shared thread
        sized = [p for p in list(pools.values()) if getattr(p, "size", 1) is not None]
        if sized:
            with contextlib.suppress(AttributeError, TypeError):
                for pool in sized:
                    stats["orm_busy"] += len(pool.threads) - len(pool.free)
                    stats["orm_waiting"] += len(pool.waiting)
        else:
            queue = getattr(SyncToAsync.single_thread_executor, "_work_queue", None)
            if queue is not None:
                stats["orm_waiting"] += queue.qsize()


def _orm_threads(chanx) -> dict:
    """The threads this process may run ORM calls on, i.e. DB connections per alias.

    Channels (and chanx without ``ORM_THREADS``, or with ``ORM_THREADS=None``):
    asgiref's one shared thread. chanx with ``ORM_THREADS=N``: a pool of N
    (``orm_threads_started``: how many of them it has started so far).
    """
    settings = getattr(chanx, "chanx_settings", None)
    try:
        size = settings.ORM_THREADS if settings is not None else None
    except AttributeError:  # a chanx.py without the setting
        size = None
    out = {"orm_threads_bound": size or 1}
    pools = getattr(chanx, "_POOLS", None)
    if size and isinstance(pools, dict):
        out["orm_threads_started"] = sum(len(getattr(p, "threads", ())) for p in pools.values())
    return out


def serve(peer_name: str, ready_file: str, count: bool = False) -> None:
    import socket

    import uvicorn

    peer = setup_peer(peer_name)
    app = with_stats(peer.application) if count else peer.application
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)

    tmp = ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": port, "pid": os.getpid()}, f)
    # uvicorn listens on the socket as soon as serve() starts; the kernel
    # queues connections made before that, so the port is usable at once.
    sock.listen(1024)
    os.replace(tmp, ready_file)
    server.run(sockets=[sock])


# --------------------------------------------------------------------- client
async def _stats(url: str) -> dict:
    from websockets.asyncio.client import connect as ws_connect

    base = url.split("/ws/", 1)[0]
    async with ws_connect(base + STATS_PATH, compression=None, ping_interval=None) as ws:
        return json.loads(await ws.recv())


async def _open_conns(a) -> list:
    """Open ``a.conns`` sockets to ``a.url``, each past its ``a.connect_frames`` greeting frames."""
    from websockets.asyncio.client import connect as ws_connect

    conns = []
    for _ in range(a.conns):
        ws = await ws_connect(
            a.url, compression=None, ping_interval=None, max_queue=None, open_timeout=30
        )
        for _ in range(a.connect_frames):
            await ws.recv()
        conns.append(ws)
    return conns


def _pg_cpu(postmaster) -> float:
    """CPU seconds of a PostgreSQL server so far: the postmaster, its exited (reaped)
    children, and its live children (backends come and go under CONN_MAX_AGE=0)."""
    import psutil

    t = postmaster.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


async def db_client(a) -> dict:
    """Each connection bumps its own row (id = its index + 1) and checks the count goes up by one.

    Besides throughput and latency: CPU used during the timed phase by the
    server (uvicorn) process, by PostgreSQL (``--pg-pid``: its postmaster) and
    by this client, each as a fraction of one core, to tell which one is the limit.
    """
    import psutil
    server = psutil.Process(a.server_pid)
    postmaster = psutil.Process(a.pg_pid) if a.pg_pid else None
    conns = await _open_conns(a)
    bad: list[str] = []
    last: dict[int, int] = {}

    async def loop(row_id, ws, n, lats):
        frame = json.dumps({"action": "bump", "payload": {"id": row_id}})
        send, recv = ws.send, ws.recv
        for _ in range(n):
            t0 = perf()
            await send(frame)
            got = await recv()
            lats.append(perf() - t0)
            reply = json.loads(got)
            hits = reply.get("payload", {}).get("hits")
            want = {"action": "bumped", "payload": {"id": row_id, "hits": hits}}
            if (
                reply != want
                or not isinstance(hits, int)
                or (row_id in last and hits != last[row_id] + 1)
            ):
                bad.append(got)
            last[row_id] = hits if isinstance(hits, int) else -1

    await asyncio.gather(*(loop(i + 1, ws, a.warm, []) for i, ws in enumerate(conns)))
    lats: list[int] = []
    s0 = await _stats(a.url)
    pg0 = _pg_cpu(postmaster) if postmaster else None
    c0, own0 = server.cpu_times(), time.process_time()
    t0 = perf()
    await asyncio.gather(*(loop(i + 1, ws, a.msgs, lats) for i, ws in enumerate(conns)))
    dt = perf() - t0
    c1, own1 = server.cpu_times(), time.process_time()
    pg1 = _pg_cpu(postmaster) if postmaster else None
    s1 = await _stats(a.url)
    for ws in conns:
        await ws.close()
    if bad:
        raise BenchError(f"{len(bad)} wrong DB replies, e.g. {bad[0]!r}")
    total = a.conns * a.msgs
    lats.sort()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    out = {
        "msgs_per_s": total / (dt / 1e9),
        "p50_us": lats[len(lats) // 2] / 1e3,
        "p99_us": lats[min(len(lats) - 1, int(len(lats) * 0.99))] / 1e3,
        "server_cpu_us_per_msg": cpu / total * 1e6,
        "server_cpu_util": cpu / (dt / 1e9),
        # the stats connections themselves make no hop and no DB connection
        "hops_per_msg": (s1["hops"] - s0["hops"]) / total,
        "db_connects_per_msg": (s1["db_connects"] - s0["db_connects"]) / total,
        "client_cpu_util": (own1 - own0) / (dt / 1e9),
        "orm_threads_bound": s1["orm_threads_bound"],
    }
    ticks = s1["ticks"] - s0["ticks"]
    if ticks > 0:
        out["loop_lag_ms"] = (s1["lag_s"] - s0["lag_s"]) / ticks * 1e3
        out["loop_lag_max_ms"] = s1["lag_max_s"] * 1e3
        out["orm_waiting_mean"] = (s1["orm_waiting"] - s0["orm_waiting"]) / ticks
        if s1["orm_busy"]:
            out["orm_busy_mean"] = (s1["orm_busy"] - s0["orm_busy"]) / ticks
    if pg0 is not None:
        out["pg_cpu_util"] = (pg1 - pg0) / (dt / 1e9)
    if "orm_threads_started" in s1:
        out["orm_threads_started"] = s1["orm_threads_started"]
    if "chanx_tracked_connections" in s1:
        out["chanx_tracked_connections_end"] = s1["chanx_tracked_connections"]
    return out


PG_BACKENDS = """
    SELECT coalesce(application_name, ''), client_port FROM pg_stat_activity
    WHERE datname = current_database() AND backend_type = 'client backend'
      AND pid <> pg_backend_pid()
"""


def _established_ports(pg_port: int) -> set[int]:
    """Client ports of PostgreSQL's TCP sockets that are ESTABLISHED (client still there)."""
    out = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(path) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == pg_port and state == "01":
                    out.add(int(remote.rsplit(":", 1)[1], 16))
    return out


def pg_sample(url: str, interval: float, out: str, ready_file: str) -> None:
    """Count the database's client backends every ``interval`` s until SIGTERM/SIGINT.

    Per ``application_name`` (each bench server sets its own: djsettings.py)
    and in all, the sampler's own connection excluded. A backend whose client
    already closed the connection (its socket no longer ESTABLISHED in
    /proc/net/tcp, or gone: the backend still exiting) is counted apart: under
    CONN_MAX_AGE=0 a thread closes its connection and opens the next at once,
    and PostgreSQL lists both for a moment. Writes the maxima (``max_by_app``:
    open connections; ``peak_by_app``: every backend listed), the number of
    samples and the longest gap between two samples to ``out``.
    """
    import signal
    from urllib.parse import urlsplit

    import psycopg

    pg_port = urlsplit(url).port or 5432
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    by_app: dict[str, int] = {}
    peak_by_app: dict[str, int] = {}
    total_max = samples = 0
    max_gap = 0.0
    last = None
    with psycopg.connect(url, autocommit=True, application_name="bench-sampler") as conn:
        while not stop:
            t = time.monotonic()
            rows = conn.execute(PG_BACKENDS).fetchall()
            # read after the query: a backend listed and still ESTABLISHED now was open then
            established = _established_ports(pg_port) if rows else set()
            samples += 1
            if last is not None:
                max_gap = max(max_gap, t - last)
            last = t
            open_n: dict[str, int] = {}
            all_n: dict[str, int] = {}
            for app, port in rows:
                all_n[app] = all_n.get(app, 0) + 1
                if port in established or port is None:  # None: a Unix socket
                    open_n[app] = open_n.get(app, 0) + 1
            for app, n in all_n.items():
                peak_by_app[app] = max(peak_by_app.get(app, 0), n)
                by_app[app] = max(by_app.get(app, 0), open_n.get(app, 0))
            total_max = max(total_max, sum(open_n.values()))
            if samples == 1:
                _write(ready_file, {"pid": os.getpid()})
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
    _write(out, {"max_by_app": by_app, "peak_by_app": peak_by_app, "max_total": total_max,
                 "samples": samples, "max_gap_ms": max_gap * 1e3,
                 "interval_ms": interval * 1e3})  # fmt: skip


def chanx_info() -> dict:
    """What the chanx.py on PYTHONPATH offers: its ORM_THREADS default, if it has one."""
    import django

    django.setup()
    import chanx

    defaults = getattr(chanx, "DEFAULTS", {})
    return {"file": chanx.__file__, "has_orm_threads": "ORM_THREADS" in defaults,
            "orm_threads_default": defaults.get("ORM_THREADS")}  # fmt: skip


async def client(a) -> dict:
    import psutil
    server = psutil.Process(a.server_pid)
    conns = await _open_conns(a)
    ref = await _ws_echo(conns[0])
    if json.loads(ref).get("action") != "echo":
        raise BenchError(f"unexpected echo reply over the socket: {ref!r}")
    bad: list[str] = []

    async def loop(ws, n, lats):
        send, recv = ws.send, ws.recv
        for _ in range(n):
            t0 = perf()
            await send(ECHO_FRAME)
            got = await recv()
            lats.append(perf() - t0)
            if got != ref:
                bad.append(got)

    await asyncio.gather(*(loop(ws, a.warm, []) for ws in conns))
    lats: list[int] = []
    c0 = server.cpu_times()
    t0 = perf()
    await asyncio.gather(*(loop(ws, a.msgs, lats) for ws in conns))
    dt = perf() - t0
    c1 = server.cpu_times()
    for ws in conns:
        await ws.close()
    if bad:
        raise BenchError(f"{len(bad)} replies differ from the first one {ref!r}, e.g. {bad[0]!r}")
    total = a.conns * a.msgs
    lats.sort()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "msgs_per_s": total / (dt / 1e9),
        "p50_us": lats[len(lats) // 2] / 1e3,
        "p99_us": lats[min(len(lats) - 1, int(len(lats) * 0.99))] / 1e3,
        "server_cpu_us_per_msg": cpu / total * 1e6,
        "server_cpu_util": cpu / (dt / 1e9),
    }


async def _ws_echo(ws) -> str:
    await ws.send(ECHO_FRAME)
    return await ws.recv()


# ----------------------------------------------------------------------- main
def _write(path: str, res: dict) -> None:
    """Results go to a file: some peers log to stdout (chanx 2.13's structlog)."""
    with open(path + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(path + ".tmp", path)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    pd = sub.add_parser("dbsetup")
    pd.add_argument("--rows", type=int, default=100)
    pi = sub.add_parser("inproc")
    pi.add_argument("--peer", required=True)
    pi.add_argument("--scenarios", required=True)
    pi.add_argument("--sizes", required=True)
    pi.add_argument("--out", required=True)
    ps = sub.add_parser("serve")
    ps.add_argument("--peer", required=True)
    ps.add_argument("--ready-file", required=True)
    ps.add_argument("--count", action="store_true", help="count hops and DB connects")
    pc = sub.add_parser("client")
    pc.add_argument("--url", required=True)
    pc.add_argument("--server-pid", type=int, required=True)
    pc.add_argument("--conns", type=int, default=1)
    pc.add_argument("--msgs", type=int, default=1000)
    pc.add_argument("--warm", type=int, default=100)
    pc.add_argument("--connect-frames", type=int, default=0)
    pc.add_argument("--kind", choices=("echo", "db"), default="echo")
    pc.add_argument("--pg-pid", type=int, help="PostgreSQL's postmaster (db kind: its CPU)")
    pc.add_argument("--out", required=True)
    pp = sub.add_parser("pgsample")
    pp.add_argument("--url", required=True)
    pp.add_argument("--interval", type=float, default=0.025)
    pp.add_argument("--ready-file", required=True)
    pp.add_argument("--out", required=True)
    sub.add_parser("chanxinfo")
    a = p.parse_args()

    if a.cmd == "info":
        print(json.dumps(versions()))
    elif a.cmd == "dbsetup":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsettings")
        import django

        django.setup()
        print(json.dumps(db_setup(a.rows)))
    elif a.cmd == "inproc":
        res = asyncio.run(run_inproc(a.peer, a.scenarios.split(","), json.loads(a.sizes)))
        _write(a.out, res)
    elif a.cmd == "serve":
        serve(a.peer, a.ready_file, a.count)
    elif a.cmd == "pgsample":
        pg_sample(a.url, a.interval, a.out, a.ready_file)
    elif a.cmd == "chanxinfo":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsettings")
        print(json.dumps(chanx_info()))
    elif a.cmd == "client":
        import uvloop

        _write(a.out, uvloop.run(db_client(a) if a.kind == "db" else client(a)))


if __name__ == "__main__":
    main()
