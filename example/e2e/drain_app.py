"""Test-only ASGI app of ``test_drain.py``: one consumer whose handler takes a while.

    uvicorn e2e.drain_app:application   (cwd example/, DJANGO_SETTINGS_MODULE=config.settings)

Each ``work`` frame's handler writes a "started" row (committed), says
``work_started``, sleeps ``DRAIN_HANDLER_SECONDS`` (so many handlers are mid-way
when the server stops), marks the row finished (committed), then replies
``work_done``. The row keeps the time the handler began and whether the
connection's ``websocket.disconnect`` had already arrived then (chanx must start
no frame after it). Rows live in ``drain_frame``, a plain table the test creates
(``CREATE_TABLE``) through Django's connection: no model, no migration, any
database. ``CHANX_DRAIN_TIMEOUT`` overrides ``settings.CHANX["DRAIN_TIMEOUT"]``.
The example's real apps are not involved; nothing here is part of the example.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Literal

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()  # django.setup() before chanx's imports of models

from channels.db import database_sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.db import connection  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from chanx import AsyncJsonWebsocketConsumer, BaseMessage, path, ws_handler  # noqa: E402

#: How long each handler awaits between its two writes.
HANDLER_SECONDS = float(os.environ.get("DRAIN_HANDLER_SECONDS", "0.3"))
if "CHANX_DRAIN_TIMEOUT" in os.environ:  # the bound's test: a short drain
    from django.conf import settings
    from django.test import override_settings

    drain_timeout = float(os.environ["CHANX_DRAIN_TIMEOUT"])
    override_settings(CHANX={**settings.CHANX, "DRAIN_TIMEOUT": drain_timeout}).enable()

CREATE_TABLE = (
    "CREATE TABLE drain_frame (client integer NOT NULL, n integer NOT NULL, "
    "started_at double precision NOT NULL, finished_at double precision NULL, "
    "after_disconnect boolean NOT NULL, PRIMARY KEY (client, n))"
)


class WorkPayload(BaseModel):
    client: int
    n: int


class WorkMessage(BaseMessage):
    action: Literal["work"] = "work"
    payload: WorkPayload


class WorkStartedMessage(BaseMessage):
    action: Literal["work_started"] = "work_started"
    payload: WorkPayload


class WorkDoneMessage(BaseMessage):
    action: Literal["work_done"] = "work_done"
    payload: WorkPayload


def _started(client: int, n: int, started_at: float, after_disconnect: bool) -> None:
    with connection.cursor() as cursor:  # autocommit: committed when it returns
        cursor.execute(
            "INSERT INTO drain_frame (client, n, started_at, after_disconnect) "
            "VALUES (%s, %s, %s, %s)",
            [client, n, started_at, after_disconnect],
        )


def _finished(client: int, n: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE drain_frame SET finished_at = %s WHERE client = %s AND n = %s",
            [time.time(), client, n],
        )
        assert cursor.rowcount == 1, (client, n)


class DrainConsumer(AsyncJsonWebsocketConsumer):
    """Anyone may connect; ``work`` is the only message."""

    authentication_classes: list[type] = []
    permission_classes: list[type] = []
    log_ignored_actions = ["work", "work_started", "work_done", "complete"]  # ~200 a second
    disconnect_received = False

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.disconnect_received = True  # before chanx stops the connection's tasks
        await super().websocket_disconnect(message)

    @ws_handler
    async def handle_work(self, message: WorkMessage) -> WorkDoneMessage:
        key = message.payload.client, message.payload.n
        # Noted before the first await: the row's time is when the handler began,
        # not when the ORM's thread got to the INSERT.
        await database_sync_to_async(_started)(*key, time.time(), self.disconnect_received)
        await self.send_message(WorkStartedMessage(payload=message.payload))
        await asyncio.sleep(HANDLER_SECONDS)
        await database_sync_to_async(_finished)(*key)
        return WorkDoneMessage(payload=message.payload)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([path("ws/drain/", DrainConsumer.as_asgi())]),
    }
)
