#!/usr/bin/env python3
"""Soak test: many concurrent websocket connections against the real example server.

    python3 bench/soak.py      # the committed figures: writes bench/soak-results.md + .json
    python3 bench/soak.py --chanx-rev HEAD   # the same, chanx.py as committed (tree being edited)
    python3 bench/soak.py --connections 200 --seconds 5 --rounds 2   # a smaller try (prints only)

Starts one uvicorn server of the example (config.asgi:application, in-memory
channel layer, a fresh SQLite file with the demo data, DEBUG off, a snapshot of
chanx.py taken at start), then from one asyncio loop opens N connections to the
echo assistant (/ws/assistants/, DRF token auth). Each connection sends a
`new_message` every --interval seconds and checks its `reply` for --seconds,
then all close. That is one round: a full-size warm-up round comes first, then
--rounds measured rounds (default 5 x 20 s of 1,000 connections).

Reported per round: connections opened / served / failed, messages exchanged,
round-trip latency p50/p99/max, server CPU, the server's RSS (psutil) at peak
and after the round, whether every consumer finished on the server ("Websocket
disconnected" in chanx's JSON log), and the server's count of live Python
objects and asyncio tasks after the round (an in-process probe: the script
runs uvicorn itself, in `--serve` mode, so it can answer SIGUSR1).

Memory a process once needed mostly stays with its allocators, so:
- RSS "before" is taken after the full-size warm-up round (--warmup-seconds),
- before each RSS reading the server returns free heap to the OS
  (glibc malloc_trim, on SIGUSR2), and RSS is read once it stops falling.
Peak RSS is read as is.

PASS when, in every measured round, every connection was served
(authenticated, every message answered correctly, closed with 1000) and every
consumer finished, and, compared with the state before round 1, the asyncio
tasks are the same number, live objects differ by at most --objects-allowed,
and RSS grew by at most --rss-allowed-mb (10 MB). Exit status 1 on FAIL. The
report is stamped with the git HEAD and the sha256 of the chanx.py the server
ran. Every wait is bounded; the server is stopped on the way out.
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
        answer = {"objects": len(gc.get_objects()), "tasks": tasks}
        tracked = getattr(sys.modules.get("chanx"), "_DB_CONNECTIONS", None)
        with contextlib.suppress(TypeError):  # chanx.py's DB connection tracking, if any
            answer["chanx_tracked_db_connections"] = len(tracked)  # type: ignore[arg-type]
        line = json.dumps({PROBE_KEY: answer})
        print(line, file=sys.stderr, flush=True)
        chanx = sys.modules.get("chanx")
        print(json.dumps({"soak_chanx_file": getattr(chanx, "__file__", None)}), flush=True)

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
        f"server before round 1: RSS {mb(before)}, {probe_before['objects']} objects, "
        f"{probe_before['tasks']} tasks",
        flush=True,
    )
    rounds = []
    for number in range(1, args.rounds + 1):
        print(
            f"round {number}/{args.rounds}: {args.connections} connections, {args.seconds:g}s ...",
            flush=True,
        )
        result = await run_round(
            server, token, args.connections, args.seconds, args.interval, finished
        )
        finished += result["finished"]
        result["after"] = await settled_rss(server)
        result["probe_after"] = await asyncio.to_thread(server.probe)
        stats: Stats = result["stats"]
        print(
            f"  served {stats.served}/{args.connections}, {stats.messages} messages, "
            f"p50 {percentile(stats.latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(stats.latencies, 0.99) * 1000:.1f} ms; RSS after {mb(result['after'])}, "
            f"{result['probe_after']['objects']} objects, {result['probe_after']['tasks']} tasks",
            flush=True,
        )
        rounds.append(result)
    return {"fresh": fresh, "before": before, "probe_before": probe_before, "rounds": rounds}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def chanx_stamp(src: bytes, rev: str = "HEAD") -> dict[str, Any]:
    """sha256 of the chanx.py the server ran, and whether ``rev`` has exactly that file."""
    import hashlib

    blob = hashlib.sha1(b"blob %d\0" % len(src) + src).hexdigest()  # git hash-object
    committed = blob == _git("rev-parse", f"{rev}:chanx.py")
    return {
        "chanx_sha256": hashlib.sha256(src).hexdigest(),
        "chanx_lines": src.count(b"\n"),
        "chanx_commit": (
            _git("log", "-1", "--format=%H", rev, "--", "chanx.py") if committed else None
        ),
        "chanx_rev": rev,
        "git_head": _git("rev-parse", "HEAD"),
    }


def judge(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    """What the README's wording promises, checked one by one (empty: PASS)."""
    n = args.connections
    problems = []
    before, probe_before = result["before"], result["probe_before"]
    for number, r in enumerate(result["rounds"], 1):
        stats: Stats = r["stats"]
        if stats.served != n:
            problems.append(f"round {number}: {n - stats.served} of {n} connections not served")
        if r["finished"] < n:
            problems.append(f"round {number}: {n - r['finished']} consumers never finished")
        if r["probe_after"]["tasks"] != probe_before["tasks"]:
            problems.append(
                f"round {number}: asyncio tasks {probe_before['tasks']} -> "
                f"{r['probe_after']['tasks']}"
            )
        extra = r["probe_after"]["objects"] - probe_before["objects"]
        if abs(extra) > args.objects_allowed:
            problems.append(
                f"round {number}: live objects {extra:+d} (allowed ±{args.objects_allowed})"
            )
        if r["after"] - before > args.rss_allowed_mb * 1e6:
            problems.append(
                f"round {number}: RSS grew by {mb(r['after'] - before)} "
                f"(> {args.rss_allowed_mb:g} MB)"
            )
    return problems


def report(
    args: argparse.Namespace, result: dict[str, Any], stamp: dict[str, Any], meta: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    n = args.connections
    before, probe_before = result["before"], result["probe_before"]
    problems = judge(args, result)
    rows = []
    for number, r in enumerate(result["rounds"], 1):
        stats: Stats = r["stats"]
        lat = stats.latencies
        rows.append(
            {
                "round": number,
                "opened": stats.opened,
                "served": stats.served,
                "failed": stats.failed,
                "messages": stats.messages,
                "open_seconds": r["open_seconds"],
                "p50_ms": percentile(lat, 0.5) * 1000,
                "p99_ms": percentile(lat, 0.99) * 1000,
                "max_ms": max(lat, default=float("nan")) * 1000,
                "server_cpu_core_share": r["server_cpu"] / args.seconds,
                "client_cpu_core_share": r["client_cpu"] / args.seconds,
                "rss_peak_mb": r["peak"] / 1e6,
                "rss_after_mb": r["after"] / 1e6,
                "objects_after": r["probe_after"]["objects"],
                "tasks_after": r["probe_after"]["tasks"],
                "chanx_tracked_db_connections_after": r["probe_after"].get(
                    "chanx_tracked_db_connections"
                ),
                "consumers_finished": r["finished"],
                "client_errors": dict(sorted(stats.errors.items(), key=lambda kv: -kv[1])[:10]),
            }
        )
    all_lat = [x for r in result["rounds"] for x in r["stats"].latencies]
    total = sum(row["messages"] for row in rows)
    last = result["rounds"][-1]
    summary = {
        "connections": n,
        "rounds": len(rows),
        "seconds_per_round": args.seconds,
        "interval": args.interval,
        "messages_total": total,
        "messages_per_round_median": statistics.median(row["messages"] for row in rows),
        "served_every_round": all(row["served"] == n for row in rows),
        "p50_ms_all_rounds": percentile(all_lat, 0.5) * 1000,
        "p99_ms_all_rounds": percentile(all_lat, 0.99) * 1000,
        "rss_fresh_mb": result["fresh"] / 1e6,
        "rss_before_mb": before / 1e6,
        "rss_after_last_mb": last["after"] / 1e6,
        "rss_growth_max_mb": max(r["after"] - before for r in result["rounds"]) / 1e6,
        "rss_allowed_mb": args.rss_allowed_mb,
        "objects_before": probe_before["objects"],
        "objects_after_each_round": [row["objects_after"] for row in rows],
        "objects_allowed": args.objects_allowed,
        "tasks_before": probe_before["tasks"],
        "tasks_after_each_round": [row["tasks_after"] for row in rows],
        "frame_error_records": meta["frame_errors"],
        "result": "PASS" if not problems else "FAIL",
        "problems": problems,
    }
    L = [
        "# Soak results (`bench/soak.py`)",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- measured: `chanx.py` sha256 `{stamp['chanx_sha256']}` ({stamp['chanx_lines']} lines), "
        + (
            f"= chanx.py at {stamp['chanx_rev']}, last changed in commit `{stamp['chanx_commit']}`"
            if stamp["chanx_commit"]
            else "**uncommitted** (differs from HEAD's chanx.py): rerun before quoting"
        ),
        f"- repository HEAD: `{stamp['git_head']}`",
        f"- machine: {os.cpu_count()} CPUs, load avg (1/5/15 min) at start / end "
        f"{meta['load_start']} / {meta['load_end']} (shared machine)",
        f"- server: one uvicorn process of the example (`config.asgi:application`, in-memory "
        f"channel layer, SQLite, DEBUG off); client: one asyncio process, `websockets`; "
        f"{n} connections to the echo assistant (`/ws/assistants/`), each authenticated with "
        f"a DRF token header, each sending a message every {args.interval:g} s and checking "
        f"its reply; a {args.warmup_seconds:g} s warm-up round at full size first, then "
        f"{len(rows)} measured rounds of {args.seconds:g} s (all connections opened, "
        "exchange, all closed)",
        "- RSS: read after a `gc.collect()` + glibc `malloc_trim(0)` in the server, once it "
        'stops falling; "before" is after the warm-up round. Objects: `len(gc.get_objects())` '
        "after a `gc.collect()`; tasks: `len(asyncio.all_tasks())` on the server's loop",
        "",
        "| round | served | messages | p50 ms | p99 ms | max ms | server CPU | peak RSS MB | "
        "RSS after MB | objects after | tasks after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| before | | | | | | | | {before / 1e6:.1f} | {probe_before['objects']} | "
        f"{probe_before['tasks']} |",
    ]
    for row in rows:
        L.append(
            f"| {row['round']} | {row['served']}/{n} | {row['messages']:,} | {row['p50_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {row['max_ms']:.1f} | {row['server_cpu_core_share']:.0%} | "
            f"{row['rss_peak_mb']:.1f} | {row['rss_after_mb']:.1f} | {row['objects_after']} | "
            f"{row['tasks_after']} |"
        )
    L += [
        "",
        f"Over all {len(rows)} rounds: {total:,} messages, p50 {summary['p50_ms_all_rounds']:.1f} ms, "
        f"p99 {summary['p99_ms_all_rounds']:.1f} ms.",
        "",
        "Checks (each round, against the state before round 1):",
        f"- every connection served (authenticated, every reply right, closed 1000) and every "
        f"consumer finished on the server: "
        f"{'yes' if all(r['served'] == n and r['consumers_finished'] >= n for r in rows) else 'NO'}",
        f"- RSS after the round <= before + {args.rss_allowed_mb:g} MB: largest growth "
        f"{summary['rss_growth_max_mb']:+.1f} MB",
        f"- live objects within ±{args.objects_allowed} of before: "
        + ", ".join(
            f"{o - probe_before['objects']:+d}" for o in summary["objects_after_each_round"]
        ),
        f"- asyncio tasks equal to before ({probe_before['tasks']}): "
        + ", ".join(str(t) for t in summary["tasks_after_each_round"]),
        f"- server 'Failed to handle a websocket frame' records: {meta['frame_errors']}",
        "",
    ]
    tracked = [row["chanx_tracked_db_connections_after"] for row in rows]
    if any(t is not None for t in tracked):
        L += [
            "Diagnostic: entries in chanx.py's `_DB_CONNECTIONS` after each round "
            f"(before round 1: {probe_before.get('chanx_tracked_db_connections')}): "
            + ", ".join(str(t) for t in tracked),
            "",
        ]
    L += [
        f"**{summary['result']}**" + (": " + "; ".join(problems) if problems else ""),
        "",
    ]
    return "\n".join(L), {"summary": summary, "rounds": rows, "stamp": stamp, "meta": meta}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between one connection's messages"
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="length of the full-size warm-up round before 'before' (0: none)",
    )
    parser.add_argument("--rss-allowed-mb", type=float, default=10.0)
    parser.add_argument(
        "--objects-allowed",
        type=int,
        default=0,
        help="live objects after a round may differ from before by at most this many "
        "(default 0: unchanged)",
    )
    parser.add_argument(
        "--chanx-rev",
        metavar="REV",
        help="run chanx.py as committed at REV (e.g. HEAD) instead of the working tree's",
    )
    parser.add_argument(
        "--out",
        help="write the report here (+ .json beside it); the default run writes "
        "bench/soak-results.md",
    )
    args = parser.parse_args()
    out = args.out
    options = {a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--")}
    if out is None and options <= {"--chanx-rev"}:
        out = str(REPO / "bench" / "soak-results.md")  # the committed figures: default sizes

    import datetime as dt

    meta: dict[str, Any] = {
        "command": " ".join(["python3", "bench/soak.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    raise_fd_limit(2 * args.connections + 256)
    with tempfile.TemporaryDirectory(prefix="chanx-soak-") as tmp:
        tmp_dir = Path(tmp)
        # The server imports a snapshot, so an edit of chanx.py mid-run changes nothing.
        snapshot = tmp_dir / "chanx-snapshot"
        snapshot.mkdir()
        if args.chanx_rev:
            src = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{args.chanx_rev}:chanx.py"],
                capture_output=True,
                check=True,
            ).stdout
        else:
            src = (REPO / "chanx.py").read_bytes()
        (snapshot / "chanx.py").write_bytes(src)
        stamp = chanx_stamp(src, args.chanx_rev or "HEAD")
        print("preparing the database ...", flush=True)
        info = prepare_demo_db(tmp_dir / "db.sqlite3")
        env = example_env(tmp_dir / "db.sqlite3", DJANGO_DEBUG="0")
        env.pop("DATABASE_URL", None)  # always the SQLite file prepared above
        env["PYTHONPATH"] = os.pathsep.join([str(snapshot), env["PYTHONPATH"]])
        server = Server(env, tmp_dir / "server.log")
        try:
            print(f"server pid {server.pid} on port {server.port}", flush=True)
            result = asyncio.run(soak(args, server, info["tokens"]["alice"]))
            meta["frame_errors"] = server.count("Failed to handle a websocket frame")
            imported = [r for r in server.json_lines() if "soak_chanx_file" in r]
        finally:
            server.stop()
    meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if not imported or not imported[-1]["soak_chanx_file"].startswith(str(snapshot)):
        print(f"error: the server did not import the snapshot: {imported}")
        return 1
    text, data = report(args, result, stamp, meta)
    print()
    print(text)
    if out:
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"written to {out} and {Path(out).with_suffix('.json')}")
    return 0 if data["summary"]["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
