#!/usr/bin/env python3
"""Soak test: many concurrent websocket connections against the real example server.

    .venv/bin/python bench/soak.py [--connections 1000] [--seconds 30] [--interval 1.0]

Starts one uvicorn server of the example (config.asgi:application, in-memory
channel layer, a fresh SQLite file with the demo data, DEBUG off), then from
one asyncio loop opens N connections to the echo assistant (/ws/assistants/,
DRF token auth). Each connection sends a `new_message` every --interval
seconds and checks its `reply` for --seconds, then all close.

Reported: connections opened / served / failed, messages exchanged,
round-trip latency p50/p99, server and client CPU, the server's RSS (psutil)
before, at peak and after, whether every consumer finished on the server
("Websocket disconnected" in chanx's JSON log), and the server's count of
live Python objects and asyncio tasks before and after (an in-process probe:
the script runs uvicorn itself, in `--serve` mode, so it can answer SIGUSR1).

Memory a process once needed mostly stays with its allocators, so:
- RSS "before" is taken after a full-size warm-up round (--warmup-seconds),
- before each RSS reading the server returns free heap to the OS
  (glibc malloc_trim, on SIGUSR2), and RSS is read once it stops falling.
Peak RSS is read as is.

PASS when every connection of the measured round was served (authenticated,
every message answered correctly, closed with 1000), every consumer finished,
no asyncio task and at most max(200, N/2) Python objects outlived the round,
and RSS after <= before + max(--rss-tolerance-pct % of before,
--rss-tolerance-mb MB). Exit status 1 on FAIL. Every wait is bounded; the
server is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "example"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

try:
    import psutil
    from websockets.asyncio.client import connect
except ImportError:  # run with the project's venv, which has them
    if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    raise

sys.path.insert(0, str(EXAMPLE))
from e2e.servers import (  # noqa: E402  (the e2e tests' server helpers)
    EXAMPLE_DIR,
    example_env,
    free_port,
    port_accepts,
    prepare_demo_db,
    stop_process,
    wait_until,
)

HANDSHAKE_CONCURRENCY = 100  # handshakes in flight at once while opening
OPEN_TIMEOUT = 60.0  # seconds for one handshake (queued behind the others)
REPLY_TIMEOUT = 15.0  # seconds for one reply
CLOSE_TIMEOUT = 10.0  # seconds for one closing handshake
OPEN_ALL_TIMEOUT = 180.0  # seconds to open every connection
FINISH_TIMEOUT = 60.0  # seconds for the server to finish every consumer after the close
SETTLE_TIMEOUT = 20.0  # seconds for RSS to stop falling
PROBE_TIMEOUT = 30.0  # seconds for the server to answer a probe
RSS_SAMPLE = 0.25  # seconds between RSS samples
PROBE_KEY = "soak_probe"


# The server side: uvicorn with a probe ########################################


def serve(port: int) -> None:
    """Run the example under uvicorn, answering SIGUSR1 (probe) and SIGUSR2 (trim)."""
    import ctypes
    import gc

    import uvicorn

    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        malloc_trim = None

    def probe() -> None:
        gc.collect()
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:
            tasks = -1
        line = json.dumps({PROBE_KEY: {"objects": len(gc.get_objects()), "tasks": tasks}})
        print(line, file=sys.stderr, flush=True)

    def trim() -> None:
        gc.collect()
        if malloc_trim is not None:
            malloc_trim(0)

    def on_loop(work: Any) -> Any:
        # Signal handlers run between bytecodes; do the work as a loop callback.
        def handler(*_: Any) -> None:
            try:
                asyncio.get_running_loop().call_soon_threadsafe(work)
            except RuntimeError:  # no loop yet
                work()

        return handler

    signal.signal(signal.SIGUSR1, on_loop(probe))
    signal.signal(signal.SIGUSR2, on_loop(trim))
    uvicorn.run(
        "config.asgi:application",
        host="127.0.0.1",
        port=port,
        lifespan="off",
        backlog=4096,
        timeout_graceful_shutdown=10,
    )


class Server:
    """``soak.py --serve``; its output goes to a file, read when needed."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port)],
            cwd=EXAMPLE_DIR,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: self.process.poll() is not None or port_accepts(self.port),
                30,
                "uvicorn to accept connections",
            )
            if self.process.poll() is not None:
                raise RuntimeError("uvicorn exited:\n" + log_path.read_text())
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def json_lines(self) -> list[dict[str, Any]]:
        records = []
        with open(self.log_path) as f:
            for line in f:
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        return records

    def count(self, message: str) -> int:
        return sum(
            1
            for r in self.json_lines()
            if r.get("logger") == "chanx" and r.get("message") == message
        )

    def probe(self) -> dict[str, int]:
        """Live Python objects and asyncio tasks in the server (after a gc)."""
        seen = sum(1 for r in self.json_lines() if PROBE_KEY in r)
        os.kill(self.pid, signal.SIGUSR1)
        wait_until(
            lambda: sum(1 for r in self.json_lines() if PROBE_KEY in r) > seen,
            PROBE_TIMEOUT,
            "the server's probe",
            interval=0.1,
        )
        answer: dict[str, int] = [r for r in self.json_lines() if PROBE_KEY in r][-1][PROBE_KEY]
        return answer

    def trim(self) -> None:
        os.kill(self.pid, signal.SIGUSR2)

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


# The client side ##############################################################


@dataclass
class Stats:
    opened: int = 0
    served: int = 0
    failed: int = 0
    messages: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        self.errors[key] = self.errors.get(key, 0) + 1


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def raise_fd_limit(needed: int) -> None:
    """Soft RLIMIT_NOFILE up to ``needed`` (capped by the hard limit); the server inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        print(f"raised the open-file limit from {soft} to {target}")
        if target < needed:
            print(f"warning: the hard limit {hard} is below the {needed} descriptors needed")


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE)


async def settled_rss(server: Server) -> int:
    """Trim the server's heap, then RSS once it has stopped falling (bounded)."""
    server.trim()
    deadline = time.monotonic() + SETTLE_TIMEOUT
    low, still = rss(server.pid), 0
    while still < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = rss(server.pid)
        if now < low - 64 * 1024:
            low, still = now, 0
        else:
            still += 1
    return min(low, rss(server.pid))


async def client(
    url: str,
    headers: dict[str, str],
    origin: str,
    gate: asyncio.Semaphore,
    opened: asyncio.Event,
    start: asyncio.Event,
    end_at: list[float],
    interval: float,
    stats: Stats,
    open_count: list[int],
    total: int,
) -> None:
    """One connection: open, wait for the start, exchange until ``end_at``, close."""
    ws = None
    try:
        async with gate:
            ws = await connect(
                url,
                origin=origin,  # type: ignore[arg-type]
                additional_headers=headers,
                open_timeout=OPEN_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
            )
            auth = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
            if auth.get("payload", {}).get("status_code") != 200:
                raise RuntimeError(f"authentication refused: {auth}")
        stats.opened += 1
    except Exception as exc:
        stats.failed += 1
        stats.error(exc)
        if ws is not None:
            await ws.close()
        return
    finally:
        open_count[0] += 1
        if open_count[0] == total:
            opened.set()
    ok = False
    try:
        await start.wait()
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, interval)  # spread the load
        exchanged = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() >= end_at[0]:
                break
            next_at += interval
            text = f"soak {exchanged}"
            sent = time.perf_counter()
            await ws.send(json.dumps({"action": "new_message", "payload": {"content": text}}))
            while True:  # skip "complete" frames (SEND_COMPLETION) and anything else
                frame = json.loads(await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT))
                if frame.get("action") == "reply":
                    break
                if frame.get("action") == "error":
                    raise RuntimeError(f"error frame: {frame}")
            stats.latencies.append(time.perf_counter() - sent)
            if frame["payload"]["content"] != f"Reply: {text}":
                raise RuntimeError(f"wrong reply: {frame}")
            exchanged += 1
            stats.messages += 1
        ok = exchanged > 0
    except Exception as exc:
        stats.error(exc)
    finally:
        try:
            await ws.close()
            ok = ok and ws.close_code == 1000
        except Exception as exc:
            stats.error(exc)
            ok = False
        if ok:
            stats.served += 1
        else:
            stats.failed += 1


async def run_round(
    server: Server,
    token: str,
    connections: int,
    seconds: float,
    interval: float,
    finished_before: int,
) -> dict[str, Any]:
    """Open ``connections``, exchange for ``seconds``, close them all, wait for the server."""
    url = f"ws://127.0.0.1:{server.port}/ws/assistants/"
    origin = f"http://127.0.0.1:{server.port}"
    headers = {"Authorization": f"Token {token}"}
    loop = asyncio.get_running_loop()
    stats = Stats()
    gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
    opened, start = asyncio.Event(), asyncio.Event()
    end_at = [0.0]
    open_count = [0]
    peak = [rss(server.pid)]
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(server.pid, peak, stop_sampling))

    t_open = time.monotonic()
    tasks = [
        asyncio.create_task(
            client(
                url, headers, origin, gate, opened, start, end_at, interval,
                stats, open_count, connections,
            )
        )
        for _ in range(connections)
    ]  # fmt: skip
    try:
        await asyncio.wait_for(opened.wait(), OPEN_ALL_TIMEOUT)
    except TimeoutError:
        print(f"warning: only {open_count[0]} handshakes ended within {OPEN_ALL_TIMEOUT}s")
    open_seconds = time.monotonic() - t_open

    server_cpu = psutil.Process(server.pid).cpu_times()
    client_cpu = psutil.Process().cpu_times()
    end_at[0] = loop.time() + seconds
    start.set()
    bound = seconds + REPLY_TIMEOUT + CLOSE_TIMEOUT + OPEN_ALL_TIMEOUT
    _done, pending = await asyncio.wait(tasks, timeout=bound)
    server_cpu_after = psutil.Process(server.pid).cpu_times()
    client_cpu_after = psutil.Process().cpu_times()
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)
        stats.failed += len(pending)
        stats.errors["client task did not finish in time"] = len(pending)
    stop_sampling.set()
    await sampler
    peak[0] = max(peak[0], rss(server.pid))

    expected = finished_before + connections
    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(
            wait_until,
            lambda: server.count("Websocket disconnected") >= expected,
            FINISH_TIMEOUT,
            "every consumer to finish",
            0.2,
        )
    finished = server.count("Websocket disconnected") - finished_before

    def busy(a: Any, b: Any) -> float:
        return float((b.user + b.system) - (a.user + a.system))

    return {
        "stats": stats,
        "peak": peak[0],
        "finished": finished,
        "open_seconds": open_seconds,
        "server_cpu": busy(server_cpu, server_cpu_after),
        "client_cpu": busy(client_cpu, client_cpu_after),
    }


async def soak(args: argparse.Namespace, server: Server, token: str) -> dict[str, Any]:
    finished = 0
    # A few connections first: imports, DB connections and first-use caches.
    first = await run_round(server, token, 5, 1.0, 0.1, finished)
    if first["stats"].served != 5:
        raise RuntimeError(f"the first connections failed: {first['stats']}")
    finished += first["finished"]
    fresh = await settled_rss(server)
    print(f"server RSS fresh: {mb(fresh)} (after 5 connections)", flush=True)

    if args.warmup_seconds > 0:
        print(
            f"warm-up round: {args.connections} connections, {args.warmup_seconds:g}s ...",
            flush=True,
        )
        warm = await run_round(
            server, token, args.connections, args.warmup_seconds, args.interval, finished
        )
        finished += warm["finished"]
        print(
            f"  served {warm['stats'].served}/{args.connections}, peak RSS {mb(warm['peak'])}",
            flush=True,
        )
    before = await settled_rss(server)
    probe_before = await asyncio.to_thread(server.probe)
    print(
        f"server before: RSS {mb(before)}, {probe_before['objects']} objects, "
        f"{probe_before['tasks']} tasks",
        flush=True,
    )
    print(f"measured round: {args.connections} connections, {args.seconds:g}s ...", flush=True)
    result = await run_round(server, token, args.connections, args.seconds, args.interval, finished)
    result["after"] = await settled_rss(server)
    result["probe_after"] = await asyncio.to_thread(server.probe)
    result.update(fresh=fresh, before=before, probe_before=probe_before)
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between one connection's messages"
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="length of the full-size warm-up round before 'before' (0: none)",
    )
    parser.add_argument("--rss-tolerance-pct", type=float, default=5.0)
    parser.add_argument("--rss-tolerance-mb", type=float, default=10.0)
    args = parser.parse_args()

    raise_fd_limit(2 * args.connections + 256)
    with tempfile.TemporaryDirectory(prefix="chanx-soak-") as tmp:
        tmp_dir = Path(tmp)
        print("preparing the database ...", flush=True)
        info = prepare_demo_db(tmp_dir / "db.sqlite3")
        env = example_env(tmp_dir / "db.sqlite3", DJANGO_DEBUG="0")
        server = Server(env, tmp_dir / "server.log")
        try:
            print(f"server pid {server.pid} on port {server.port}", flush=True)
            result = asyncio.run(soak(args, server, info["tokens"]["alice"]))
            frame_errors = server.count("Failed to handle a websocket frame")
        finally:
            server.stop()

    n = args.connections
    stats: Stats = result["stats"]
    before, peak, after = result["before"], result["peak"], result["after"]
    allowed = max(before * args.rss_tolerance_pct / 100, args.rss_tolerance_mb * 1e6)
    probe_before, probe_after = result["probe_before"], result["probe_after"]
    extra_objects = probe_after["objects"] - probe_before["objects"]
    allowed_objects = max(200, n // 2)
    lat = stats.latencies
    print()
    print(
        f"connections: {n} requested, {stats.opened} opened, {stats.served} served, "
        f"{stats.failed} failed (all opened in {result['open_seconds']:.1f}s)"
    )
    print(
        f"messages exchanged: {stats.messages} "
        f"({stats.messages / args.seconds:.0f}/s over {args.seconds:g}s)"
    )
    print(
        f"round-trip latency: p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, "
        f"max {max(lat, default=float('nan')) * 1000:.1f} ms"
        + (f", mean {statistics.fmean(lat) * 1000:.1f} ms" if lat else "")
    )
    print(
        f"CPU during the exchange: server {result['server_cpu'] / args.seconds:.0%} of a core, "
        f"client {result['client_cpu'] / args.seconds:.0%} of a core"
    )
    print(
        f"server RSS: fresh {mb(result['fresh'])}; before {mb(before)}, peak {mb(peak)}, "
        f"after {mb(after)} (after - before = {mb(after - before)}, allowed {mb(allowed)})"
    )
    print(
        f"server objects: before {probe_before['objects']}, after {probe_after['objects']} "
        f"({extra_objects:+d}, allowed +{allowed_objects}); asyncio tasks: "
        f"before {probe_before['tasks']}, after {probe_after['tasks']}"
    )
    print(f"consumers finished on the server: {result['finished']}/{n}")
    print(f"server 'Failed to handle a websocket frame' records (all rounds): {frame_errors}")
    for error, count in sorted(stats.errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  client error x{count}: {error}")

    problems = []
    if stats.served != n:
        problems.append(f"{n - stats.served} connections not served")
    if result["finished"] < n:
        problems.append(f"{n - result['finished']} consumers never finished on the server")
    if probe_after["tasks"] > probe_before["tasks"]:
        problems.append(f"{probe_after['tasks'] - probe_before['tasks']} asyncio tasks left")
    if extra_objects > allowed_objects:
        problems.append(f"{extra_objects} more live objects (> {allowed_objects})")
    if after - before > allowed:
        problems.append(f"RSS grew by {mb(after - before)} (> {mb(allowed)})")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
