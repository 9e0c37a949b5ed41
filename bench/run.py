#!/usr/bin/env python3
"""chanx benchmark: one command, every peer, ratios to raw Django Channels.

    python3 bench/run.py                 # full run (several minutes)
    python3 bench/run.py --quick         # tiny sizes, one repetition (smoke test, ~1 min)
    python3 bench/run.py --peers raw,chanx --reps 3 --only socket
    python3 bench/run.py --only db,import --peers raw,chanx --out bench/results-db-import.md
    python3 bench/run.py --only db,dbslow --peers raw,chanx --chanx-prev REV --out bench/results-db-pool.md

Standard library only. It creates bench/.venvs/{current,chanx213,dcrf}
(pinned requirements-*.txt, re-created when those files change), then runs
every job for every peer in its own process, interleaved (job 1 for peers
A,B,C,D, job 2 for A,B,C,D, ..., then the next repetition, with the peer
order rotated each repetition) so background noise is shared, and reports
the median of the repetitions as a table of values and ratios to raw
Channels. The report is stamped with `git rev-parse HEAD` and the sha256 of
the chanx.py it measured. The ``db`` job starts its own PostgreSQL
(example/e2e/servers.py's PostgresServer). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
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
IMPORTCOST = os.path.join(BENCH, "importcost.py")

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
    # Added by run.py itself, DB jobs only (never in --peers): the chanx.py snapshot
    # with ORM_THREADS=None, the dbslow job's control (Channels' one ORM thread) ...
    "chanx1": {
        "venv": "current",
        "module": "chanx_repo",
        "label": "chanx, ORM_THREADS=None",
        "repo_path": True,
        "env": {"BENCH_ORM_THREADS": "none"},
        "aux": True,
    },
    # ... and chanx.py as committed at --chanx-prev REV (the db job), on its defaults.
    "chanxprev": {
        "venv": "current",
        "module": "chanx_repo",
        "label": "chanx (previous)",
        "repo_path": "prev",
        "aux": True,
    },
}
CONNECT_FRAMES = {"raw": 0, "chanx": 1, "chanx213": 1, "dcrf": 0, "chanx1": 1, "chanxprev": 1}
CLIENT_VENV = "current"
DB_VENV = "db"  # the db job's servers: "current" + psycopg

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
    "db_conns": 10,
    "db_msgs": 100,
    "db_warm": 10,
    "db_rounds": 3,
    "dbslow_conns": 20,
    "dbslow_msgs": 30,
    "dbslow_warm": 3,
    "import_runs": 3,
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
    "db_conns": 3,
    "db_msgs": 20,
    "db_warm": 3,
    "db_rounds": 2,
    "dbslow_conns": 20,
    "dbslow_msgs": 5,
    "dbslow_warm": 1,
    "import_runs": 3,
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
    "db_msgs",
    "db_warm",
    "dbslow_msgs",
    "dbslow_warm",
)

JOBS = {  # job -> in-process scenarios ("socket", "db" and "import" are special)
    "messages": ["verify", "seq", "pipe", "nohop_seq", "nohop_pipe"],
    "connect": ["connect", "connect_token"],
    "fanout": ["fanout", "fanout_nohop", "chat"],
    "memory": ["memory", "memory_anon"],
    "logging": ["log_verify", "log_seq", "log_nohop_seq", "log_nohop_pipe"],
    "socket": None,
    "db": None,
    "dbslow": None,
    "import": None,
}
# Jobs not run for every peer: the DB and logging scenarios compare chanx with
# raw Channels only (the issue's scope; the DB jobs also run chanx.py with
# ORM_THREADS=None or at --chanx-prev REV); import cost is chanx's alone.
JOB_PEERS = {
    "db": ("raw", "chanx", "chanxprev"),
    "dbslow": ("raw", "chanx", "chanx1"),
    "logging": ("raw", "chanx"),
    "import": ("chanx",),
}
DB_JOBS = ("db", "dbslow")
# The DB job's variants: name -> database settings (env for djsettings.py)
DB_VARIANTS = {
    "db0s": {"BENCH_CONN_MAX_AGE": "0"},  # one connection: frames one at a time
    "db0": {"BENCH_CONN_MAX_AGE": "0"},
    "db60": {"BENCH_CONN_MAX_AGE": "60"},
    "db60h": {"BENCH_CONN_MAX_AGE": "60", "BENCH_CONN_HEALTH_CHECKS": "1"},
}
# The dbslow job: each frame reads a row, runs a 5 ms query (pg_sleep), writes the row.
DBSLOW_VARIANTS = {
    "dbslow0": {"BENCH_CONN_MAX_AGE": "0"},
    "dbslow60": {"BENCH_CONN_MAX_AGE": "60"},
}
DB_LABELS = {
    "db0s": "CONN_MAX_AGE=0 (Django's default), 1 connection",
    "db0": "CONN_MAX_AGE=0 (Django's default)",
    "db60": "CONN_MAX_AGE=60",
    "db60h": "CONN_MAX_AGE=60, CONN_HEALTH_CHECKS=True",
    "dbslow0": "CONN_MAX_AGE=0 (Django's default)",
    "dbslow60": "CONN_MAX_AGE=60",
}
PG_SAMPLE_S = 0.025  # pg_stat_activity sampling interval during the DB jobs


def job_variants(job: str) -> list:
    return list({"db": DB_VARIANTS, "dbslow": DBSLOW_VARIANTS}.get(job, [None]))


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
CHANX_PREV_DIR = ""  # the --chanx-prev snapshot's dir (peer chanxprev)


def peer_env(peer: str, tmp: str, extra: dict | None = None) -> dict:
    drop = ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("BENCH_")}
    env["DJANGO_SETTINGS_MODULE"] = "djsettings"
    env["BENCH_PEER"] = PEERS[peer]["module"] if peer in PEERS else peer
    env["BENCH_TMP"] = tmp
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    repo_path = PEERS.get(peer, {}).get("repo_path")
    if repo_path:
        # `import chanx` is this repo's chanx.py (the snapshot, or the --chanx-prev one)
        env["PYTHONPATH"] = CHANX_PREV_DIR if repo_path == "prev" else CHANX_DIR
    env.update(PEERS.get(peer, {}).get("env", {}))
    env.update(extra or {})
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


def run_inproc(
    peer: str,
    scenarios: list[str],
    sizes: dict,
    tmp: str,
    timeout: float,
    extra: dict | None = None,
) -> dict:
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
                env=peer_env(peer, tmp, extra),
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


class _Server:
    """``worker.py serve`` (uvicorn) for one peer; stopped by ``stop()``."""

    def __init__(
        self,
        peer: str,
        tmp: str,
        extra: dict | None = None,
        count: bool = False,
        venv: str | None = None,
    ):
        ready = os.path.join(tmp, f"ready-{peer}-{time.monotonic_ns()}")
        self.log = ready + ".server.log"
        with open(self.log, "wb") as lf:
            self.process = subprocess.Popen(
                [
                    _venv_python(venv or PEERS[peer]["venv"]),
                    WORKER,
                    "serve",
                    "--peer",
                    PEERS[peer]["module"],
                    "--ready-file",
                    ready,
                ]
                + (["--count"] if count else []),
                env=peer_env(peer, tmp, extra),
                stdout=lf,
                stderr=subprocess.STDOUT,
                cwd=BENCH,
            )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise JobError(f"server did not start\n{_tail(self.log)}")
                time.sleep(0.05)
            with open(ready) as f:
                self.info = json.load(f)
        except BaseException:
            self.stop()
            raise

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.info['port']}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _client(
    peer: str, server: _Server, path: str, args: list[str], tmp: str, timeout: float, tag: str
) -> dict:
    out = os.path.join(tmp, f"client-{peer}-{tag}-{time.monotonic_ns()}.json")
    clog = out + ".log"
    cmd = [
        _venv_python(CLIENT_VENV),
        WORKER,
        "client",
        "--url",
        server.url(path),
        "--server-pid",
        str(server.info["pid"]),
        "--connect-frames",
        str(CONNECT_FRAMES[peer]),
        "--out",
        out,
        *args,
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
            raise JobError(f"client timed out\n{_tail(clog)}\n{_tail(server.log)}") from None
    if p.returncode != 0 or not os.path.exists(out):
        raise JobError(f"client exit {p.returncode}\n{_tail(clog)}\n{_tail(server.log)}")
    with open(out) as f:
        return json.load(f)


def run_socket(peer: str, sizes: dict, tmp: str, timeout: float) -> dict:
    server = _Server(peer, tmp)
    try:
        res = {}
        for name, conns, msgs, warm in (
            ("sock1", 1, sizes["sock1_msgs"], sizes["sock1_warm"]),
            ("sockc", sizes["sockc_conns"], sizes["sockc_msgs"], sizes["sockc_warm"]),
        ):
            args = ["--conns", str(conns), "--msgs", str(msgs), "--warm", str(warm)]
            res[name] = _client(peer, server, "/ws/echo/", args, tmp, timeout, name)
        return res
    finally:
        server.stop()


def run_db_pair(
    peers: list[str],
    variant: str,
    sizes: dict,
    tmp: str,
    timeout: float,
    db_url: str,
    pg_pid: int | None = None,
) -> dict:
    """One DB variant: a uvicorn server per peer, all up at once, on the same PostgreSQL.

    The db client then runs ``db_rounds`` times per peer, alternating peers
    (A B, B A, A B, ...), so round k of each peer is measured seconds apart and
    background load falls on all alike. Hop counting is on in every server.
    A sampler (``worker.py pgsample``) counts each server's PostgreSQL backends
    (its ``application_name``) in ``pg_stat_activity`` every PG_SAMPLE_S from
    before the first round until after the last; its maxima are one value per
    call. Returns {peer: {variant: {metric: [one value per round]}}}.
    """
    if variant in DBSLOW_VARIANTS:
        env, path = DBSLOW_VARIANTS[variant], "/ws/dbslow/"
        conns, msgs, warm = sizes["dbslow_conns"], sizes["dbslow_msgs"], sizes["dbslow_warm"]
    else:
        env, path, warm = DB_VARIANTS[variant], "/ws/db/", sizes["db_warm"]
        # the 1-connection variant sends as many frames, one at a time
        conns, msgs = (1, sizes["db_conns"] * sizes["db_msgs"]) if variant.endswith("s") else (
            sizes["db_conns"], sizes["db_msgs"])  # fmt: skip
    args = ["--kind", "db", "--conns", str(conns), "--msgs", str(msgs), "--warm", str(warm)]
    if pg_pid:
        args += ["--pg-pid", str(pg_pid)]
    servers: dict[str, _Server] = {}
    out: dict = {p: {variant: {}} for p in peers}
    sampler = None
    try:
        for p in peers:
            extra = {"BENCH_DATABASE_URL": db_url, "BENCH_PG_APPNAME": f"bench-{p}", **env}
            servers[p] = _Server(p, tmp, extra, count=True, venv=DB_VENV)
        sampler = _PgSampler(db_url, tmp)
        for r in range(sizes["db_rounds"]):
            for p in peers if r % 2 == 0 else peers[::-1]:
                res = _client(p, servers[p], path, args, tmp, timeout, variant)
                for k, v in res.items():
                    out[p][variant].setdefault(k, []).append(v)
        pg = sampler.result()
        for p in peers:
            got = out[p][variant]
            got["pg_backends_max"] = [pg["max_by_app"].get(f"bench-{p}", 0)]
            got["pg_backends_peak"] = [pg["peak_by_app"].get(f"bench-{p}", 0)]
            got["pg_backends_all_max"] = [pg["max_total"]]
            got["pg_samples"] = [pg["samples"]]
            got["pg_max_gap_ms"] = [pg["max_gap_ms"]]
        return out
    finally:
        if sampler is not None:
            sampler.stop()
        for server in servers.values():
            server.stop()


class _PgSampler:
    """``worker.py pgsample`` in the db venv: PostgreSQL client backends per server."""

    def __init__(self, db_url: str, tmp: str):
        stem = os.path.join(tmp, f"pgsample-{time.monotonic_ns()}")
        self.out, ready, self.log = stem + ".json", stem + ".ready", stem + ".log"
        with open(self.log, "wb") as lf:
            self.process = subprocess.Popen(
                [_venv_python(DB_VENV), WORKER, "pgsample", "--url", db_url,
                 "--interval", str(PG_SAMPLE_S), "--ready-file", ready, "--out", self.out],
                stdout=lf, stderr=subprocess.STDOUT, cwd=BENCH,
                env=peer_env("raw", tmp),
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):  # its first sample is taken
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise JobError(f"pg sampler did not start\n{_tail(self.log)}")
            time.sleep(0.02)

    def result(self) -> dict:
        self.stop()
        if not os.path.exists(self.out):
            raise JobError(f"pg sampler wrote nothing (exit {self.process.returncode})\n"
                           f"{_tail(self.log)}")  # fmt: skip
        with open(self.out) as f:
            return json.load(f)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def db_setup(tmp: str, db_url: str, rows: int) -> dict:
    p = subprocess.run(
        [_venv_python(DB_VENV), WORKER, "dbsetup", "--rows", str(rows)],
        env=peer_env("raw", tmp, {"BENCH_DATABASE_URL": db_url}),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH,
    )
    if p.returncode != 0:
        raise JobError(f"dbsetup failed ({p.returncode})\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _import_env(tmp: str) -> dict:
    env = peer_env("chanx", tmp)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # importcost.py configures its own settings
    return env


def compile_snapshot(directory: str | None = None) -> None:
    """Byte-compile the chanx.py snapshot with the venvs' Python, as an install would."""
    subprocess.run(
        [_venv_python(CLIENT_VENV), "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
         os.path.join(directory or CHANX_DIR, "chanx.py")],
        check=True,
    )  # fmt: skip


def chanx_info(tmp: str) -> dict:
    """The measured chanx.py's ORM_THREADS (``worker.py chanxinfo`` on the snapshot)."""
    p = subprocess.run(
        [_venv_python(CLIENT_VENV), WORKER, "chanxinfo"],
        env=peer_env("chanx", tmp),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCH,
    )
    if p.returncode != 0:
        raise JobError(f"chanxinfo failed ({p.returncode})\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_import(sizes: dict, tmp: str, timeout: float, venvs: list[str]) -> dict:
    """import_runs fresh interpreters per venv: baseline (dependencies) and `import chanx` times.

    "current" is the primary figure; "db" (psycopg installed) is reported beside it.
    """
    out = {
        ("import" if venv == "current" else f"import_{venv}"): _import_runs(
            sizes["import_runs"], tmp, timeout, venv
        )
        for venv in venvs
    }
    out["import_model"] = _import_runs(sizes["import_runs"], tmp, timeout, "current", True)
    return out


def _import_runs(n: int, tmp: str, timeout: float, venv: str, model: bool = False) -> dict:
    runs = []
    for _ in range(n):
        p = subprocess.run(
            [_venv_python(venv), IMPORTCOST, *(["--with-model"] if model else [])],
            env=_import_env(tmp),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp,
        )
        if p.returncode != 0:
            raise JobError(f"importcost.py exit {p.returncode}\n{p.stderr[-3000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        if os.path.dirname(r["chanx_file"]) != CHANX_DIR:
            raise JobError(f"imported {r['chanx_file']}, not the snapshot in {CHANX_DIR}")
        runs.append(r)
    return {
        "baseline_ms": [r["baseline_ms"] for r in runs],
        "chanx_ms": [r["chanx_ms"] for r in runs],
        "ratio": [r["chanx_ms"] / r["baseline_ms"] for r in runs],
        "modules_added": [r["modules_added"] for r in runs],
    }


def _importtime_tree(stderr: str) -> list[tuple[int, int, int, str]]:
    """(self_us, cumulative_us, depth, module) of the -X importtime lines after the marker."""
    lines = stderr.split("--- import chanx ---", 1)[-1].splitlines()
    out = []
    for line in lines:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        out.append((int(self_us), int(cum_us), depth, name.strip()))
    return out


def _statement_times(tmp: str, top: int) -> str:
    p = subprocess.run(
        [_venv_python("current"), IMPORTCOST, "--statements", str(top)],
        env=_import_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    return p.stdout.strip() if p.returncode == 0 else "failed:\n" + p.stderr[-3000:]


def _st_total(text: str) -> float:
    try:
        return float(text.split(" ms in all", 1)[0].rsplit(" ", 1)[-1])
    except ValueError:
        return 0.0


def import_breakdown(tmp: str, runs: int = 5, top: int = 25, venv: str = "current") -> str:
    """The -X importtime tree of `import chanx` (median over runs) and a cProfile of it."""
    trees = []
    for _ in range(runs):
        p = subprocess.run(
            [_venv_python(venv), "-X", "importtime", IMPORTCOST],
            env=_import_env(tmp),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
        )
        if p.returncode != 0:
            raise JobError(f"importcost.py -X importtime exit {p.returncode}\n{p.stderr[-3000:]}")
        trees.append(_importtime_tree(p.stderr))
    # module -> median self / cumulative over the runs (the same modules load every time)
    by_mod: dict[str, dict] = {}
    for tree in trees:
        for self_us, cum_us, depth, name in tree:
            d = by_mod.setdefault(name, {"self": [], "cum": [], "depth": depth})
            d["self"].append(self_us)
            d["cum"].append(cum_us)
    med = {
        m: (statistics.median(d["self"]), statistics.median(d["cum"]), d["depth"])
        for m, d in by_mod.items()
    }
    total = med.get("chanx", (0, 0, 0))[1]
    groups: dict[str, float] = {}
    for m, (self_us, _cum, _depth) in med.items():
        key = m if m == "chanx" else ".".join(m.split(".")[:2])
        groups[key] = groups.get(key, 0) + self_us
    L = [
        f"# `import chanx`: where the time goes (venv `{venv}`)",
        "",
        f"`python -X importtime bench/importcost.py`, {runs} fresh runs, median per module; only",
        "modules first imported by `import chanx` (the baseline's are already loaded).",
        f"Total `import chanx` (cumulative of the chanx line): {total / 1e3:.1f} ms; chanx.py's own",
        f"module body (self time of `chanx`, i.e. building its classes and pydantic models): "
        f"{med.get('chanx', (0, 0, 0))[0] / 1e3:.1f} ms.",
        "",
        "## Self time grouped by package (first two name components)",
        "",
        "| package | self ms | share |",
        "|---|---|---|",
    ]
    for key, us in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        L.append(
            f"| `{key}` | {us / 1e3:.1f} | {us / total:.0%} |"
            if total
            else f"| `{key}` | {us / 1e3:.1f} | |"
        )
    L += [
        "",
        "## Direct imports of chanx, by cumulative time",
        "",
        "| module | cumulative ms |",
        "|---|---|",
    ]
    for m, (_s, cum, depth) in sorted(med.items(), key=lambda kv: -kv[1][1]):
        if depth == 1:
            L.append(f"| `{m}` | {cum / 1e3:.1f} |")
    if venv != "current":
        return "\n".join(L) + "\n"
    st = [_statement_times(tmp, top) for _ in range(3)]
    L += ["", "## chanx.py's top-level statements, each timed (3 fresh runs; the middle one by total)",
          "", "`python bench/importcost.py --statements N` execs the module body one statement at",
          "a time after the same baseline. Imports inside it are charged to the statement that",
          "triggers them.", "", "```", sorted(st, key=_st_total)[1] if len(st) == 3 else st[0], "```"]  # fmt: skip
    p = subprocess.run(
        [_venv_python(venv), IMPORTCOST, "--profile", str(top + 15)],
        env=_import_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
    )
    L += ["", "## cProfile of `import chanx` (one run; cProfile inflates, read it for shares)", "",
          "```", p.stdout.strip() if p.returncode == 0 else p.stderr[-3000:], "```", ""]  # fmt: skip
    return "\n".join(L)


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
    ("connect_token.us_per_connect", "connect + DRF token auth", "µs", 1, False),
    ("connect_token.cpu_us_per_connect", "↳ same, CPU time", "µs", 1, False),
    ("connect.us_per_connect", "connect, anonymous (raw: bare accept)", "µs", 1, False),
    ("connect.cpu_us_per_connect", "↳ same, CPU time", "µs", 1, False),
    ("fanout.ms", "fan-out to {fanout_conns} conns", "ms", 1, False),
    ("fanout.cpu_ms", "↳ same, CPU time", "ms", 1, False),
    ("fanout_nohop.ms", "fan-out to {fanout_conns}, no DB hop", "ms", 1, False),
    ("chat.ms", "chat relay: 1 client frame to {fanout_conns} conns", "ms", 1, False),
    (
        "memory.traced_bytes_per_conn",
        "memory / idle token-authenticated conn (tracemalloc)",
        "KiB",
        1 / 1024,
        False,
    ),
    ("memory.rss_bytes_per_conn", "↳ same, RSS delta (noisy)", "KiB", 1 / 1024, False),
    (
        "memory_anon.traced_bytes_per_conn",
        "memory / idle anonymous conn (tracemalloc)",
        "KiB",
        1 / 1024,
        False,
    ),
    ("In-process, logging on: INFO through JsonFormatter to a file", None),
    ("log_verify.records_per_msg", "log records per echo frame", "records", 1, False),
    (
        "log_seq.us_per_msg",
        "echo, sequential (with the DB hop where the peer has it)",
        "µs/msg",
        1,
        False,
    ),
    ("log_seq.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
    ("log_nohop_seq.us_per_msg", "echo, no DB hop, sequential", "µs/msg", 1, False),
    ("log_nohop_seq.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
    ("log_nohop_pipe.us_per_msg", "echo, no DB hop, pipelined {pipe_batch}", "µs/msg", 1, False),
    ("log_nohop_pipe.cpu_us_per_msg", "↳ same, CPU time", "µs/msg", 1, False),
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
DB_HEADING = "PostgreSQL"  # sections whose heading starts so go to the PostgreSQL table
for _v, _label in DB_LABELS.items():
    if _v in DBSLOW_VARIANTS:
        _what = (
            "PostgreSQL, slow query, uvicorn, {dbslow_conns} conns × {dbslow_msgs} frames, "
            "per frame 1 row read + a 5 ms query (pg_sleep) + the row written"
        )
    else:
        _what = (
            "PostgreSQL, uvicorn, "
            + (
                "1 conn, as many frames one at a time"
                if _v.endswith("s")
                else "{db_conns} conns × {db_msgs} frames"
            )
            + ", 1 row read + written per frame"
        )
    ROWS += [
        (f"{_what}: {_label.split(', 1 connection')[0]}", None),
        (f"{_v}.msgs_per_s", "throughput", "msg/s", 1, True),
        (f"{_v}.p50_us", "latency p50", "µs", 1, False),
        (f"{_v}.p99_us", "latency p99", "µs", 1, False),
        (f"{_v}.server_cpu_us_per_msg", "server CPU (uvicorn process)", "µs/msg", 1, False),
        (f"{_v}.hops_per_msg", "thread hops (sync_to_async calls)", "/frame", 1, False),
        (f"{_v}.db_connects_per_msg", "new DB connections", "/frame", 1, False),
        # CPU use while the load runs, in cores (1.00 = one core busy all the time);
        # no ratio: they say which process is the limit, not which peer is better
        (f"{_v}.server_cpu_util", "CPU: uvicorn process", "cores", 1, None),
        (f"{_v}.pg_cpu_util", "CPU: PostgreSQL (all its processes)", "cores", 1, None),
        (f"{_v}.client_cpu_util", "CPU: load client", "cores", 1, None),
        (f"{_v}.loop_lag_ms", "event loop lag (10 ms sleeps), mean", "ms", 1, None),
        (f"{_v}.loop_lag_max_ms", "↳ max", "ms", 1, None),
        (f"{_v}.orm_busy_mean", "ORM pool threads busy, mean", "threads", 1, None),
        (f"{_v}.orm_waiting_mean", "waiting for an ORM thread, mean", "units/calls", 1, None),
        (f"{_v}.pg_backends_max", "PostgreSQL connections of the server, max", "conns", 1, None),
        (f"{_v}.pg_backends_peak", "↳ with backends still exiting", "backends", 1, None),
        (f"{_v}.orm_threads_bound", "ORM threads (its bound on backends)", "threads", 1, None),
    ]

# (label, metric, denominator peer, numerator peer (None: chanx), op, threshold);
# op "within": threshold is a (low, high) range of the ratio
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
        "connect + DRF token auth vs raw Channels' token lookup in connect()",
        "connect_token.us_per_connect",
        "raw",
        None,
        "<=",
        1.5,
    ),
    ("↳ same, CPU time", "connect_token.cpu_us_per_connect", "raw", None, "<=", 1.5),
    (
        "connect, DRF default classes + AllowAny (anonymous) vs bare Channels connect",
        "connect.us_per_connect",
        "raw",
        None,
        "<=",
        1.5,
    ),
    ("fan-out to {fanout_conns} vs raw group_send", "fanout.ms", "raw", None, "<=", 1.1),
    ("↳ same, CPU time", "fanout.cpu_ms", "raw", None, "<=", 1.1),
    (
        "memory per idle token-authenticated conn vs raw",
        "memory.traced_bytes_per_conn",
        "raw",
        None,
        "<=",
        1.1,
    ),
    (
        "logging on, no DB hop, sequential vs raw with the same log records",
        "log_nohop_seq.us_per_msg",
        "raw",
        None,
        "<=",
        1.15,
    ),
    ("↳ same, CPU time", "log_nohop_seq.cpu_us_per_msg", "raw", None, "<=", 1.15),
    *(
        (f"PostgreSQL, {_label}: throughput vs raw", f"{_v}.msgs_per_s", "raw", None, ">=", 1.0)
        for _v, _label in DB_LABELS.items()
        if _v in DB_VARIANTS
    ),
    *(
        (f"PostgreSQL, {_label}: p99 vs raw", f"{_v}.p99_us", "raw", None, "<=", 1.0)
        for _v, _label in DB_LABELS.items()
        if _v in DB_VARIANTS
    ),
    # the ORM thread pool: with a 5 ms query per frame, {dbslow_conns} connections
    *(
        (
            f"PostgreSQL slow query, {{dbslow_conns}} conns, {_label}: throughput vs raw",
            f"{_v}.msgs_per_s",
            "raw",
            None,
            ">=",
            3.0,
        )
        for _v, _label in DB_LABELS.items()
        if _v in DBSLOW_VARIANTS
    ),
    *(
        (
            f"↳ control, chanx with ORM_THREADS=None vs raw ({_label}): level",
            f"{_v}.msgs_per_s",
            "raw",
            "chanx1",
            "within",
            (0.8, 1.25),
        )
        for _v, _label in DB_LABELS.items()
        if _v in DBSLOW_VARIANTS
    ),
    # the fast DB job: chanx (pool) against chanx.py at --chanx-prev (5% for noise)
    *(
        (
            f"PostgreSQL, {_label}: throughput vs the previous chanx (not slower)",
            f"{_v}.msgs_per_s",
            "chanxprev",
            None,
            ">=",
            0.95,
        )
        for _v, _label in DB_LABELS.items()
        if _v in DB_VARIANTS
    ),
]
IMPORT_TARGET = 0.08  # `import chanx` at most 8% over its dependencies' own import time


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


def _sections(peers: list[str], data: dict):
    """ROWS grouped under their headings, keeping only rows some peer measured."""
    out, current = [], None
    for row in ROWS:
        if row[1] is None:
            current = (row[0], [])
            out.append(current)
        elif current is not None and any(data.get(p, {}).get(row[0]) for p in peers):
            current[1].append(row)
    return [(h, rows) for h, rows in out if rows]


def _limit(data: dict, peer: str, variant: str) -> str:
    """Which part bounds a DB run: the ORM threads, or which process's CPU (medians)."""

    def med(key: str):
        return median_of(data, peer, f"{variant}.{key}")

    util = {"uvicorn": med("server_cpu_util"), "PostgreSQL": med("pg_cpu_util"),
            "client": med("client_cpu_util")}  # fmt: skip
    if util["uvicorn"] is None:
        return "—"
    known = {k: v for k, v in util.items() if v is not None}
    total = sum(known.values())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    bound, busy, waiting, lag = med("orm_threads_bound"), med("orm_busy_mean"), \
        med("orm_waiting_mean"), med("loop_lag_ms")  # fmt: skip
    facts = (
        ", ".join(f"{k} {v:.2f}" for k, v in known.items()) + f" cores (sum {total:.2f} of {cores})"
    )
    if lag is not None:
        facts += f"; loop lag {lag:.2f} ms"
    rate = med("msgs_per_s")
    if busy is not None:
        facts += f"; pool threads busy {busy:.1f} of {bound:.0f}"
        if rate:  # Little's law: threads held on average = frames/s * hold time per frame
            facts += f" (a frame holds its thread {busy / rate * 1e3:.1f} ms)"
    if waiting is not None:
        facts += f"; waiting for a thread {waiting:.1f}"
    top = max((v, k) for k, v in known.items())
    if busy is not None and (waiting or 0) >= 0.5:
        verdict = f"the pool: its {bound:.0f} threads taken, frames queue for one"
    elif busy is None and (waiting or 0) >= 0.5:
        verdict = "the one ORM thread: calls queue for it"
    elif util["uvicorn"] >= 0.9:
        verdict = "uvicorn's CPU (one core: the event loop and the ORM threads share the GIL)"
    elif total >= 0.85 * cores:
        verdict = f"the machine's {cores} cores (all three busy; {top[1]} most)"
    elif top[0] >= 0.9:
        verdict = f"{top[1]}'s CPU"
    else:
        verdict = "none saturated: latency (threads free, CPU to spare)"
    return f"{facts}: limit = {verdict}"


def db_notes(data: dict, peers: list[str], meta: dict) -> list[str]:
    """Lines under the PostgreSQL table: backends vs the ORM-thread bound, and the limit."""
    L: list[str] = []
    checks, worst = [], True
    for v, label in DB_LABELS.items():
        cells = []
        for p in peers:
            got = data.get(p, {}).get(f"{v}.pg_backends_max")
            bound = data.get(p, {}).get(f"{v}.orm_threads_bound")
            if not got or not bound:
                continue
            ok = max(got) <= min(bound)
            worst = worst and ok
            peak = max(data[p].get(f"{v}.pg_backends_peak") or got)
            cells.append(f"{PEERS[p]['label']} {max(got):.0f} / {min(bound):.0f}"
                         + (f" (peak {peak:.0f} with exiting backends)" if peak > max(got) else "")
                         + ("" if ok else " **EXCEEDED**"))  # fmt: skip
        if cells:
            job = "dbslow" if v in DBSLOW_VARIANTS else "db"
            checks.append(f"  - {job}, {label}: " + "; ".join(cells))
    if checks:

        def every(key: str) -> list:
            return [x for p in peers for v in DB_LABELS for x in data.get(p, {}).get(f"{v}.{key}", [])]  # fmt: skip

        samples, gaps, alls = (
            every("pg_samples"),
            every("pg_max_gap_ms"),
            every("pg_backends_all_max"),
        )
        L.append(
            "PostgreSQL client backends per server process (`pg_stat_activity`, "
            "`backend_type = 'client backend'`, the bench database, by each server's "
            f"`application_name`; the sampler's own connection excluded), sampled every "
            f"{PG_SAMPLE_S * 1e3:.0f} ms from before a variant's first round until after its "
            f"last ({min(samples)}–{max(samples)} samples per variant, longest gap "
            f"{max(gaps):.0f} ms; at most {max(alls)} backends of all the servers at once): "
            "the most open at once in any run / what its ORM threads allow (one connection "
            "per thread per alias; one alias). A backend whose client has closed the "
            "connection (its socket no longer ESTABLISHED) is not counted as open: under "
            "CONN_MAX_AGE=0 a thread closes its connection and opens the next at once, and "
            "PostgreSQL lists the old backend until it has exited (the peak, when higher). "
            + ("**within the bound in every run**" if worst else "**bound EXCEEDED**")
        )
        L += checks
        L.append("")
    slow = [
        v for v in DBSLOW_VARIANTS if any(data.get(p, {}).get(f"{v}.msgs_per_s") for p in peers)
    ]
    if slow:
        L.append("Where the slow-query runs' limit is (medians while the load runs: CPU in "
                 "cores of the uvicorn process, PostgreSQL's processes and the load client; "
                 "the server's event loop lag; its ORM threads busy and what waits for one):")  # fmt: skip
        for v in slow:
            for p in peers:
                if data.get(p, {}).get(f"{v}.msgs_per_s"):
                    L.append(f"  - {DB_LABELS[v]}, {PEERS[p]['label']}: {_limit(data, p, v)}")
        L.append("")
    return L


def build_report(data: dict, peers: list[str], sizes: dict, meta: dict, errors: list[str]) -> str:
    L: list[str] = []
    L.append(f"# chanx benchmark results ({meta['mode']})\n")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- date: {meta['date']}")
    if "chanx_sha256" in meta:
        L.append(
            f"- measured: `chanx.py` sha256 `{meta['chanx_sha256']}` ({meta['chanx_lines']} lines), "
            f"{meta['chanx_provenance']}"
        )
    L.append(f"- repository HEAD: `{meta['git_head']}`")
    L.append(
        f"- machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu']}, load avg (1/5/15 min) at start / end "
        f"{meta['load_start']} / {meta['load_end']} (shared machine)"
    )
    v = meta["versions"].get("current", {})
    L.append(
        f"- Python {v.get('python')}, Django {v.get('Django')}, Channels {v.get('channels')}, "
        f"DRF {v.get('djangorestframework')}, pydantic {v.get('pydantic')}; "
        f"uvicorn {v.get('uvicorn')} (uvloop {v.get('uvloop')}, httptools, websockets-sansio), "
        f"websockets {v.get('websockets')} client"
        + (
            f"; psycopg {meta['versions'][DB_VENV].get('psycopg')} (db job only)"
            if DB_VENV in meta["versions"]
            else ""
        )
    )
    if meta.get("postgres"):
        L.append(f"- PostgreSQL: {meta['postgres']}")
    L.append("- peers: " + "; ".join(PEERS[p]["label"] for p in peers))
    info = meta.get("chanx_info")
    if info:
        L.append(
            "- chanx's ORM threads: "
            + (
                f"`ORM_THREADS` default {info['orm_threads_default']} (the chanx column: no "
                "`CHANX` setting); the control column sets `ORM_THREADS=None`"
                if info.get("has_orm_threads")
                else "this chanx.py has no `ORM_THREADS` setting (Channels' one ORM thread; "
                "the dbslow job's `ORM_THREADS=None` control was not run)"
            )
        )
    if meta.get("chanx_prev"):
        L.append(
            f"- previous chanx (db job's `chanx @…` column, its defaults): {meta['chanx_prev']}"
        )
    L.append(
        f"- {sizes['reps']} repetition(s), median shown; jobs interleaved across peers, "
        f"peer order rotated each repetition"
        + (
            f" (DB jobs: {sizes['db_rounds']} alternating rounds per repetition, "
            "every peer's server up at once)"
            if any(j in meta["jobs"] for j in DB_JOBS)
            else ""
        )
        + f"; jobs: {', '.join(meta['jobs'])}; "
        f"run time {meta['elapsed']:.0f}s"
    )
    L.append(f"- sizes: {json.dumps({k: v for k, v in sizes.items() if k != 'reps'})}")
    L.append("")
    aux = meta.get("aux_peers", [])
    sections = _sections(peers, data)
    main = [sec for sec in sections if not sec[0].startswith(DB_HEADING)]
    db_sections = _sections(peers + aux, data)
    db_sections = [sec for sec in db_sections if sec[0].startswith(DB_HEADING)]
    db_peers = [
        p for p in peers + aux
        if any(data.get(p, {}).get(row[0]) for _h, rows in db_sections for row in rows)
    ]  # fmt: skip
    if sections or db_sections:
        L.append(
            "Each cell: median value, and in parentheses the ratio to raw Channels "
            "(peer / raw; for msg/s higher is better, for everything else lower is better). "
            "bench/README.md says what each row measures.\n"
        )
    for table, cols in ((main, peers), (db_sections, db_peers)):
        if not table:
            continue
        L.append("| metric | unit | " + " | ".join(PEERS[p]["label"] for p in cols) + " |")
        L.append("|---|---|" + "---|" * len(cols))
        for heading, rows in table:
            L.append(f"| **{heading.format(**sizes)}** | |" + " |" * len(cols))
            for metric, label, unit, scale, hib in rows:
                base = median_of(data, "raw", metric)
                cells = []
                for p in cols:
                    m = median_of(data, p, metric)
                    if m is None:
                        cells.append("—")
                    elif p == "raw" or not base or hib is None:
                        cells.append(_fmt(m * scale))
                    else:
                        cells.append(f"{_fmt(m * scale)} ({m / base:.2f}×)")
                L.append(f"| {label.format(**sizes)} | {unit} | " + " | ".join(cells) + " |")
        L.append("")
    if db_sections:
        L += db_notes(data, db_peers, meta)
    imp = data.get("chanx", {})
    if imp.get("import.ratio"):
        L.append("## Import cost (`bench/importcost.py`, a fresh interpreter per run)\n")
        L.append(
            "| venv | dependencies (baseline) | `import chanx` on top | ratio (median of per-run ratios) | min–max ratio | runs | modules added |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for key, label in (
            ("import", "current (no psycopg)"),
            ("import_model", "current, the baseline also builds one pydantic model"),
            (f"import_{DB_VENV}", "db (psycopg installed)"),
        ):
            if not imp.get(f"{key}.ratio"):
                continue
            ratios = imp[f"{key}.ratio"]
            L.append(
                f"| {label} | {statistics.median(imp[f'{key}.baseline_ms']):.1f} ms | "
                f"{statistics.median(imp[f'{key}.chanx_ms']):.1f} ms | "
                f"{statistics.median(ratios):.1%} | {min(ratios):.1%}–{max(ratios):.1%} | "
                f"{len(ratios)} | {statistics.median(imp[f'{key}.modules_added']):.0f} |"
            )
        r = statistics.median(imp["import.ratio"])
        L.append(
            f"\nTarget (current venv): at most {IMPORT_TARGET:.0%} over the dependencies: "
            f"**{'PASS' if r <= IMPORT_TARGET else 'MISS'}** ({r:.1%}). "
            + (
                f"Where the time goes: [{meta['importtime_file']}]({meta['importtime_file']}).\n"
                if meta.get("importtime_file")
                else "\n"
            )
        )
    if "chanx" in peers:
        L.append("## Targets (chanx = this repo's chanx.py)\n")
        L.append("| target | measured ratio (median) | per-repetition range | goal | result |")
        L.append("|---|---|---|---|---|")
        for label, metric, den, num_peer, op, thr in TARGETS:
            num_peer = num_peer or "chanx"
            num = median_of(data, num_peer, metric)
            d = median_of(data, den, metric)
            if num is None or not d:
                continue  # not measured in this run
            r = num / d
            low, high = thr if op == "within" else (thr, None) if op == ">=" else (None, thr)
            ok = (low is None or r >= low) and (high is None or r <= high)
            a_vals, b_vals = data[num_peer].get(metric, []), data[den].get(metric, [])
            per_rep = (
                [x / y for x, y in zip(a_vals, b_vals, strict=True) if y]
                if len(a_vals) == len(b_vals)
                else []
            )
            rng = f"{min(per_rep):.2f}–{max(per_rep):.2f}×" if len(per_rep) > 1 else "—"
            lines = thr if op == "within" else (thr,)
            shown = (
                f"{r:.3f}×" if any(f"{r:.2f}" == f"{t:.2f}" for t in lines) else f"{r:.2f}×"
            )  # no rounding onto the line
            goal = f"{thr[0]}–{thr[1]}×" if op == "within" else f"{op} {thr}×"
            L.append(
                f"| {label.format(**sizes)} | {shown} | {rng} | {goal} | {'PASS' if ok else 'MISS'} |"
            )
        if imp.get("import.ratio"):
            r = statistics.median(imp["import.ratio"])
            L.append(
                f"| `import chanx` over its dependencies | {r:.1%} | "
                f"{min(imp['import.ratio']):.1%}–{max(imp['import.ratio']):.1%} (per run) | "
                f"<= {IMPORT_TARGET:.0%} | {'PASS' if r <= IMPORT_TARGET else 'MISS'} |"
            )
        L.append("")
    if any(data.get(p, {}).get("verify.hops_per_msg_echo") for p in peers):
        L.append(
            "Thread hops (`sync_to_async` calls) per echo message on the default / no-hop "
            "route, and per connect anonymous / with a DRF token: "
            + "; ".join(
                f"{PEERS[p]['label']} "
                + " / ".join(
                    _fmt(x) if x is not None else "—"
                    for x in (
                        median_of(data, p, "verify.hops_per_msg_echo"),
                        median_of(data, p, "verify.hops_per_msg_echo_nohop"),
                        median_of(data, p, "verify.hops_per_connect"),
                        median_of(data, p, "verify.hops_per_connect_token"),
                    )
                )
                for p in peers
            )
        )
    info = meta.get("info", {})
    keys = {p: info.get(p, {}).get("log_verify.record_keys") for p in peers}
    if any(keys.values()):
        L.append("")
        L.append(
            "Fields of the last log record of an echo (logging job): "
            + "; ".join(f"{PEERS[p]['label']}: {k}" for p, k in keys.items() if k)
        )
    tracked = [median_of(data, "chanx", f"{v}.chanx_tracked_connections_end") for v in DB_VARIANTS]
    if any(t is not None for t in tracked):
        L.append("")
        L.append(
            "chanx.py's `_DB_CONNECTIONS` entries at the end of each DB run "
            "(one server process per run): "
            + ", ".join(
                f"{DB_LABELS[v]}: {_fmt(t)}"
                for v, t in zip(DB_VARIANTS, tracked, strict=True)
                if t is not None
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


def default_out(quick: bool) -> str:
    if quick:
        return os.path.join(BENCH, "out", "quick-results.md")
    return os.path.join(BENCH, "results.md")


def _git(*args: str) -> str:
    try:
        p = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def chanx_stamp(src: bytes, rev: str = "HEAD") -> dict:
    """sha256 of the measured chanx.py and which commit has exactly that file."""
    stamp = {
        "chanx_sha256": hashlib.sha256(src).hexdigest(),
        "chanx_sha": hashlib.sha256(src).hexdigest()[:12],
        "chanx_lines": src.count(b"\n"),
    }
    blob = hashlib.sha1(b"blob %d\0" % len(src) + src).hexdigest()  # git hash-object
    head_blob = _git("rev-parse", "HEAD:chanx.py")
    if blob == head_blob:
        commit = _git("log", "-1", "--format=%H", "--", "chanx.py")
        stamp["chanx_commit"] = commit
        stamp["chanx_provenance"] = f"= chanx.py at HEAD, last changed in commit `{commit}`"
    else:
        stamp["chanx_commit"] = None
        stamp["chanx_provenance"] = (
            "**uncommitted**: differs from HEAD's chanx.py (git blob "
            f"{blob[:12]} vs {head_blob[:12] or 'none'}); rerun on a committed chanx.py "
            "before quoting these figures"
        )
    return stamp


def _stamp_lines(meta: dict) -> str:
    lines = [f"- command: `{meta['command']}`", f"- date: {meta['date']}"]
    if "chanx_sha256" in meta:
        lines.append(
            f"- measured: `chanx.py` sha256 `{meta['chanx_sha256']}`, {meta['chanx_provenance']}"
        )
    lines.append(f"- repository HEAD: `{meta['git_head']}`")
    lines.append(f"- load avg at start: {meta['load_start']}")
    return "\n".join(lines) + "\n"


def start_postgres(meta: dict, sizes: dict):
    """A PostgreSQL of our own for the db job (stopped by the caller), migrated, with rows."""
    sys.path.insert(0, os.path.join(REPO, "example"))
    from e2e.servers import PG_NO_SYNC, PostgresServer, postgres_available

    if not postgres_available():
        raise SystemExit("the db job needs PostgreSQL's initdb/pg_ctl (apt-get install postgresql)")
    pg = PostgresServer(database="bench", settings=PG_NO_SYNC).start()
    try:
        setup = db_setup(
            tempfile.gettempdir(), pg.url, max(100, sizes["db_conns"], sizes["dbslow_conns"])
        )
        with open(os.path.join(pg.directory, "data", "postmaster.pid")) as f:
            meta["pg_pid"] = int(f.readline())
    except BaseException:
        pg.stop()
        raise
    meta["postgres"] = (
        f"server {setup['server_version']} started by the run (initdb in a temp dir, "
        f"127.0.0.1), {', '.join(f'{k}={v}' for k, v in PG_NO_SYNC.items())}; "
        f"{setup['rows']} rows"
    )
    return pg, pg.url


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
    ap.add_argument(
        "--chanx-rev",
        metavar="REV",
        help="measure chanx.py as committed at REV (e.g. HEAD) instead of the working tree's",
    )
    ap.add_argument(
        "--chanx-prev",
        metavar="REV",
        help="db job: also run chanx.py as committed at REV (e.g. the commit before a change) "
        "and compare chanx with it",
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
        if p not in PEERS or PEERS[p].get("aux"):
            main_peers = ", ".join(p for p in PEERS if not PEERS[p].get("aux"))
            ap.error(f"unknown peer {p!r} (choose from {main_peers})")
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
    meta["command"] = " ".join(["python3", "bench/run.py", *sys.argv[1:]])
    meta["jobs"] = jobs
    meta["load_start"] = _load()
    meta["mode"] = "quick smoke run" if a.quick else "full run"
    meta["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta["git_head"] = _git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    meta["versions"] = {}
    for venv in sorted({PEERS[p]["venv"] for p in peers} | {CLIENT_VENV}):
        py = ensure_venv(venv, a.python)
        meta["versions"][venv] = json.loads(
            subprocess.run([py, WORKER, "info"], capture_output=True, text=True, check=True).stdout
        )
    if "chanx" in peers:
        if a.chanx_rev:
            src = subprocess.run(
                ["git", "-C", REPO, "show", f"{a.chanx_rev}:chanx.py"],
                capture_output=True,
                check=True,
            ).stdout
        else:
            with open(os.path.join(REPO, "chanx.py"), "rb") as f:
                src = f.read()
        meta.update(chanx_stamp(src, a.chanx_rev or "HEAD"))
    # the DB jobs' extra chanx servers (columns of the PostgreSQL table only)
    aux: list[str] = []
    prev_src = None
    if "chanx" in peers and "db" in jobs and a.chanx_prev:
        prev_src = subprocess.run(
            ["git", "-C", REPO, "show", f"{a.chanx_prev}:chanx.py"], capture_output=True, check=True
        ).stdout
        commit = _git("rev-parse", f"{a.chanx_prev}^{{commit}}")
        PEERS["chanxprev"]["label"] = f"chanx @{commit[:8] or a.chanx_prev}"
        meta["chanx_prev"] = (
            f"`{a.chanx_prev}` = commit `{commit}`, chanx.py sha256 "
            f"`{hashlib.sha256(prev_src).hexdigest()}`"
        )
        aux.append("chanxprev")
    if "chanx" in peers and "dbslow" in jobs:
        aux.append("chanx1")  # dropped below if this chanx.py has no ORM_THREADS

    import_venvs = ["current"]
    if any(j in jobs for j in DB_JOBS) or "import" in jobs:
        meta["versions"][DB_VENV] = json.loads(
            subprocess.run(
                [ensure_venv(DB_VENV, a.python), WORKER, "info"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        import_venvs.append(DB_VENV)
    data: dict = {p: {} for p in peers + aux}
    info: dict = {p: {} for p in peers + aux}
    meta["info"] = info
    timeout = 180 if a.quick else 1200
    tmp = tempfile.mkdtemp(prefix="chanx-bench-")
    global CHANX_DIR
    if "chanx" in peers:
        # Every job imports the same chanx.py, even if the file is edited mid-run.
        CHANX_DIR = os.path.join(tmp, "chanx-snapshot")
        os.makedirs(CHANX_DIR)
        with open(os.path.join(CHANX_DIR, "chanx.py"), "wb") as f:
            f.write(src)
        compile_snapshot()
    if prev_src is not None:
        global CHANX_PREV_DIR
        CHANX_PREV_DIR = os.path.join(tmp, "chanx-prev")
        os.makedirs(CHANX_PREV_DIR)
        with open(os.path.join(CHANX_PREV_DIR, "chanx.py"), "wb") as f:
            f.write(prev_src)
        compile_snapshot(CHANX_PREV_DIR)
    if "chanx" in peers and any(j in jobs for j in DB_JOBS):
        try:
            meta["chanx_info"] = chanx_info(tmp)
        except JobError as e:
            errors.append(f"chanxinfo: {e}")
            meta["chanx_info"] = {}
        if not meta["chanx_info"].get("has_orm_threads") and "chanx1" in aux:
            aux.remove("chanx1")  # no control to run (the report's header says so)
    meta["aux_peers"] = aux
    units = [(job, v) for job in jobs for v in job_variants(job)]

    def record(peer: str, res: dict) -> None:
        for scen, vals in res.items():
            for k, v in vals.items():
                if isinstance(v, list):
                    data[peer].setdefault(f"{scen}.{k}", []).extend(v)
                elif isinstance(v, (int, float)):
                    data[peer].setdefault(f"{scen}.{k}", []).append(v)
                elif isinstance(v, str):
                    info[peer][f"{scen}.{k}"] = v

    pg = None
    db_url = ""
    try:
        if any(j in jobs for j in DB_JOBS):
            pg, db_url = start_postgres(meta, sizes)
        for rep in range(sizes["reps"]):
            order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
            for job, variant in units:
                if job in DB_JOBS:
                    pair = [p for p in peers + aux if p in JOB_PEERS[job]]
                    pair = pair[rep % len(pair) :] + pair[: rep % len(pair)]
                    t0 = time.monotonic()
                    try:
                        results = run_db_pair(
                            pair, variant, sizes, tmp, timeout, db_url, meta.get("pg_pid")
                        )
                    except JobError as e:
                        errors.append(f"rep {rep + 1} job {variant} peers {pair}: {e}")
                        log(f"[rep {rep + 1}/{sizes['reps']}] {variant:<11} ERROR (see report)")
                        continue
                    for peer, res in results.items():
                        record(peer, res)
                    log(
                        f"[rep {rep + 1}/{sizes['reps']}] {variant:<11} {'+'.join(pair):<8} "
                        f"{time.monotonic() - t0:5.1f}s"
                    )
                    continue
                for peer in order:
                    if job in JOB_PEERS and peer not in JOB_PEERS[job]:
                        continue
                    name = variant or job
                    t0 = time.monotonic()
                    try:
                        if job == "socket":
                            res = run_socket(peer, sizes, tmp, timeout)
                        elif job == "import":
                            res = run_import(sizes, tmp, timeout, import_venvs)
                        elif job == "logging":
                            log_file = os.path.join(tmp, f"log-{peer}-{rep}.jsonl")
                            res = run_inproc(
                                peer, JOBS[job], sizes, tmp, timeout, {"BENCH_LOG_FILE": log_file}
                            )
                            with contextlib.suppress(OSError):
                                os.remove(log_file)
                        else:
                            res = run_inproc(peer, JOBS[job], sizes, tmp, timeout)
                    except JobError as e:
                        msg = f"rep {rep + 1} job {name} peer {peer}: {e}"
                        errors.append(msg)
                        log(
                            f"[rep {rep + 1}/{sizes['reps']}] {name:<11} {peer:<8} ERROR (see report)"
                        )
                        continue
                    record(peer, res)
                    log(
                        f"[rep {rep + 1}/{sizes['reps']}] {name:<11} {peer:<8} "
                        f"{time.monotonic() - t0:5.1f}s"
                    )
        if "import" in jobs and "chanx" in peers and data["chanx"].get("import.ratio"):
            out_stem = os.path.splitext(a.out or default_out(a.quick))[0]
            breakdown = out_stem + "-importtime.md"
            try:
                text = "\n".join(
                    import_breakdown(tmp, runs=3 if a.quick else 5, venv=v) for v in import_venvs
                )
            except JobError as e:
                errors.append(f"import breakdown: {e}")
            else:
                os.makedirs(os.path.dirname(breakdown), exist_ok=True)
                with open(breakdown, "w") as f:
                    f.write(_stamp_lines(meta) + "\n" + text)
                meta["importtime_file"] = os.path.basename(breakdown)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = _load()
    meta["elapsed"] = time.monotonic() - t_start

    report = build_report(data, peers, sizes, meta, errors)
    out = a.out or default_out(a.quick)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(
            {"meta": meta, "sizes": sizes, "peers": peers + aux, "data": data, "errors": errors},
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
