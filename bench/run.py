#!/usr/bin/env python3
"""chanx benchmark: one command, every peer, ratios to raw Django Channels.

    python3 bench/run.py                 # full run (several minutes)
    python3 bench/run.py --quick         # tiny sizes, one repetition (smoke test, ~1 min)
    python3 bench/run.py --peers raw,chanx --reps 3 --only socket

Standard library only. It creates bench/.venvs/{current,chanx213,dcrf}
(pinned requirements-*.txt, re-created when those files change), then runs
every job for every peer in its own process, interleaved (job 1 for peers
A,B,C,D, job 2 for A,B,C,D, ..., then the next repetition, with the peer
order rotated each repetition) so background noise is shared, and reports
the median of the repetitions as a table of values and ratios to raw
Channels. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
VENVS = os.path.join(BENCH, ".venvs")
WORKER = os.path.join(BENCH, "worker.py")

# peer -> venv, module under bench/peers/, label; "chanx" also gets the repo on PYTHONPATH.
PEERS = {
    "raw": {"venv": "current", "module": "raw", "label": "raw Channels"},
    "chanx": {
        "venv": "current",
        "module": "chanx_repo",
        "label": "chanx (repo)",
        "repo_path": True,
    },
    "chanx213": {"venv": "chanx213", "module": "chanx213", "label": "chanx 2.13.0"},
    "dcrf": {"venv": "dcrf", "module": "dcrf", "label": "dcrf 1.3.0"},
}
CONNECT_FRAMES = {"raw": 0, "chanx": 1, "chanx213": 1, "dcrf": 0}
CLIENT_VENV = "current"

FULL = {
    "reps": 5,
    "seq_n": 5000,
    "seq_warm": 500,
    "pipe_batch": 1000,
    "pipe_batches": 5,
    "connect_n": 1000,
    "connect_warm": 50,
    "fanout_conns": 1000,
    "fanout_bcasts": 5,
    "fanout_warm": 1,
    "mem_conns": 1000,
    "sock1_msgs": 2000,
    "sock1_warm": 200,
    "sockc_conns": 50,
    "sockc_msgs": 200,
    "sockc_warm": 20,
}
QUICK = {
    "reps": 1,
    "seq_n": 200,
    "seq_warm": 20,
    "pipe_batch": 100,
    "pipe_batches": 2,
    "connect_n": 20,
    "connect_warm": 5,
    "fanout_conns": 50,
    "fanout_bcasts": 2,
    "fanout_warm": 1,
    "mem_conns": 50,
    "sock1_msgs": 100,
    "sock1_warm": 10,
    "sockc_conns": 5,
    "sockc_msgs": 20,
    "sockc_warm": 2,
}
# keys --scale multiplies (message and connect counts; not connection counts)
SCALED = (
    "seq_n",
    "seq_warm",
    "pipe_batch",
    "connect_n",
    "sock1_msgs",
    "sock1_warm",
    "sockc_msgs",
    "sockc_warm",
)

JOBS = {  # job -> in-process scenarios (the "socket" job is special)
    "messages": ["verify", "seq", "pipe", "nohop_seq", "nohop_pipe"],
    "connect": ["connect"],
    "fanout": ["fanout", "fanout_nohop", "chat"],
    "memory": ["memory"],
    "socket": None,
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- venvs
def _venv_python(name: str) -> str:
    return os.path.join(VENVS, name, "bin", "python")


def ensure_venv(name: str, base_python: str) -> str:
    """Create bench/.venvs/NAME from requirements-NAME.txt unless it is current."""
    path = os.path.join(VENVS, name)
    h = hashlib.sha256()
    for fn in ("requirements-common.txt", f"requirements-{name}.txt"):
        with open(os.path.join(BENCH, fn), "rb") as f:
            h.update(f.read())
    h.update(
        subprocess.run(
            [base_python, "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.encode()
    )
    digest = h.hexdigest()
    stamp = os.path.join(path, ".bench-stamp")
    if os.path.exists(stamp) and Path(stamp).read_text().strip() == digest:
        return _venv_python(name)
    log(f"[setup] creating {os.path.relpath(path, REPO)} ...")
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", path], check=True)
    subprocess.run(
        [
            _venv_python(name),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            os.path.join(BENCH, f"requirements-{name}.txt"),
        ],
        check=True,
    )
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return _venv_python(name)


CHANX_DIR = REPO  # where `import chanx` finds chanx.py; run() points it at a snapshot


def peer_env(peer: str, tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env["DJANGO_SETTINGS_MODULE"] = "djsettings"
    env["BENCH_PEER"] = PEERS[peer]["module"] if peer in PEERS else peer
    env["BENCH_TMP"] = tmp
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if PEERS.get(peer, {}).get("repo_path"):
        env["PYTHONPATH"] = CHANX_DIR  # `import chanx` is this repo's chanx.py
    return env


# ----------------------------------------------------------------------- jobs
class JobError(Exception):
    pass


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def run_inproc(peer: str, scenarios: list[str], sizes: dict, tmp: str, timeout: float) -> dict:
    out = os.path.join(tmp, f"out-{peer}-{time.monotonic_ns()}.json")
    logf = out + ".log"
    cmd = [
        _venv_python(PEERS[peer]["venv"]),
        WORKER,
        "inproc",
        "--peer",
        PEERS[peer]["module"],
        "--scenarios",
        ",".join(scenarios),
        "--sizes",
        json.dumps(sizes),
        "--out",
        out,
    ]
    with open(logf, "wb") as lf:
        try:
            p = subprocess.run(
                cmd,
                env=peer_env(peer, tmp),
                stdout=lf,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=BENCH,
            )
        except subprocess.TimeoutExpired:
            raise JobError(f"timed out after {timeout:.0f}s\n{_tail(logf)}") from None
    if p.returncode != 0 or not os.path.exists(out):
        raise JobError(f"exit {p.returncode}\n{_tail(logf)}")
    with open(out) as f:
        return json.load(f)


def run_socket(peer: str, sizes: dict, tmp: str, timeout: float) -> dict:
    ready = os.path.join(tmp, f"ready-{peer}-{time.monotonic_ns()}")
    slog = ready + ".server.log"
    with open(slog, "wb") as lf:
        server = subprocess.Popen(
            [
                _venv_python(PEERS[peer]["venv"]),
                WORKER,
                "serve",
                "--peer",
                PEERS[peer]["module"],
                "--ready-file",
                ready,
            ],
            env=peer_env(peer, tmp),
            stdout=lf,
            stderr=subprocess.STDOUT,
            cwd=BENCH,
        )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if server.poll() is not None or time.monotonic() > deadline:
                raise JobError(f"server did not start\n{_tail(slog)}")
            time.sleep(0.05)
        with open(ready) as f:
            info = json.load(f)
        url = f"ws://127.0.0.1:{info['port']}/ws/echo/"
        res = {}
        for name, conns, msgs, warm in (
            ("sock1", 1, sizes["sock1_msgs"], sizes["sock1_warm"]),
            ("sockc", sizes["sockc_conns"], sizes["sockc_msgs"], sizes["sockc_warm"]),
        ):
            out = os.path.join(tmp, f"client-{peer}-{name}-{time.monotonic_ns()}.json")
            clog = out + ".log"
            cmd = [
                _venv_python(CLIENT_VENV),
                WORKER,
                "client",
                "--url",
                url,
                "--server-pid",
                str(info["pid"]),
                "--conns",
                str(conns),
                "--msgs",
                str(msgs),
                "--warm",
                str(warm),
                "--connect-frames",
                str(CONNECT_FRAMES[peer]),
                "--out",
                out,
            ]
            with open(clog, "wb") as lf:
                try:
                    p = subprocess.run(
                        cmd,
                        env=peer_env("client", tmp),
                        stdout=lf,
                        stderr=subprocess.STDOUT,
                        timeout=timeout,
                        cwd=BENCH,
                    )
                except subprocess.TimeoutExpired:
                    raise JobError(f"client timed out\n{_tail(clog)}\n{_tail(slog)}") from None
            if p.returncode != 0 or not os.path.exists(out):
                raise JobError(f"client exit {p.returncode}\n{_tail(clog)}\n{_tail(slog)}")
            with open(out) as f:
                res[name] = json.load(f)
        return res
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# ------------------------------------------------------------------ reporting
# (metric, label, unit, scale, higher_is_better)
ROWS = [
    ("In-process (lean ASGI driver, asyncio queues)", None),
    ("seq.us_per_msg", "echo round trip, sequential", "µs/msg", 1, False),
    ("seq.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
    ("pipe.us_per_msg", "echo, pipelined {pipe_batch}", "µs/msg", 1, False),
    ("nohop_seq.us_per_msg", "echo, no DB hop, sequential", "µs/msg", 1, False),
    ("nohop_seq.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
    ("nohop_pipe.us_per_msg", "echo, no DB hop, pipelined {pipe_batch}", "µs/msg", 1, False),
    ("nohop_pipe.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
    ("connect.us_per_connect", "connect (+ auth where the peer has it)", "µs", 1, False),
    ("connect.cpu_us_per_connect", "↳ same, CPU time", "µs", 1, False),
    ("fanout.ms", "fan-out to {fanout_conns} conns", "ms", 1, False),
    ("fanout.cpu_ms", "↳ same, CPU time", "ms", 1, False),
    ("fanout_nohop.ms", "fan-out to {fanout_conns}, no DB hop", "ms", 1, False),
    ("chat.ms", "chat relay: 1 client frame to {fanout_conns} conns", "ms", 1, False),
    ("memory.traced_bytes_per_conn", "memory / idle conn (tracemalloc)", "KiB", 1 / 1024, False),
    ("memory.rss_bytes_per_conn", "memory / idle conn (RSS delta, noisy)", "KiB", 1 / 1024, False),
    ("uvicorn + websockets client, 1 connection, sequential", None),
    ("sock1.msgs_per_s", "throughput", "msg/s", 1, True),
    ("sock1.p50_us", "latency p50", "µs", 1, False),
    ("sock1.p99_us", "latency p99", "µs", 1, False),
    ("sock1.server_cpu_us_per_msg", "server CPU", "µs/msg", 1, False),
    ("uvicorn + websockets client, {sockc_conns} connections concurrent", None),
    ("sockc.msgs_per_s", "throughput", "msg/s", 1, True),
    ("sockc.p50_us", "latency p50", "µs", 1, False),
    ("sockc.p99_us", "latency p99", "µs", 1, False),
    ("sockc.server_cpu_us_per_msg", "server CPU", "µs/msg", 1, False),
]

# (label, metric, numerator peer, denominator peer, denominator metric, op, threshold)
TARGETS = [
    (
        "over uvicorn, {sockc_conns} conns: throughput vs raw",
        "sockc.msgs_per_s",
        "raw",
        None,
        ">=",
        2.0,
    ),
    (
        "over uvicorn, {sockc_conns} conns: throughput vs chanx 2.13",
        "sockc.msgs_per_s",
        "chanx213",
        None,
        ">=",
        2.5,
    ),
    (
        "over uvicorn, {sockc_conns} conns: p99 latency vs raw",
        "sockc.p99_us",
        "raw",
        None,
        "<=",
        0.2,
    ),
    (
        "library overhead without the DB hop, sequential",
        "nohop_seq.us_per_msg",
        "raw",
        None,
        "<=",
        1.15,
    ),
    ("↳ same, CPU time", "nohop_seq.cpu_us_per_msg", "raw", None, "<=", 1.15),
    (
        "library overhead without the DB hop, pipelined",
        "nohop_pipe.us_per_msg",
        "raw",
        None,
        "<=",
        1.15,
    ),
    ("↳ same, CPU time", "nohop_pipe.cpu_us_per_msg", "raw", None, "<=", 1.15),
    (
        "connect + DRF auth vs bare Channels connect",
        "connect.us_per_connect",
        "raw",
        None,
        "<=",
        1.5,
    ),
    ("↳ same, CPU time", "connect.cpu_us_per_connect", "raw", None, "<=", 1.5),
    ("fan-out to {fanout_conns} vs raw group_send", "fanout.ms", "raw", None, "<=", 1.1),
    ("↳ same, CPU time", "fanout.cpu_ms", "raw", None, "<=", 1.1),
    (
        "memory per idle authenticated conn vs raw",
        "memory.traced_bytes_per_conn",
        "raw",
        None,
        "<=",
        1.1,
    ),
]


def _fmt(v: float) -> str:
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def median_of(data: dict, peer: str, metric: str):
    vals = data.get(peer, {}).get(metric)
    return statistics.median(vals) if vals else None


def build_report(data: dict, peers: list[str], sizes: dict, meta: dict, errors: list[str]) -> str:
    L: list[str] = []
    L.append(f"# chanx benchmark results ({meta['mode']})\n")
    L.append(f"- date: {meta['date']}")
    L.append(
        f"- machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu']}, load avg at start / end "
        f"{meta['load_start']} / {meta['load_end']} (shared machine)"
    )
    v = meta["versions"].get("current", {})
    L.append(
        f"- Python {v.get('python')}, Django {v.get('Django')}, Channels {v.get('channels')}, "
        f"DRF {v.get('djangorestframework')}, pydantic {v.get('pydantic')}; "
        f"uvicorn {v.get('uvicorn')} (uvloop {v.get('uvloop')}, httptools, websockets-sansio), "
        f"websockets {v.get('websockets')} client"
    )
    L.append(
        "- peers: "
        + "; ".join(
            f"{PEERS[p]['label']}"
            + (
                f" = `chanx.py` sha256 {meta['chanx_sha']}, {meta['chanx_lines']} lines"
                if p == "chanx"
                else ""
            )
            for p in peers
        )
    )
    L.append(
        f"- {sizes['reps']} repetition(s), median shown; jobs interleaved across peers, "
        f"peer order rotated each repetition; run time {meta['elapsed']:.0f}s"
    )
    L.append(f"- sizes: {json.dumps({k: v for k, v in sizes.items() if k != 'reps'})}")
    L.append("")
    L.append(
        "Each cell: median value, and in parentheses the ratio to raw Channels "
        "(peer / raw; for msg/s higher is better, for everything else lower is better).\n"
    )
    L.append("| metric | unit | " + " | ".join(PEERS[p]["label"] for p in peers) + " |")
    L.append("|---|---|" + "---|" * len(peers))
    for row in ROWS:
        if row[1] is None:
            L.append(f"| **{row[0].format(**sizes)}** | |" + " |" * len(peers))
            continue
        metric, label, unit, scale, _hib = row
        base = median_of(data, "raw", metric)
        cells = []
        for p in peers:
            m = median_of(data, p, metric)
            if m is None:
                cells.append("—")
            elif p == "raw" or not base:
                cells.append(_fmt(m * scale))
            else:
                cells.append(f"{_fmt(m * scale)} ({m / base:.2f}×)")
        L.append(f"| {label.format(**sizes)} | {unit} | " + " | ".join(cells) + " |")
    L.append("")
    if "chanx" in peers:
        L.append("## Targets (chanx = this repo's chanx.py)\n")
        L.append("| target | measured ratio (median) | per-repetition range | goal | result |")
        L.append("|---|---|---|---|---|")
        for label, metric, den, _, op, thr in TARGETS:
            num = median_of(data, "chanx", metric)
            d = median_of(data, den, metric)
            if num is None or not d:
                L.append(f"| {label.format(**sizes)} | — | — | {op} {thr}× | not measured |")
                continue
            r = num / d
            ok = r >= thr if op == ">=" else r <= thr
            a_vals, b_vals = data["chanx"].get(metric, []), data[den].get(metric, [])
            per_rep = (
                [x / y for x, y in zip(a_vals, b_vals, strict=True) if y]
                if len(a_vals) == len(b_vals)
                else []
            )
            rng = f"{min(per_rep):.2f}–{max(per_rep):.2f}×" if len(per_rep) > 1 else "—"
            L.append(
                f"| {label.format(**sizes)} | {r:.2f}× | {rng} | {op} {thr}× | {'PASS' if ok else 'MISS'} |"
            )
        L.append("")
    L.append(
        "Thread hops (`sync_to_async` calls) per echo message on the default / no-hop "
        "route, and per connect: "
        + "; ".join(
            f"{PEERS[p]['label']} "
            + " / ".join(
                _fmt(x) if x is not None else "—"
                for x in (
                    median_of(data, p, "verify.hops_per_msg_echo"),
                    median_of(data, p, "verify.hops_per_msg_echo_nohop"),
                    median_of(data, p, "verify.hops_per_connect"),
                )
            )
            for p in peers
        )
    )
    if errors:
        L.append("\n## Errors\n")
        for e in errors:
            L.append("```\n" + e.strip() + "\n```")
    return "\n".join(L) + "\n"


def update_readme(report: str) -> None:
    path = os.path.join(BENCH, "README.md")
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    body = report.split("\n", 1)[1]  # drop the H1
    body = body.replace("\n## ", "\n### ")
    new = text[: text.index(start) + len(start)] + "\n" + body + text[text.index(end) :]
    with open(path, "w") as f:
        f.write(new)


# ----------------------------------------------------------------------- main
def machine_meta() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(len(os.sched_getaffinity(0)))
    return {"cpu": cpu, "nproc": nproc, "platform": platform.platform()}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (smoke test)")
    ap.add_argument(
        "--peers",
        default="raw,chanx,chanx213,dcrf",
        help="comma list of raw,chanx,chanx213,dcrf (raw is always added: it is the baseline)",
    )
    ap.add_argument("--only", default=",".join(JOBS), help=f"comma list of jobs: {','.join(JOBS)}")
    ap.add_argument("--reps", type=int, help="repetitions (default 5, --quick 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message/connect counts")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=N",
        help=f"override one size, e.g. --set fanout_conns=500 (keys: {', '.join(k for k in FULL if k != 'reps')})",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    ap.add_argument(
        "--out", help="report path (default bench/results.md; --quick: bench/out/quick-results.md)"
    )
    ap.add_argument(
        "--no-readme", action="store_true", help="do not update bench/README.md's table"
    )
    a = ap.parse_args()

    sizes = dict(QUICK if a.quick else FULL)
    for k in SCALED:
        sizes[k] = max(1, int(sizes[k] * a.scale))
    for kv in a.set:
        k, _, v = kv.partition("=")
        if k not in sizes:
            ap.error(f"unknown size {k!r}")
        sizes[k] = int(v)
    if a.reps:
        sizes["reps"] = a.reps
    peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r} (choose from {', '.join(PEERS)})")
    if "raw" not in peers:
        peers.insert(0, "raw")
    jobs = [j.strip() for j in a.only.split(",") if j.strip()]
    for j in jobs:
        if j not in JOBS:
            ap.error(f"unknown job {j!r}")
    errors: list[str] = []
    if "chanx" in peers and not os.path.exists(os.path.join(REPO, "chanx.py")):
        errors.append("chanx.py not found at the repo root: the chanx peer was skipped")
        peers.remove("chanx")

    t_start = time.monotonic()
    meta = machine_meta()
    meta["load_start"] = _load()
    meta["mode"] = "quick smoke run" if a.quick else "full run"
    meta["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta["versions"] = {}
    for venv in sorted({PEERS[p]["venv"] for p in peers} | {CLIENT_VENV}):
        py = ensure_venv(venv, a.python)
        meta["versions"][venv] = json.loads(
            subprocess.run([py, WORKER, "info"], capture_output=True, text=True, check=True).stdout
        )
    if "chanx" in peers:
        with open(os.path.join(REPO, "chanx.py"), "rb") as f:
            src = f.read()
        meta["chanx_sha"] = hashlib.sha256(src).hexdigest()[:12]
        meta["chanx_lines"] = src.count(b"\n")

    data: dict = {p: {} for p in peers}
    timeout = 180 if a.quick else 1200
    tmp = tempfile.mkdtemp(prefix="chanx-bench-")
    global CHANX_DIR
    if "chanx" in peers:
        # Every job imports the same chanx.py, even if the file is edited mid-run.
        CHANX_DIR = os.path.join(tmp, "chanx-snapshot")
        os.makedirs(CHANX_DIR)
        with open(os.path.join(CHANX_DIR, "chanx.py"), "wb") as f:
            f.write(src)
    try:
        for rep in range(sizes["reps"]):
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
            for job in jobs:
                for peer in order:
                    t0 = time.monotonic()
                    try:
                        if job == "socket":
                            res = run_socket(peer, sizes, tmp, timeout)
                        else:
                            res = run_inproc(peer, JOBS[job], sizes, tmp, timeout)
                    except JobError as e:
                        msg = f"rep {rep + 1} job {job} peer {peer}: {e}"
                        errors.append(msg)
                        log(
                            f"[rep {rep + 1}/{sizes['reps']}] {job:<11} {peer:<8} ERROR (see report)"
                        )
                        continue
                    for scen, vals in res.items():
                        for k, v in vals.items():
                            if isinstance(v, (int, float)):
                                data[peer].setdefault(f"{scen}.{k}", []).append(v)
                    log(
                        f"[rep {rep + 1}/{sizes['reps']}] {job:<11} {peer:<8} "
                        f"{time.monotonic() - t0:5.1f}s"
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = _load()
    meta["elapsed"] = time.monotonic() - t_start

    report = build_report(data, peers, sizes, meta, errors)
    default_out = (
        os.path.join(BENCH, "out", "quick-results.md")
        if a.quick
        else os.path.join(BENCH, "results.md")
    )
    out = a.out or default_out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(
            {"meta": meta, "sizes": sizes, "peers": peers, "data": data, "errors": errors},
            f,
            indent=1,
        )
    if not a.quick and not a.no_readme and a.out is None:
        update_readme(report)
    print(report)
    log(f"report written to {os.path.relpath(out, os.getcwd())}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
