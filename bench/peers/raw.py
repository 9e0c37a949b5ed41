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
"""

from channels.auth import AuthMiddlewareStack
from channels.consumer import get_handler_name
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
        ]
    )
)
