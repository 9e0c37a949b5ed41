"""Peer 3: the published chanx package, ``chanx[channels]==2.13.0`` from PyPI.

Written the way its docs and source show (``chanx.channels.websocket`` consumer,
``@ws_handler`` / ``@event_handler`` from ``chanx.core.decorators``,
``DjangoAuthenticator`` with DRF's defaults, ``broadcast_event`` for fan-out,
``broadcast_message`` (its group-message API) for the chat relay).
Settings are its defaults: no completion frames, authentication frame on
connect, message logging off, ``SEND_MESSAGE_IMMEDIATELY`` on (an
``asyncio.sleep(0)`` after every send). Its consumer subclasses Channels'
``AsyncJsonWebsocketConsumer`` and so keeps Channels' per-message DB hop;
ws/echo-nohop/ removes it with the same ``dispatch`` override as the raw peer.
ws/auth/ authenticates a DRF token (``TokenAuthentication``, ``IsAuthenticated``).
"""

from typing import Literal

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from chanx.channels.authenticator import DjangoAuthenticator
from chanx.channels.websocket import AsyncJsonWebsocketConsumer
from chanx.core.decorators import event_handler, ws_handler
from chanx.messages.base import BaseMessage
from django.urls import path
from pydantic import BaseModel
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import AllowAny, IsAuthenticated

from peers.raw import NoHopMixin

NAME = "chanx 2.13.0 (PyPI)"
CONNECT_FRAMES = 1  # {"action": "authentication", ...}
FANOUT_GROUP = "fanout"
CHAT_GROUP = "chat"


class EchoPayload(BaseModel):
    text: str


class EchoMessage(BaseMessage):
    action: Literal["echo"] = "echo"
    payload: EchoPayload


class FanoutEvent(BaseMessage):
    action: Literal["fanout_event"] = "fanout_event"
    payload: EchoPayload


class FanoutMessage(BaseMessage):
    action: Literal["fanout"] = "fanout"
    payload: EchoPayload


class ShoutMessage(BaseMessage):
    action: Literal["shout"] = "shout"
    payload: EchoPayload


class ChatBroadcast(BaseMessage):
    action: Literal["chat"] = "chat"
    payload: EchoPayload


class BenchAuthenticator(DjangoAuthenticator):
    permission_classes = [AllowAny]  # DRF default authentication classes


class EchoConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator

    @ws_handler
    async def handle_echo(self, message: EchoMessage) -> EchoMessage:
        return message


class EchoNoHopConsumer(NoHopMixin, EchoConsumer):
    pass


class TokenAuthenticator(DjangoAuthenticator):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]


class TokenEchoConsumer(EchoConsumer):
    authenticator_class = TokenAuthenticator


class FanoutConsumer(AsyncJsonWebsocketConsumer[FanoutEvent]):
    authenticator_class = BenchAuthenticator
    groups = [FANOUT_GROUP]

    @ws_handler
    async def handle_echo(self, message: EchoMessage) -> EchoMessage:
        return message

    @event_handler
    async def handle_fanout(self, event: FanoutEvent) -> FanoutMessage:
        return FanoutMessage(payload=event.payload)


class FanoutNoHopConsumer(NoHopMixin, FanoutConsumer):
    pass


class ChatConsumer(AsyncJsonWebsocketConsumer):
    authenticator_class = BenchAuthenticator
    groups = [CHAT_GROUP]

    @ws_handler(output_type=ChatBroadcast)
    async def handle_shout(self, message: ShoutMessage) -> None:
        await self.broadcast_message(ChatBroadcast(payload=message.payload))


async def broadcast(text: str, nohop: bool = False) -> None:
    cls = FanoutNoHopConsumer if nohop else FanoutConsumer
    await cls.broadcast_event(FanoutEvent(payload=EchoPayload(text=text)), FANOUT_GROUP)


def expected_reply(text: str) -> dict:
    return {"action": "echo", "payload": {"text": text}}


def expected_fanout(text: str) -> dict:
    return {"action": "fanout", "payload": {"text": text}}


def expected_chat(text: str) -> dict:
    return {"action": "chat", "payload": {"text": text}}


application = AuthMiddlewareStack(
    URLRouter(
        [
            path("ws/echo/", EchoConsumer.as_asgi()),
            path("ws/echo-nohop/", EchoNoHopConsumer.as_asgi()),
            path("ws/connect/", EchoConsumer.as_asgi()),
            path("ws/fanout/", FanoutConsumer.as_asgi()),
            path("ws/fanout-nohop/", FanoutNoHopConsumer.as_asgi()),
            path("ws/chat/", ChatConsumer.as_asgi()),
            path("ws/auth/", TokenEchoConsumer.as_asgi()),
        ]
    )
)
