"""New tests of this turn (merged into test_chanx.py once its audit lands)."""

import asyncio
import base64
import contextlib
import json
import re
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection, connections
from django.db.backends.signals import connection_created
from django.test import override_settings
from pydantic import BaseModel
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.throttling import BaseThrottle

import chanx
from chanx import (
    AsyncJsonWebsocketConsumer,
    BaseChannelEvent,
    BaseMessage,
    ChanxConfigError,
    WebsocketCommunicator,
    event_handler,
    path,
    ws_handler,
)

User = get_user_model()
REPO = Path(__file__).resolve().parent
db = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_state() -> Any:
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers, CHANX={}):
        yield


class Gate:
    """An event a handler waits on, and one it sets when it starts."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()


GATE = Gate()


class Hold(BaseMessage):
    action: Literal["hold"] = "hold"
    payload: int = 0


class Echo(BaseMessage):
    action: Literal["echo"] = "echo"
    payload: Any = None


class EchoBack(BaseMessage):
    action: Literal["echo_back"] = "echo_back"
    payload: Any = None


class Numbered(BaseModel):
    address_line_2: str
    v2_api: int = 0


class AddressMessage(BaseMessage):
    action: Literal["address"] = "address"
    payload: Numbered


class Notice(BaseChannelEvent):
    action: Literal["notice"] = "notice"
    payload: str


class NoticeMessage(BaseMessage):
    action: Literal["notice_sent"] = "notice_sent"
    payload: str


CONSUMERS: list[Any] = []


async def wait_until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


async def wait_for_consumer(communicator: WebsocketCommunicator) -> Any:
    await wait_until(lambda: CONSUMERS, "the consumer")
    return CONSUMERS[-1]


class HoldConsumer(AsyncJsonWebsocketConsumer):
    permission_classes = [AllowAny]

    async def post_authentication(self) -> None:
        CONSUMERS.append(self)

    @ws_handler
    async def hold(self, message: Hold) -> EchoBack:
        GATE.entered.set()
        try:
            await GATE.release.wait()
        except asyncio.CancelledError:
            GATE.cancelled.set()
            raise
        return EchoBack(payload=message.payload)

    @ws_handler
    async def echo(self, message: Echo) -> EchoBack:
        return EchoBack(payload=message.payload)

    @ws_handler
    async def address(self, message: AddressMessage) -> AddressMessage:
        return message


class StopConsumerOnEcho(HoldConsumer):
    @ws_handler
    async def echo(self, message: Echo) -> EchoBack:
        raise StopConsumer


class LobbyConsumer(AsyncJsonWebsocketConsumer[Notice]):
    permission_classes = [AllowAny]
    send_authentication_message = False
    groups = ["lobby"]

    async def build_groups(self) -> str:  # type: ignore[override]
        return "one-group"

    @event_handler
    async def notice(self, event: Notice) -> NoticeMessage:
        return NoticeMessage(payload=event.payload)


def opened(consumer: type[Any], *args: Any, **kwargs: Any) -> WebsocketCommunicator:
    """A communicator to ``consumer``, disconnected when the test ends."""
    communicator = WebsocketCommunicator(
        URLRouter([path("ws/", consumer.as_asgi())]), "/ws/", *args, **kwargs
    )
    OPENED.append(communicator)
    return communicator


async def connect(
    consumer: type[Any], *, headers: Any = None, subprotocols: Any = None, auth: bool = True
) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        URLRouter([path("ws/", consumer.as_asgi())]), "/ws/", headers, subprotocols
    )
    OPENED.append(communicator)
    connected, _ = await communicator.connect()
    assert connected
    if auth:
        await communicator.assert_authenticated_status_ok()
    return communicator


OPENED: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def fresh_gate() -> Any:
    """A fresh gate; every communicator ``connect()`` made is disconnected afterwards
    (its consumer closes its stale DB connections then)."""
    global GATE
    GATE = Gate()
    CONSUMERS.clear()
    yield
    GATE.release.set()
    for communicator in OPENED:
        await communicator.disconnect()
    OPENED.clear()


# The loop ####################################################################


@db
async def test_disconnect_ends_a_connection_whose_queue_is_full_behind_a_hung_handler() -> None:
    with override_settings(CHANX={"MAX_IN_FLIGHT_MESSAGES": 2, "BACKPRESSURE_TIMEOUT": 0.2}):
        communicator = await connect(HoldConsumer)
        for n in range(6):
            await communicator.send_message(Hold(payload=n))
        await asyncio.wait_for(GATE.entered.wait(), 5)
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(asyncio.shield(communicator.future), 10)  # the application ends
        assert GATE.cancelled.is_set()  # and its handler was cancelled


@db
async def test_frames_past_a_stuck_queue_are_refused_in_order_and_the_socket_stays_open() -> None:
    with override_settings(CHANX={"MAX_IN_FLIGHT_MESSAGES": 2, "BACKPRESSURE_TIMEOUT": 0.1}):
        communicator = await connect(HoldConsumer)
        for n in range(2):
            await communicator.send_message(Hold(payload=n))
        await asyncio.wait_for(GATE.entered.wait(), 5)
        for _ in range(3):
            await communicator.send_message(Echo(payload="late"))
        # read after BACKPRESSURE_TIMEOUT: refused, kept as one entry without its text
        consumer = await wait_for_consumer(communicator)
        await wait_until(lambda: communicator.input_queue.empty(), "the late frames to be read")
        assert consumer._frames.texts == 2 and [
            type(i).__name__ for i in consumer._frames.items
        ] == ["str", "_Refused"]
        GATE.release.set()
        busy = {
            "action": "error",
            "payload": {"detail": "Too many messages in flight; wait for the replies."},
        }
        replies = [await communicator.receive_json_from(timeout=5) for _ in range(5)]
        assert replies == [
            {"action": "echo_back", "payload": 0},
            {"action": "echo_back", "payload": 1},
            busy,
            busy,
            busy,
        ]
        await communicator.send_message(Echo(payload="again"))  # room again: handled
        assert await communicator.receive_json_from() == {"action": "echo_back", "payload": "again"}
        await communicator.disconnect()


@db
async def test_oversized_binary_and_rate_limited_frames_are_refused_as_read_without_a_slot() -> (
    None
):
    settings = {
        "MAX_IN_FLIGHT_MESSAGES": 2,
        "MAX_MESSAGE_SIZE": 64,
        "RATE_LIMIT": 0.001,
        "RATE_LIMIT_BURST": 3,
    }
    with override_settings(CHANX=settings):
        communicator = await connect(HoldConsumer)
        consumer = await wait_for_consumer(communicator)
        await communicator.send_message(Hold(payload=1))  # token 1, held by the handler
        await asyncio.wait_for(GATE.entered.wait(), 5)
        await communicator.send_to(text_data=json.dumps({"action": "echo", "payload": "x" * 100}))
        await communicator.send_to(bytes_data=b"\x00")
        await communicator.send_message(Echo(payload="second"))  # token 2: queued
        await communicator.send_message(Echo(payload="over"))  # token 3, but the queue is full
        await communicator.send_message(Echo(payload="limited"))  # no token left
        await wait_until(lambda: communicator.input_queue.empty(), "every frame to be read")
        assert consumer._frames.texts == 2  # only the two frames with a slot
        kept = [i for i in consumer._frames.items if isinstance(i, str)]
        assert len(kept) == 1 and "x" * 100 not in "".join(kept)  # the oversized text is gone
        GATE.release.set()
        details = [(await communicator.receive_json_from(timeout=5))["payload"] for _ in range(6)]
        assert details == [
            1,
            {"detail": "Message too large; the limit is 64 bytes."},
            {"detail": "Binary frames are not supported; send JSON text."},
            "second",
            {"detail": "Too many messages in flight; wait for the replies."},
            {"detail": "Rate limit exceeded; slow down."},
        ]


@db
async def test_a_client_is_in_its_groups_once_the_handshake_completes() -> None:
    layer = get_channel_layer()
    for n in range(20):
        communicator = await connect(LobbyConsumer, auth=False)  # no authentication frame
        await LobbyConsumer.broadcast_event(Notice(payload=f"n{n}"))  # at once: no pause
        assert await communicator.receive_json_from() == {
            "action": "notice_sent",
            "payload": f"n{n}",
        }
        await communicator.disconnect()
    assert layer.groups == {}


@db
async def test_build_groups_may_return_one_group_as_a_string() -> None:
    communicator = await connect(LobbyConsumer, auth=False)
    await LobbyConsumer.broadcast_event(Notice(payload="one"), "one-group")
    assert await communicator.receive_json_from() == {"action": "notice_sent", "payload": "one"}
    assert set(get_channel_layer().groups) == {"lobby", "one-group"}


@db
async def test_stop_consumer_in_a_handler_closes_the_connection_cleanly() -> None:
    communicator = await connect(StopConsumerOnEcho)
    await communicator.send_message(Echo(payload=1))
    await communicator.assert_closed(code=1000)


@pytest.mark.parametrize("hook", ["connect", "receive", "receive_json", "websocket_receive"])
def test_overriding_a_channels_hook_is_an_error_naming_the_chanx_hook(hook: str) -> None:
    async def method(self: Any, *args: Any) -> None: ...

    with pytest.raises(
        ChanxConfigError,
        match=rf"Bad\.{hook}\(\) is a Channels hook that chanx never calls; override",
    ):
        type("Bad", (AsyncJsonWebsocketConsumer,), {hook: method, "__module__": __name__})


# One wire contract ###########################################################

BAD_FRAMES = [
    "not json",
    "[1, 2]",
    "{}",
    '{"action": 1}',
    '{"action": "nope"}',
    '{"action": "address", "payload": {}}',
    "[" * 300,
]


def wire_errors(frames: list[dict[str, Any]], key: str) -> list[Any]:
    return [f["payload"] for f in frames if f.get(key) == "error"]


@pytest.mark.parametrize(
    "settings",
    [{}, {"CAMELIZE": True}, {"MESSAGE_ACTION_KEY": "type"}],
    ids=["plain", "camel", "key"],
)
@db
async def test_one_error_shape_for_a_bad_frame_whatever_the_settings(
    settings: dict[str, Any],
) -> None:
    key = settings.get("MESSAGE_ACTION_KEY", "action")
    with override_settings(CHANX=settings):
        communicator = await connect(HoldConsumer)
        got = []
        for text in BAD_FRAMES:
            await communicator.send_to(text_data=text.replace('"action"', f'"{key}"'))
            got.append(await communicator.receive_json_from())
    plain = [
        [
            {
                "type": "json_invalid",
                "loc": [],
                "msg": "Invalid JSON: expected ident at line 1 column 2",
            }
        ],
        [{"type": "dict_type", "loc": [], "msg": "Input should be an object"}],
        [{"type": "union_tag_not_found", "loc": [], "msg": f"Missing {key!r} field"}],
        [
            {
                "type": "union_tag_invalid",
                "loc": [],
                "msg": "Unknown action; expected one of: 'hold', 'echo', 'address'",
            }
        ],
        [
            {
                "type": "union_tag_invalid",
                "loc": [],
                "msg": "Unknown action; expected one of: 'hold', 'echo', 'address'",
            }
        ],
        [
            {
                "type": "missing",
                "loc": [
                    "address",
                    "payload",
                    "addressLine_2" if settings.get("CAMELIZE") else "address_line_2",
                ],
                "msg": "Field required",
            }
        ],
        [
            {
                "type": "json_invalid",
                "loc": [],
                "msg": "Invalid JSON: recursion limit exceeded at line 1 column 202",
            }
        ],
    ]
    assert [frame[key] for frame in got] == ["error"] * len(BAD_FRAMES)
    assert [frame["payload"] for frame in got] == plain


@pytest.mark.parametrize(
    "name", ["address_line_2", "v2_api", "_private", "a_b_c", "plain", "x__y", "line_2b"]
)
def test_camelcase_round_trips_snake_case_names_losslessly(name: str) -> None:
    camel = chanx._to_camel(name)
    assert chanx._to_snake(camel) == name
    assert "_" not in camel.lstrip("_") or any(c.isdigit() or c == "_" for c in name.lstrip("_"))


@db
async def test_camelized_frames_with_digits_in_names_round_trip() -> None:
    with override_settings(CHANX={"CAMELIZE": True}):
        communicator = await connect(HoldConsumer)
        await communicator.send_json_to(
            {"action": "address", "payload": {"addressLine_2": "flat 4", "v2Api": 2}}
        )
        assert await communicator.receive_json_from() == {
            "action": "address",
            "payload": {"addressLine_2": "flat 4", "v2Api": 2},
        }


# Request correlation #########################################################


@db
async def test_everything_a_frame_causes_carries_its_ref_and_other_frames_are_unchanged() -> None:
    with override_settings(CHANX={"SEND_COMPLETION": True}):
        communicator = await connect(HoldConsumer)
        await communicator.send_message(Echo(payload=1), ref="r-1")
        assert await communicator.receive_json_from() == {
            "action": "echo_back",
            "payload": 1,
            "ref": "r-1",
        }
        assert await communicator.receive_json_from() == {
            "action": "complete",
            "payload": None,
            "ref": "r-1",
        }
        await communicator.send_json_to({"action": "address", "payload": {}, "ref": 7})
        error = await communicator.receive_json_from()
        assert error["action"] == "error" and error["ref"] == 7
        assert await communicator.receive_json_from() == {
            "action": "complete",
            "payload": None,
            "ref": 7,
        }
        await communicator.send_to(text_data='{"action":"echo","payload":2}')
        frames = await communicator.receive_until_action("complete", inclusive=True)
        assert frames == [
            {"action": "echo_back", "payload": 2},
            {"action": "complete", "payload": None},
        ]
        await communicator.send_message(Echo(payload=3), ref=3)
        assert await communicator.receive_all_json(ref=3) == [
            {"action": "echo_back", "payload": 3, "ref": 3}
        ]


@db
async def test_a_frame_without_ref_is_byte_for_byte_what_it_was() -> None:
    communicator = await connect(HoldConsumer)
    await communicator.send_to(text_data='{"action":"echo","payload":[1,"\u00e9"]}')
    response = await communicator._next(1.0)
    assert response == {
        "type": "websocket.send",
        "text": '{"action":"echo_back","payload":[1,"é"]}',
    }


# Authentication codes ########################################################


class OnceThrottle(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return False

    def wait(self) -> float:
        return 30.0


class MissingInPermission(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        raise User.DoesNotExist("a lookup inside the permission failed")


class DenyAll(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return False


def auth_consumer(**attributes: Any) -> type[Any]:
    return type("AuthProbe", (HoldConsumer,), {"__module__": __name__, **attributes})


async def refusal(consumer: type[Any], **kwargs: Any) -> tuple[dict[str, Any], int]:
    communicator = await connect(consumer, auth=False, **kwargs)
    frame = await communicator.receive_json_from()
    close = await communicator._next(1.0)
    assert close is not None and close["type"] == "websocket.close", close
    return frame["payload"], close["code"]


@db
async def test_close_codes_clients_can_act_on() -> None:
    session_first = auth_consumer(
        authentication_classes=[SessionAuthentication, TokenAuthentication],
        permission_classes=[IsAuthenticated],
    )
    payload, code = await refusal(session_first)
    assert (payload["status_code"], code) == (401, chanx.CLOSE_UNAUTHORIZED)  # not DRF's 403
    bad_token = [(b"authorization", b"Token not-a-token")]
    payload, code = await refusal(
        auth_consumer(permission_classes=[IsAuthenticated]), headers=bad_token
    )
    assert (payload["status_code"], code, payload["data"]["detail"]) == (
        401,
        4401,
        "Invalid token.",
    )
    user = await sync_to_async(User.objects.create_user)("denied")
    token = await Token.objects.acreate(user=user)
    payload, code = await refusal(
        auth_consumer(permission_classes=[DenyAll]),
        headers=[(b"authorization", f"Token {token.key}".encode())],
    )
    assert (payload["status_code"], code) == (403, chanx.CLOSE_FORBIDDEN)
    throttled = type(
        "Throttled", (chanx.DjangoAuthenticator,), {"throttle_classes": [OnceThrottle]}
    )
    payload, code = await refusal(auth_consumer(authenticator_class=throttled))
    assert (payload["status_code"], code) == (429, chanx.CLOSE_TOO_MANY_REQUESTS)
    assert "throttled" in payload["data"]["detail"]


@db
async def test_does_not_exist_inside_a_permission_is_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chanx.logger.addHandler(caplog.handler)
    try:
        payload, code = await refusal(auth_consumer(permission_classes=[MissingInPermission]))
    finally:
        chanx.logger.removeHandler(caplog.handler)
    assert (payload["status_code"], code) == (500, chanx.CLOSE_SERVER_ERROR)
    assert "lookup" not in json.dumps(payload)
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and issubclass(record.exc_info[0], ObjectDoesNotExist)


@db
async def test_the_forced_user_key_is_ignored_in_a_scope_the_test_communicator_did_not_make() -> (
    None
):
    user = await sync_to_async(User.objects.create_user)("mallory")
    consumer = auth_consumer(permission_classes=[IsAuthenticated])
    forced = opened(consumer, user=user)
    key = forced.scope[chanx._FORCE_USER_KEY]
    await forced.connect()
    await forced.assert_authenticated_status_ok()  # the test communicator's own key works
    await forced.disconnect()
    forged = opened(consumer)
    forged.scope[chanx._FORCE_USER_KEY] = "guessed-" + key[8:]  # what a middleware could set
    await forged.connect()
    payload = (await forged.receive_json_from())["payload"]
    assert payload["status_code"] == 401
    stale = opened(consumer)
    stale.scope[chanx._FORCE_USER_KEY] = key  # the key of a communicator that is done
    await stale.connect()
    assert (await stale.receive_json_from())["payload"]["status_code"] == 401


# Browsers: subprotocols and tokens ###########################################


class ProtocolConsumer(HoldConsumer):
    subprotocols = ("chanx", "graphql-ws")
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]


def token_protocol(value: str) -> str:
    return "chanx.auth." + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


@db
async def test_the_chanx_subprotocol_is_accepted_and_a_consumer_may_speak_others() -> None:
    cases = [
        (HoldConsumer, ["chanx"], "chanx"),
        (HoldConsumer, ["graphql-ws", "chanx"], "chanx"),  # HoldConsumer speaks chanx only
        (HoldConsumer, ["other"], None),
        (HoldConsumer, [], None),
        (ProtocolConsumer, ["graphql-ws", "chanx"], "graphql-ws"),  # the client's first choice
    ]
    for consumer, offered, chosen in cases:
        app = URLRouter([path("ws/", consumer.as_asgi())])
        communicator = WebsocketCommunicator(app, "/ws/", subprotocols=offered)
        assert await communicator.connect() == (True, chosen), (consumer, offered)
        await communicator.disconnect()


@db
async def test_a_browser_token_as_a_subprotocol_authenticates_and_is_never_echoed_or_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = await sync_to_async(User.objects.create_user)("browser")
    token = await Token.objects.acreate(user=user)
    chanx.logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="chanx")
    try:
        protocols = ["chanx", token_protocol(f"Token {token.key}")]
        communicator = opened(ProtocolConsumer, subprotocols=protocols)
        assert await communicator.connect() == (True, "chanx")  # never the token
        await communicator.assert_authenticated_status_ok()
        assert (await wait_for_consumer(communicator)).user == user
        await communicator.disconnect()
        # a real Authorization header wins over the subprotocol's
        other = await sync_to_async(User.objects.create_user)("header")
        header_token = await Token.objects.acreate(user=other)
        communicator = opened(
            ProtocolConsumer, [(b"authorization", f"Token {header_token.key}".encode())], protocols
        )
        await communicator.connect()
        await communicator.assert_authenticated_status_ok()
        assert (await wait_for_consumer(communicator)).user == other
        await communicator.disconnect()
        for garbage in [
            "chanx.auth.%%%",
            "chanx.auth." + base64.urlsafe_b64encode(b"Token \r\nX: y").decode(),
        ]:
            payload, code = await refusal(ProtocolConsumer, subprotocols=["chanx", garbage])
            assert code == 4401
    finally:
        chanx.logger.removeHandler(caplog.handler)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert token.key not in logged and token_protocol(f"Token {token.key}") not in logged


def test_origin_check_warns_when_the_websocket_application_has_no_origin_validator(
    tmp_path: Path,
) -> None:
    from django.core import checks

    module = tmp_path / "unguarded_asgi.py"
    module.write_text(
        "from channels.auth import AuthMiddlewareStack\n"
        "from channels.routing import ProtocolTypeRouter, URLRouter\n"
        "application = ProtocolTypeRouter({'websocket': AuthMiddlewareStack(URLRouter([]))})\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        with override_settings(ASGI_APPLICATION="unguarded_asgi.application"):
            ids = [m.id for m in checks.run_checks(tags=[checks.Tags.security])]
        assert "chanx.W001" in ids
        with override_settings(ASGI_APPLICATION="config.asgi.application"):  # the example: guarded
            ids = [m.id for m in checks.run_checks(tags=[checks.Tags.security])]
        assert "chanx.W001" not in ids
    finally:
        sys.path.remove(str(tmp_path))


# AsyncAPI and the playground describe the wire ###############################


def schema_of(document: dict[str, Any], title: str) -> dict[str, Any]:
    (message,) = [m for m in document["components"]["messages"].values() if m["title"] == title]
    return document["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]


def route(consumer: type[Any], address: str = "/ws/") -> chanx.RouteInfo:
    return chanx.RouteInfo(address, {}, consumer, consumer.__name__, "")


@pytest.mark.parametrize(
    ("settings", "key", "field"),
    [
        ({}, "action", "address_line_2"),
        ({"CAMELIZE": True, "MESSAGE_ACTION_KEY": "type"}, "type", "addressLine_2"),
    ],
    ids=["plain", "camel-and-key"],
)
@db
async def test_asyncapi_and_playground_templates_are_the_frames_on_the_wire(
    settings: dict[str, Any], key: str, field: str
) -> None:
    with override_settings(CHANX=settings):
        document = chanx.asyncapi_schema([route(HoldConsumer)])
        frame = schema_of(document, "AddressMessage")
        assert key in frame["properties"] and frame["required"] == [key, "payload"]
        payload = document["components"]["schemas"][
            frame["properties"]["payload"]["$ref"].rsplit("/", 1)[1]
        ]
        assert field in payload["properties"] and payload["required"] == [field]
        summary = chanx._route_summary(route(HoldConsumer))
        GATE.release.set()  # hold answers at once
        communicator = await connect(HoldConsumer)
        for message in summary["messages"]:  # every template, sent as it is, is a valid frame
            example = dict(message["example"])
            if message["name"] == "AddressMessage":
                example["payload"] = {**example["payload"], field: "flat 1"}
            await communicator.send_json_to(example)
            reply = await communicator.receive_json_from(timeout=2)
            assert reply[key] != "error", (message["name"], reply)
        await communicator.disconnect()


def test_asyncapi_lists_completion_and_authentication_frames_only_when_they_are_sent() -> None:
    titles = lambda: {
        m["title"]
        for m in chanx.asyncapi_schema([route(HoldConsumer)])["components"]["messages"].values()
    }
    assert titles() >= {"AuthenticationMessage", "ErrorMessage"} and not titles() & {
        "CompleteMessage",
        "GroupCompleteMessage",
        "EventCompleteMessage",
    }
    with override_settings(CHANX={"SEND_COMPLETION": True, "SEND_AUTHENTICATION_MESSAGE": False}):
        assert titles() >= {"CompleteMessage", "GroupCompleteMessage", "EventCompleteMessage"}
        assert "AuthenticationMessage" not in titles()


@db
def test_asyncapi_server_is_the_host_the_document_was_served_from(client: Any) -> None:
    with override_settings(DEBUG=True, ALLOWED_HOSTS=["chat.example.com"]):
        document = client.get("/asyncapi.json", HTTP_HOST="chat.example.com").json()
        assert document["servers"]["default"] == {"host": "chat.example.com", "protocol": "ws"}
        secure = client.get("/asyncapi.json", HTTP_HOST="chat.example.com", secure=True).json()
        assert secure["servers"]["default"] == {"host": "chat.example.com", "protocol": "wss"}
        with override_settings(CHANX={"WEBSOCKET_BASE_URL": "wss://ws.example.com"}):
            pinned = client.get("/asyncapi.json", HTTP_HOST="chat.example.com").json()
            assert pinned["servers"]["default"] == {"host": "ws.example.com", "protocol": "wss"}
        with override_settings(
            CHANX={"ASYNCAPI_SERVER_URL": "api.example.com", "ASYNCAPI_SERVER_PROTOCOL": "wss"}
        ):
            legacy = client.get("/asyncapi.json", HTTP_HOST="chat.example.com").json()  # chanx 2.x
            assert legacy["servers"]["default"] == {"host": "api.example.com", "protocol": "wss"}
        # chanx 2.x's URL names, and ?format=yaml (JSON is YAML 1.2)
        from django.urls import reverse

        yaml = client.get(reverse("asyncapi_schema") + "?format=yaml", HTTP_HOST="chat.example.com")
        assert (
            yaml["Content-Type"].startswith("application/yaml")
            and json.loads(yaml.content)["asyncapi"] == "3.0.0"
        )
        assert client.get(reverse("asyncapi_docs"), HTTP_HOST="chat.example.com").status_code == 200


@db
def test_routes_json_says_what_is_missing_without_asgi_application(client: Any) -> None:
    with override_settings(DEBUG=True, ASGI_APPLICATION=None):
        response = client.get("/playground/routes.json")
    assert response.status_code == 500
    assert (
        "ASGI_APPLICATION" in response.json()["detail"]
        and "asgi.application" in response.json()["detail"]
    )


# Coming from chanx 2.x #######################################################


class TwoXConsumer(AsyncJsonWebsocketConsumer[Notice]):
    permission_classes = [AllowAny]
    groups = ["twox"]
    send_completion = True

    async def handle_validation_error(self, error: Any) -> None:  # chanx 2.x's hook name
        await self.send_json({"action": "error", "payload": "2.x hook"})

    @ws_handler
    async def echo(self, message: Echo) -> None:
        await self.broadcast_message(EchoBack(payload=message.payload))  # sender included

    @event_handler
    async def notice(self, event: Notice) -> NoticeMessage:
        return NoticeMessage(payload=event.payload)


@db
async def test_chanx_2x_names_and_defaults_keep_working() -> None:
    assert chanx.MESSAGE_ACTION_COMPLETE == "complete"
    communicator = await connect(TwoXConsumer)
    await communicator.send_to(text_data="not json")
    assert await communicator.receive_json_from() == {"action": "error", "payload": "2.x hook"}
    assert await communicator.receive_json_from() == {"action": "complete", "payload": None}
    with chanx.capture_broadcast_events(TwoXConsumer) as events:  # suppressed by default
        await TwoXConsumer.broadcast_event(Notice(payload="quiet"))
    assert [(e.event.payload, e.groups) for e in events] == [("quiet", ["twox"])]
    await TwoXConsumer.broadcast_event(Notice(payload="hi"))  # groups default to the class's
    messages = await communicator.receive_all_messages(stop_action="notice_sent")
    assert messages == [NoticeMessage(payload="hi")]  # 2.x: the stop frame is included
    await communicator.send_message(Echo(payload=5))
    frames = await communicator.receive_until_action("group_complete")
    assert {"action": "echo_back", "payload": 5, "is_mine": False, "is_current": True} in frames


@db
async def test_wait_for_auth_returns_the_frame_or_none_when_none_is_sent() -> None:
    communicator = await connect(HoldConsumer, auth=False)
    message = await communicator.wait_for_auth()
    assert message is not None and message.payload.status_code == 200
    silent = await connect(LobbyConsumer, auth=False)
    assert await silent.wait_for_auth() is None


def test_chanx_2x_settings_are_accepted_with_their_meaning() -> None:
    with override_settings(CHANX={"LOG_WEBSOCKET_MESSAGE": False}):
        assert (
            chanx.chanx_settings.LOG_RECEIVED_MESSAGE is False
            and chanx.chanx_settings.LOG_SENT_MESSAGE is False
        )
    with override_settings(CHANX={"LOG_WEBSOCKET_MESSAGE": False, "LOG_SENT_MESSAGE": True}):
        assert (
            chanx.chanx_settings.LOG_RECEIVED_MESSAGE is False
            and chanx.chanx_settings.LOG_SENT_MESSAGE is True
        )
    from django.core import checks

    with override_settings(
        CHANX={
            "ASYNCAPI_SERVER_URL": "x",
            "ASYNCAPI_SERVER_PROTOCOL": "wss",
            "LOG_WEBSOCKET_MESSAGE": True,
        }
    ):
        assert [m for m in checks.run_checks() if m.id == "chanx.E001"] == []


@db
async def test_a_bad_chanx_setting_fails_the_first_connection_with_the_checks_message() -> None:
    from django.core import checks

    with override_settings(CHANX={"SEND_COMPLETIONS": True}):
        (error,) = [m for m in checks.run_checks() if m.id == "chanx.E001"]
        communicator = opened(HoldConsumer)
        with pytest.raises(ChanxConfigError) as raised:
            await communicator.connect()
        assert str(raised.value) == error.msg


@db
async def test_groups_without_a_channel_layer_get_a_clear_frame() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        payload, code = await refusal(
            LobbyConsumer
            if False
            else type("Grouped", (HoldConsumer,), {"groups": ["g"], "__module__": __name__})
        )
    assert code == 4500
    assert payload["data"]["detail"].startswith(
        "Server configuration error: Grouped joins groups but no channel layer"
    )


# Command line ################################################################


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in __import__("os").environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-m", "chanx", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_takes_settings_and_pythonpath_like_django_admin(tmp_path: Path) -> None:
    assert run_cli("--help").returncode == 0
    missing = run_cli("routes")
    assert missing.returncode == 2 and "--settings" in missing.stderr
    unfound = run_cli("routes", "--settings", "config.settings")
    assert (
        unfound.returncode == 2
        and "--pythonpath" in unfound.stderr
        and "Traceback" not in unfound.stderr
    )
    routes = run_cli("routes", "--settings", "config.settings", "--pythonpath", "example")
    assert routes.returncode == 0 and "/ws/chat/<pk>/" in routes.stdout, routes.stderr
    out = tmp_path / "doc.yaml"
    written = run_cli(
        "--settings",
        "config.settings",
        "--pythonpath",
        "example",
        "asyncapi",
        "--format",
        "yaml",
        "--file",
        str(out),
        "--base-url",
        "wss://example.com",
        "--title",
        "T",
        "--api-version",
        "9",
        "--description",
        "D",
    )
    assert written.returncode == 0, written.stderr
    document = json.loads(out.read_text())
    assert document["info"] == {"title": "T", "version": "9", "description": "D"}
    assert document["servers"]["default"] == {"host": "example.com", "protocol": "wss"}


# Database hygiene ############################################################


class Pid(BaseMessage):
    action: Literal["pid"] = "pid"


class PidReply(BaseMessage):
    action: Literal["pid_reply"] = "pid_reply"
    payload: Any = None


def backend_id() -> Any:
    """The database session's id on the ORM's thread (PostgreSQL's pid)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]
        cursor.execute("SELECT 1")
        return id(connection.connection)


class DbConsumer(HoldConsumer):
    @ws_handler
    async def pid(self, message: Pid) -> PidReply:
        await User.objects.acount()  # the ORM's own async API
        return PidReply(payload=await sync_to_async(backend_id)())


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each hop chanx makes to the ORM's thread to close stale connections."""
    calls: list[int] = []
    original = chanx._close_old_connections

    def counting() -> None:
        calls.append(threading.get_ident())
        original()

    monkeypatch.setattr(chanx, "_close_old_connections", counting)
    return calls


def in_memory_sqlite() -> bool:
    return connection.vendor == "sqlite" and connection.is_in_memory_db()


@contextlib.asynccontextmanager
async def conn_max_age(age: int | None, health_checks: bool = False) -> Any:
    """CONN_MAX_AGE / CONN_HEALTH_CHECKS for the ORM thread's connections in the block
    (closed before and after, so that no test inherits another's)."""
    settings_dict = connections["default"].settings_dict  # shared by every thread's wrapper
    saved = {k: settings_dict.get(k) for k in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS")}
    settings_dict.update(CONN_MAX_AGE=age, CONN_HEALTH_CHECKS=health_checks)
    try:
        await sync_to_async(connections.close_all)()
        yield
    finally:
        await sync_to_async(connections.close_all)()
        settings_dict.update(saved)


async def pid_of(communicator: WebsocketCommunicator) -> Any:
    await communicator.send_message(Pid())
    reply = await communicator.receive_json_from(timeout=10)
    assert reply["action"] == "pid_reply", reply
    return reply["payload"]


@db
async def test_db_hygiene_state_stays_flat_over_thousands_of_reconnects() -> None:
    created: list[Any] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        created.append(connection)

    connection_created.connect(count)
    try:
        async with conn_max_age(0):  # Django's default: a connection per frame
            communicator = await connect(DbConsumer)
            await pid_of(communicator)
            watched = len(chanx._OrmThread.connections)
            (wrapper,) = [c for c in chanx._OrmThread.connections if c.alias == "default"]
            for _ in range(100_000):  # what every reconnection of the same wrapper signals
                chanx._watch_connection(None, wrapper)
            assert len(chanx._OrmThread.connections) == watched
            for _ in range(300):  # real reconnections, where close() is real
                await pid_of(communicator)
            if not in_memory_sqlite():
                assert len(created) >= 300
            assert len(chanx._OrmThread.connections) == watched
            await communicator.disconnect()
    finally:
        connection_created.disconnect(count)


@pytest.mark.parametrize(
    ("age", "health_checks"),
    [(0, False), (60, True)],
    ids=["max-age-0", "max-age-60-health-checks"],
)
@db
async def test_a_killed_postgres_backend_is_replaced_before_the_next_handler(
    age: int, health_checks: bool
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL=postgres://...)")

    def terminate(pid: int) -> None:
        with connections["default"].cursor() as cursor:  # another thread's own connection
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        connections["default"].close()

    async with conn_max_age(age, health_checks):
        communicator = await connect(DbConsumer)
        first = await pid_of(communicator)
        await sync_to_async(terminate, thread_sensitive=False)(first)
        second = await pid_of(communicator)  # no error frame: a fresh connection
        assert second != first
        third = await pid_of(communicator)
        assert (third == second) if age else (third != second)
        await communicator.disconnect()


@db
async def test_conn_max_age_0_hops_after_each_frame_that_used_the_database_and_60_never(
    hops: list[int],
) -> None:
    if in_memory_sqlite():
        pytest.skip(
            "in-memory SQLite ignores close(); CI runs this on a SQLite file and PostgreSQL"
        )
    async with conn_max_age(0):
        communicator = await connect(DbConsumer)
        ids = [await pid_of(communicator) for _ in range(3)]
        assert len(set(ids)) == 3 and len(hops) >= 3  # closed, and reconnected, between frames
        await communicator.disconnect()
    async with conn_max_age(60):
        communicator = await connect(DbConsumer)
        await pid_of(communicator)
        hops.clear()
        ids = [await pid_of(communicator) for _ in range(20)]
        assert len(set(ids)) == 1 and hops == []  # persistent: no thread hop per frame
        await communicator.disconnect()


@db
def test_hygiene_spares_transactions_closes_errored_and_off_autocommit_connections() -> None:
    from django.db import transaction

    chanx._close_old_connections()  # this thread is now the ORM's, as in a WebsocketTestCase
    connection.ensure_connection()
    connection.close_at, connection.health_check_done = time.monotonic() + 60, True
    assert chanx._db_needs_cleanup() is False
    assert connection.health_check_done is False  # reset, as close_old_connections does
    connection.close_at = 0  # CONN_MAX_AGE elapsed...
    with transaction.atomic():
        assert chanx._db_needs_cleanup() is False  # ...but inside a transaction: spared
        chanx._close_old_connections()
        assert connection.connection is not None
    assert chanx._db_needs_cleanup() is True
    chanx._close_old_connections()
    if not in_memory_sqlite():
        assert connection.connection is None
    connection.ensure_connection()
    connection.close_at = None
    connection.errors_occurred = True
    assert chanx._db_needs_cleanup() is True
    connection.errors_occurred = False
    connection.set_autocommit(False)
    assert chanx._db_needs_cleanup() is True
    connection.set_autocommit(True)
    assert chanx._db_needs_cleanup() is False


@db
def test_stale_connections_of_other_threads_cause_no_hop() -> None:
    chanx._close_old_connections()  # this thread is the ORM's
    connection.ensure_connection()
    connection.close_at = None
    failures: list[BaseException] = []

    def elsewhere() -> None:  # a thread chanx never ran on (a request's, a worker's)
        try:
            connections["default"].ensure_connection()
            connections["default"].close_at = 0
            assert chanx._db_needs_cleanup() is False
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections["default"].close()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert failures == [] and chanx._db_needs_cleanup() is False


def test_the_module_docstring_lists_the_sections_in_file_order() -> None:
    source = Path(chanx.__file__).read_text()
    banners = re.findall(r"^# (.+?) #{4,}$", source, flags=re.M)
    listed = re.search(r"chanx\.py``\): (.+?)\.\n", chanx.__doc__ or "", flags=re.S)
    assert listed is not None
    assert [part.strip() for part in " ".join(listed[1].split()).split(",")] == banners
