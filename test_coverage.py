"""Tests of the behaviours issue 15 lists as covered by no test (to be merged into
test_chanx.py). Self-contained: its own messages, consumers, routers and fixtures,
every name prefixed ``Cov`` / ``cov_``.

Each test waits on frames or events, never on a fixed sleep; a negative check is
closed by a positive barrier (the next frame is a known one).
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal
from unittest import mock
from urllib.parse import parse_qs

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, connections
from django.test import override_settings
from pydantic import BaseModel, ValidationError
from rest_framework.authentication import BaseAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, IsAuthenticated, IsAuthenticatedOrReadOnly
from rest_framework.throttling import AnonRateThrottle

import chanx
from chanx import (
    AsyncJsonWebsocketConsumer,
    BaseChannelEvent,
    BaseGroupMessage,
    BaseMessage,
    ChanxConfigError,
    DjangoAuthenticator,
    PingMessage,
    PongMessage,
    WebsocketCommunicator,
    WebsocketTestCase,
    channel,
    event_handler,
    path,
    re_path,
    ws_handler,
)

User = get_user_model()
COV_REPO = Path(__file__).resolve().parent
cov_db = pytest.mark.django_db(transaction=True)
#: Every test may open a connection: chanx's handshake checks the ORM thread's database
#: connections, which an earlier test may have left open.
pytestmark = cov_db

#: Seconds an expected frame may take: it only bounds a failure.
COV_TIMEOUT = 10.0
COV_PONG = {"action": "pong", "payload": None}


@pytest.fixture(autouse=True)
def cov_fresh_state() -> Any:
    """A fresh in-memory channel layer, a fresh cache (DRF's throttles) and chanx's
    defaults (not the example project's CHANX) for every test."""
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"cov-{uuid.uuid4().hex}",
        }
    }
    with override_settings(CHANNEL_LAYERS=layers, CHANX={}, CACHES=caches):
        yield


class CovCommunicator(WebsocketCommunicator):
    """chanx's communicator with ``COV_TIMEOUT`` as the default of every wait."""

    async def connect(self, timeout: float = COV_TIMEOUT) -> tuple[bool, Any]:
        return await super().connect(timeout)

    async def receive_json_from(self, timeout: float = COV_TIMEOUT) -> Any:
        return await super().receive_json_from(timeout)

    async def assert_authenticated_status_ok(self, timeout: float = COV_TIMEOUT) -> None:
        await super().assert_authenticated_status_ok(timeout)

    async def assert_closed(self, code: int | None = None, timeout: float = COV_TIMEOUT) -> None:
        await super().assert_closed(code, timeout)

    async def disconnect(self, code: int = 1000, timeout: float = COV_TIMEOUT) -> None:
        await super().disconnect(code, timeout)

    async def refusal(self) -> tuple[dict[str, Any], int]:
        """The authentication frame's payload and the close code of a refused handshake."""
        frame = await self.receive_json_from()
        close = await self._next(COV_TIMEOUT)
        assert close is not None and close["type"] == "websocket.close", (frame, close)
        assert frame["action"] == "authentication", frame
        return frame["payload"], close["code"]


def cov_app(consumer: type[Any], route: str = "ws/") -> Any:
    return URLRouter([path(route, consumer.as_asgi())])


@pytest.fixture
async def cov_open() -> Any:
    """``await cov_open(consumer_or_app, ...)``: a connected communicator (its
    authentication frame read and checked 200 unless ``auth=False``),
    disconnected when the test ends."""
    opened: list[CovCommunicator] = []

    async def open_ws(
        target: Any,
        ws_path: str = "/ws/",
        *,
        auth: bool = True,
        headers: Any = None,
        user: Any = None,
    ) -> CovCommunicator:
        app = cov_app(target) if isinstance(target, type) else target
        communicator = CovCommunicator(app, ws_path, headers, user=user)
        opened.append(communicator)
        connected, _ = await communicator.connect()
        assert connected
        if auth:
            await communicator.assert_authenticated_status_ok()
        return communicator

    yield open_ws
    for communicator in opened:
        await communicator.disconnect()


@pytest.fixture
def cov_log() -> Any:
    """Every record of the ``chanx`` logger during the test (at INFO and above)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, level = Collect(logging.DEBUG), chanx.logger.level
    chanx.logger.addHandler(handler)
    chanx.logger.setLevel(logging.INFO)
    yield records
    chanx.logger.removeHandler(handler)
    chanx.logger.setLevel(level)


def cov_messages(records: list[logging.LogRecord], text: str) -> list[logging.LogRecord]:
    return [r for r in records if r.getMessage() == text]


class CovPing(AsyncJsonWebsocketConsumer):
    """A base with the ping handler every barrier uses."""

    permission_classes = [AllowAny]

    @ws_handler
    async def ping(self, message: PingMessage) -> PongMessage:
        return PongMessage()


async def cov_barrier(communicator: WebsocketCommunicator) -> None:
    """Ping: the next frame must be its pong (nothing unexpected came before it)."""
    await communicator.send_message(PingMessage())
    assert await communicator.receive_json_from(COV_TIMEOUT) == COV_PONG


# 1. DRF throttling at the handshake ##########################################


class CovOncePerMinute(AnonRateThrottle):
    rate = "1/min"


class CovThrottledAuthenticator(DjangoAuthenticator):
    throttle_classes = [CovOncePerMinute]


class CovThrottledByAuthenticator(CovPing):
    authenticator_class = CovThrottledAuthenticator


class CovThrottledByConsumer(CovPing):
    throttle_classes = [CovOncePerMinute]


class CovUnthrottledOverAuthenticator(CovThrottledByAuthenticator):
    throttle_classes: list[Any] = []  # the consumer's value wins over the authenticator's


@pytest.mark.parametrize(
    "consumer",
    [CovThrottledByAuthenticator, CovThrottledByConsumer],
    ids=["authenticator", "consumer"],
)
async def test_a_throttle_refuses_the_second_handshake_with_429_and_4429(
    consumer: type[Any], cov_open: Any
) -> None:
    first = await cov_open(consumer)
    await cov_barrier(first)  # accepted and serving
    second = await cov_open(consumer, auth=False)
    payload, code = await second.refusal()
    assert (payload["status_code"], payload["status_text"], code) == (
        429,
        "Too Many Requests",
        chanx.CLOSE_TOO_MANY_REQUESTS,
    )
    assert chanx.CLOSE_TOO_MANY_REQUESTS == 4429
    assert payload["data"]["detail"].startswith("Request was throttled. Expected available in")
    # Per client, as DRF throttles: another address is not refused.
    elsewhere = await cov_open(consumer, headers=[(b"x-forwarded-for", b"10.1.2.3")])
    await cov_barrier(elsewhere)


async def test_a_consumer_throttle_classes_wins_over_its_authenticators(cov_open: Any) -> None:
    for _ in range(3):
        communicator = await cov_open(CovUnthrottledOverAuthenticator)
        await cov_barrier(communicator)


COV_THROTTLE_SCRIPT = """
import asyncio, json
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    REST_FRAMEWORK={
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"anon": "1/min"},
    },
    USE_TZ=True,
)
django.setup()

from channels.routing import URLRouter
import chanx


class Consumer(chanx.AsyncJsonWebsocketConsumer):
    @chanx.ws_handler
    async def ping(self, message: chanx.PingMessage) -> chanx.PongMessage:
        return chanx.PongMessage()


class Unthrottled(Consumer):
    throttle_classes = []


app = URLRouter([chanx.path("ws/", Consumer.as_asgi()), chanx.path("free/", Unthrottled.as_asgi())])


async def attempt(where="/ws/", headers=None):
    communicator = chanx.WebsocketCommunicator(app, where, headers)
    await communicator.connect(10)
    outcome = [await communicator.receive_json_from(10)]
    if outcome[0]["payload"]["status_code"] == 200:
        await communicator.send_message(chanx.PingMessage())
        outcome.append(await communicator.receive_json_from(10))
    else:
        outcome.append(await communicator._next(10))
    await communicator.disconnect()
    return outcome


async def main():
    return {
        "first": await attempt(),
        "second": await attempt(),
        "other_client": await attempt(headers=[(b"x-forwarded-for", b"10.1.2.3")]),
        "throttle_classes_empty": await attempt("/free/"),
    }


print(json.dumps(asyncio.run(main())))
"""


def test_drf_default_throttle_settings_refuse_the_second_handshake() -> None:
    """DEFAULT_THROTTLE_CLASSES / RATES apply to the handshake as to a REST view.

    DRF reads them when its modules are imported (``APIView.throttle_classes``,
    ``SimpleRateThrottle.THROTTLE_RATES``), so a project has them from start-up:
    this runs in a fresh interpreter configured so, as a server would be.
    """
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(COV_REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COV_THROTTLE_SCRIPT)],
        cwd=COV_REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    auth, pong = result["first"]
    assert auth["payload"]["status_code"] == 200 and pong == COV_PONG
    auth, close = result["second"]
    assert auth["payload"]["status_code"] == 429
    assert auth["payload"]["data"]["detail"].startswith("Request was throttled.")
    assert close == {"type": "websocket.close", "code": 4429}
    for key in ("other_client", "throttle_classes_empty"):
        auth, pong = result[key]
        assert (auth["payload"]["status_code"], pong) == (200, COV_PONG), key


# 2. send_group_message to several groups: the duplicate filter ###############


class CovShoutPayload(BaseModel):
    text: str
    groups: list[str]
    exclude_current: bool = True


class CovShout(BaseMessage):
    action: Literal["cov_shout"] = "cov_shout"
    payload: CovShoutPayload


class CovShouted(BaseGroupMessage):
    action: Literal["cov_shouted"] = "cov_shouted"
    payload: str


class CovMultiGroupConsumer(CovPing):
    """Joins the groups of its ``?groups=a,b`` query string, and ``cov-all``."""

    async def build_groups(self) -> list[str]:
        query = parse_qs(self.scope["query_string"].decode())
        return [g for g in query.get("groups", [""])[0].split(",") if g] + ["cov-all"]

    @ws_handler
    async def shout(self, message: CovShout) -> None:
        await self.send_group_message(
            CovShouted(payload=message.payload.text),
            message.payload.groups,
            exclude_current=message.payload.exclude_current,
        )


def cov_shouted(text: str, *, current: bool = False) -> dict[str, Any]:
    return {"action": "cov_shouted", "payload": text, "is_mine": False, "is_current": current}


@pytest.mark.parametrize("exclude_current", [True, False], ids=["exclude-current", "include"])
async def test_a_message_to_several_groups_reaches_each_member_once(
    exclude_current: bool, cov_open: Any
) -> None:
    app = cov_app(CovMultiGroupConsumer)
    sender = await cov_open(app, "/ws/?groups=cov-g1,cov-g2")  # in both target groups
    in_all = await cov_open(app, "/ws/?groups=cov-g1,cov-g2,cov-g3")
    in_one = await cov_open(app, "/ws/?groups=cov-g2")
    in_none = await cov_open(app, "/ws/?groups=cov-g3")
    shout = CovShoutPayload(
        text="hello", groups=["cov-g1", "cov-g2"], exclude_current=exclude_current
    )
    await sender.send_message(CovShout(payload=shout))
    # The barrier: a later message to every connection. A copy of "hello" (a second
    # one from the other group) would reach a channel before it.
    marker = CovShoutPayload(text="marker", groups=["cov-all"], exclude_current=False)
    await sender.send_message(CovShout(payload=marker))
    for receiver in (in_all, in_one):
        assert await receiver.receive_json_from() == cov_shouted("hello")
        assert await receiver.receive_json_from() == cov_shouted("marker")
    assert await in_none.receive_json_from() == cov_shouted("marker")
    if not exclude_current:
        assert await sender.receive_json_from() == cov_shouted("hello", current=True)
    assert await sender.receive_json_from() == cov_shouted("marker", current=True)
    for communicator in (sender, in_all, in_one, in_none):
        await cov_barrier(communicator)


# 3. The camelCase group relay ################################################


class CovSayText(BaseModel):
    some_text: str


class CovSay(BaseMessage):
    action: Literal["cov_say"] = "cov_say"
    payload: CovSayText


class CovSaid(BaseGroupMessage):
    action: Literal["cov_said"] = "cov_said"
    payload: CovSayText


class CovRoomConsumer(CovPing):
    groups = ["cov-room"]

    @ws_handler
    async def say(self, message: CovSay) -> None:
        await self.send_group_message(CovSaid(payload=message.payload), exclude_current=False)


class CovCamelRoomConsumer(CovRoomConsumer):
    camelize = True


async def cov_users(*names: str) -> list[Any]:
    return [await User.objects.acreate(username=name) for name in names]


@pytest.mark.parametrize("how", ["setting", "attribute"])
async def test_camelized_group_relay_splices_is_mine_and_is_current(
    how: str, cov_open: Any
) -> None:
    alice, bob = await cov_users("cov_alice", "cov_bob")
    consumer = CovCamelRoomConsumer if how == "attribute" else CovRoomConsumer
    settings = {"CAMELIZE": True} if how == "setting" else {}
    with override_settings(CHANX=settings):
        app = cov_app(consumer)
        sender = await cov_open(app, user=alice)
        same_user = await cov_open(app, user=alice)  # another tab
        other_user = await cov_open(app, user=bob)
        anonymous = await cov_open(app)
        await sender.send_json_to({"action": "cov_say", "payload": {"someText": "hi"}})

        def said(mine: bool, current: bool) -> dict[str, Any]:
            return {
                "action": "cov_said",
                "payload": {"someText": "hi"},
                "isMine": mine,
                "isCurrent": current,
            }

        assert await sender.receive_json_from() == said(True, True)
        assert await same_user.receive_json_from() == said(True, False)
        assert await other_user.receive_json_from() == said(False, False)
        assert await anonymous.receive_json_from() == said(False, False)


async def test_an_anonymous_sender_is_never_mine_to_an_anonymous_receiver(cov_open: Any) -> None:
    with override_settings(CHANX={"CAMELIZE": True}):
        app = cov_app(CovRoomConsumer)
        sender, receiver = await cov_open(app), await cov_open(app)
        await sender.send_json_to({"action": "cov_say", "payload": {"someText": "anon"}})
        frame = await receiver.receive_json_from()
        assert (frame["isMine"], frame["isCurrent"]) == (False, False)
        frame = await sender.receive_json_from()
        assert (frame["isMine"], frame["isCurrent"]) == (False, True)


# 4. lookup_field, lookup_url_kwarg, auth_method; a queryset without its kwarg #


class CovWhich(BaseMessage):
    action: Literal["cov_which"] = "cov_which"


class CovWhichReply(BaseMessage):
    action: Literal["cov_which_reply"] = "cov_which_reply"
    payload: Any = None


class CovObjectConsumer(CovPing):
    @ws_handler
    async def which(self, message: CovWhich) -> CovWhichReply:
        method = self.request.method if self.request is not None else None
        name = getattr(self.obj, "username", None)
        return CovWhichReply(payload={"obj": name, "method": method})


class CovByNameAuthenticator(DjangoAuthenticator):
    queryset = User.objects.all()
    lookup_field = "username"
    lookup_url_kwarg = "name"


class CovLookupOnAuthenticator(CovObjectConsumer):
    authenticator_class = CovByNameAuthenticator


class CovLookupOnConsumer(CovObjectConsumer):  # early style
    queryset = User.objects.all()
    lookup_field = "username"
    lookup_url_kwarg = "name"


class CovByPkAuthenticator(DjangoAuthenticator):
    queryset = User.objects.all()
    lookup_url_kwarg = "pk"  # this route has no pk: the consumer's values must win


class CovLookupConsumerWins(CovObjectConsumer):
    authenticator_class = CovByPkAuthenticator
    lookup_field = "username"
    lookup_url_kwarg = "name"


class CovLookupFieldOnly(CovObjectConsumer):
    queryset = User.objects.all()
    lookup_field = "username"  # also the URL kwarg's name, as in DRF


@pytest.mark.parametrize(
    "consumer",
    [CovLookupOnAuthenticator, CovLookupOnConsumer, CovLookupConsumerWins],
    ids=["authenticator", "consumer", "consumer-over-authenticator"],
)
async def test_lookup_field_and_lookup_url_kwarg_find_the_object(
    consumer: type[Any], cov_open: Any
) -> None:
    await cov_users("cov_carol", "cov_dave")
    app = cov_app(consumer, "ws/cov-user/<str:name>/")
    found = await cov_open(app, "/ws/cov-user/cov_dave/")
    await found.send_message(CovWhich())
    assert await found.receive_json_from() == {
        "action": "cov_which_reply",
        "payload": {"obj": "cov_dave", "method": "GET"},
    }
    missing = await cov_open(app, "/ws/cov-user/cov_nobody/", auth=False)
    payload, code = await missing.refusal()
    assert (payload["status_code"], code) == (404, chanx.CLOSE_NOT_FOUND)


async def test_lookup_field_alone_is_also_the_url_kwarg(cov_open: Any) -> None:
    await cov_users("cov_erin")
    app = cov_app(CovLookupFieldOnly, "ws/cov-user/<str:username>/")
    found = await cov_open(app, "/ws/cov-user/cov_erin/")
    await found.send_message(CovWhich())
    assert (await found.receive_json_from())["payload"]["obj"] == "cov_erin"


class CovQuerysetNoKwarg(CovObjectConsumer):
    queryset = User.objects.all()


class CovWrongKwarg(CovObjectConsumer):
    queryset = User.objects.all()
    lookup_url_kwarg = "room"


@pytest.mark.parametrize(
    ("consumer", "route", "ws_path", "says"),
    [
        (
            CovQuerysetNoKwarg,
            "ws/",
            "/ws/",
            "has a queryset but the route has no 'pk' URL kwarg (it has [])",
        ),
        (
            CovWrongKwarg,
            "ws/<int:pk>/",
            "/ws/5/",
            "has a queryset but the route has no 'room' URL kwarg (it has ['pk'])",
        ),
    ],
    ids=["no-kwarg", "other-kwarg"],
)
async def test_a_queryset_on_a_route_without_its_kwarg_is_a_clear_500(
    consumer: type[Any], route: str, ws_path: str, says: str, cov_open: Any, cov_log: Any
) -> None:
    communicator = await cov_open(cov_app(consumer, route), ws_path, auth=False)
    payload, code = await communicator.refusal()
    assert (payload["status_code"], code) == (500, chanx.CLOSE_SERVER_ERROR)
    detail = payload["data"]["detail"]
    assert detail.startswith("Server configuration error: ") and says in detail, detail
    assert "lookup_url_kwarg" in detail
    (record,) = cov_messages(cov_log, "Websocket authentication failed")
    assert record.exc_info is not None and record.exc_info[0] is ChanxConfigError


async def test_a_queryset_error_names_the_consumer_it_was_set_on(cov_open: Any) -> None:
    communicator = await cov_open(cov_app(CovQuerysetNoKwarg), "/ws/", auth=False)
    payload, _ = await communicator.refusal()
    assert "CovQuerysetNoKwarg" in payload["data"]["detail"]


class CovPostAuthenticator(DjangoAuthenticator):
    auth_method = "post"


class CovPostOnAuthenticator(CovObjectConsumer):
    authenticator_class = CovPostAuthenticator
    permission_classes = [IsAuthenticatedOrReadOnly]  # anonymous: safe methods only


class CovPostOnConsumer(CovObjectConsumer):  # early style
    permission_classes = [IsAuthenticatedOrReadOnly]
    auth_method = "post"


class CovHeadOverAuthenticator(CovPostOnAuthenticator):
    auth_method = "head"  # the consumer's wins: a safe method


class CovDefaultMethod(CovObjectConsumer):
    permission_classes = [IsAuthenticatedOrReadOnly]


@pytest.mark.parametrize(
    ("consumer", "method"),
    [
        (CovPostOnAuthenticator, None),
        (CovPostOnConsumer, None),
        (CovHeadOverAuthenticator, "HEAD"),
        (CovDefaultMethod, "GET"),
    ],
    ids=["post-on-authenticator", "post-on-consumer", "head-over-authenticator", "default-get"],
)
async def test_auth_method_is_the_method_drf_checks_permissions_with(
    consumer: type[Any], method: str | None, cov_open: Any
) -> None:
    communicator = await cov_open(consumer, auth=False)
    if method is None:  # POST, anonymous: refused by IsAuthenticatedOrReadOnly
        payload, code = await communicator.refusal()
        assert (payload["status_code"], code) == (401, chanx.CLOSE_UNAUTHORIZED)
        return
    await communicator.assert_authenticated_status_ok()
    await communicator.send_message(CovWhich())
    reply = await communicator.receive_json_from()
    assert reply["payload"] == {"obj": None, "method": method}


# 5. Database hygiene: what test_lead.py does not cover #######################

#: The DB-API connection objects the probe handler used, in order (kept alive, so
#: no id is reused): the index says whether a handler got a new connection.
COV_DBAPI: list[Any] = []


class CovDbFrame(BaseMessage):
    action: Literal["cov_db"] = "cov_db"
    payload: Literal["query", "break", "autocommit_off"] = "query"


class CovDbReply(BaseMessage):
    action: Literal["cov_db_reply"] = "cov_db_reply"
    payload: dict[str, Any]


def cov_db_work(what: str) -> dict[str, Any]:
    """On the ORM's thread: what the connection looks like as the handler starts, a
    query (or a failing one), then which DB-API connection served it."""
    found: dict[str, Any] = {
        "connected_at_start": connection.connection is not None,
        "errors_at_start": connection.errors_occurred,
    }
    if what == "break":
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT * FROM cov_no_such_table")
        except DatabaseError:
            pass
    else:
        found["exists"] = User.objects.filter(username="cov_tc_user").exists()
        if what == "autocommit_off":  # a handler that forgets to restore it
            connection.set_autocommit(False)
    raw = connection.connection
    if not any(raw is seen for seen in COV_DBAPI):
        COV_DBAPI.append(raw)
    found.update(
        errors_at_end=connection.errors_occurred,
        autocommit=connection.get_autocommit(),
        connection=next(i for i, seen in enumerate(COV_DBAPI) if seen is raw),
    )
    return found


class CovDbConsumer(CovPing):
    @ws_handler
    async def db(self, message: CovDbFrame) -> CovDbReply:
        return CovDbReply(payload=await sync_to_async(cov_db_work)(message.payload))


async def cov_db_frame(communicator: WebsocketCommunicator, what: str = "query") -> dict[str, Any]:
    await communicator.send_message(CovDbFrame(payload=what))  # type: ignore[arg-type]
    reply = await communicator.receive_json_from(COV_TIMEOUT)
    assert reply["action"] == "cov_db_reply", reply
    payload: dict[str, Any] = reply["payload"]
    return payload


@pytest.fixture
def cov_hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each time chanx runs close_old_connections (a hop to the ORM's thread)."""
    calls: list[int] = []
    original = chanx._close_old_connections

    def counting() -> None:
        calls.append(threading.get_ident())
        original()

    monkeypatch.setattr(chanx, "_close_old_connections", counting)
    COV_DBAPI.clear()
    yield calls
    COV_DBAPI.clear()


class cov_conn_settings:
    """CONN_MAX_AGE / CONN_HEALTH_CHECKS in the block, every connection closed before
    and after (so no test inherits another's)."""

    def __init__(self, max_age: int | None, health_checks: bool = False) -> None:
        self.values = {"CONN_MAX_AGE": max_age, "CONN_HEALTH_CHECKS": health_checks}

    async def __aenter__(self) -> None:
        settings_dict = connections["default"].settings_dict  # shared by every thread's wrapper
        self.saved = {k: settings_dict.get(k) for k in self.values}
        settings_dict.update(self.values)
        await sync_to_async(self.reset)()

    async def __aexit__(self, *exc: Any) -> None:
        connections["default"].settings_dict.update(self.saved)
        await sync_to_async(self.reset)()

    @staticmethod
    def reset() -> None:
        """On the ORM's thread: close its connections. In-memory SQLite ignores
        close(), so its connection gets what connecting would have set."""
        connections.close_all()
        conn = connections["default"]
        if conn.connection is not None:
            max_age = conn.settings_dict["CONN_MAX_AGE"]
            conn.health_check_enabled = conn.settings_dict["CONN_HEALTH_CHECKS"]
            conn.close_at = None if max_age is None else time.monotonic() + max_age


def cov_in_memory_sqlite() -> bool:
    return connection.vendor == "sqlite" and connection.is_in_memory_db()


async def test_health_checks_run_before_the_first_query_of_every_handler(
    cov_open: Any, cov_hops: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONN_HEALTH_CHECKS: Django checks a persistent connection once per request;
    chanx (no hop) marks it unchecked before each handler, so each handler's first
    query checks it."""
    checks: list[int] = []
    wrapper_class = type(connections["default"])
    original = wrapper_class.is_usable

    def counting(self: Any) -> bool:
        checks.append(threading.get_ident())
        return bool(original(self))

    monkeypatch.setattr(wrapper_class, "is_usable", counting)
    async with cov_conn_settings(60, health_checks=True):
        communicator = await cov_open(CovDbConsumer)
        first = await cov_db_frame(communicator)  # connects: checked by connecting
        hops, before = len(cov_hops), len(checks)
        for n in range(1, 4):
            reply = await cov_db_frame(communicator)
            assert reply["connection"] == first["connection"]  # persistent
            assert len(checks) == before + n  # exactly one check per handler
        assert len(cov_hops) == hops  # and no thread hop for it
        assert len(set(checks)) == 1  # on the ORM's thread


async def test_a_connection_with_errors_is_checked_before_the_next_handler(
    cov_open: Any, cov_hops: list[int]
) -> None:
    async with cov_conn_settings(60):
        communicator = await cov_open(CovDbConsumer)
        first = await cov_db_frame(communicator)
        hops = len(cov_hops)
        broken = await cov_db_frame(communicator, "break")
        assert broken["errors_at_end"] is True
        after = await cov_db_frame(communicator)
        assert len(cov_hops) == hops + 1  # one hop, for the errored connection
        assert after["connected_at_start"] is True
        assert after["errors_at_start"] is False  # Django found it usable: errors cleared
        assert after["connection"] == first["connection"]  # and kept it
        await cov_db_frame(communicator)
        assert len(cov_hops) == hops + 1  # healthy again: no more hops


async def test_an_unusable_connection_with_errors_is_replaced_before_the_next_handler(
    cov_open: Any, cov_hops: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if cov_in_memory_sqlite():
        pytest.skip("in-memory SQLite ignores close(); run it on PostgreSQL or a SQLite file")
    async with cov_conn_settings(60):
        communicator = await cov_open(CovDbConsumer)
        first = await cov_db_frame(communicator)
        await cov_db_frame(communicator, "break")
        monkeypatch.setattr(type(connections["default"]), "is_usable", lambda self: False)
        after = await cov_db_frame(communicator)
        assert after["connected_at_start"] is False  # closed before the handler ran
        assert after["connection"] != first["connection"] and after["errors_at_end"] is False


async def test_autocommit_left_off_by_a_handler_is_reset_before_the_next(
    cov_open: Any, cov_hops: list[int]
) -> None:
    if cov_in_memory_sqlite():
        pytest.skip("in-memory SQLite ignores close(); run it on PostgreSQL or a SQLite file")
    async with cov_conn_settings(60):
        communicator = await cov_open(CovDbConsumer)
        first = await cov_db_frame(communicator)
        hops = len(cov_hops)
        left_off = await cov_db_frame(communicator, "autocommit_off")
        assert left_off["autocommit"] is False and left_off["connection"] == first["connection"]
        after = await cov_db_frame(communicator)
        assert len(cov_hops) == hops + 1
        assert after["connected_at_start"] is False  # closed before the handler ran
        assert after["autocommit"] is True and after["connection"] != first["connection"]


class CovAtomicSparedTests(WebsocketTestCase):
    """In a TestCase the ORM's connection is inside the test's transaction: chanx
    must never close it, however obsolete it looks (CONN_MAX_AGE elapsed)."""

    application = cov_app(CovDbConsumer)
    ws_path = "/ws/"

    def setUp(self) -> None:
        super().setUp()
        User.objects.create_user("cov_tc_user")  # only inside the test's transaction
        self.conn = connections["default"]
        self.saved_close_at = self.conn.close_at
        self.conn.close_at = 0  # obsolete, as CONN_MAX_AGE=0 makes it after a request

    def tearDown(self) -> None:
        self.conn.close_at = self.saved_close_at
        super().tearDown()

    async def test_frames_see_the_tests_data_and_the_connection_is_never_closed(self) -> None:
        closes: list[Any] = []
        wrapper_class, conn = type(self.conn), self.conn
        original = wrapper_class.close

        def spy(wrapper: Any) -> None:
            if wrapper is conn:
                closes.append(wrapper)
            original(wrapper)

        hops: list[int] = []
        real = chanx._close_old_connections

        def counting() -> None:
            hops.append(1)
            real()

        with (
            mock.patch.object(wrapper_class, "close", spy),
            mock.patch.object(chanx, "_close_old_connections", counting),
        ):
            communicator = self.auth_communicator
            await communicator.connect(COV_TIMEOUT)
            await communicator.assert_authenticated_status_ok(COV_TIMEOUT)
            connected_hops = len(hops)
            for _ in range(3):
                reply = await cov_db_frame(communicator)
                assert reply["exists"] is True, reply
            assert len(hops) == connected_hops  # nothing to clean up: no hop
            await communicator.disconnect()
        assert closes == []
        assert await sync_to_async(lambda: conn.in_atomic_block)() is True


# 6. A channel-layer message whose handling fails ##############################


class CovLayerEvent(BaseChannelEvent):
    action: Literal["cov_layer_event"] = "cov_layer_event"
    payload: str


class CovLayerEventOut(BaseMessage):
    action: Literal["cov_layer_event_out"] = "cov_layer_event_out"
    payload: str


class CovLayerConsumer(CovPing, AsyncJsonWebsocketConsumer[CovLayerEvent]):
    groups = ["cov-layer"]

    async def cov_boom(self, message: dict[str, Any]) -> None:  # Channels-style "cov.boom"
        raise RuntimeError("cov boom")

    async def cov_fine(self, message: dict[str, Any]) -> None:  # "cov.fine"
        await self.send_json({"action": "cov_fine", "payload": message["n"]})

    @event_handler
    async def on_layer_event(self, event: CovLayerEvent) -> CovLayerEventOut:
        if event.payload == "explode":
            raise ValueError("cov event handler failed")
        return CovLayerEventOut(payload=event.payload)


async def test_a_failing_custom_layer_handler_is_logged_and_the_connection_serves_on(
    cov_open: Any, cov_log: Any
) -> None:
    communicator = await cov_open(CovLayerConsumer)
    layer = get_channel_layer()
    await layer.group_send("cov-layer", {"type": "cov.boom"})
    await layer.group_send("cov-layer", {"type": "cov.fine", "n": 1})
    # The next frame is the later message's: the failure sent the client nothing.
    assert await communicator.receive_json_from() == {"action": "cov_fine", "payload": 1}
    (record,) = cov_messages(cov_log, "Failed to handle a channel-layer message")
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[0] is RuntimeError and str(record.exc_info[1]) == "cov boom"
    await cov_barrier(communicator)
    await CovLayerConsumer.broadcast_event(CovLayerEvent(payload="later"))
    assert await communicator.receive_json_from() == {
        "action": "cov_layer_event_out",
        "payload": "later",
    }


@pytest.mark.parametrize(
    "event",
    [
        {"action": "cov_layer_event", "payload": 5},  # the payload no longer validates
        {"action": "cov_layer_gone", "payload": "x"},  # an action no longer accepted
    ],
    ids=["bad-payload", "unknown-action"],
)
async def test_an_event_that_no_longer_validates_is_logged_and_the_connection_serves_on(
    event: dict[str, Any], cov_open: Any, cov_log: Any
) -> None:
    communicator = await cov_open(CovLayerConsumer)
    layer = get_channel_layer()
    await layer.group_send("cov-layer", {"type": "chanx.event", "event": event})
    await CovLayerConsumer.broadcast_event(CovLayerEvent(payload="valid"), ["cov-layer"])
    assert await communicator.receive_json_from() == {
        "action": "cov_layer_event_out",
        "payload": "valid",
    }
    (record,) = cov_messages(cov_log, "Failed to handle a channel-layer message")
    assert record.exc_info is not None and record.exc_info[0] is ValidationError
    await cov_barrier(communicator)


async def test_a_failing_event_handler_is_logged_completed_and_the_next_event_served(
    cov_open: Any, cov_log: Any
) -> None:
    with override_settings(CHANX={"SEND_COMPLETION": True}):
        communicator = await cov_open(CovLayerConsumer)
        await CovLayerConsumer.broadcast_event(CovLayerEvent(payload="explode"))
        await CovLayerConsumer.broadcast_event(CovLayerEvent(payload="next"))
        assert [await communicator.receive_json_from() for _ in range(3)] == [
            {"action": "event_complete", "payload": None},  # the failed one is complete too
            {"action": "cov_layer_event_out", "payload": "next"},
            {"action": "event_complete", "payload": None},
        ]
        (record,) = cov_messages(cov_log, "Event handler failed")
        assert record.exc_info is not None and record.exc_info[0] is ValueError
        assert record.action == "cov_layer_event"  # type: ignore[attr-defined]
        await communicator.send_message(PingMessage())
        assert [await communicator.receive_json_from() for _ in range(2)] == [
            COV_PONG,
            {"action": "complete", "payload": None},
        ]


# 7. No channel layer ##########################################################


class CovGroupSend(BaseMessage):
    action: Literal["cov_group_send"] = "cov_group_send"
    payload: Literal["message", "dict"] = "message"


class CovNoLayerConsumer(CovPing, AsyncJsonWebsocketConsumer[CovLayerEvent]):
    @ws_handler
    async def group_send(self, message: CovGroupSend) -> None:
        if message.payload == "dict":
            await self.send_to_groups({"action": "cov_raw"}, ["cov-x"])
        else:
            await self.send_group_message(CovShouted(payload="x"), ["cov-x"])


class CovNoLayerBuiltGroups(CovPing):
    async def build_groups(self) -> str:
        return "cov-built"


async def test_no_channel_layer_with_built_groups_is_a_clear_500(
    cov_open: Any, cov_log: Any
) -> None:
    with override_settings(CHANNEL_LAYERS={}):
        assert get_channel_layer() is None
        communicator = await cov_open(CovNoLayerBuiltGroups, auth=False)
        payload, code = await communicator.refusal()
    assert (payload["status_code"], code) == (500, chanx.CLOSE_SERVER_ERROR)
    assert payload["data"]["detail"] == (
        "Server configuration error: CovNoLayerBuiltGroups joins groups but no channel "
        "layer is configured; set CHANNEL_LAYERS in settings."
    )
    (record,) = cov_messages(cov_log, "Websocket authentication failed")
    assert record.exc_info is not None and record.exc_info[0] is ChanxConfigError


async def test_events_without_a_channel_layer_raise_a_config_error_naming_channel_layers() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        with pytest.raises(ChanxConfigError, match="CHANNEL_LAYERS"):
            await CovNoLayerConsumer.broadcast_event(CovLayerEvent(payload="x"), ["cov-x"])
        with pytest.raises(ChanxConfigError, match="CHANNEL_LAYERS"):
            await CovNoLayerConsumer.send_event(CovLayerEvent(payload="x"), "some.channel")


def test_sync_events_without_a_channel_layer_raise_a_config_error() -> None:
    with override_settings(CHANNEL_LAYERS={}):
        with pytest.raises(ChanxConfigError, match="CHANNEL_LAYERS"):
            CovNoLayerConsumer.broadcast_event_sync(CovLayerEvent(payload="x"), ["cov-x"])
        with pytest.raises(ChanxConfigError, match="CHANNEL_LAYERS"):
            CovNoLayerConsumer.send_event_sync(CovLayerEvent(payload="x"), "some.channel")


@pytest.mark.parametrize("kind", ["message", "dict"])
async def test_group_sends_without_a_channel_layer_fail_the_handler_not_the_connection(
    kind: str, cov_open: Any, cov_log: Any
) -> None:
    with override_settings(CHANNEL_LAYERS={}):
        communicator = await cov_open(CovNoLayerConsumer)  # no groups: it connects
        await cov_barrier(communicator)
        await communicator.send_message(CovGroupSend(payload=kind))  # type: ignore[arg-type]
        assert await communicator.receive_json_from() == {
            "action": "error",
            "payload": {"detail": "Failed to process message for cov_group_send"},
        }
        (record,) = cov_messages(cov_log, "Websocket handler failed")
        assert record.exc_info is not None and record.exc_info[0] is ChanxConfigError
        assert "CHANNEL_LAYERS" in str(record.exc_info[1])
        await cov_barrier(communicator)


# 8. Error hooks, the default receive_message, an endpoint with no handlers ####


class CovBoom(BaseMessage):
    action: Literal["cov_boom"] = "cov_boom"
    payload: str


class CovOrphan(BaseMessage):
    """Accepted (early style) but handled by no @ws_handler."""

    action: Literal["cov_orphan"] = "cov_orphan"
    payload: int = 0


class CovHookError(Exception):
    pass


COV_HOOK_CALLS: list[tuple[str, Any]] = []


class CovHooksConsumer(CovPing):
    INCOMING_MESSAGE_SCHEMA = CovOrphan

    @ws_handler
    async def boom(self, message: CovBoom) -> None:
        raise CovHookError(message.payload)

    async def on_validation_error(self, error: ValidationError) -> None:
        COV_HOOK_CALLS.append(("validation", error))
        types = [e["type"] for e in error.errors()]
        await self.send_json({"action": "cov_hooked", "payload": ["validation", types]})

    async def on_bad_frame(self, detail: str) -> None:
        COV_HOOK_CALLS.append(("bad_frame", detail))
        await self.send_json({"action": "cov_hooked", "payload": ["bad_frame", detail]})

    async def on_handler_error(self, exc: Exception, message: BaseMessage) -> None:
        COV_HOOK_CALLS.append(("handler_error", (exc, message)))
        await self.send_json({"action": "cov_hooked", "payload": ["handler", message.action]})


def cov_hooked(*payload: Any) -> dict[str, Any]:
    return {"action": "cov_hooked", "payload": list(payload)}


async def test_on_validation_error_gets_the_error_and_its_frame_replaces_the_default(
    cov_open: Any,
) -> None:
    COV_HOOK_CALLS.clear()
    communicator = await cov_open(CovHooksConsumer)
    await communicator.send_to(text_data="not json")
    assert await communicator.receive_json_from() == cov_hooked("validation", ["json_invalid"])
    await communicator.send_json_to({"action": "cov_boom"})
    assert await communicator.receive_json_from() == cov_hooked("validation", ["missing"])
    await communicator.send_json_to({"action": "cov_unknown"})
    assert await communicator.receive_json_from() == cov_hooked("validation", ["union_tag_invalid"])
    await cov_barrier(communicator)  # no default error frame came after any of them
    assert [kind for kind, _ in COV_HOOK_CALLS] == ["validation"] * 3
    assert all(isinstance(error, ValidationError) for _, error in COV_HOOK_CALLS)


async def test_on_bad_frame_gets_the_detail_and_its_frame_replaces_the_default(
    cov_open: Any, cov_log: Any
) -> None:
    COV_HOOK_CALLS.clear()
    with override_settings(CHANX={"MAX_MESSAGE_SIZE": 64}):
        communicator = await cov_open(CovHooksConsumer)
        await communicator.send_to(bytes_data=b"\x00\x01")
        await communicator.send_to(text_data=json.dumps({"action": "ping", "pad": "x" * 100}))
        await communicator.send_message(CovOrphan(payload=1))  # the default receive_message
        details = [
            "Binary frames are not supported; send JSON text.",
            "Message too large; the limit is 64 bytes.",
            "No handler for this action.",
        ]
        for detail in details:
            assert await communicator.receive_json_from() == cov_hooked("bad_frame", detail)
        await cov_barrier(communicator)
    recorded = list(COV_HOOK_CALLS)
    assert recorded == [("bad_frame", detail) for detail in details]
    (warning,) = cov_messages(cov_log, "No handler for action 'cov_orphan'")
    assert warning.levelno == logging.WARNING


async def test_on_handler_error_gets_the_exception_and_the_message(
    cov_open: Any, cov_log: Any
) -> None:
    COV_HOOK_CALLS.clear()
    communicator = await cov_open(CovHooksConsumer)
    await communicator.send_message(CovBoom(payload="kaboom"))
    assert await communicator.receive_json_from() == cov_hooked("handler", "cov_boom")
    await cov_barrier(communicator)  # the default error frame was not sent
    ((kind, (exc, message)),) = COV_HOOK_CALLS
    assert kind == "handler_error"
    assert type(exc) is CovHookError and exc.args == ("kaboom",)
    assert message == CovBoom(payload="kaboom")


class CovOrphanDefaults(CovPing):
    INCOMING_MESSAGE_SCHEMA = CovOrphan


async def test_the_default_receive_message_warns_and_answers_no_handler(
    cov_open: Any, cov_log: Any
) -> None:
    communicator = await cov_open(CovOrphanDefaults)
    await communicator.send_message(CovOrphan(payload=3))
    assert await communicator.receive_json_from() == {
        "action": "error",
        "payload": {"detail": "No handler for this action."},
    }
    (warning,) = cov_messages(cov_log, "No handler for action 'cov_orphan'")
    assert warning.levelno == logging.WARNING
    await cov_barrier(communicator)


class CovEarlyStyle(CovPing):
    INCOMING_MESSAGE_SCHEMA = CovOrphan

    async def receive_message(self, message: BaseMessage) -> BaseMessage:
        assert isinstance(message, CovOrphan)
        return CovWhichReply(payload=message.payload * 2)


async def test_an_overridden_receive_message_gets_the_message_and_its_reply_is_sent(
    cov_open: Any,
) -> None:
    communicator = await cov_open(CovEarlyStyle)
    await communicator.send_message(CovOrphan(payload=21))
    assert await communicator.receive_json_from() == {"action": "cov_which_reply", "payload": 42}
    await cov_barrier(communicator)


class CovNoHandlers(AsyncJsonWebsocketConsumer):
    permission_classes = [AllowAny]


async def test_an_endpoint_with_no_handlers_answers_every_frame_and_stays_open(
    cov_open: Any,
) -> None:
    communicator = await cov_open(CovNoHandlers)
    refused = {"action": "error", "payload": {"detail": "This endpoint does not accept messages."}}
    for frame in ('{"action": "ping"}', "not json", "{}"):
        await communicator.send_to(text_data=frame)
        assert await communicator.receive_json_from() == refused
    await communicator.send_to(bytes_data=b"\x00")  # refused as read, before the endpoint check
    assert await communicator.receive_json_from() == {
        "action": "error",
        "payload": {"detail": "Binary frames are not supported; send JSON text."},
    }


# 9. send_to_groups(dict) and send_json(close=True) ############################


class CovRawSend(BaseMessage):
    action: Literal["cov_raw_send"] = "cov_raw_send"
    payload: CovShoutPayload


class CovRawConsumer(CovPing):
    groups = ["cov-raw"]

    @ws_handler
    async def raw(self, message: CovRawSend) -> None:
        content = {"action": "cov_raw_out", "payload": {"some_key": message.payload.text}}
        await self.send_to_groups(content, exclude_current=message.payload.exclude_current)


@pytest.mark.parametrize("camelize", [False, True], ids=["plain", "camelize"])
async def test_send_to_groups_relays_a_dict_with_is_mine_and_is_current(
    camelize: bool, cov_open: Any
) -> None:
    alice, bob = await cov_users("cov_ann", "cov_ben")
    with override_settings(CHANX={"CAMELIZE": camelize}):
        app = cov_app(CovRawConsumer)
        sender = await cov_open(app, user=alice)
        same_user = await cov_open(app, user=alice)
        other_user = await cov_open(app, user=bob)
        key, mine, current = (
            ("someKey", "isMine", "isCurrent")
            if camelize
            else ("some_key", "is_mine", "is_current")
        )

        def out(text: str, is_mine: bool, is_current: bool) -> dict[str, Any]:
            return {
                "action": "cov_raw_out",
                "payload": {key: text},
                mine: is_mine,
                current: is_current,
            }

        hello = CovShoutPayload(text="hello", groups=[])  # exclude_current: the default
        await sender.send_message(CovRawSend(payload=hello))
        marker = CovShoutPayload(text="marker", groups=[], exclude_current=False)
        await sender.send_message(CovRawSend(payload=marker))
        assert await same_user.receive_json_from() == out("hello", True, False)
        assert await other_user.receive_json_from() == out("hello", False, False)
        assert await same_user.receive_json_from() == out("marker", True, False)
        assert await other_user.receive_json_from() == out("marker", False, False)
        # The sender was excluded from "hello": its first relayed frame is the marker.
        assert await sender.receive_json_from() == out("marker", True, True)


class CovBye(BaseMessage):
    action: Literal["cov_bye"] = "cov_bye"


class CovByeConsumer(CovPing):
    @ws_handler
    async def bye(self, message: CovBye) -> None:
        await self.send_json({"action": "cov_bye", "payload": {"last_word": 1}}, close=True)
        await self.send_json({"action": "cov_after_close"})  # dropped: the socket is closed


@pytest.mark.parametrize("camelize", [False, True], ids=["plain", "camelize"])
async def test_send_json_with_close_sends_the_frame_then_closes(
    camelize: bool, cov_open: Any
) -> None:
    with override_settings(CHANX={"CAMELIZE": camelize}):
        communicator = await cov_open(CovByeConsumer)
        await communicator.send_message(CovBye())
        key = "lastWord" if camelize else "last_word"
        assert await communicator.receive_json_from() == {
            "action": "cov_bye",
            "payload": {key: 1},
        }
        close = await communicator._next(COV_TIMEOUT)
        assert close == {"type": "websocket.close"}  # Channels' default close: no code (1000)
        await communicator.disconnect()  # the application has finished: all it sent is queued
        left = [communicator._ahead.popleft() for _ in range(len(communicator._ahead))]
        while not communicator.output_queue.empty():
            left.append(communicator.output_queue.get_nowait())
        assert [m for m in left if m["type"] == "websocket.send"] == []


# 10. Flags, AsyncAPI metadata, playground access, get_ws_query_string #########


class CovTwo(BaseMessage):
    action: Literal["cov_two"] = "cov_two"


class CovTwoSends(CovPing):
    @ws_handler
    async def two(self, message: CovTwo) -> None:
        order: list[str] = []
        asyncio.get_running_loop().call_soon(order.append, "loop ran")
        await self.send_json({"action": "cov_first"})
        order.append("after the first send")
        await self.send_json({"action": "cov_second", "payload": order})


class CovTwoSendsNoYield(CovTwoSends):
    send_message_immediately = False


class CovTwoSendsYield(CovTwoSends):
    send_message_immediately = True


@pytest.mark.parametrize(
    ("consumer", "setting", "yields"),
    [
        (CovTwoSends, None, True),  # the default: on
        (CovTwoSends, False, False),
        (CovTwoSendsNoYield, True, False),  # the attribute wins over the setting
        (CovTwoSendsYield, False, True),
    ],
    ids=["default", "setting-off", "attribute-off", "attribute-on"],
)
async def test_send_message_immediately_lets_the_loop_run_between_two_sends(
    consumer: type[Any], setting: bool | None, yields: bool, cov_open: Any
) -> None:
    chanx_setting = {} if setting is None else {"SEND_MESSAGE_IMMEDIATELY": setting}
    with override_settings(CHANX=chanx_setting):
        communicator = await cov_open(consumer)
        await communicator.send_message(CovTwo())
        assert await communicator.receive_json_from() == {"action": "cov_first"}
        second = await communicator.receive_json_from()
    # A callback scheduled before the first send ran before the handler went on only
    # if the send yielded to the loop.
    expected = ["loop ran", "after the first send"] if yields else ["after the first send"]
    assert second == {"action": "cov_second", "payload": expected}


class CovEcho(BaseMessage):
    action: Literal["cov_echo"] = "cov_echo"
    payload: int = 0


class CovEchoed(BaseMessage):
    action: Literal["cov_echoed"] = "cov_echoed"
    payload: int = 0


class CovEchoConsumer(CovPing):
    @ws_handler
    async def echo(self, message: CovEcho) -> CovEchoed:
        return CovEchoed(payload=message.payload)


class CovEchoQuiet(CovEchoConsumer):
    log_received_message = False
    log_sent_message = False


class CovEchoLoud(CovEchoConsumer):
    log_received_message = True
    log_sent_message = True


@pytest.mark.parametrize(
    ("consumer", "settings", "received", "sent"),
    [
        (CovEchoConsumer, {}, True, True),
        (CovEchoConsumer, {"LOG_RECEIVED_MESSAGE": False}, False, True),
        (CovEchoConsumer, {"LOG_SENT_MESSAGE": False}, True, False),
        (CovEchoQuiet, {}, False, False),
        (CovEchoLoud, {"LOG_RECEIVED_MESSAGE": False, "LOG_SENT_MESSAGE": False}, True, True),
    ],
    ids=["default", "received-off", "sent-off", "attributes-off", "attributes-on"],
)
async def test_log_received_and_sent_message_flags(
    consumer: type[Any],
    settings: dict[str, Any],
    received: bool,
    sent: bool,
    cov_open: Any,
    cov_log: Any,
) -> None:
    with override_settings(CHANX=settings):
        communicator = await cov_open(consumer)
        await communicator.send_message(CovEcho(payload=7))
        # The records are written before the frame is (received) and as it is (sent).
        assert await communicator.receive_json_from() == {"action": "cov_echoed", "payload": 7}
    assert len(cov_messages(cov_log, "Websocket connected")) == 1  # the capture works
    received_records = cov_messages(cov_log, "Received websocket message")
    sent_records = [
        r
        for r in cov_messages(cov_log, "Sent websocket message")
        if r.action == "cov_echoed"  # type: ignore[attr-defined]
    ]
    assert len(received_records) == int(received) and len(sent_records) == int(sent)
    for record in received_records:
        assert record.action == "cov_echo"  # type: ignore[attr-defined]
        assert record.message_id.endswith(":1")  # type: ignore[attr-defined]


# AsyncAPI metadata and the document's structure


class CovDocHello(BaseMessage):
    """Say hello to the room."""

    action: Literal["cov_doc_hello"] = "cov_doc_hello"
    payload: str


class CovDocHelloReply(BaseMessage):
    action: Literal["cov_doc_hello_reply"] = "cov_doc_hello_reply"
    payload: str


class CovDocQuiet(BaseMessage):
    action: Literal["cov_doc_quiet"] = "cov_doc_quiet"


class CovDocUnhandled(BaseMessage):
    action: Literal["cov_doc_unhandled"] = "cov_doc_unhandled"


class CovDocRelay(BaseGroupMessage):
    action: Literal["cov_doc_relay"] = "cov_doc_relay"
    payload: str


class CovDocEvent(BaseChannelEvent):
    action: Literal["cov_doc_event"] = "cov_doc_event"
    payload: str


class CovDocEventOut(BaseMessage):
    action: Literal["cov_doc_event_out"] = "cov_doc_event_out"
    payload: str


@channel(name="cov-room", description="A room, documented for coverage.", tags=["cov", "chat"])
class CovDocConsumer(AsyncJsonWebsocketConsumer[CovDocEvent]):
    """The class docstring, which @channel's description replaces."""

    permission_classes = [AllowAny]
    INCOMING_MESSAGE_SCHEMA = CovDocUnhandled
    OUTGOING_GROUP_MESSAGE_SCHEMA = CovDocRelay

    @ws_handler(summary="Say hi", description="Longer text about hello.", tags=["greeting"])
    async def hello(self, message: CovDocHello) -> CovDocHelloReply:
        return CovDocHelloReply(payload=message.payload)

    @ws_handler
    async def quiet(self, message: CovDocQuiet) -> None:
        """Be quiet.

        Nothing is sent back."""

    @event_handler
    async def on_event(self, event: CovDocEvent) -> CovDocEventOut:
        return CovDocEventOut(payload=event.payload)


class CovDocPlain(CovPing):
    """A plain endpoint: its name and description come from the class."""


cov_doc_router = URLRouter(
    [
        path("ws/cov-doc/<int:room_id>/", CovDocConsumer.as_asgi()),
        re_path(r"^ws/cov-plain/(?P<slug>[a-z]+)/$", CovDocPlain.as_asgi()),
    ]
)


def cov_resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolved {ref}"
        node = node[part]
    return node


def cov_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in cov_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in cov_refs(v)]
    return []


def cov_message_key(document: dict[str, Any], title: str) -> str:
    (key,) = [k for k, m in document["components"]["messages"].items() if m["title"] == title]
    return key


def test_asyncapi_document_carries_the_metadata_and_holds_together() -> None:
    settings = {
        "ASYNCAPI_TITLE": "Cov title",
        "ASYNCAPI_VERSION": "9.9.9",
        "ASYNCAPI_DESCRIPTION": "Cov description.",
    }
    with override_settings(CHANX=settings):
        document = chanx.asyncapi_schema(chanx.discover_routes(cov_doc_router))
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {
        "title": "Cov title",
        "version": "9.9.9",
        "description": "Cov description.",
    }
    for ref in cov_refs(document):  # every reference resolves
        cov_resolve(document, ref)

    room = document["channels"]["cov-room"]
    assert room["address"] == "/ws/cov-doc/{room_id}/" and room["title"] == "cov-room"
    assert room["description"] == "A room, documented for coverage."
    assert room["tags"] == [{"name": "cov"}, {"name": "chat"}]
    assert set(room["parameters"]) == {"room_id"}
    plain = document["channels"]["CovDocPlain"]
    assert plain["address"] == "/ws/cov-plain/{slug}/"
    assert plain["description"] == "A plain endpoint: its name and description come from the class."
    assert "tags" not in plain and set(plain["parameters"]) == {"slug"}

    def key(title: str) -> str:
        return cov_message_key(document, title)

    def refs(titles: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/cov-room/messages/{key(t)}"} for t in titles]

    operations = document["operations"]
    channel_ref = {"$ref": "#/channels/cov-room"}
    assert operations["cov-room.hello"] == {
        "action": "receive",
        "channel": channel_ref,
        "messages": refs(["CovDocHello"]),
        "summary": "Say hi",
        "description": "Longer text about hello.",
        "tags": [{"name": "greeting"}],
        "reply": {"channel": channel_ref, "messages": refs(["CovDocHelloReply"])},
    }
    assert operations["cov-room.quiet"] == {  # summary and description from the docstring
        "action": "receive",
        "channel": channel_ref,
        "messages": refs(["CovDocQuiet"]),
        "summary": "Be quiet.",
        "description": "Be quiet.\n\nNothing is sent back.",
    }
    unhandled = operations[f"cov-room.receive.{key('CovDocUnhandled')}"]
    assert unhandled == {
        "action": "receive",
        "channel": channel_ref,
        "messages": refs(["CovDocUnhandled"]),
    }
    sent = {
        tuple(m["$ref"] for m in op["messages"])
        for name, op in operations.items()
        if name.startswith("cov-room.") and op["action"] == "send"
    }
    expected_sent = [
        "AuthenticationMessage",
        "ErrorMessage",
        "CovDocHelloReply",
        "CovDocEventOut",
        "CovDocRelay",
    ]
    assert sent == {(r["$ref"],) for r in refs(expected_sent)}
    for op in operations.values():  # each operation's messages belong to its channel
        channel_id = op["channel"]["$ref"].rsplit("/", 1)[1]
        assert all(
            m["$ref"].startswith(f"#/channels/{channel_id}/messages/") for m in op["messages"]
        )
    assert {op["channel"]["$ref"] for op in operations.values()} == {
        "#/channels/cov-room",
        "#/channels/CovDocPlain",
    }
    hello = document["components"]["messages"][key("CovDocHello")]
    assert hello["name"] == "cov_doc_hello" and hello["summary"] == "Say hello to the room."
    schema = cov_resolve(document, hello["payload"]["$ref"])
    assert schema["properties"]["action"]["const"] == "cov_doc_hello"
    assert schema["required"] == ["action", "payload"]


COV_SPECS = Path(
    os.environ.get(
        "ASYNCAPI_SPECS_DIR", COV_REPO / ".ci" / "node" / "node_modules" / "@asyncapi" / "specs"
    )
)


def test_asyncapi_document_with_every_kind_of_metadata_passes_the_official_schema() -> None:
    require_all = os.environ.get("CHANX_REQUIRE_ALL") == "1"
    schema_file = COV_SPECS / "schemas" / "3.0.0-without-$id.json"
    try:
        import jsonschema
    except ImportError:
        if require_all:
            pytest.fail("jsonschema is not installed (CHANX_REQUIRE_ALL=1)")
        pytest.skip("jsonschema is not installed")
    if not schema_file.exists():
        if require_all:
            pytest.fail(f"The official AsyncAPI schema is missing: {schema_file}")
        pytest.skip(f"@asyncapi/specs not installed ({schema_file}); run python3 dev.py test")
    validator = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    with override_settings(CHANX={"ASYNCAPI_DESCRIPTION": "Described.", "SEND_COMPLETION": True}):
        document = chanx.asyncapi_schema(chanx.discover_routes(cov_doc_router))
    assert [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)] == []
    document["channels"]["cov-room"]["tags"] = ["not a tag object"]  # not a rubber stamp
    assert list(validator.iter_errors(document))


def test_asyncapi_info_defaults_and_explicit_arguments() -> None:
    routes = chanx.discover_routes(cov_doc_router)
    assert chanx.asyncapi_schema(routes)["info"] == {
        "title": "AsyncAPI Documentation",
        "version": "1.0.0",
    }
    with override_settings(CHANX={"ASYNCAPI_TITLE": "From settings"}):
        info = chanx.asyncapi_schema(routes, title="T", version="2", description="D")["info"]
    assert info == {"title": "T", "version": "2", "description": "D"}


# PLAYGROUND_ACCESS on the three playground URLs

COV_PLAYGROUND_URLS = {
    "/playground/websocket/": "text/html",
    "/playground/routes.json": "application/json",
    "/playground/asyncapi.json": "application/json",
}


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("access", ["debug_or_staff", "staff", "public", "off"])
@pytest.mark.django_db
def test_playground_access(access: str, debug: bool, client: Any) -> None:
    staff = User.objects.create_user("cov_staff", is_staff=True)
    member = User.objects.create_user("cov_member")
    allowed = {
        "public": {"anonymous": True, "member": True, "staff": True},
        "off": {"anonymous": False, "member": False, "staff": False},
        "staff": {"anonymous": False, "member": False, "staff": True},
        "debug_or_staff": {"anonymous": debug, "member": debug, "staff": True},
    }[access]
    seen = {}
    settings = {"PLAYGROUND_ACCESS": access, "ASYNCAPI_TITLE": "Cov playground"}
    with override_settings(DEBUG=debug, CHANX=settings):
        for who, user in (("anonymous", None), ("member", member), ("staff", staff)):
            client.logout()
            if user is not None:
                client.force_login(user)
            for url, content_type in COV_PLAYGROUND_URLS.items():
                response = client.get(url)
                seen[who, url] = response.status_code
                if response.status_code == 200:
                    assert response["Content-Type"].startswith(content_type), url
                    if url.endswith("asyncapi.json"):
                        assert response.json()["info"]["title"] == "Cov playground"
    assert seen == {
        (who, url): 200 if allowed[who] else 404 for who in allowed for url in COV_PLAYGROUND_URLS
    }


# WebsocketTestCase.get_ws_query_string


class CovQueryTokenAuthentication(BaseAuthentication):
    """A DRF token in the query string: ``?token=<key>``."""

    def authenticate(self, request: Any) -> Any:
        key = request.query_params.get("token")
        if not key:
            return None
        try:
            token = Token.objects.select_related("user").get(key=key)
        except Token.DoesNotExist:
            raise AuthenticationFailed("Invalid token.") from None
        return token.user, token


class CovWhoAmI(BaseMessage):
    action: Literal["cov_whoami"] = "cov_whoami"


class CovQueryTokenConsumer(AsyncJsonWebsocketConsumer):
    authentication_classes = [CovQueryTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @ws_handler
    async def whoami(self, message: CovWhoAmI) -> CovWhichReply:
        return CovWhichReply(payload=self.user.username)


class CovQueryStringTokenTests(WebsocketTestCase):
    application = cov_app(CovQueryTokenConsumer, "ws/cov-qs/")
    ws_path = "/ws/cov-qs/"

    def setUp(self) -> None:
        super().setUp()
        self.token = Token.objects.create(user=User.objects.create_user("cov_quinn"))

    def get_ws_query_string(self) -> str:
        return f"token={self.token.key}"

    async def test_the_query_string_token_reaches_the_consumer(self) -> None:
        communicator = self.auth_communicator
        assert communicator.scope["query_string"] == f"token={self.token.key}".encode()
        await communicator.connect(COV_TIMEOUT)
        await communicator.assert_authenticated_status_ok(COV_TIMEOUT)
        await communicator.send_message(CovWhoAmI())
        assert await communicator.receive_json_from(COV_TIMEOUT) == {
            "action": "cov_which_reply",
            "payload": "cov_quinn",
        }
        for query, detail in (("", None), ("token=not-a-key", "Invalid token.")):
            other = self.create_communicator(query_string=query)
            await other.connect(COV_TIMEOUT)
            frame = await other.receive_json_from(COV_TIMEOUT)
            assert frame["payload"]["status_code"] == 401
            if detail is not None:
                assert frame["payload"]["data"]["detail"] == detail
            await other.assert_closed(chanx.CLOSE_UNAUTHORIZED, COV_TIMEOUT)
