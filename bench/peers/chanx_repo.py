"""Peer 2: this repo's ``chanx.py`` (a single module named ``chanx``).

Imported from the repo root through PYTHONPATH, in the same venv as the raw
Channels peer. Written as the README/DESIGN.md show: typed ``EchoMessage``,
a ``@ws_handler`` returning it, a ``DjangoAuthenticator`` subclass with DRF's
default authentication classes and ``AllowAny``, ``build_groups`` for the
fan-out group and ``broadcast_event`` + ``@event_handler`` for fan-out,
``send_group_message`` of a ``BaseGroupMessage`` for the chat relay.
Settings are chanx's defaults (no ``CHANX`` setting at all).

chanx does not call Channels' per-message ``aclose_old_connections`` hop
itself, so ws/echo-nohop/ is the very same consumer as ws/echo/.

ws/auth/ authenticates a DRF token (``TokenAuthentication``, ``IsAuthenticated``);
ws/db/ reads and bumps one row through the async ORM in a ``@ws_handler``;
ws/dbslow/ the same with the 5 ms query (``benchapp.slow.slow_query``) in between;
ws/echo-log/ and ws/echo-log-nohop/ are ws/echo/: chanx logs its two INFO
records per frame by default, and the logging job turns the level on.
"""

from typing import Literal

from benchapp.models import Row
from benchapp.slow import slow_query
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.urls import path
from pydantic import BaseModel
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import AllowAny, IsAuthenticated

from chanx import (
    AsyncJsonWebsocketConsumer,
    BaseChannelEvent,
    BaseGroupMessage,
    BaseMessage,
    DjangoAuthenticator,
    event_handler,
    ws_handler,
)

NAME = "chanx (this repo)"
CONNECT_FRAMES = 1  # {"action": "authentication", ...}
FANOUT_GROUP = "fanout"
CHAT_GROUP = "chat"


class EchoPayload(BaseModel):
    text: str


class EchoMessage(BaseMessage):
    action: Literal["echo"] = "echo"
    payload: EchoPayload


class FanoutEvent(BaseChannelEvent):
    action: Literal["fanout_event"] = "fanout_event"
    payload: EchoPayload


class FanoutMessage(BaseMessage):
    action: Literal["fanout"] = "fanout"
    payload: EchoPayload


class ShoutMessage(BaseMessage):
    action: Literal["shout"] = "shout"
    payload: EchoPayload


class ChatBroadcast(BaseGroupMessage):
    action: Literal["chat"] = "chat"
    payload: EchoPayload


class BenchAuthenticator(DjangoAuthenticator):
    permission_classes = [AllowAny]  # DRF default authentication classes


class EchoConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator

    @ws_handler
    async def handle_echo(self, message: EchoMessage) -> EchoMessage:
        return message


class TokenAuthenticator(DjangoAuthenticator):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]


class TokenEchoConsumer(EchoConsumer):
    authenticator_class = TokenAuthenticator


class BumpPayload(BaseModel):
    id: int


class BumpMessage(BaseMessage):
    action: Literal["bump"] = "bump"
    payload: BumpPayload


class BumpedPayload(BaseModel):
    id: int
    hits: int


class BumpedMessage(BaseMessage):
    action: Literal["bumped"] = "bumped"
    payload: BumpedPayload


class DbConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator

    @ws_handler
    async def handle_bump(self, message: BumpMessage) -> BumpedMessage:
        row = await Row.objects.aget(pk=message.payload.id)
        row.hits += 1
        await row.asave(update_fields=["hits"])
        return BumpedMessage(payload=BumpedPayload(id=row.pk, hits=row.hits))


class DbSlowConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator

    @ws_handler
    async def handle_bump(self, message: BumpMessage) -> BumpedMessage:
        row = await Row.objects.aget(pk=message.payload.id)
        await slow_query()
        row.hits += 1
        await row.asave(update_fields=["hits"])
        return BumpedMessage(payload=BumpedPayload(id=row.pk, hits=row.hits))


class FanoutConsumer(AsyncJsonWebsocketConsumer[FanoutEvent]):
    authenticator_class = BenchAuthenticator

    async def build_groups(self) -> list[str]:
        return [FANOUT_GROUP]

    @ws_handler
    async def handle_echo(self, message: EchoMessage) -> EchoMessage:
        return message

    @event_handler
    async def handle_fanout(self, event: FanoutEvent) -> FanoutMessage:
        return FanoutMessage(payload=event.payload)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator

    async def build_groups(self) -> list[str]:
        return [CHAT_GROUP]

    @ws_handler
    async def handle_shout(self, message: ShoutMessage) -> None:
        await self.send_group_message(ChatBroadcast(payload=message.payload), exclude_current=False)


async def broadcast(text: str, nohop: bool = False) -> None:
    await FanoutConsumer.broadcast_event(
        FanoutEvent(payload=EchoPayload(text=text)), [FANOUT_GROUP]
    )


def expected_reply(text: str) -> dict:
    return {"action": "echo", "payload": {"text": text}}


def expected_db(row_id: int, hits: int) -> dict:
    return {"action": "bumped", "payload": {"id": row_id, "hits": hits}}


def expected_fanout(text: str) -> dict:
    return {"action": "fanout", "payload": {"text": text}}


def expected_chat(text: str) -> dict:
    # receivers also get is_mine / is_current (group messages); checked as a subset
    return {"action": "chat", "payload": {"text": text}}


application = AuthMiddlewareStack(
    URLRouter(
        [
            path("ws/echo/", EchoConsumer.as_asgi()),
            path("ws/echo-nohop/", EchoConsumer.as_asgi()),
            path("ws/connect/", EchoConsumer.as_asgi()),
            path("ws/fanout/", FanoutConsumer.as_asgi()),
            path("ws/fanout-nohop/", FanoutConsumer.as_asgi()),
            path("ws/chat/", ChatConsumer.as_asgi()),
            path("ws/auth/", TokenEchoConsumer.as_asgi()),
            path("ws/db/", DbConsumer.as_asgi()),
            path("ws/dbslow/", DbSlowConsumer.as_asgi()),
            path("ws/echo-log/", EchoConsumer.as_asgi()),
            path("ws/echo-log-nohop/", EchoConsumer.as_asgi()),
        ]
    )
)
