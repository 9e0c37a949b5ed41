"""One benchmark process, run by run.py with the python of a peer's venv.

    worker.py info
    worker.py inproc --peer P --sizes JSON --scenarios seq,pipe,...   (prints JSON)
    worker.py serve  --peer P --ready-file F                           (uvicorn)
    worker.py client --url U --server-pid PID ...                      (prints JSON)

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

    def __init__(self, app, path: str):
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
            "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")],
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


async def connect(peer, app, n: int, warm: int) -> dict:
    frames = peer.CONNECT_FRAMES
    times = []
    cpus = 0
    for i in range(warm + n):
        c = Conn(app, "/ws/connect/")
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


async def memory(peer, app, nconns: int) -> dict:
    """Bytes per idle connection that went through the peer's connect (auth included)."""
    import tracemalloc

    import psutil

    proc = psutil.Process()

    async def open_n(n):
        conns = []
        for _ in range(n):
            c = Conn(app, "/ws/echo/")
            await c.connect(peer.CONNECT_FRAMES)
            conns.append(c)
        for _ in range(5):
            await asyncio.sleep(0)
        return conns

    await close_all(await open_n(min(50, nconns)))  # warm caches, lazy imports
    gc.collect()
    driver = await _driver_bytes(nconns)
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


async def _driver_bytes(nconns: int) -> int:
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
    for _ in range(nconns):
        c = Conn(null_app, "/ws/echo/")
        await c.connect(0)
        conns.append(c)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    await close_all(conns)
    return held


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
        elif name in ("fanout", "fanout_nohop", "chat"):
            res[name] = await fanout(
                peer, app, s["fanout_conns"], s["fanout_bcasts"], s["fanout_warm"], name
            )
        elif name == "memory":
            res[name] = await memory(peer, app, s["mem_conns"])
        else:
            raise SystemExit(f"unknown scenario {name}")
        gc.collect()
    return res


# --------------------------------------------------------------------- server
def serve(peer_name: str, ready_file: str) -> None:
    import socket

    import uvicorn

    peer = setup_peer(peer_name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        peer.application,
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
async def client(a) -> dict:
    import psutil
    from websockets.asyncio.client import connect as ws_connect

    server = psutil.Process(a.server_pid)
    conns = []
    for _ in range(a.conns):
        ws = await ws_connect(
            a.url, compression=None, ping_interval=None, max_queue=None, open_timeout=30
        )
        for _ in range(a.connect_frames):
            await ws.recv()
        conns.append(ws)
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
    pi = sub.add_parser("inproc")
    pi.add_argument("--peer", required=True)
    pi.add_argument("--scenarios", required=True)
    pi.add_argument("--sizes", required=True)
    pi.add_argument("--out", required=True)
    ps = sub.add_parser("serve")
    ps.add_argument("--peer", required=True)
    ps.add_argument("--ready-file", required=True)
    pc = sub.add_parser("client")
    pc.add_argument("--url", required=True)
    pc.add_argument("--server-pid", type=int, required=True)
    pc.add_argument("--conns", type=int, default=1)
    pc.add_argument("--msgs", type=int, default=1000)
    pc.add_argument("--warm", type=int, default=100)
    pc.add_argument("--connect-frames", type=int, default=0)
    pc.add_argument("--out", required=True)
    a = p.parse_args()

    if a.cmd == "info":
        print(json.dumps(versions()))
    elif a.cmd == "inproc":
        res = asyncio.run(run_inproc(a.peer, a.scenarios.split(","), json.loads(a.sizes)))
        _write(a.out, res)
    elif a.cmd == "serve":
        serve(a.peer, a.ready_file)
    elif a.cmd == "client":
        import uvloop

        _write(a.out, uvloop.run(client(a)))


if __name__ == "__main__":
    main()
