#!/usr/bin/env python3
"""Profile one peer in-process, for when a figure in results.md needs explaining.

    python3 bench/prof.py --peer chanx --what connect   # cProfile, N connects
    python3 bench/prof.py --peer chanx --what echo      # cProfile, N echo round trips
    python3 bench/prof.py --peer chanx --what memory    # tracemalloc: top allocation sites
                                                           # held by N idle connections

Runs with the peer's venv (made by run.py) and the same settings and driver
as the benchmark. ``--what`` also accepts ``nohop`` (echo on the no-hop route),
``fanout`` and ``chat``. ``--token``: connect and memory on ws/auth/ with a DRF
token per connection (the benchmark's main connect and memory figures).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def outer(a: argparse.Namespace) -> int:
    sys.path.insert(0, HERE)
    import run

    run.ensure_venv(run.PEERS[a.peer]["venv"], sys.executable)
    tmp = __import__("tempfile").mkdtemp(prefix="chanx-bench-prof-")
    env = run.peer_env(a.peer, tmp)
    env["BENCH_PROFILE_INNER"] = "1"
    cmd = [
        run._venv_python(run.PEERS[a.peer]["venv"]),
        os.path.abspath(__file__),
        "--peer",
        run.PEERS[a.peer]["module"],
        "--what",
        a.what,
        "-n",
        str(a.n),
        "--top",
        str(a.top),
    ]
    cmd += ["--attribute", a.attribute] if a.attribute else []
    cmd += ["--token"] if a.token else []
    return subprocess.call(cmd, env=env, cwd=HERE)


def inner(a: argparse.Namespace) -> int:
    import asyncio
    import cProfile
    import gc
    import json
    import pstats
    import tracemalloc

    sys.path.insert(0, HERE)
    import worker

    peer = worker.setup_peer(a.peer)
    app = peer.application
    route = "/ws/auth/" if a.token else "/ws/echo/"
    tokens = worker._tokens(max(a.n, 20)) if a.token else [()] * max(a.n, 20)

    async def connects(n):
        for i in range(n):
            c = (
                worker.Conn(app, "/ws/auth/", tokens[i % len(tokens)])
                if a.token
                else worker.Conn(app, "/ws/connect/")
            )
            await c.connect(peer.CONNECT_FRAMES)
            await c.close()

    async def echoes(route, n):
        c = worker.Conn(app, f"/ws/{route}/")
        await c.connect(peer.CONNECT_FRAMES)
        for _ in range(n):
            c.inq.put_nowait({"type": "websocket.receive", "text": worker.ECHO_FRAME})
            await c.recv()
        await c.close()

    async def main():
        if a.what == "memory":
            conns = []
            for i in range(20):  # warm up
                c = worker.Conn(app, route, tokens[i])
                await c.connect(peer.CONNECT_FRAMES)
                conns.append(c)
            await worker.close_all(conns)
            gc.collect()
            tracemalloc.start(25)
            before = tracemalloc.take_snapshot()
            conns = []
            for i in range(a.n):
                c = worker.Conn(app, route, tokens[i])
                await c.connect(peer.CONNECT_FRAMES)
                conns.append(c)
            gc.collect()
            after = tracemalloc.take_snapshot()
            flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
            stats = after.filter_traces(flt).compare_to(before.filter_traces(flt), "lineno")
            total = sum(s.size_diff for s in stats)
            print(f"{total / a.n:,.0f} bytes per connection held (driver included), top sites:")
            for s in stats[: a.top]:
                fr = s.traceback[0]
                print(
                    f"{s.size_diff / a.n:9,.0f} B/conn {s.count_diff / a.n:6.1f} blocks/conn  "
                    f"{fr.filename}:{fr.lineno}"
                )
            if a.attribute:
                # charge every allocation to the innermost frame in a matching file
                by: dict = {}
                for s in after.filter_traces(flt).compare_to(
                    before.filter_traces(flt), "traceback"
                ):
                    site = next(
                        (
                            f"{f.filename}:{f.lineno}"
                            for f in s.traceback
                            if a.attribute in f.filename
                        ),
                        "(not under " + a.attribute + ")",
                    )
                    by[site] = by.get(site, 0) + s.size_diff
                print(f"\nheld bytes per connection by innermost frame in *{a.attribute}*:")
                for site, size in sorted(by.items(), key=lambda kv: -kv[1])[: a.top]:
                    print(f"{size / a.n:9,.0f} B/conn  {site}")
            await worker.close_all(conns)
            return
        if a.what in ("fanout", "chat"):
            await worker.fanout(peer, app, a.n, 1, 1, a.what)  # warm
            prof = cProfile.Profile()
            prof.enable()
            res = await worker.fanout(peer, app, a.n, 3, 0, a.what)
            prof.disable()
        else:
            work = {
                "connect": lambda n: connects(n),
                "echo": lambda n: echoes("echo", n),
                "nohop": lambda n: echoes("echo-nohop", n),
            }[a.what]
            await work(max(10, a.n // 10))  # warm
            prof = cProfile.Profile()
            prof.enable()
            await work(a.n)
            prof.disable()
            res = None
        if res:
            print(json.dumps(res))
        st = pstats.Stats(prof)
        st.sort_stats("tottime").print_stats(a.top)
        st.sort_stats("cumulative").print_stats(a.top)

    asyncio.run(main())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peer", default="chanx")
    ap.add_argument(
        "--what",
        default="connect",
        choices=["connect", "echo", "nohop", "memory", "fanout", "chat"],
    )
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--token", action="store_true", help="connect/memory with a DRF token")
    ap.add_argument(
        "--attribute",
        metavar="SUBSTR",
        help="memory: also charge allocations to the innermost frame whose file contains SUBSTR",
    )
    a = ap.parse_args()
    return inner(a) if os.environ.get("BENCH_PROFILE_INNER") else outer(a)


if __name__ == "__main__":
    sys.exit(main())
