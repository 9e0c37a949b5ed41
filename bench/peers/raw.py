"""Peer 1: raw Django Channels, ``channels.generic.websocket.AsyncJsonWebsocketConsumer``.

The baseline every ratio is taken against.

Routes (every peer serves the same ones, behind the same AuthMiddlewareStack):
  ws/echo/         echo consumer as a Channels user writes it (Channels' default
                   per-message DB hop, ``aclose_old_connections``, included)
  ws/echo-nohop/   the same consumer with ``dispatch`` overridden to skip the hop
  ws/connect/      bare connect: accept only, no auth
  ws/fanout/       joins group "fanout" on connect; handler ``send_json``s
  ws/chat/         joins group "chat"; a client "shout" frame is relayed to the
                   whole group (``group_send`` + handler that ``send_json``s)
  ws/auth/         echo behind DRF token authentication: ``connect()`` reads the
                   ``Authorization: Token <key>`` header and looks the token up
                   the way DRF's TokenAuthentication does (``select_related``
                   user, ``is_active``) in one ``database_sync_to_async`` call;
                   no token / unknown token: close 4401
  ws/db/           "bump": read one row (``aget``) and write it (``asave``)
                   through the async ORM, reply with its new hit count
  ws/dbslow/       "bump" with a 5 ms query between the read and the write
                   (``benchapp.slow.slow_query``, a ``database_sync_to_async``
                   ``SELECT pg_sleep(0.005)``)
  ws/echo-log/     echo that logs what chanx logs per frame: two INFO records
  ws/echo-log-nohop/  ("Received websocket message", "Sent websocket message")
                   with the same extra fields, on logger ``bench.raw``
"""

import logging
import uuid

from benchapp.models import Row
from benchapp.slow import slow_query
from channels.auth import AuthMiddlewareStack
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.urls import path

NAME = "raw Channels"
CONNECT_FRAMES = 0  # frames the server sends on connect before it is usable
FANOUT_GROUP = "fanout"
CHAT_GROUP = "chat"


class EchoConsumer(AsyncJsonWebsocketConsumer):
    async def receive_json(self, content, **kwargs):
        if content.get("action") == "echo":
            await self.send_json(
                {"action": "echo", "payload": {"text": content["payload"]["text"]}}
            )


class NoHopMixin:
    """Channels' ``AsyncConsumer.dispatch`` minus ``await aclose_old_connections()``.

    That call is a ``sync_to_async`` thread hop on every incoming event
    (client frame or channel-layer message). This copy of ``dispatch`` is
    identical apart from the hop.
    """

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler:
            await handler(message)
        else:
            raise ValueError("No handler for message type %s" % message["type"])  # noqa: UP031 (Channels' own line)


class EchoNoHopConsumer(NoHopMixin, EchoConsumer):
    pass


@database_sync_to_async
def token_user(key: str):
    """DRF TokenAuthentication's lookup: the token's active user, or None."""
    from rest_framework.authtoken.models import Token

    try:
        token = Token.objects.select_related("user").get(key=key)
    except Token.DoesNotExist:
        return None
    return token.user if token.user.is_active else None


def token_key(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, key = value.decode("latin1").partition(" ")
            return key.strip() if scheme.lower() == "token" and key.strip() else None
    return None


class TokenAuthConsumer(EchoConsumer):
    """Echo behind a DRF token, authenticated in ``connect()`` as a Channels user would."""

    async def connect(self):
        key = token_key(self.scope)
        user = await token_user(key) if key else None
        if user is None:
            await self.close(code=4401)
            return
        self.scope["user"] = user
        await self.accept()


class DbConsumer(AsyncJsonWebsocketConsumer):
    """Read and write one row through the async ORM per frame."""

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "bump":
            row = await Row.objects.aget(pk=content["payload"]["id"])
            row.hits += 1
            await row.asave(update_fields=["hits"])
            await self.send_json({"action": "bumped", "payload": {"id": row.pk, "hits": row.hits}})


class DbSlowConsumer(AsyncJsonWebsocketConsumer):
    """Read one row, a 5 ms query, write the row: three ORM calls per frame."""

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "bump":
            row = await Row.objects.aget(pk=content["payload"]["id"])
            await slow_query()
            row.hits += 1
            await row.asave(update_fields=["hits"])
            await self.send_json({"action": "bumped", "payload": {"id": row.pk, "hits": row.hits}})


log = logging.getLogger("bench.raw")


class EchoLogConsumer(AsyncJsonWebsocketConsumer):
    """Echo plus the two INFO records chanx writes per frame, with the same fields."""

    async def connect(self):
        self.conn_id = uuid.uuid4().hex[:12]
        self.frame_seq = 0
        await self.accept()

    def log_context(self, **extra):
        client = self.scope.get("client") or ("", "")
        context = {
            "conn_id": self.conn_id,
            "path": self.scope.get("path", ""),
            "client": f"{client[0]}:{client[1]}",
        }
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            context["user_id"] = str(user.pk)
        context.update(extra)
        return context

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "echo":
            self.frame_seq += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "Received websocket message",
                    extra=self.log_context(
                        action="echo", message_id=f"{self.conn_id}:{self.frame_seq}"
                    ),
                )
            await self.send_json(
                {"action": "echo", "payload": {"text": content["payload"]["text"]}}
            )
            if log.isEnabledFor(logging.INFO):
                log.info("Sent websocket message", extra=self.log_context(action="echo"))


class EchoLogNoHopConsumer(NoHopMixin, EchoLogConsumer):
    pass


class BareConnectConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()


class FanoutConsumer(AsyncJsonWebsocketConsumer):
    groups = [FANOUT_GROUP]

    async def fanout_message(self, event):
        await self.send_json({"action": "fanout", "payload": {"text": event["text"]}})


class FanoutNoHopConsumer(NoHopMixin, FanoutConsumer):
    pass


class ChatConsumer(AsyncJsonWebsocketConsumer):
    groups = [CHAT_GROUP]

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "shout":
            await self.channel_layer.group_send(
                CHAT_GROUP, {"type": "chat.message", "text": content["payload"]["text"]}
            )

    async def chat_message(self, event):
        await self.send_json({"action": "chat", "payload": {"text": event["text"]}})


async def broadcast(text: str, nohop: bool = False) -> None:
    await get_channel_layer().group_send(FANOUT_GROUP, {"type": "fanout.message", "text": text})


def expected_reply(text: str) -> dict:
    return {"action": "echo", "payload": {"text": text}}


def expected_db(row_id: int, hits: int) -> dict:
    return {"action": "bumped", "payload": {"id": row_id, "hits": hits}}


def expected_fanout(text: str) -> dict:
    return {"action": "fanout", "payload": {"text": text}}


def expected_chat(text: str) -> dict:
    return {"action": "chat", "payload": {"text": text}}


application = AuthMiddlewareStack(
    URLRouter(
        [
            path("ws/echo/", EchoConsumer.as_asgi()),
            path("ws/echo-nohop/", EchoNoHopConsumer.as_asgi()),
            path("ws/connect/", BareConnectConsumer.as_asgi()),
            path("ws/fanout/", FanoutConsumer.as_asgi()),
            path("ws/fanout-nohop/", FanoutNoHopConsumer.as_asgi()),
            path("ws/chat/", ChatConsumer.as_asgi()),
            path("ws/auth/", TokenAuthConsumer.as_asgi()),
            path("ws/db/", DbConsumer.as_asgi()),
            path("ws/dbslow/", DbSlowConsumer.as_asgi()),
            path("ws/echo-log/", EchoLogConsumer.as_asgi()),
            path("ws/echo-log-nohop/", EchoLogNoHopConsumer.as_asgi()),
        ]
    )
)
