"""Peer 4: djangochannelsrestframework 1.3.0, its idiomatic ``AsyncAPIConsumer``.

Protocol difference (the minimal adaptation): the client frame is the same
``{"action": "echo", "payload": {"text": ...}}`` -- dcrf passes the keys other
than ``action``/``request_id`` to the ``@action()`` method as keyword
arguments -- but dcrf wraps every reply in its own envelope:
``{"errors": [], "data": {"text": ...}, "action": "echo",
"response_status": 200, "request_id": null}``. The reply is therefore a
slightly larger frame than the other peers'. Auth is dcrf's: the consumer's
``permission_classes`` (DRF's default, ``AllowAny``) are checked on connect and
before every action; the user comes from Channels' ``AuthMiddlewareStack``
(dcrf has no DRF authentication classes of its own). No frame is sent on
connect. Fan-out: dcrf has no broadcast API besides model observers, so it is
Channels' ``group_send`` plus a handler method, as in its docs. dcrf keeps
Channels' per-message DB hop; ws/echo-nohop/ removes it with the raw peer's
``dispatch`` override. ws/auth/: dcrf has no token authentication of its own
(its docs point to a Channels middleware), so a small middleware does the raw
peer's DRF token lookup (``peers.raw.token_user``) and sets ``scope["user"]``,
and the consumer's ``permission_classes = [IsAuthenticated]`` checks it on
connect and before every action.
"""

from channels.auth import AuthMiddlewareStack
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.urls import path
from djangochannelsrestframework.consumers import AsyncAPIConsumer
from djangochannelsrestframework.decorators import action
from rest_framework.permissions import IsAuthenticated

from peers.raw import NoHopMixin, token_key, token_user

NAME = "djangochannelsrestframework 1.3.0"
CONNECT_FRAMES = 0
FANOUT_GROUP = "fanout"
CHAT_GROUP = "chat"


class EchoConsumer(AsyncAPIConsumer):
    @action()
    async def echo(self, payload, **kwargs):
        return {"text": payload["text"]}, 200


class EchoNoHopConsumer(NoHopMixin, EchoConsumer):
    pass


class TokenEchoConsumer(EchoConsumer):
    permission_classes = [IsAuthenticated]


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from an ``Authorization: Token <key>`` header."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        key = token_key(scope)
        user = await token_user(key) if key else None
        if user is not None:
            scope = dict(scope, user=user)
        return await self.inner(scope, receive, send)


class FanoutConsumer(EchoConsumer):
    groups = [FANOUT_GROUP]

    async def fanout_message(self, event):
        await self.send_json({"action": "fanout", "payload": {"text": event["text"]}})


class FanoutNoHopConsumer(NoHopMixin, FanoutConsumer):
    pass


class ChatConsumer(EchoConsumer):
    groups = [CHAT_GROUP]

    @action()
    async def shout(self, payload, **kwargs):
        await self.channel_layer.group_send(
            CHAT_GROUP, {"type": "chat.message", "text": payload["text"]}
        )  # returns None: dcrf sends no reply

    async def chat_message(self, event):
        await self.send_json({"action": "chat", "payload": {"text": event["text"]}})


async def broadcast(text: str, nohop: bool = False) -> None:
    await get_channel_layer().group_send(FANOUT_GROUP, {"type": "fanout.message", "text": text})


def expected_reply(text: str) -> dict:
    return {
        "errors": [],
        "data": {"text": text},
        "action": "echo",
        "response_status": 200,
        "request_id": None,
    }


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
            path("ws/auth/", TokenAuthMiddleware(TokenEchoConsumer.as_asgi())),
        ]
    )
)
