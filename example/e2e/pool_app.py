"""The ASGI application of ``e2e/test_psycopg_pool.py``: one test-only consumer.

Run with ``DJANGO_SETTINGS_MODULE=e2e.pool_settings`` (Django's psycopg pool).
Each ``work`` frame's handler makes three thread-sensitive calls, one of each
kind: an async ORM read, a ``pg_sleep`` through ``sync_to_async``, and a write
through ``database_sync_to_async``; then it replies ``work_done``. Its table
(``pool_frame``) is made by the test.

The psycopg pool's ``getconn``/``putconn`` are counted in this process: how many
connections are checked out now, the most at once, by which threads, and the
checkouts that timed out. ``GET /pool/`` answers those figures as JSON (with the
pool's own ``get_stats()``) without touching the database; every other HTTP
path goes to Django.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Literal

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()  # django.setup() before chanx's imports of models

from asgiref.sync import sync_to_async  # noqa: E402
from channels.db import database_sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.db import connection, models  # noqa: E402
from psycopg_pool import ConnectionPool, PoolTimeout  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from chanx import AsyncJsonWebsocketConsumer, BaseMessage, path, ws_handler  # noqa: E402

#: Seconds of ``pg_sleep`` in each handler: the connection is busy on the server.
SLEEP_SECONDS = float(os.environ.get("POOL_SLEEP_SECONDS", "0.02"))


class PoolFrame(models.Model):
    client = models.IntegerField()
    n = models.IntegerField()
    seen = models.IntegerField()  # the client's rows the handler's read found

    class Meta:
        app_label = "chat"  # an installed app; the table is the test's (managed=False)
        db_table = "pool_frame"
        managed = False


class Checkouts:
    """The psycopg pool's connections checked out by this process, counted exactly."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.out = 0
        self.peak = 0
        self.total = 0
        self.timeouts = 0
        self.threads: set[str] = set()
        self.pool: ConnectionPool[Any] | None = None

    def figures(self) -> dict[str, Any]:
        with self.lock:
            figures = {
                "checked_out": self.out,
                "peak": self.peak,
                "checkouts": self.total,
                "timeouts": self.timeouts,
                "threads": sorted(self.threads),
            }
        figures["stats"] = self.pool.get_stats() if self.pool is not None else {}
        return figures


checkouts = Checkouts()
_getconn, _putconn = ConnectionPool.getconn, ConnectionPool.putconn


def _counted_getconn(self: ConnectionPool[Any], timeout: float | None = None) -> Any:
    try:
        conn = _getconn(self, timeout)
    except PoolTimeout:
        with checkouts.lock:
            checkouts.timeouts += 1
        raise
    with checkouts.lock:  # counted once it is ours: never more than the truth
        checkouts.pool = self
        checkouts.out += 1
        checkouts.total += 1
        checkouts.peak = max(checkouts.peak, checkouts.out)
        checkouts.threads.add(threading.current_thread().name)
    return conn


def _counted_putconn(self: ConnectionPool[Any], conn: Any) -> None:
    with checkouts.lock:  # uncounted before it goes back
        checkouts.out -= 1
    _putconn(self, conn)


ConnectionPool.getconn = _counted_getconn  # type: ignore[method-assign]
ConnectionPool.putconn = _counted_putconn  # type: ignore[method-assign]


class WorkPayload(BaseModel):
    client: int
    n: int


class WorkMessage(BaseMessage):
    action: Literal["work"] = "work"
    payload: WorkPayload


class WorkDonePayload(WorkPayload):
    seen: int


class WorkDoneMessage(BaseMessage):
    action: Literal["work_done"] = "work_done"
    payload: WorkDonePayload


def _sleep() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [SLEEP_SECONDS])


def _write(client: int, n: int, seen: int) -> None:
    PoolFrame.objects.create(client=client, n=n, seen=seen)


class PoolConsumer(AsyncJsonWebsocketConsumer):
    """Anyone may connect; ``work`` is the only message."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []
    log_ignored_actions = ["work", "work_done", "complete"]

    @ws_handler
    async def handle_work(self, message: WorkMessage) -> WorkDoneMessage:
        client, n = message.payload.client, message.payload.n
        seen = await PoolFrame.objects.filter(client=client).acount()  # the async ORM
        await sync_to_async(_sleep)()
        await database_sync_to_async(_write)(client, n, seen)
        return WorkDoneMessage(payload=WorkDonePayload(client=client, n=n, seen=seen))


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] != "/pool/":
        await django_asgi_app(scope, receive, send)
        return
    body = json.dumps(checkouts.figures()).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": URLRouter([path("ws/pool/", PoolConsumer.as_asgi())]),
    }
)
