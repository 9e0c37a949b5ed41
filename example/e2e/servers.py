"""Start real servers of the example: redis-server, uvicorn, `manage.py` commands.

Plain helpers, shared by ``test_multiprocess.py``, the browser tests and
``bench/soak.py`` (only ``require_browser`` and ``chromium`` import pytest or
Playwright, and only when called). Every process is a context manager or has ``stop()``, every
wait has a deadline, and every server binds 127.0.0.1.

    with RedisServer(tmp_dir) as redis, ExampleServer(env) as server:
        server.ws_url("/ws/chat/1/")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser

EXAMPLE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = EXAMPLE_DIR.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 30.0  # seconds for a server to come up
STOP_TIMEOUT = 10.0  # seconds for a process to exit after SIGTERM (then SIGKILL)
MANAGE_TIMEOUT = 120.0  # seconds for one manage.py command
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists()


def free_port() -> int:
    """A port nothing listens on right now (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Signal one process (ours, by pid), wait; SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def require_browser(module_name: str) -> None:
    """Skip the calling test module unless Playwright and Chromium are installed.

    With CHANX_REQUIRE_ALL=1 a missing piece fails the run instead. Call it at
    module level, before importing playwright.
    """
    import importlib.util

    import pytest

    missing = [
        reason
        for reason, ok in [
            ("the playwright package is not installed", importlib.util.find_spec("playwright")),
            (f"{CHROMIUM} is missing", CHROMIUM.exists()),
        ]
        if not ok
    ]
    if not missing:
        return
    reason = f"{module_name} needs Playwright and Chromium: " + "; ".join(missing)
    if os.environ.get("CHANX_REQUIRE_ALL") == "1":
        pytest.fail(reason + " (CHANX_REQUIRE_ALL=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium (``CHROMIUM``) under Playwright, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


class OutputCapture:
    """Reads a process's (merged) output on a thread so the pipe never fills up."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], Any], timeout: float, what: str) -> Any:
        """The first truthy ``predicate(line)`` of any line, past or future."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    value = predicate(line)
                    if value:
                        return value
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout:.0f}s waiting for {what}; output:\n"
                        + self.text()
                    )
                if self.process.poll() is not None and not self._thread.is_alive():
                    raise RuntimeError(
                        f"process exited ({self.process.returncode}) before {what}; output:\n"
                        + self.text()
                    )
                self._changed.wait(min(remaining, 0.5))

    def close(self) -> None:
        """After the process exited: finish reading, then close the pipe."""
        self._thread.join(timeout=STOP_TIMEOUT)
        if self.process.stdout is not None and not self._thread.is_alive():
            self.process.stdout.close()

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def json_records(self, logger: str = "chanx") -> list[dict[str, Any]]:
        """The JSON log lines (chanx.JsonFormatter) of ``logger``."""
        records = []
        with self._changed:
            lines = list(self.lines)
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("logger") == logger:
                records.append(record)
        return records


def example_env(
    sqlite_path: Path | str, redis_url: str | None = None, **extra: str
) -> dict[str, str]:
    """Environment of the example project's processes."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR), str(EXAMPLE_DIR)]),
        "SQLITE_PATH": str(sqlite_path),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    from e2e.postgres import database_url_for  # each demo database its own, of DATABASE_URL's kind

    if url := database_url_for(sqlite_path):
        env["DATABASE_URL"] = url
    return env


def manage(
    args: list[str], env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py <args>`` in example/; fails with its output unless it succeeds."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE_DIR,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def shell(code: str, env: Mapping[str, str], timeout: float = MANAGE_TIMEOUT) -> Any:
    """Run ``code`` in ``manage.py shell -c``; it must print one JSON line last."""
    done = manage(["shell", "-c", code], env, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"shell printed nothing:\n{done.stderr}")
    return json.loads(lines[-1])


_DEMO_INFO = """
import json
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from assistants.models import Conversation
from chat.models import Room
users = {u.username: u for u in get_user_model().objects.all()}
tokens = {name: Token.objects.get_or_create(user=user)[0].key for name, user in users.items()}
conversation = Conversation.objects.filter(user=users["alice"]).first()
print(json.dumps({
    "lobby": Room.objects.get(name="Lobby").pk,
    "tokens": tokens,
    "user_ids": {name: user.pk for name, user in users.items()},
    "alice_conversation": str(conversation.pk),
}))
"""


def prepare_demo_db(sqlite_path: Path | str) -> dict[str, Any]:
    """Migrate a fresh SQLite file, load the demo data, give every user a DRF token.

    Returns ``{"lobby": pk, "tokens": {username: key}, "user_ids": {...},
    "alice_conversation": uuid}``.
    """
    env = example_env(sqlite_path)
    manage(["migrate", "--verbosity=0"], env)
    manage(["demo"], env)
    info: dict[str, Any] = shell(_DEMO_INFO, env)
    return info


class RedisServer:
    """A throwaway redis-server (no persistence) on a free loopback port.

    ``stop()`` and ``start()`` again reuse the same port (a restart).
    """

    def __init__(self, directory: Path | str, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None
        self.output: OutputCapture | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        # A restart binds the same port again (redis sets SO_REUSEADDR).
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputCapture(self.process)
        try:
            self.output.wait_for(
                lambda line: "Ready to accept connections" in line, START_TIMEOUT, "redis-server"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)
        if self.output is not None:
            self.output.close()
        wait_until(lambda: not port_accepts(self.port), STOP_TIMEOUT, "redis port to close")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))  # Debian's postgresql 15
#: Settings for throwaway benchmark clusters: no disk flushes, so a commit costs
#: the server's work, not the shared machine's disk.
PG_NO_SYNC = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port.

    The cluster lives in a temp dir the object creates (under ``parent``) and
    removes in ``stop()``. PostgreSQL refuses to run as root, so as root the
    cluster is owned and run by the ``postgres`` user. Trust authentication on
    127.0.0.1 only; ``url`` is ``postgres://postgres@127.0.0.1:PORT/DATABASE``.
    ``settings`` become ``-c name=value`` server options (e.g. ``PG_NO_SYNC``).

        with PostgresServer(database="bench", settings=PG_NO_SYNC) as pg:
            pg.url
    """

    def __init__(
        self,
        parent: Path | str | None = None,
        port: int | None = None,
        database: str = "chanx",
        settings: Mapping[str, str] | None = None,
        run_as: str = "postgres",
    ) -> None:
        self.parent = parent
        self.port = port or free_port()
        self.database = database
        self.settings = dict(settings or {})
        self.run_as = run_as if os.geteuid() == 0 else None
        self.directory: Path | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        assert self.directory is not None
        done = subprocess.run(
            [str(PG_BIN / args[0]), *args[1:]],
            cwd=self.directory,
            user=self.run_as,
            group=self.run_as,
            extra_groups=[] if self.run_as else None,
            env={**os.environ, "LC_ALL": "C.UTF-8", "PGTZ": "UTC"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start(self) -> PostgresServer:
        import tempfile

        self.directory = Path(tempfile.mkdtemp(prefix="chanx-pg-", dir=self.parent))
        if self.run_as:
            shutil.chown(self.directory, self.run_as, self.run_as)
        data = self.directory / "data"
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            **self.settings,
        }
        try:
            self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
            self._run(
                "pg_ctl", "-D", str(data), "-l", str(self.directory / "server.log"),
                "-w", "-t", str(int(START_TIMEOUT)), "start",
                "-o", " ".join(f"-c {name}={value}" for name, value in options.items()),
            )  # fmt: skip
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      self.database)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        path = self.directory / "server.log" if self.directory else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self) -> None:
        if self.directory is None:
            return
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(data), "-m", "fast", "-w",
                          "-t", str(int(STOP_TIMEOUT)), "stop")  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExampleServer:
    """``uvicorn config.asgi:application`` (or ``app``) of the example, on a port it picks itself.

    On SIGTERM uvicorn waits for open connections' tasks, at most
    ``graceful_timeout`` seconds, before it cancels them and exits.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *uvicorn_args: str,
        graceful_timeout: int = 10,  # above DRAIN_TIMEOUT (5 s), or uvicorn cuts the drain
        app: str = "config.asgi:application",
    ) -> None:
        self.env = dict(env)
        self.app = app
        self.uvicorn_args = ("--timeout-graceful-shutdown", str(graceful_timeout), *uvicorn_args)
        self.process: subprocess.Popen[str] | None = None
        self.output: OutputCapture | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.base_url

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ExampleServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--lifespan",
                "off",
                *self.uvicorn_args,
            ],
            cwd=EXAMPLE_DIR,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # chanx's JSON log lines and uvicorn's own
            text=True,
        )
        self.output = OutputCapture(self.process)
        try:
            self.port = int(
                self.output.wait_for(
                    lambda line: (
                        (m := re.search(r"Uvicorn running on http://[\d.]+:(\d+)", line))
                        and m.group(1)
                    ),
                    START_TIMEOUT,
                    "uvicorn to start",
                )
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self.output is not None:
            self.output.close()

    def records(self) -> list[dict[str, Any]]:
        assert self.output is not None
        return self.output.json_records()

    def __enter__(self) -> ExampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ShellWorker:
    """A long-lived ``manage.py shell -c`` that runs one snippet per stdin line.

    Stands in for a WSGI worker or a task queue: a third process that calls
    ``broadcast_event_sync`` whenever it is told to. ``run(code)`` returns
    ``(ok, detail)`` where detail is the snippet's ``result`` variable or the
    error.
    """

    _LOOP = (
        "import json, sys, traceback\n"
        "print(json.dumps({'ready': True}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    ns = {}\n"
        "    try:\n"
        "        exec(json.loads(line), ns)\n"
        "        reply = {'ok': True, 'result': ns.get('result')}\n"
        "    except Exception as exc:\n"
        "        reply = {'ok': False, 'result': f'{type(exc).__name__}: {exc}'}\n"
        "    print(json.dumps(reply, default=str), flush=True)\n"
    )

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.process: subprocess.Popen[str] | None = None
        self.output: OutputCapture | None = None
        self._replies = 0

    def start(self) -> ShellWorker:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", self._LOOP],
            cwd=EXAMPLE_DIR,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = OutputCapture(self.process)
        try:
            self.output.wait_for(lambda line: line == '{"ready": true}', START_TIMEOUT, "shell")
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, code: str, timeout: float = 30.0) -> tuple[bool, Any]:
        assert self.process is not None and self.process.stdin is not None
        assert self.output is not None
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        wanted = self._replies + 1
        replies: list[dict[str, Any]] = []

        def nth_reply(line: str) -> dict[str, Any] | None:
            if line.startswith('{"ok": '):
                replies.append(json.loads(line))
                if len(replies) == wanted:
                    return replies[-1]
            return None

        reply = self.output.wait_for(nth_reply, timeout, "the shell's reply")
        self._replies = wanted
        return bool(reply["ok"]), reply["result"]

    def stop(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):
                    self.process.stdin.close()
            stop_process(self.process)
        if self.output is not None:
            self.output.close()

    def __enter__(self) -> ShellWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def all_stopped(*servers: Any) -> Iterator[None]:
    """Stop every server on the way out, even when one ``stop()`` fails."""
    try:
        yield
    finally:
        errors = []
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]
