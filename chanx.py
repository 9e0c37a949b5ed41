"""chanx: the missing toolkit for Django Channels, in one module.

Typed websocket consumers for Django Channels: DRF authentication and
permissions on connect, Pydantic-validated messages dispatched to handlers,
group pub/sub and server-side events, clear error frames, structured JSON
logging, route discovery, an AsyncAPI 3.0 document, a playground page and
test utilities.

    pip install chanx            # or copy this file into your project

Documentation: the README of the chanx repository; this file is its reference.  Licence: MIT.
Runtime dependencies: django, channels, djangorestframework, pydantic.

This file reads top to bottom in the order a connection lives through it;
``grep '^# .* ####' chanx.py`` prints the table of contents.
"""

from __future__ import annotations

__version__ = "3.0.0"
__license__ = "MIT"

__all__ = [
    # Errors
    "ChanxError",
    "ChanxConfigError",
    "InvalidEventError",
    # Settings
    "chanx_settings",
    # Messages
    "BaseMessage",
    "BaseIncomingMessage",
    "BaseGroupMessage",
    "BaseChannelEvent",
    "IncomingMessage",
    "PingMessage",
    "PongMessage",
    "ErrorMessage",
    "AuthenticationPayload",
    "AuthenticationMessage",
    "CompleteMessage",
    "GroupCompleteMessage",
    "EventCompleteMessage",
    "ACTION_COMPLETE",
    "GROUP_ACTION_COMPLETE",
    "EVENT_ACTION_COMPLETE",
    # Close codes
    "CLOSE_UNAUTHORIZED",
    "CLOSE_FORBIDDEN",
    "CLOSE_NOT_FOUND",
    "CLOSE_SERVER_ERROR",
    # Logging
    "logger",
    "JsonFormatter",
    # Authentication
    "AuthenticationResult",
    "ChanxSerializer",
    "ChanxAuthView",  # noqa: F822 - built on first access, see __getattr__
    "ChanxWebsocketAuthenticator",
    "DjangoAuthenticator",
    # Consumer
    "ws_handler",
    "event_handler",
    "channel",
    "AsyncJsonWebsocketConsumer",
    # Routing and discovery
    "include",
    "path",
    "re_path",
    "RouteInfo",
    "discover_routes",
    # AsyncAPI and playground
    "asyncapi_schema",
    "playground_view",
    "routes_view",
    "asyncapi_view",
    "urlpatterns",
    # Testing
    "WebsocketCommunicator",
    "WebsocketTestCase",
    "CapturedEvent",
    "capture_events",
]

import asyncio
import contextlib
import dataclasses
import functools
import html
import http
import importlib
import inspect
import io
import json
import logging
import operator
import re
import sys
import threading
import time
import types
import typing
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union

from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer as _ChannelsJsonConsumer,
)
from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core import checks
from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.db.backends.signals import connection_created
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.test import TestCase
from django.urls import path as _django_path
from django.urls import re_path as _django_re_path
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError
from rest_framework import serializers
from rest_framework.exceptions import APIException
from rest_framework.request import ForcedAuthentication, Request
from rest_framework.response import Response
from typing_extensions import TypeVar as TypeVar_

#: Actions of the built-in completion frames.
ACTION_COMPLETE = "complete"
GROUP_ACTION_COMPLETE = "group_complete"
EVENT_ACTION_COMPLETE = "event_complete"

#: Close codes: 4000 + the HTTP status of the failed authentication.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_SERVER_ERROR = 4500

#: Channel-layer message types chanx sends between consumers.
_GROUP_TYPE = "chanx.group"
_EVENT_TYPE = "chanx.event"
#: Stands in the frame queue for a frame refused by the rate limit.
_RATE_LIMITED: dict[str, Any] = {"type": "websocket.receive", "chanx": "rate limited"}
#: Scope key the test communicator uses to force the authenticated user.
#: Scopes are built by the server and middleware, never by the client.
_FORCE_USER_KEY = "chanx.force_user"

T = TypeVar("T")
# A default, so ``class C(AsyncJsonWebsocketConsumer)`` (no events) is fine under
# mypy --strict; typing_extensions comes with pydantic.
EventT = TypeVar_("EventT", default=Any)
Scope = dict[str, Any]
ASGIMessage = dict[str, Any]


###############################################################################
# Errors ######################################################################
###############################################################################


class ChanxError(Exception):
    """Root of every exception chanx raises."""


class ChanxConfigError(ChanxError, ValueError):
    """A configuration mistake: the message says what, where and how to fix it."""


class InvalidEventError(ChanxError, TypeError):
    """An event that the receiving consumer does not accept (raised at the sender)."""


###############################################################################
# Settings ####################################################################
###############################################################################

DEFAULTS: dict[str, Any] = {
    # Name of the discriminator field of every message.
    "MESSAGE_ACTION_KEY": "action",
    # camelCase keys on the way out, snake_case on the way in.
    "CAMELIZE": False,
    # Follow each client frame / group message / event with a completion frame.
    "SEND_COMPLETION": False,
    # Yield to the event loop after each send so frames leave at once.
    "SEND_MESSAGE_IMMEDIATELY": True,
    # Send the {"action": "authentication"} frame after connect.
    "SEND_AUTHENTICATION_MESSAGE": True,
    "LOG_RECEIVED_MESSAGE": True,
    "LOG_SENT_MESSAGE": True,
    "LOG_IGNORED_ACTIONS": (),
    # Base URL the playground connects to; None: the page's own origin.
    "WEBSOCKET_BASE_URL": None,
    "ASYNCAPI_TITLE": "AsyncAPI Documentation",
    "ASYNCAPI_DESCRIPTION": "",
    "ASYNCAPI_VERSION": "1.0.0",
    # Largest accepted incoming frame, in bytes.
    "MAX_MESSAGE_SIZE": 1024 * 1024,
    # Frames accepted but not yet handled, per connection; past it chanx
    # stops reading from the socket (backpressure).
    "MAX_IN_FLIGHT_MESSAGES": 64,
    # Frames per second per connection (None: unlimited) and the burst above it.
    "RATE_LIMIT": None,
    "RATE_LIMIT_BURST": None,
    # Who may open the playground and its JSON: "debug_or_staff", "staff",
    # "public" or "off".
    "PLAYGROUND_ACCESS": "debug_or_staff",
}

_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "MESSAGE_ACTION_KEY": (str,),
    "CAMELIZE": (bool,),
    "SEND_COMPLETION": (bool,),
    "SEND_MESSAGE_IMMEDIATELY": (bool,),
    "SEND_AUTHENTICATION_MESSAGE": (bool,),
    "LOG_RECEIVED_MESSAGE": (bool,),
    "LOG_SENT_MESSAGE": (bool,),
    "LOG_IGNORED_ACTIONS": (list, tuple, set, frozenset),
    "WEBSOCKET_BASE_URL": (str, type(None)),
    "ASYNCAPI_TITLE": (str,),
    "ASYNCAPI_DESCRIPTION": (str,),
    "ASYNCAPI_VERSION": (str,),
    "MAX_MESSAGE_SIZE": (int,),
    "MAX_IN_FLIGHT_MESSAGES": (int,),
    "RATE_LIMIT": (int, float, type(None)),
    "RATE_LIMIT_BURST": (int, float, type(None)),
    "PLAYGROUND_ACCESS": (str,),
}
_PLAYGROUND_ACCESS = ("debug_or_staff", "staff", "public", "off")


def _setting_errors(user: Any) -> list[str]:
    """Describe every problem of a ``settings.CHANX`` value (empty: fine)."""
    if not isinstance(user, dict):
        return [f"settings.CHANX must be a dict, but got {type(user).__name__}."]
    problems = []
    for key, value in user.items():
        if key not in DEFAULTS:
            valid = ", ".join(sorted(DEFAULTS))
            problems.append(f"Unknown key {key!r} in settings.CHANX. Valid keys: {valid}.")
        elif not isinstance(value, _SETTING_TYPES[key]) or (
            isinstance(value, bool) and bool not in _SETTING_TYPES[key]
        ):
            expected = " or ".join(t.__name__ for t in _SETTING_TYPES[key])
            problems.append(
                f"settings.CHANX[{key!r}] should be {expected}, but got {type(value).__name__}."
            )
    for key in ("MAX_MESSAGE_SIZE", "MAX_IN_FLIGHT_MESSAGES", "RATE_LIMIT", "RATE_LIMIT_BURST"):
        value = user.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            problems.append(f"settings.CHANX[{key!r}] must be positive, but got {value}.")
    access = user.get("PLAYGROUND_ACCESS", "debug_or_staff")
    if isinstance(access, str) and access not in _PLAYGROUND_ACCESS:
        problems.append(
            f"settings.CHANX['PLAYGROUND_ACCESS'] is {access!r}; "
            f"expected one of {', '.join(_PLAYGROUND_ACCESS)}."
        )
    return problems


class ChanxSettings:
    """``settings.CHANX`` read lazily, checked, and refreshed in place.

    ``chanx_settings.SEND_COMPLETION`` returns the user's value or the
    default. The object is never replaced: ``override_settings(CHANX=...)``
    empties its cache through the ``setting_changed`` signal, so every
    reference sees the new values (the lesson of DRF #5668).
    """

    def __init__(self) -> None:
        self._user: dict[str, Any] | None = None
        self.version = 0  # bumped on every reload, for caches built from settings

    def _user_settings(self) -> dict[str, Any]:
        if self._user is None:
            from django.conf import settings

            user = getattr(settings, "CHANX", {})
            problems = _setting_errors(user)
            if problems:
                raise ChanxConfigError(" ".join(problems))
            self._user = dict(user)
        return self._user

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            valid = ", ".join(sorted(DEFAULTS))
            raise AttributeError(f"Unknown chanx setting {name!r}. Valid settings: {valid}.")
        value = self._user_settings().get(name, DEFAULTS[name])
        if name == "LOG_IGNORED_ACTIONS":
            value = frozenset(value)
        setattr(self, name, value)  # cached: later reads skip __getattr__
        return value

    def reload(self) -> None:
        """Forget cached values; the next read sees ``settings.CHANX`` again."""
        for name in DEFAULTS:
            self.__dict__.pop(name, None)
        self._user = None
        self.version += 1


chanx_settings = ChanxSettings()


def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "CHANX":
        chanx_settings.reload()


setting_changed.connect(_reload_settings)


@checks.register("chanx")
def _check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django system check: configuration mistakes reported once at start-up."""
    from django.conf import settings

    return [
        checks.Error(problem, hint="Fix settings.CHANX.", id="chanx.E001")
        for problem in _setting_errors(getattr(settings, "CHANX", {}))
    ]


def _resolve(value: T | None, setting: str) -> T:
    """Class attribute if set, else the setting (which falls back to its default)."""
    if value is not None:
        return value
    resolved: T = getattr(chanx_settings, setting)
    return resolved


###############################################################################
# Messages ####################################################################
###############################################################################

#: Every concrete message class by action, for typed reads in tests.
_MESSAGE_REGISTRY: dict[str, list[type[BaseMessage]]] = {}


class BaseMessage(BaseModel):
    """A frame on the wire: ``{"action": "...", "payload": ...}``.

    Subclasses declare ``action: Literal["name"] = "name"`` and a ``payload``
    type. A subclass without a Literal action is an error at class creation;
    an intermediate base class says so with ``abstract=True``::

        class ChatMessage(BaseMessage):
            action: Literal["chat"] = "chat"
            payload: ChatPayload
    """

    action: str
    payload: Any = None

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # ``abstract`` is read below

    @classmethod
    def __pydantic_init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if abstract:
            return
        actions = _literal_values(cls.model_fields["action"].annotation)
        if not actions:
            raise ChanxConfigError(
                f"{cls.__module__}.{cls.__qualname__} needs a Literal action, e.g. "
                f'action: Literal["{_to_snake(cls.__name__)}"] = "{_to_snake(cls.__name__)}"'
                " (or abstract=True in the class statement for a base class)."
            )
        for action in actions:
            _MESSAGE_REGISTRY.setdefault(action, []).append(cls)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    if typing.get_origin(annotation) is Literal:
        return tuple(str(v) for v in typing.get_args(annotation))
    return ()


def _message_actions(model: type[BaseModel], key: str = "action") -> tuple[str, ...]:
    field = model.model_fields.get(key)
    return _literal_values(field.annotation) if field is not None else ()


class BaseIncomingMessage(BaseModel):
    """Early-style container: ``message`` is a union of accepted messages."""

    message: BaseMessage


class BaseGroupMessage(BaseMessage, abstract=True):
    """A message relayed to a group; receivers see who sent it."""

    is_mine: bool = False
    is_current: bool = False


class BaseChannelEvent(BaseMessage, abstract=True):
    """A server-side event sent through the channel layer to consumers."""


class PingMessage(BaseMessage):
    action: Literal["ping"] = "ping"
    payload: None = None


class PongMessage(BaseMessage):
    action: Literal["pong"] = "pong"
    payload: None = None


class IncomingMessage(BaseIncomingMessage):
    message: PingMessage


class ErrorMessage(BaseMessage):
    """``payload`` is a list of ``{"type", "loc", "msg"}`` or ``{"detail": ...}``."""

    action: Literal["error"] = "error"
    payload: Any = None


class AuthenticationPayload(BaseModel):
    status_code: int
    status_text: str
    data: Any = None


class AuthenticationMessage(BaseMessage):
    action: Literal["authentication"] = "authentication"
    payload: AuthenticationPayload


class CompleteMessage(BaseMessage):
    action: Literal["complete"] = "complete"
    payload: None = None


class GroupCompleteMessage(BaseMessage):
    action: Literal["group_complete"] = "group_complete"
    payload: None = None


class EventCompleteMessage(BaseMessage):
    action: Literal["event_complete"] = "event_complete"
    payload: None = None


_COMPLETE, _GROUP_COMPLETE, _EVENT_COMPLETE = (
    CompleteMessage(),
    GroupCompleteMessage(),
    EventCompleteMessage(),
)
_COMPLETION_TEXT: dict[str, str] = {
    m.action: m.model_dump_json() for m in (_COMPLETE, _GROUP_COMPLETE, _EVENT_COMPLETE)
}
_BUILTIN_OUTGOING: tuple[type[BaseMessage], ...] = (
    AuthenticationMessage,
    ErrorMessage,
    CompleteMessage,
    GroupCompleteMessage,
    EventCompleteMessage,
)


def _message_types(spec: Any) -> list[type[BaseModel]]:
    """Flatten a model, a union of models or an early container into models."""
    if spec is None or spec is type(None) or isinstance(spec, TypeVar):
        return []
    origin = typing.get_origin(spec)
    if origin is Union or origin is types.UnionType:
        return [m for arg in typing.get_args(spec) for m in _message_types(arg)]
    if origin is Annotated:
        return _message_types(typing.get_args(spec)[0])
    if isinstance(spec, type) and issubclass(spec, BaseIncomingMessage):
        return _message_types(spec.model_fields["message"].annotation)
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        return [spec]
    raise ChanxConfigError(f"Expected a message class or a union of them, but got {spec!r}.")


def _union_adapter(models: Sequence[type[BaseModel]]) -> TypeAdapter[Any] | None:
    """One adapter for all accepted models: discriminated on ``action`` when 2+."""
    if not models:
        return None
    if len(models) == 1:  # never a discriminator on a single type (chanx#9)
        return TypeAdapter(models[0])
    annotated: Any = Annotated  # the union is built at run time from the consumer's types
    union = functools.reduce(operator.or_, models)
    return TypeAdapter(annotated[union, Field(discriminator="action")])


# camelCase on the way out, snake_case on the way in, with no extra package.


@functools.lru_cache(maxsize=4096)
def _to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@functools.lru_cache(maxsize=4096)
def _to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _convert_keys(value: Any, convert: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {
            convert(k) if isinstance(k, str) else k: _convert_keys(v, convert)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_convert_keys(v, convert) for v in value]
    return value


def _to_wire(data: Any, camelize: bool, key: str) -> Any:
    """Python-side JSON -> what the client sees (``CAMELIZE``, ``MESSAGE_ACTION_KEY``)."""
    if camelize:
        data = _convert_keys(data, _to_camel)
    if key != "action" and isinstance(data, dict) and "action" in data:
        data = {(key if k == "action" else k): v for k, v in data.items()}
    return data


def _from_wire(data: Any, camelize: bool, key: str) -> Any:
    """The client's JSON -> the field names of the message models."""
    if key != "action" and isinstance(data, dict):  # only the configured key counts
        data = {("action" if k == key else k): v for k, v in data.items() if k != "action"}
    return _convert_keys(data, _to_snake) if camelize else data


_FIELD_NAME = re.compile(r"[A-Za-z_][\w-]{0,63}")


def _clean_errors(
    error: ValidationError, key: str = "action", limit: int = 20
) -> list[dict[str, Any]]:
    """Pydantic errors a client may see: no input echoed, bounded in size.

    Pydantic's text for an unknown tag repeats the client's value, and a
    ``loc`` can hold keys of the client's JSON; both are replaced.
    """
    cleaned = []
    for item in error.errors(include_input=False, include_url=False)[:limit]:
        kind, msg = item["type"], item["msg"]
        if kind == "union_tag_invalid":
            expected = item.get("ctx", {}).get("expected_tags", "")
            msg = f"Unknown action; expected one of: {expected}"
        elif kind == "union_tag_not_found":
            msg = f"Missing {key!r} field"
        loc = [
            part if not isinstance(part, str) or _FIELD_NAME.fullmatch(part) else "<key>"
            for part in item["loc"][:10]
        ]
        cleaned.append({"type": kind, "loc": loc, "msg": msg})
    return cleaned


###############################################################################
# Logging #####################################################################
###############################################################################

logger = logging.getLogger("chanx")

#: Attribute names every LogRecord has; anything else came from ``extra``.
_RESERVED_LOG_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ``extra`` fields.

    Use it for the ``chanx`` logger (or any)::

        LOGGING = {"version": 1, "formatters": {"json": {"()": "chanx.JsonFormatter"}}, ...}
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED_LOG_KEYS:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _log_context(consumer: AsyncJsonWebsocketConsumer[Any], **extra: Any) -> dict[str, Any]:
    """The ``extra`` of a connection's records (built only when a record is emitted)."""
    client = consumer.scope.get("client") or ("", "")
    context = {
        "conn_id": consumer._conn_id,
        "path": consumer.scope.get("path", ""),
        "client": f"{client[0]}:{client[1]}",
    }
    user = getattr(consumer, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        context["user_id"] = str(user.pk)
    context.update(extra)
    return context


###############################################################################
# Authentication ##############################################################
###############################################################################


@dataclasses.dataclass
class AuthenticationResult:
    """What authenticating a connection found."""

    is_authenticated: bool
    status_code: int
    status_text: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    user: Any = None
    obj: Any = None


class ChanxSerializer(serializers.Serializer[Any]):
    """Serializer of the authentication view (it validates nothing)."""


@functools.cache
def _auth_view_class() -> type[Any]:
    # DRF's views read settings while their module is imported, so the view
    # class is built on first use and chanx imports without configured settings.
    from rest_framework.generics import GenericAPIView

    class ChanxAuthView(GenericAPIView):  # type: ignore[type-arg]
        """The DRF view a websocket handshake is checked with.

        It runs exactly what a REST view runs before its handler:
        authentication, permissions, throttles, and ``get_object()`` with
        object permissions when a queryset is configured.
        """

        serializer_class = ChanxSerializer

        def get_response(self, request: Request) -> Response:
            return Response({"detail": "OK"})

        def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            return self.get_response(request)

        post = put = patch = delete = get

    return ChanxAuthView


def __getattr__(name: str) -> Any:  # PEP 562: lazily built public names
    if name == "ChanxAuthView":
        return _auth_view_class()
    raise AttributeError(f"module 'chanx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "ChanxAuthView"])


_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_REQUEST_SCOPE_KEYS = ("path", "raw_path", "root_path", "query_string", "client", "server")


def _build_request(scope: Scope, method: str) -> HttpRequest:
    """A faithful Django request for the websocket handshake.

    Django's own ASGIRequest parses the scope: every header (repeated ones
    joined as HTTP does), cookies, the query string, REMOTE_ADDR, server
    name and port; ``wss`` becomes ``https`` so ``is_secure()`` is right.
    """
    headers = scope.get("headers", [])
    cookies = [v for k, v in headers if k.lower() == b"cookie"]
    if len(cookies) > 1:  # HTTP/2 splits cookies over headers; they join with "; "
        headers = [
            *((k, v) for k, v in headers if k.lower() != b"cookie"),
            (b"cookie", b"; ".join(cookies)),
        ]
    # Only what ASGIRequest reads: the request outlives the handshake.
    http_scope = {key: scope[key] for key in _REQUEST_SCOPE_KEYS if key in scope}
    http_scope.update(
        type="http",
        method=method.upper(),
        scheme=_HTTP_SCHEMES.get(scope.get("scheme", "ws"), "http"),
        headers=headers,
    )
    request = ASGIRequest(http_scope, io.BytesIO())
    if "user" in scope:  # from AuthMiddlewareStack, for SessionAuthentication
        request.user = scope["user"]
    if "session" in scope:
        request.session = scope["session"]
    return request


class ChanxWebsocketAuthenticator:
    """Authenticates a websocket connection with DRF classes.

    Configure it like an ``APIView``; unset (``None``) means DRF's defaults
    (``DEFAULT_AUTHENTICATION_CLASSES`` / ``DEFAULT_PERMISSION_CLASSES``)::

        class RoomAuthenticator(DjangoAuthenticator):
            permission_classes = [IsAuthenticated, IsRoomMember]
            queryset = Room.objects.all()   # object looked up from the URL kwarg

    After ``authenticate()``: ``user``, ``obj`` and ``request``.
    """

    authentication_classes: ClassVar[Sequence[Any] | None] = None
    permission_classes: ClassVar[Sequence[Any] | None] = None
    queryset: ClassVar[Any] = None
    lookup_field: ClassVar[str | None] = None
    lookup_url_kwarg: ClassVar[str | None] = None
    auth_method: ClassVar[str] = "get"

    #: Names a consumer may set to override the authenticator (early style).
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "authentication_classes",
        "permission_classes",
        "queryset",
        "lookup_field",
        "lookup_url_kwarg",
        "auth_method",
    )

    def __init__(self) -> None:
        self.user: Any = None
        self.obj: Any = None
        self.request: Request | None = None

    async def authenticate(self, scope: Scope) -> AuthenticationResult:
        """Run DRF once, in a worker thread with Django's DB connection handling."""
        result: AuthenticationResult = await sync_to_async(self._authenticate_cleanly)(scope)
        return result

    def _authenticate_cleanly(self, scope: Scope) -> AuthenticationResult:
        # As Channels' database_sync_to_async, but sparing a test's transaction.
        _close_old_connections()
        try:
            return self.authenticate_sync(scope)
        finally:
            _close_old_connections()

    def build_view(self, request: HttpRequest, kwargs: dict[str, Any]) -> Any:
        """The configured ``ChanxAuthView`` instance for one handshake."""
        view = _auth_view_class()()
        for name in ("authentication_classes", "permission_classes", "queryset"):
            value = getattr(self, name)
            if value is not None and value is not True:
                setattr(view, name, value)
        if self.lookup_field is not None:
            view.lookup_field = self.lookup_field
        if self.lookup_url_kwarg is not None:
            view.lookup_url_kwarg = self.lookup_url_kwarg
        view.args, view.kwargs, view.format_kwarg = (), kwargs, None
        view.headers = {}
        return view

    def authenticate_sync(self, scope: Scope) -> AuthenticationResult:
        """Authenticate, check permissions and throttles, look up the object."""
        kwargs = dict(scope.get("url_route", {}).get("kwargs", {}))
        django_request = _build_request(scope, self.auth_method)
        view = self.build_view(django_request, kwargs)
        forced = scope.get(_FORCE_USER_KEY)
        if forced is not None:
            view.get_authenticators = lambda: [ForcedAuthentication(forced, None)]
        request = view.initialize_request(django_request)
        view.request = request
        self.request = request
        try:
            # APIView.initial() without content negotiation: no response to render.
            request.version, request.versioning_scheme = view.determine_version(request)
            view.perform_authentication(request)
            view.check_permissions(request)
            view.check_throttles(request)
            obj = None
            if view.queryset is not None:
                lookup = view.lookup_url_kwarg or view.lookup_field
                if lookup not in kwargs:
                    raise ChanxConfigError(
                        f"{type(self).__name__} has a queryset but the route has no "
                        f"{lookup!r} URL kwarg (it has {sorted(kwargs)}); set "
                        "lookup_url_kwarg or fix the route."
                    )
                obj = view.get_object()
        except (Http404, ObjectDoesNotExist):
            return self._failure(404, {"detail": "Not found."})
        except (APIException, DjangoPermissionDenied) as exc:  # anything else: a 500
            response = view.handle_exception(exc)  # DRF's status code, header and detail
            return self._failure(response.status_code, response.data)
        self.user, self.obj = request.user, obj
        # The request lives as long as the connection; the view and the
        # authenticators that were tried need not (memory per connection).
        request.parser_context.pop("view", None)
        request.authenticators = ()
        return AuthenticationResult(True, 200, "OK", {"detail": "OK"}, self.user, obj)

    def _failure(self, status_code: int, data: Any) -> AuthenticationResult:
        text = http.HTTPStatus(status_code).phrase
        if not isinstance(data, dict):
            data = {"detail": data}
        return AuthenticationResult(False, status_code, text, dict(data))


#: Seed 003's name for the authenticator.
DjangoAuthenticator = ChanxWebsocketAuthenticator


###############################################################################
# Consumer ####################################################################
###############################################################################

# Database hygiene without a thread hop per frame. Channels runs
# close_old_connections() on a worker thread before every message (a thread
# hop of 60-150 us, on one shared thread). chanx remembers the thread its own
# sync code (authentication, cleanup) last ran on, which is the thread the
# ORM's async calls run on, watches that thread's connections from the event
# loop, and hops there only when one is obsolete (CONN_MAX_AGE), errored or
# out of autocommit: the cases close_old_connections() acts on. A connection
# inside a transaction is never closed (a TestCase's, in tests).


class _OrmThread:
    """The ORM thread and its connections (a few wrappers, one per alias)."""

    ident: int | None = None
    connections: weakref.WeakSet[Any] = weakref.WeakSet()


def _adopt_orm_thread() -> None:
    """Called by chanx's sync code: this thread is where the ORM runs."""
    ident = threading.get_ident()
    if _OrmThread.ident != ident:
        from django.db import connections

        _OrmThread.ident = ident
        _OrmThread.connections = weakref.WeakSet(connections.all(initialized_only=True))


def _watch_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    if threading.get_ident() == _OrmThread.ident:
        _OrmThread.connections.add(connection)  # a set: a reconnection adds nothing


connection_created.connect(_watch_connection)


def _close_old_connections() -> None:
    """``close_old_connections()`` on this thread, sparing open transactions."""
    from django.db import connections

    _adopt_orm_thread()
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def _db_needs_cleanup() -> bool:
    if _OrmThread.ident is None:
        return True  # not known yet: the first hop finds it
    now = 0.0
    for conn in _OrmThread.connections:
        if conn.connection is None or conn.in_atomic_block:
            continue
        if conn.errors_occurred or conn.autocommit != conn.settings_dict["AUTOCOMMIT"]:
            return True
        if conn.close_at is not None:
            now = now or time.monotonic()
            if now >= conn.close_at:
                return True
        conn.health_check_done = False  # what close_old_connections does to a healthy one
    return False


async def _ensure_db_hygiene() -> None:
    """Close stale DB connections before user code runs, hopping only if needed."""
    if _db_needs_cleanup():
        await sync_to_async(_close_old_connections)()


# Handlers are marked by decorators and collected once per class.


@dataclasses.dataclass(frozen=True)
class _HandlerSpec:
    kind: Literal["ws", "event"]
    action: str | None = None
    summary: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Handler:
    name: str  # method name
    spec: _HandlerSpec
    accepts: tuple[type[BaseModel], ...]
    returns: tuple[type[BaseModel], ...]
    actions: tuple[str, ...]


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


class _HandlerMarker:
    """``@ws_handler`` / ``@event_handler``, bare or with keyword arguments."""

    def __init__(self, kind: Literal["ws", "event"], doc: str) -> None:
        self.kind = kind
        self.__doc__ = doc

    @typing.overload
    def __call__(self, func: _F, /) -> _F: ...
    @typing.overload
    def __call__(
        self,
        /,
        *,
        action: str | None = None,
        summary: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> Callable[[_F], _F]: ...
    def __call__(
        self,
        func: _F | None = None,
        /,
        *,
        action: str | None = None,
        summary: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
    ) -> Any:
        def mark(fn: _F) -> _F:
            if not _is_async(fn):
                raise ChanxConfigError(f"Handler {fn.__qualname__} must be an async def method.")
            doc = inspect.getdoc(fn)
            first_line = doc.splitlines()[0] if doc else None
            spec = _HandlerSpec(
                self.kind, action, summary or first_line, description or doc, tuple(tags or ())
            )
            fn.__chanx_handler__ = spec  # type: ignore[attr-defined]
            return fn

        return mark(func) if func is not None else mark


ws_handler = _HandlerMarker(
    "ws",
    """Mark ``async def handle_x(self, message: XMessage) -> Reply | None``.

    The argument's type (or union) is what the consumer accepts for it; a
    returned message is sent to the client. ``action`` narrows a handler to
    one action of its argument's type; ``summary``, ``description`` (default:
    the docstring) and ``tags`` document it.
    """,
)
event_handler = _HandlerMarker(
    "event",
    """Mark ``async def on_x(self, event: XEvent) -> Message | None`` for server events.

    Same arguments as ``ws_handler``; a returned message is sent to the client.
    """,
)


_C = TypeVar("_C", bound=type)


def channel(
    name: str | None = None, description: str | None = None, tags: Iterable[str] | None = None
) -> Callable[[_C], _C]:
    """Name and describe a consumer for the AsyncAPI document and the playground."""

    def decorate(cls: _C) -> _C:
        cls.__chanx_channel__ = {  # type: ignore[attr-defined]
            "name": name,
            "description": description,
            "tags": tuple(tags or ()),
        }
        return cls

    return decorate


def _handler_types(cls: type, fn: Callable[..., Any]) -> tuple[list[type[BaseModel]], list[Any]]:
    """The message types a handler accepts, and those it returns."""
    module = sys.modules.get(fn.__module__)
    try:
        hints = typing.get_type_hints(fn, globalns=vars(module) if module else None)
    except Exception as exc:
        raise ChanxConfigError(
            f"Cannot read the type hints of {cls.__qualname__}.{fn.__name__}: {exc}. "
            "Define the message classes before the consumer."
        ) from exc
    params = [p for p in inspect.signature(fn).parameters.values()][1:]
    if len(params) != 1 or params[0].name not in hints:
        raise ChanxConfigError(
            f"{cls.__qualname__}.{fn.__name__} must take exactly one annotated "
            "argument, the message, e.g. (self, message: PingMessage)."
        )
    accepts = _message_types(hints[params[0].name])
    returns = _message_types(hints.get("return"))
    return accepts, returns


@dataclasses.dataclass
class _ConsumerMeta:
    """Everything chanx derives from a consumer class, built once per class."""

    ws_handlers: dict[str, _Handler]
    event_handlers: dict[str, _Handler]
    incoming: tuple[type[BaseModel], ...]
    events: tuple[type[BaseModel], ...]
    outgoing: tuple[type[BaseModel], ...]
    adapters: dict[str, TypeAdapter[Any] | None] = dataclasses.field(default_factory=dict)

    def adapter(self, which: Literal["incoming", "events"]) -> TypeAdapter[Any] | None:
        """The cached adapter over the accepted messages or events (built on first use)."""
        if which not in self.adapters:
            self.adapters[which] = _union_adapter(getattr(self, which))
        return self.adapters[which]


def _build_meta(cls: type[AsyncJsonWebsocketConsumer[Any]]) -> _ConsumerMeta:
    functions: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # subclasses override by name
        functions.update(vars(klass))
    handlers: dict[str, dict[str, _Handler]] = {"ws": {}, "event": {}}
    accepted: dict[str, list[type[BaseModel]]] = {"ws": [], "event": []}
    outgoing: list[type[BaseModel]] = [*_BUILTIN_OUTGOING]
    for name, fn in functions.items():
        spec = getattr(fn, "__chanx_handler__", None)
        if not isinstance(spec, _HandlerSpec):
            continue
        accepts, returns = _handler_types(cls, fn)
        actions = tuple(a for m in accepts for a in _message_actions(m))
        if spec.action is not None:
            if spec.action not in actions:
                raise ChanxConfigError(
                    f"{cls.__qualname__}.{name}: action {spec.action!r} is not an action "
                    f"of its argument type (which has {', '.join(actions)})."
                )
            actions = (spec.action,)
        handler = _Handler(name, spec, tuple(accepts), tuple(returns), actions)
        for action in actions:
            other = handlers[spec.kind].get(action)
            if other is not None:
                raise ChanxConfigError(
                    f"{cls.__qualname__}: two handlers for action {action!r}: "
                    f"{other.name} and {name}. Keep one."
                )
            handlers[spec.kind][action] = handler
        accepted[spec.kind].extend(accepts)
        outgoing.extend(returns)
    accepted["ws"].extend(_message_types(getattr(cls, "INCOMING_MESSAGE_SCHEMA", None)))
    for klass in cls.__mro__:  # the generic parameter: Consumer[EventA | EventB]
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is AsyncJsonWebsocketConsumer:
                accepted["event"].extend(_message_types(typing.get_args(base)[0]))
    outgoing.extend(_message_types(getattr(cls, "OUTGOING_GROUP_MESSAGE_SCHEMA", None)))
    for kind, models in accepted.items():
        seen: dict[str, type[BaseModel]] = {}
        for model in dict.fromkeys(models):
            for action in _message_actions(model):
                if seen.setdefault(action, model) is not model:
                    raise ChanxConfigError(
                        f"{cls.__qualname__} accepts two {kind} types with action "
                        f"{action!r}: {seen[action].__qualname__} and {model.__qualname__}."
                    )
    return _ConsumerMeta(
        handlers["ws"],
        handlers["event"],
        tuple(dict.fromkeys(accepted["ws"])),
        tuple(dict.fromkeys(accepted["event"])),
        tuple(dict.fromkeys(outgoing)),
    )


_FLAGS = (
    "send_completion",
    "send_message_immediately",
    "send_authentication_message",
    "log_received_message",
    "log_sent_message",
    "log_ignored_actions",
    "camelize",
)


@dataclasses.dataclass(frozen=True)
class _Config:
    """A consumer's flags and limits: attribute -> ``settings.CHANX`` -> default.

    Resolved once per class and settings version and shared by its
    connections (an instance that sets a flag itself gets its own).
    """

    send_completion: bool
    send_message_immediately: bool
    send_authentication_message: bool
    log_received_message: bool
    log_sent_message: bool
    ignored: frozenset[str]
    camelize: bool
    action_key: str
    plain_wire: bool  # no key translation: validate and dump the JSON text directly
    max_size: int
    max_in_flight: int
    rate: float | None
    burst: float
    incoming: TypeAdapter[Any] | None

    @classmethod
    def of(cls, consumer: AsyncJsonWebsocketConsumer[Any]) -> _Config:
        klass = type(consumer)
        own = not consumer.__dict__.keys().isdisjoint(_FLAGS)
        cached = klass._chanx_config
        if not own and cached is not None and cached[0] == chanx_settings.version:
            return cached[1]
        camelize: bool = _resolve(consumer.camelize, "CAMELIZE")
        key = chanx_settings.MESSAGE_ACTION_KEY
        rate = chanx_settings.RATE_LIMIT
        config = cls(
            _resolve(consumer.send_completion, "SEND_COMPLETION"),
            _resolve(consumer.send_message_immediately, "SEND_MESSAGE_IMMEDIATELY"),
            _resolve(consumer.send_authentication_message, "SEND_AUTHENTICATION_MESSAGE"),
            _resolve(consumer.log_received_message, "LOG_RECEIVED_MESSAGE"),
            _resolve(consumer.log_sent_message, "LOG_SENT_MESSAGE"),
            frozenset(_resolve(consumer.log_ignored_actions, "LOG_IGNORED_ACTIONS")),
            camelize,
            key,
            not camelize and key == "action",
            chanx_settings.MAX_MESSAGE_SIZE,
            max(1, chanx_settings.MAX_IN_FLIGHT_MESSAGES),
            rate,
            max(1.0, float(chanx_settings.RATE_LIMIT_BURST or rate or 1)),  # 1 frame at least
            klass._chanx_meta.adapter("incoming"),
        )
        if not own:
            klass._chanx_config = (chanx_settings.version, config)
        return config


class AsyncJsonWebsocketConsumer(_ChannelsJsonConsumer, Generic[EventT]):  # type: ignore[misc]
    """A websocket consumer with DRF auth, typed messages, groups and events.

    The life of a connection, in order: ``websocket_connect`` accepts,
    authenticates (``authenticate()``), joins ``groups`` + ``build_groups()``,
    calls ``post_authentication()`` and sends the authentication frame. Each
    text frame is then validated against the union of the accepted message
    types and handed to its ``@ws_handler`` (or ``receive_message``), one at a
    time in arrival order, on a worker task: a slow handler delays neither
    group messages and events (read by their own task) nor the disconnect,
    which cancels and awaits every task of the connection.

    The generic parameter is the union of server-side events it accepts:
    ``class Chat(AsyncJsonWebsocketConsumer[JoinEvent | LeaveEvent])``.
    """

    # Messages, early style (decorated handlers add to these).
    INCOMING_MESSAGE_SCHEMA: ClassVar[Any] = None
    OUTGOING_GROUP_MESSAGE_SCHEMA: ClassVar[Any] = None

    # Authentication: set here (early style) or on an authenticator subclass.
    # A value set here wins over the authenticator's, which wins over DRF's.
    authenticator_class: ClassVar[type[ChanxWebsocketAuthenticator]] = ChanxWebsocketAuthenticator
    authentication_classes: ClassVar[Sequence[Any] | None] = None
    permission_classes: ClassVar[Sequence[Any] | None] = None
    queryset: ClassVar[Any] = None
    lookup_field: ClassVar[str | None] = None
    lookup_url_kwarg: ClassVar[str | None] = None
    auth_method: ClassVar[str | None] = None

    #: Groups to join: set a list on the class; each connection gets its own copy.
    groups: list[str]

    # Behaviour flags: None means "use settings.CHANX".
    send_completion: bool | None = None
    send_message_immediately: bool | None = None
    send_authentication_message: bool | None = None
    log_received_message: bool | None = None
    log_sent_message: bool | None = None
    log_ignored_actions: Iterable[str] | None = None
    camelize: bool | None = None

    _chanx_meta: ClassVar[_ConsumerMeta]
    _chanx_authenticator: ClassVar[type[ChanxWebsocketAuthenticator] | None] = None
    _chanx_config: ClassVar[tuple[int, _Config] | None] = None
    # Per connection, set by _setup_connection().
    _cfg: _Config
    _conn_id: str
    _tokens: float
    _last_refill: float

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._chanx_meta = _build_meta(cls)
        cls._chanx_authenticator = cls._chanx_config = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = list(getattr(type(self), "groups", None) or ())
        self.user: Any = None
        self.obj: Any = None
        self.request: Request | None = None
        self.authenticator: Any = None
        self._closed = False
        self._open = False  # authenticated and reading frames
        self._left = False  # tasks stopped and groups left
        self._relayed: deque[str] | None = None  # ids of multi-group messages
        self._frames: deque[ASGIMessage] | None = None  # made on the first frame
        self._pending = 0
        self._room: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._layer_reader: asyncio.Task[None] | None = None
        self._frame_seq = 0
        self._user_key: str | None = None
        self._conn_id = ""

    # The connection loop ###################################################

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Read the client's messages; frames go to the worker, in order."""
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
        ahead: asyncio.Future[ASGIMessage] | None = None  # read while waiting for room
        try:
            while True:
                message = await (ahead or receive())
                ahead = None
                kind = message["type"]
                if kind == "websocket.receive":
                    if self._open and not self._closed and self._queue_frame(message):
                        ahead = await self._wait_for_room(receive)
                elif kind == "websocket.connect":
                    await self.websocket_connect(message)
                elif kind == "websocket.disconnect":
                    await self.websocket_disconnect(message)
                    return
        finally:
            if ahead is not None:
                ahead.cancel()
            await self._leave()

    def _queue_frame(self, message: ASGIMessage) -> bool:
        """Queue a frame for the worker; True when the in-flight limit is reached."""
        if self._cfg.rate is not None and not self._take_token(self._cfg.rate):
            message = _RATE_LIMITED  # answered in order, its text dropped at once
        if self._frames is None:
            self._frames = deque()
        self._frames.append(message)
        self._pending += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain_frames())
        return self._pending >= self._cfg.max_in_flight

    async def _wait_for_room(self, receive: Any) -> asyncio.Future[ASGIMessage] | None:
        """Backpressure: stop reading until the worker catches up.

        One message is still read ahead, so that a disconnect is not kept
        waiting by a slow handler; a frame read ahead is held as one extra.
        """
        if self._room is None:
            self._room = asyncio.Event()
        room = self._room
        room.clear()
        if self._pending > self._cfg.max_in_flight:  # the extra frame is already held
            await room.wait()
            return None
        ahead: asyncio.Future[ASGIMessage] = asyncio.ensure_future(receive())
        waiter = asyncio.ensure_future(room.wait())
        await asyncio.wait((ahead, waiter), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return ahead

    def _take_token(self, rate: float) -> bool:
        now = time.monotonic()
        self._tokens = min(self._cfg.burst, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    async def _drain_frames(self) -> None:
        frames = self._frames
        while frames:  # not None: a frame is queued before the worker starts
            message = frames.popleft()
            try:
                if not self._closed:
                    await self._handle_frame(message)
            except Exception:
                logger.exception("Failed to handle a websocket frame", extra=_log_context(self))
            finally:
                self._pending -= 1
                room = self._room
                if room is not None and self._pending < self._cfg.max_in_flight:
                    room.set()

    async def _handle_frame(self, message: ASGIMessage) -> None:
        text = message.get("text")
        limit = self._cfg.max_size
        if message is _RATE_LIMITED:
            await self.on_bad_frame("Rate limit exceeded; slow down.")
        elif text is None:
            await self.on_bad_frame("Binary frames are not supported; send JSON text.")
        elif len(text) > limit or (
            len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit
        ):
            await self.on_bad_frame(f"Message too large; the limit is {limit} bytes.")
        else:
            await self._dispatch_text(text)
        if self._cfg.send_completion:
            await self._send_complete(_COMPLETE)

    async def _dispatch_text(self, text: str) -> None:
        adapter = self._cfg.incoming
        if adapter is None:
            await self.on_bad_frame("This endpoint does not accept messages.")
            return
        try:
            if self._cfg.plain_wire:
                message = adapter.validate_json(text)
            else:
                data = _from_wire(json.loads(text), self._cfg.camelize, self._cfg.action_key)
                message = adapter.validate_python(data)
        except ValidationError as exc:
            await self.on_validation_error(exc)
            return
        except (ValueError, RecursionError):  # json.loads, when keys are translated
            await self.on_bad_frame("Invalid JSON.")
            return
        action = message.action
        self._frame_seq += 1
        if (
            self._cfg.log_received_message
            and action not in self._cfg.ignored
            and logger.isEnabledFor(logging.INFO)
        ):
            logger.info(
                "Received websocket message",
                extra=_log_context(self, action=action, message_id=self._message_id()),
            )
        await _ensure_db_hygiene()
        handler = self._chanx_meta.ws_handlers.get(action)
        try:
            if handler is None:
                await self.receive_message(message)
            else:
                reply = await getattr(self, handler.name)(message)
                if reply is not None:
                    await self.send_message(reply)
        except Exception as exc:
            await self.on_handler_error(exc, message)

    def _message_id(self) -> str:
        return f"{self._conn_id}:{self._frame_seq}"

    async def _leave(self) -> None:
        """Cancel and await this connection's tasks, then leave its groups (once)."""
        if self._left:
            return
        self._closed = self._left = True
        pending = {t for t in (self._worker, self._layer_reader) if t is not None and not t.done()}
        while pending:  # again until done: a cancel can be swallowed (CPython gh-86296)
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if self._frames:
            self._frames.clear()
        if self.channel_layer is not None:
            for group in self.groups:  # the list stays, for disconnect()
                try:
                    await self.channel_layer.group_discard(group, self.channel_name)
                except Exception:
                    logger.exception("Could not leave group %s", group, extra=_log_context(self))

    # Connect and authenticate ##############################################

    def _setup_connection(self) -> None:
        """Resolve the flags and limits, and name the connection for the log."""
        self._cfg = _Config.of(self)
        if self._cfg.rate is not None:
            self._tokens, self._last_refill = self._cfg.burst, time.monotonic()
        self._conn_id = uuid.uuid4().hex[:12]

    async def websocket_connect(self, message: ASGIMessage) -> None:
        """Accept, authenticate, join groups, run the post-authentication hook."""
        self._setup_connection()
        await self.accept()
        try:
            result = await self.authenticate()
            if result.is_authenticated:
                self.user, self.obj = result.user, result.obj
                if getattr(self.user, "is_authenticated", False):
                    self._user_key = str(self.user.pk)
                await self.add_groups()
                await self.post_authentication()
        except Exception:
            logger.exception("Websocket authentication failed", extra=_log_context(self))
            detail = {"detail": "Authentication failed because of a server error."}
            result = AuthenticationResult(False, 500, "Internal Server Error", detail)
        if self._cfg.send_authentication_message:
            payload = AuthenticationPayload(
                status_code=result.status_code,
                status_text=result.status_text,
                data=_plain(result.data),
            )
            await self.send_message(AuthenticationMessage(payload=payload))
        if result.is_authenticated:
            self._open = True
            if self.channel_layer is not None:  # group traffic only after the auth frame
                self._layer_reader = asyncio.create_task(self._read_layer())
            if logger.isEnabledFor(logging.INFO):
                logger.info("Websocket connected", extra=_log_context(self))
        else:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "Websocket authentication refused",
                    extra=_log_context(self, status_code=result.status_code),
                )
            await self.close(code=4000 + result.status_code)

    @classmethod
    def get_authenticator_class(cls) -> type[ChanxWebsocketAuthenticator]:
        """``authenticator_class`` with the consumer's own auth attributes applied."""
        if cls._chanx_authenticator is None:
            options = ChanxWebsocketAuthenticator.OPTIONS
            own = {n: getattr(cls, n) for n in options if getattr(cls, n, None) is not None}
            base = cls.authenticator_class
            cls._chanx_authenticator = type(base.__name__, (base,), own) if own else base
        return cls._chanx_authenticator

    async def authenticate(self) -> AuthenticationResult:
        """Authenticate the handshake; override to replace DRF entirely."""
        self.authenticator = self.get_authenticator_class()()
        result: AuthenticationResult = await self.authenticator.authenticate(self.scope)
        self.request = self.authenticator.request
        return result

    async def build_groups(self) -> Iterable[str]:
        """Groups to join after authentication, besides the ``groups`` attribute."""
        return []

    async def add_groups(self) -> None:
        """Join ``groups`` and ``build_groups()``; all are left on disconnect."""
        self.groups = list(dict.fromkeys([*self.groups, *await self.build_groups()]))
        if self.groups and self.channel_layer is None:
            raise ChanxConfigError(
                f"{type(self).__name__} joins groups but no channel layer is configured; "
                "set CHANNEL_LAYERS in settings."
            )
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def post_authentication(self) -> None:
        """Called once authenticated, after groups are joined, before the auth frame."""

    # Disconnect ############################################################

    async def websocket_disconnect(self, message: ASGIMessage) -> None:
        """Cancel and await every task of the connection, leave groups, call ``disconnect``."""
        await self._leave()
        try:
            await _ensure_db_hygiene()
            await self.disconnect(message.get("code", 1000))
        except Exception:
            logger.exception("disconnect() failed", extra=_log_context(self))
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "Websocket disconnected",
                extra=_log_context(self, close_code=message.get("code", 1000)),
            )

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; no frame is handled after this."""
        if not self._closed:
            self._closed = True
            await super().close(code=code, reason=reason)

    # Receiving: hooks ######################################################

    async def receive_message(self, message: BaseMessage) -> None:
        """Called with a validated message that no ``@ws_handler`` takes."""
        logger.warning("No handler for action %r", message.action, extra=_log_context(self))
        await self.on_bad_frame("No handler for this action.")

    async def receive_event(self, event: EventT) -> None:
        """Called with a validated event that no ``@event_handler`` takes."""
        logger.warning("No handler for event %r", event, extra=_log_context(self))

    async def on_validation_error(self, error: ValidationError) -> None:
        """A frame failed validation; sends the errors (without input echo)."""
        await self.send_message(ErrorMessage(payload=_clean_errors(error, self._cfg.action_key)))

    async def on_bad_frame(self, detail: str) -> None:
        """A frame could not be read (binary, too large, ...); sends the detail."""
        await self.send_message(ErrorMessage(payload={"detail": detail}))

    async def on_handler_error(self, exc: Exception, message: BaseMessage) -> None:
        """A handler raised: log the traceback, send the client a generic error."""
        logger.exception(
            "Websocket handler failed",
            extra=_log_context(self, action=message.action, message_id=self._message_id()),
        )
        await self.send_message(ErrorMessage(payload={"detail": "Failed to process message."}))

    # Sending ###############################################################

    async def send_message(self, message: BaseMessage) -> None:
        """Serialise a message and send it to this client."""
        await self._send_text(self._dump(message), message.action)

    def _dump(self, message: BaseModel, exclude: set[str] | None = None) -> str:
        if self._cfg.plain_wire:
            return message.model_dump_json(exclude=exclude)
        data = message.model_dump(mode="json", exclude=exclude)
        return json.dumps(_to_wire(data, self._cfg.camelize, self._cfg.action_key))

    async def _send_complete(self, message: BaseMessage) -> None:
        text = _COMPLETION_TEXT[message.action] if self._cfg.plain_wire else self._dump(message)
        await self._send_text(text)  # completion frames are not logged

    async def send_json(self, content: Any, close: bool = False) -> None:
        """Send any JSON-serialisable content (keys translated like messages)."""
        action = content.get("action") if isinstance(content, dict) else None
        if not self._cfg.plain_wire:
            content = _to_wire(content, self._cfg.camelize, self._cfg.action_key)
        await self._send_text(json.dumps(content), action)
        if close:
            await self.close()

    async def _send_text(self, text: str, action: str | None = None) -> None:
        if self._closed:
            return
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except OSError:  # the client is gone (uvicorn: ClientDisconnected); not an error
            self._closed = True
            return
        if (
            action is not None
            and self._cfg.log_sent_message
            and action not in self._cfg.ignored
            and logger.isEnabledFor(logging.INFO)
        ):
            logger.info("Sent websocket message", extra=_log_context(self, action=action))
        if self._cfg.send_message_immediately:
            await asyncio.sleep(0)

    # Groups ################################################################

    async def send_group_message(
        self,
        message: BaseMessage,
        groups: str | Iterable[str] | None = None,
        *,
        exclude_current: bool = True,
    ) -> None:
        """Send a message to groups (default: this connection's groups).

        Each receiver gets it with ``is_mine`` (sent by the same user) and
        ``is_current`` (sent by this very connection).
        """
        allowed = _message_types(self.OUTGOING_GROUP_MESSAGE_SCHEMA)
        if allowed and not isinstance(message, tuple(allowed)):
            names = ", ".join(m.__name__ for m in allowed)
            raise InvalidEventError(
                f"{type(message).__name__} is not in {type(self).__name__}."
                f"OUTGOING_GROUP_MESSAGE_SCHEMA ({names})."
            )
        text = self._dump(message, exclude={"is_mine", "is_current"})
        await self._send_to_groups_text(text, message.action, groups, exclude_current)

    async def send_to_groups(
        self,
        content: dict[str, Any],
        groups: str | Iterable[str] | None = None,
        *,
        exclude_current: bool = True,
    ) -> None:
        """Send a JSON object to groups, relayed like ``send_group_message``."""
        action = content.get("action")
        if not self._cfg.plain_wire:
            content = _to_wire(content, self._cfg.camelize, self._cfg.action_key)
        await self._send_to_groups_text(json.dumps(content), action, groups, exclude_current)

    async def _send_to_groups_text(
        self, text: str, action: Any, groups: str | Iterable[str] | None, exclude: bool
    ) -> None:
        if self.channel_layer is None:
            raise ChanxConfigError("Group messages need a channel layer (CHANNEL_LAYERS).")
        message = {
            "type": _GROUP_TYPE,
            "text": text,
            "action": action,
            "from_channel": self.channel_name,
            "from_user": self._user_key,
            "exclude_current": exclude,
        }
        targets = _group_list(self.groups if groups is None else groups)
        if len(targets) > 1:  # a member of several of them gets it once
            message["id"] = uuid.uuid4().hex
        for group in targets:
            await self.channel_layer.group_send(group, message)

    async def _read_layer(self) -> None:
        """Read channel-layer messages in order, beside the frame worker.

        If the layer fails (a Redis restart), the failure is logged once, the
        read is retried with backoff, and the groups are joined again (a
        restarted Redis may have lost them) before reading resumes.
        """
        layer, name = self.channel_layer, self.channel_name
        failing, delay = False, 0.05
        while True:
            try:
                if failing:
                    for group in self.groups:
                        await layer.group_add(group, name)
                    logger.warning("Channel layer recovered", extra=_log_context(self))
                    failing, delay = False, 0.05
                message = await layer.receive(name)
            except Exception:
                if not failing:
                    logger.exception("Channel layer failed; retrying", extra=_log_context(self))
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            try:
                kind = message.get("type")
                if kind == _GROUP_TYPE:
                    await self._relay_group_message(message)
                elif kind == _EVENT_TYPE:
                    await self._dispatch_event(message)
                else:
                    await self._dispatch_custom(message)
            except Exception:
                logger.exception(
                    "Failed to handle a channel-layer message", extra=_log_context(self)
                )

    async def _relay_group_message(self, message: ASGIMessage) -> None:
        is_current = message["from_channel"] == self.channel_name
        if is_current and message["exclude_current"]:
            return
        if "id" in message:
            if self._relayed is None:
                self._relayed = deque(maxlen=256)
            elif message["id"] in self._relayed:
                return
            self._relayed.append(message["id"])
        sender = message["from_user"]
        is_mine = sender is not None and sender == self._user_key
        camel = self._cfg.camelize
        mine_key, current_key = ("isMine", "isCurrent") if camel else ("is_mine", "is_current")
        text: str = message["text"]
        flags = (
            f'"{mine_key}":{"true" if is_mine else "false"},'
            f'"{current_key}":{"true" if is_current else "false"}}}'
        )
        await self._send_text(text[:-1] + ("," if len(text) > 2 else "") + flags, message["action"])
        if self._cfg.send_completion:
            await self._send_complete(_GROUP_COMPLETE)

    async def _dispatch_custom(self, message: ASGIMessage) -> None:
        """Channels-style ``type`` -> method dispatch for other layer messages."""
        kind = message.get("type")
        name = kind.replace(".", "_") if isinstance(kind, str) else ""
        handler = None
        if name and not name.startswith(("_", "websocket_")):  # never a fake client frame
            handler = getattr(self, name, None)
        if handler is None:
            logger.warning(
                "No handler for channel-layer message %r", kind, extra=_log_context(self)
            )
            return
        await _ensure_db_hygiene()
        await handler(message)

    # Server-side events ####################################################

    async def _dispatch_event(self, message: ASGIMessage) -> None:
        adapter = self._chanx_meta.adapter("events")
        if adapter is None:
            logger.warning("%s accepts no events", type(self).__name__, extra=_log_context(self))
            return
        event = adapter.validate_python(message["event"])
        await _ensure_db_hygiene()
        handler = self._chanx_meta.event_handlers.get(event.action)
        try:
            if handler is None:
                await self.receive_event(event)
            else:
                reply = await getattr(self, handler.name)(event)
                if reply is not None:
                    await self.send_message(reply)
        except Exception:
            logger.exception("Event handler failed", extra=_log_context(self, action=event.action))
        if self._cfg.send_completion:
            await self._send_complete(_EVENT_COMPLETE)

    @classmethod
    def _event_message(cls, event: Any) -> ASGIMessage:
        """Check ``event`` against this consumer's event union and pack it."""
        meta = cls._chanx_meta
        adapter = meta.adapter("events")
        accepted = ", ".join(m.__name__ for m in meta.events) or "none"
        if adapter is None or not isinstance(event, meta.events):
            raise InvalidEventError(
                f"{cls.__name__} does not accept {type(event).__name__} events; "
                f"it accepts: {accepted}."
            )
        try:
            data = event.model_dump(mode="json")  # UUID, datetime, Decimal survive msgpack
            adapter.validate_python(data)
        except (ValidationError, PydanticSerializationError) as exc:
            raise InvalidEventError(f"Invalid {type(event).__name__}: {exc}") from exc
        return {"type": _EVENT_TYPE, "event": data}

    @classmethod
    def _layer(cls) -> Any:
        layer = get_channel_layer(cls.channel_layer_alias)
        if layer is None:
            raise ChanxConfigError("Events need a channel layer; set CHANNEL_LAYERS.")
        return layer

    @classmethod
    async def broadcast_event(cls, event: EventT, groups: str | Iterable[str]) -> None:
        """Send a typed event to every connection in ``groups`` (from anywhere async)."""
        message = cls._event_message(event)
        targets = _group_list(groups)
        if _captured(cls, event, targets, None):
            return
        layer = cls._layer()
        for group in targets:
            await layer.group_send(group, message)

    @classmethod
    def broadcast_event_sync(cls, event: EventT, groups: str | Iterable[str]) -> None:
        """``broadcast_event`` for sync code: views, tasks, signals, commands."""
        async_to_sync(cls.broadcast_event)(event, groups)

    @classmethod
    async def send_event(cls, event: EventT, channel_name: str) -> None:
        """Send a typed event to one connection by its channel name."""
        message = cls._event_message(event)
        if _captured(cls, event, [], channel_name):
            return
        await cls._layer().send(channel_name, message)

    @classmethod
    def send_event_sync(cls, event: EventT, channel_name: str) -> None:
        """``send_event`` for sync code."""
        async_to_sync(cls.send_event)(event, channel_name)

    @classmethod
    async def asend_channel_event(cls, group_name: str, event: EventT) -> None:
        """Early name: ``broadcast_event(event, [group_name])``."""
        await cls.broadcast_event(event, [group_name])

    @classmethod
    def send_channel_event(cls, group_name: str, event: EventT) -> None:
        """Early name: ``broadcast_event_sync(event, [group_name])``."""
        cls.broadcast_event_sync(event, [group_name])


AsyncJsonWebsocketConsumer._chanx_meta = _ConsumerMeta({}, {}, (), (), _BUILTIN_OUTGOING)


def _group_list(groups: str | Iterable[str]) -> list[str]:
    return [groups] if isinstance(groups, str) else list(groups)


def _plain(data: Any) -> Any:
    """DRF error data (ErrorDetail, lazy strings) as plain JSON types."""
    return json.loads(json.dumps(data, default=str))


###############################################################################
# Routing and discovery #######################################################
###############################################################################

#: Websocket routes use Django's own ``path`` / ``re_path`` (Channels routes them).
path = _django_path
re_path = _django_re_path


def include(target: Any) -> Any:
    """A websocket router from a module, a dotted module path, or a router.

    ``include("chat.routing")`` returns that module's ``router`` (a
    ``URLRouter``, or a list of routes, which is wrapped in one). A module
    with Django ``urlpatterns`` but no ``router`` is handed to Django's
    ``include``, so ``include("chanx")`` also works in ``urls.py``.
    """
    if isinstance(target, str):
        target = importlib.import_module(target)
    if not isinstance(target, types.ModuleType):
        return target
    router = getattr(target, "router", None)
    if router is None and hasattr(target, "urlpatterns"):
        from django.urls import include as django_include

        return django_include(target)
    if router is None:
        raise ChanxConfigError(
            f"Module {target.__name__} has no 'router'. Define router = URLRouter([...]) in it."
        )
    return URLRouter(router) if isinstance(router, (list, tuple)) else router


@dataclasses.dataclass(frozen=True)
class RouteInfo:
    """One websocket endpoint found by ``discover_routes``."""

    path: str  # "/ws/chat/<pk>/"
    path_params: dict[str, str]  # name -> regex
    consumer: type[Any]
    name: str
    description: str

    @property
    def address(self) -> str:
        """The path with AsyncAPI-style ``{param}`` placeholders."""
        return re.sub(r"<(\w+)>", r"{\1}", self.path)

    def match(self, path: str) -> dict[str, str] | None:
        """The path parameters when ``path`` is this endpoint's, else None."""
        parts = re.split(r"<(\w+)>", self.path)
        regex = "".join(
            f"(?P<{part}>{self.path_params.get(part, '[^/]+')})" if i % 2 else re.escape(part)
            for i, part in enumerate(parts)
        )
        found = re.fullmatch(regex, path)
        return found.groupdict() if found else None

    @property
    def incoming(self) -> tuple[type[BaseModel], ...]:
        meta: _ConsumerMeta | None = getattr(self.consumer, "_chanx_meta", None)
        return meta.incoming if meta else ()

    @property
    def outgoing(self) -> tuple[type[BaseModel], ...]:
        meta: _ConsumerMeta | None = getattr(self.consumer, "_chanx_meta", None)
        return meta.outgoing if meta else ()


def _regex_segment(regex: str) -> tuple[str, dict[str, str]]:
    """``^(?P<pk>\\d+)/$`` -> ("<pk>/", {"pk": "\\d+"}), balancing parentheses."""
    params: dict[str, str] = {}
    out: list[str] = []
    i = 0
    regex = regex.removeprefix("^").removesuffix("$").removesuffix("\\Z")
    while i < len(regex):
        match = re.match(r"\(\?P<(\w+)>", regex[i:])
        if match:
            depth, j = 1, i + match.end()
            while j < len(regex) and depth:
                if regex[j] == "\\":
                    j += 1
                elif regex[j] == "(":
                    depth += 1
                elif regex[j] == ")":
                    depth -= 1
                j += 1
            params[match.group(1)] = regex[i + match.end() : j - 1]
            out.append(f"<{match.group(1)}>")
            i = j
        else:
            char = regex[i]
            if char == "\\" and i + 1 < len(regex):
                char = regex[i + 1]
                i += 1
            if char not in "^$?":
                out.append(char)
            i += 1
    return "".join(out), params


def _pattern_segment(pattern: Any) -> tuple[str, dict[str, str]]:
    route = getattr(pattern, "_route", None)
    if isinstance(route, str):  # path("<int:pk>/")
        params = {name: conv.regex for name, conv in getattr(pattern, "converters", {}).items()}
        return re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route), params
    regex = getattr(pattern, "_regex", None)
    return _regex_segment(regex if isinstance(regex, str) else str(pattern))


def _inner_application(app: Any) -> Any:
    """The application a middleware wraps (OriginValidator, AuthMiddleware, ...)."""
    for name in ("inner", "application", "app"):
        inner = getattr(app, name, None)
        if inner is not None and inner is not app:
            return inner
    return None


def discover_routes(application: Any = None) -> list[RouteInfo]:
    """Every websocket endpoint of an application (default: ``ASGI_APPLICATION``).

    Walks through ``ProtocolTypeRouter``, middleware and nested ``URLRouter``s
    to each consumer.
    """
    if application is None:
        from channels.routing import get_default_application

        application = get_default_application()
    found: list[RouteInfo] = []

    def walk(app: Any, prefix: str, params: dict[str, str], depth: int) -> None:
        if app is None or depth > 50:
            return
        if isinstance(app, ProtocolTypeRouter):
            walk(app.application_mapping.get("websocket"), prefix, params, depth + 1)
        elif isinstance(app, URLRouter):
            for route in app.routes:
                segment, found_params = _pattern_segment(route.pattern)
                walk(route.callback, prefix + segment, {**params, **found_params}, depth + 1)
        elif getattr(app, "consumer_class", None) is not None:
            consumer = app.consumer_class
            info = getattr(consumer, "__chanx_channel__", {})
            doc = info.get("description") or inspect.getdoc(consumer) or ""
            if doc == inspect.getdoc(AsyncJsonWebsocketConsumer):
                doc = ""
            full = "/" + prefix.lstrip("/")
            found.append(
                RouteInfo(full, params, consumer, info.get("name") or consumer.__name__, doc)
            )
        else:
            walk(_inner_application(app), prefix, params, depth + 1)

    walk(application, "", {}, 0)
    return found


###############################################################################
# AsyncAPI ####################################################################
###############################################################################

_COMPONENT_KEY = re.compile(r"[^\w.\-]")


def _component_id(name: str) -> str:
    return _COMPONENT_KEY.sub("_", name)


def asyncapi_schema(
    routes: Sequence[RouteInfo] | None = None,
    *,
    title: str | None = None,
    version: str | None = None,
    description: str | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the websocket endpoints (a dict).

    Channels are the endpoints, messages the Pydantic models (their JSON
    schemas under ``components``), operations what each endpoint receives
    (one per handler, with its reply) and sends.
    """
    from pydantic.json_schema import models_json_schema

    routes = discover_routes() if routes is None else routes
    models = list(dict.fromkeys(m for r in routes for m in (*r.incoming, *r.outgoing)))
    refs, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = {_component_id(k): v for k, v in top.get("$defs", {}).items()}
    names = {m: _component_id(refs[(m, "validation")]["$ref"].rsplit("/", 1)[1]) for m in models}
    schemas = json.loads(
        re.sub(
            r'"#/components/schemas/([^"]+)"',
            lambda match: f'"#/components/schemas/{_component_id(match.group(1))}"',
            json.dumps(schemas),
        )
    )
    messages: dict[str, Any] = {}
    for model in models:
        doc = inspect.getdoc(model) or ""
        entry: dict[str, Any] = {
            "name": ", ".join(_message_actions(model)) or model.__name__,
            "title": model.__name__,
            "payload": {"$ref": f"#/components/schemas/{names[model]}"},
        }
        if doc and doc != inspect.getdoc(BaseMessage):
            entry["summary"] = doc.splitlines()[0]
            entry["description"] = doc
        messages[names[model]] = entry

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for route in routes:
        cid = _component_id(route.name)
        while cid in channels:
            cid += "_"
        meta: _ConsumerMeta = route.consumer._chanx_meta
        info = getattr(route.consumer, "__chanx_channel__", {})
        channel: dict[str, Any] = {
            "address": route.address,
            "title": route.name,
            "messages": {
                names[m]: {"$ref": f"#/components/messages/{names[m]}"}
                for m in (*route.incoming, *route.outgoing)
            },
        }
        if route.description:
            channel["description"] = route.description
        if info.get("tags"):
            channel["tags"] = [{"name": t} for t in info["tags"]]
        if route.path_params:
            channel["parameters"] = {
                name: {"description": f"Path parameter matching {regex}"}
                for name, regex in route.path_params.items()
            }
        channels[cid] = channel

        def refs_to(models: Iterable[type[BaseModel]], cid: str = cid) -> list[dict[str, str]]:
            return [{"$ref": f"#/channels/{cid}/messages/{names[m]}"} for m in models]

        handled: set[type[BaseModel]] = set()
        for handler in dict.fromkeys(meta.ws_handlers.values()):
            accepts = [
                m for m in handler.accepts if set(_message_actions(m)) & set(handler.actions)
            ]
            handled.update(accepts)
            op: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": refs_to(accepts),
            }
            if handler.spec.summary:
                op["summary"] = handler.spec.summary
            if handler.spec.description:
                op["description"] = handler.spec.description
            if handler.spec.tags:
                op["tags"] = [{"name": t} for t in handler.spec.tags]
            if handler.returns:
                op["reply"] = {
                    "channel": {"$ref": f"#/channels/{cid}"},
                    "messages": refs_to(handler.returns),
                }
            operations[_component_id(f"{cid}.{handler.name}")] = op
        for model in route.incoming:
            if model not in handled:
                operations[_component_id(f"{cid}.receive.{names[model]}")] = {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{cid}"},
                    "messages": refs_to([model]),
                }
        for model in route.outgoing:
            operations[_component_id(f"{cid}.send.{names[model]}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": refs_to([model]),
            }

    base = base_url or chanx_settings.WEBSOCKET_BASE_URL or "ws://localhost:8000"
    protocol, _, host = base.partition("://")
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": title or chanx_settings.ASYNCAPI_TITLE,
            "version": version or chanx_settings.ASYNCAPI_VERSION,
        },
        "servers": {"default": {"host": host or protocol, "protocol": protocol or "ws"}},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
    text = description if description is not None else chanx_settings.ASYNCAPI_DESCRIPTION
    if text:
        document["info"]["description"] = text
    return document


def _example(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """A plausible value for a JSON schema: const, default, enum, else by type."""
    if depth > 8:
        return None
    if "$ref" in schema:
        return _example(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key, []) if o.get("type") != "null"]
        if options:
            return _example(options[0], defs, depth + 1)
        if key in schema:
            return None
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _example(sub, defs, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_example(schema.get("items", {}), defs, depth + 1)] if "items" in schema else []
    return {"string": "", "integer": 0, "number": 0, "boolean": False}.get(str(kind))


def _route_summary(route: RouteInfo) -> dict[str, Any]:
    messages = []
    for model in route.incoming:
        schema = model.model_json_schema()
        example = _example(schema, schema.get("$defs", {}))
        doc = inspect.getdoc(model) or ""
        messages.append(
            {
                "action": ", ".join(_message_actions(model)),
                "name": model.__name__,
                "description": "" if doc == inspect.getdoc(BaseMessage) else doc,
                "example": example,
                "schema": schema,
            }
        )
    return {
        "name": route.name,
        "path": route.path,
        "address": route.address,
        "path_params": [{"name": n, "pattern": p} for n, p in route.path_params.items()],
        "description": route.description,
        "messages": messages,
    }


###############################################################################
# Playground ##################################################################
###############################################################################

_PLAYGROUND_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chanx websocket playground</title>
<link rel="icon" href="data:,">
<style>
:root{--ink:#1f2430;--muted:#4a5163;--faint:#6b7385;--line:#c8cfdb;--blue:#2f6fde;
  --mono:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--ink);background:#f3f5f8}
header{display:flex;align-items:center;gap:16px;padding:10px 20px;background:var(--ink);color:#fff}
header h1{margin:0;font-size:17px;font-weight:600}
header a{color:#9cc4ff;margin-left:auto}
main{display:grid;grid-template-columns:minmax(320px,440px) 1fr;align-items:start;gap:16px;
  padding:16px 20px}
section{display:flex;flex-direction:column;gap:8px;min-width:0;padding:14px 16px;
  background:#fff;border:1px solid #dde2ea;border-radius:8px}
h2{margin:4px 0 0;font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--faint)}
label,.hint{font-size:12px;color:var(--muted)}
input,select,textarea,button{font:inherit}
input,select,textarea{width:100%;padding:6px 8px;border:1px solid var(--line);border-radius:5px;
  background:#fff;color:inherit}
input.bad{border-color:#d33;background:#fff5f5}
textarea{font:13px/1.4 var(--mono);min-height:170px;resize:vertical}
#description{color:var(--muted);white-space:pre-wrap;margin:0}
#description:empty{display:none}
#params{display:flex;flex-direction:column;gap:6px}
#url{font:12px var(--mono);background:#f3f5f8;border-radius:4px;padding:5px 8px;
  word-break:break-all}
.row{display:flex;gap:8px;align-items:center}
button{padding:6px 14px;border:1px solid var(--blue);border-radius:5px;background:var(--blue);
  color:#fff;cursor:pointer}
button.secondary{background:#fff;color:var(--blue)}
button:disabled{opacity:.45;cursor:default}
#status,#clear{margin-left:auto}
#status{font-size:12px;padding:2px 8px;border-radius:10px;background:#e6e9ef}
#status.open{background:#daf5e1;color:#17692f} #status.closed{background:#fde2e2;color:#9b1c1c}
#status.connecting{background:#fff1c9;color:#7a5a00}
#logpanel{min-height:calc(100vh - 90px)}
#log{flex:1;overflow:auto;max-height:calc(100vh - 150px);display:flex;flex-direction:column;
  gap:6px}
#log:empty::before{content:"No messages yet. Connect to an endpoint to start.";color:#8a92a3}
.entry{border-left:4px solid #9aa3b5;background:#f7f8fb;border-radius:4px;padding:5px 10px}
.entry.sent{border-color:var(--blue);background:#f1f6ff}
.entry.received{border-color:#1f9d55;background:#f0fbf4}
.entry.received.err{border-color:#d33;background:#fff3f3}
.entry.system{color:var(--muted);display:flex;gap:10px;align-items:baseline}
.meta{display:flex;gap:10px;font-size:12px;color:var(--faint)}
.meta b{font-weight:600;color:var(--ink)}
.entry pre{margin:3px 0 0;font:12.5px/1.4 var(--mono);white-space:pre-wrap;word-break:break-word}
.entry.system pre{margin:0}
@media (max-width:860px){main{grid-template-columns:1fr} #logpanel{min-height:0} }
</style>
</head>
<body data-routes-url="{{ROUTES_URL}}">
<header>
  <h1>chanx websocket playground</h1>
  <a id="asyncapi" href="{{ASYNCAPI_URL}}" target="_blank" rel="noopener">AsyncAPI document</a>
</header>
<main>
<section>
  <h2>Endpoint</h2>
  <select id="endpoint" aria-label="Endpoint"></select>
  <p id="description"></p>
  <div id="params"></div>
  <label for="query">Query string (optional)</label>
  <input id="query" placeholder="key=value&amp;other=1" autocomplete="off">
  <div id="url"></div>
  <div class="row">
    <button id="connect">Connect</button>
    <button id="disconnect" class="secondary" disabled>Disconnect</button>
    <span id="status">disconnected</span>
  </div>
  <h2>Message</h2>
  <select id="template" aria-label="Message template"></select>
  <textarea id="message" spellcheck="false" aria-label="Message"></textarea>
  <div class="row">
    <button id="send" disabled>Send</button>
    <span class="hint">Ctrl+Enter sends; the text is sent as is</span>
  </div>
</section>
<section id="logpanel">
  <div class="row"><h2>Log</h2><button id="clear" class="secondary">Clear</button></div>
  <div id="log" aria-live="polite"></div>
</section>
</main>
<script>
(function () {
  "use strict";
  // Everything from the server or the user goes in with textContent, never innerHTML.
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = Object.assign(document.createElement(tag), {className: cls || ""});
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const NL = String.fromCharCode(10);
  const LABELS = {sent: "\u2192 sent", received: "\u2190 received", system: "system"};
  let routes = [], baseUrl = "", ws = null;

  const now = (d = new Date()) =>
    d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
  function fmt(v, ind) {  // indented JSON; short objects and arrays stay on one line
    if (v === null || typeof v !== "object") return JSON.stringify(v);
    const arr = Array.isArray(v), inner = ind + "  ";
    const items = arr ? v.map((x) => fmt(x, inner))
      : Object.keys(v).map((k) => JSON.stringify(k) + ": " + fmt(v[k], inner));
    const [open, close] = arr ? ["[", "]"] : ["{", "}"];
    const line = open + items.join(", ") + close;
    if (!items.length || (ind.length + line.length <= 64 && !line.includes(NL))) return line;
    return open + NL + inner + items.join("," + NL + inner) + NL + ind + close;
  }
  function log(kind, text) {
    const entry = el("div", "entry " + kind), meta = el("div", "meta");
    meta.append(el("b", "", LABELS[kind]), el("span", "time", now()));
    let body = text, obj = null;
    if (kind !== "system") {
      try { obj = JSON.parse(text); body = fmt(obj, ""); } catch (e) { obj = null; }
    }
    if (obj && typeof obj === "object" && typeof obj.action === "string") {
      meta.append(el("span", "action", obj.action));
      if (kind === "received" && obj.action === "error") entry.classList.add("err");
    }
    entry.append(meta, el("pre", "", body));
    const box = $("log");
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 30;
    box.append(entry);
    if (stick) box.scrollTop = box.scrollHeight;
  }
  function setStatus(state, text) {
    $("status").className = state;
    $("status").textContent = text || state;
    const active = state === "open" || state === "connecting";
    $("connect").disabled = active;
    $("disconnect").disabled = !active;
    $("send").disabled = state !== "open";
  }
  const current = () => routes[$("endpoint").value] || null;

  function buildUrl() {
    const r = current();
    if (!r) return "";
    let addr = r.address || r.path || "";
    for (const input of $("params").querySelectorAll("input")) {
      addr = addr.split("{" + input.dataset.name + "}").join(encodeURIComponent(input.value));
    }
    let base = baseUrl || (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
    if (base.endsWith("/") && addr.startsWith("/")) base = base.slice(0, -1);
    const q = $("query").value.trim().replace(/^[?]/, "");
    return base + addr + (q ? "?" + q : "");
  }
  function refreshUrl() {
    for (const input of $("params").querySelectorAll("input")) {
      let ok = true;  // flag values the route's regex would not match
      try {
        ok = !input.value || new RegExp("^(?:" + input.placeholder + ")$").test(input.value);
      } catch (e) { /* a Python-only regex: no check */ }
      input.classList.toggle("bad", !ok);
    }
    $("url").textContent = buildUrl();
  }
  function selectEndpoint() {
    const r = current();
    $("description").textContent = r ? r.description || "" : "";
    $("params").replaceChildren();
    for (const p of (r && r.path_params) || []) {
      const input = el("input");
      Object.assign(input, {id: "param-" + p.name, placeholder: p.pattern || ""});
      input.dataset.name = p.name;
      input.addEventListener("input", refreshUrl);
      const label = el("label", "", p.name);
      label.htmlFor = input.id;
      $("params").append(label, input);
    }
    const text = (m) => m.action + " \u2014 " + m.name;
    const opts = ((r && r.messages) || []).map((m, i) => new Option(text(m), i));
    $("template").replaceChildren(...opts, new Option("(custom message)", ""));
    selectTemplate();
    refreshUrl();
  }
  function selectTemplate() {
    const r = current(), i = $("template").value;
    const m = r && i !== "" ? r.messages[Number(i)] : null;
    $("message").value = m ? JSON.stringify(m.example ?? null, null, 2) : "";
    $("message").title = (m && m.description) || "";
  }
  function connect() {
    const url = buildUrl();
    let sock;
    try { sock = new WebSocket(url); } catch (e) { return log("system", "error: " + e.message); }
    ws = sock;
    sock.binaryType = "arraybuffer";
    setStatus("connecting", "connecting\u2026");
    log("system", "connecting to " + url);
    sock.onopen = () => {
      if (ws === sock) { setStatus("open"); log("system", "connection open"); }
    };
    sock.onmessage = (ev) => log("received", typeof ev.data === "string"
      ? ev.data : "[binary frame, " + ev.data.byteLength + " bytes]");
    sock.onerror = () => log("system", "websocket error");
    sock.onclose = (ev) => {
      const text = "closed (code " + ev.code + (ev.reason ? ": " + ev.reason : "") + ")";
      log("system", text);
      if (ws === sock) { ws = null; setStatus("closed", text); }
    };
  }
  function send() {
    if (!ws || ws.readyState !== WebSocket.OPEN) { log("system", "not connected"); return; }
    const text = $("message").value;
    ws.send(text);
    log("sent", text);
  }

  $("endpoint").addEventListener("change", selectEndpoint);
  $("template").addEventListener("change", selectTemplate);
  $("query").addEventListener("input", refreshUrl);
  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", () => ws && ws.close(1000, "closed by user"));
  $("send").addEventListener("click", send);
  $("clear").addEventListener("click", () => $("log").replaceChildren());
  $("message").addEventListener("input", () => { $("template").value = ""; });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
  });

  const init = {credentials: "same-origin", headers: {Accept: "application/json"} };
  fetch(document.body.dataset.routesUrl, init)
    .then((res) => { if (!res.ok) throw new Error("HTTP " + res.status); return res.json(); })
    .then((data) => {
      baseUrl = data.base_url || "";
      routes = data.routes || [];
      const label = (r) => r.path + "  (" + r.name + ")";
      $("endpoint").replaceChildren(...routes.map((r, i) => new Option(label(r), i)));
      if (!routes.length) log("system", "no websocket routes found");
      selectEndpoint();
    })
    .catch((e) => log("system", "failed to load routes: " + e.message));
})();
</script>
</body>
</html>"""


def _playground_allowed(request: HttpRequest) -> bool:
    from django.conf import settings

    access = chanx_settings.PLAYGROUND_ACCESS
    user = getattr(request, "user", None)
    staff = bool(user is not None and user.is_active and user.is_staff)
    if access == "public":
        return True
    if access == "staff":
        return staff
    return access == "debug_or_staff" and (bool(settings.DEBUG) or staff)


def _playground_endpoint(
    view: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Answer only allowed users (404 otherwise); never echo an exception."""

    @functools.wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        if not _playground_allowed(request):
            raise Http404("Not found")
        try:
            return view(request)
        except Exception:
            logger.exception("Playground endpoint failed")
            return JsonResponse(
                {"detail": "Could not build the websocket description."}, status=500
            )

    return guarded


@_playground_endpoint
def playground_view(request: HttpRequest) -> HttpResponse:
    """The playground page: pick an endpoint, connect, send, read the log."""
    from django.urls import reverse

    namespace = (
        f"{request.resolver_match.namespace}:"
        if request.resolver_match and request.resolver_match.namespace
        else ""
    )
    page = _PLAYGROUND_HTML.replace(
        "{{ROUTES_URL}}", html.escape(reverse(f"{namespace}chanx-routes"))
    ).replace("{{ASYNCAPI_URL}}", html.escape(reverse(f"{namespace}chanx-asyncapi")))
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:"
    )
    return response


@_playground_endpoint
def routes_view(request: HttpRequest) -> HttpResponse:
    """The endpoints as JSON, with a message template per accepted message."""
    routes = [_route_summary(route) for route in discover_routes()]
    return JsonResponse({"base_url": chanx_settings.WEBSOCKET_BASE_URL or "", "routes": routes})


@_playground_endpoint
def asyncapi_view(request: HttpRequest) -> HttpResponse:
    """The AsyncAPI 3.0 document as JSON."""
    return JsonResponse(asyncapi_schema())


#: ``path("playground/", include("chanx"))`` in urls.py serves these.
urlpatterns = [
    _django_path("websocket/", playground_view, name="chanx-playground"),
    _django_path("routes.json", routes_view, name="chanx-routes"),
    _django_path("asyncapi.json", asyncapi_view, name="chanx-asyncapi"),
]


###############################################################################
# Testing #####################################################################
###############################################################################


@dataclasses.dataclass(frozen=True)
class CapturedEvent:
    """An event a consumer class was asked to broadcast or send."""

    consumer: type[Any]
    event: Any
    groups: list[str]
    channel_name: str | None


_CAPTURES: list[tuple[list[CapturedEvent], type[Any] | None, bool]] = []


def _captured(cls: type[Any], event: Any, groups: list[str], channel_name: str | None) -> bool:
    """Record ``event`` for active captures; True when one of them suppresses it."""
    suppressed = False
    for records, only, suppress in _CAPTURES:
        if only is None or issubclass(cls, only):
            records.append(CapturedEvent(cls, event, list(groups), channel_name))
            suppressed = suppressed or suppress
    return suppressed


@contextlib.contextmanager
def capture_events(
    consumer: type[Any] | None = None, *, suppress: bool = False
) -> Iterator[list[CapturedEvent]]:
    """Record the events broadcast or sent inside the block (optionally not sending them)::

    with capture_events(ChatConsumer, suppress=True) as events:
        client.post("/api/rooms/1/members/", {...})
    assert events[0].event == MemberAdded(payload=...)
    """
    entry: tuple[list[CapturedEvent], type[Any] | None, bool] = ([], consumer, suppress)
    _CAPTURES.append(entry)
    try:
        yield entry[0]
    finally:
        _CAPTURES.remove(entry)


def _consumer_at(application: Any, path: str) -> type[Any] | None:
    """The consumer class ``application`` routes ``path`` to, if it can be found."""
    if getattr(application, "consumer_class", None) is not None:
        found: type[Any] = application.consumer_class
        return found
    try:
        routes = discover_routes(application)
    except Exception:  # an application chanx cannot walk
        return None
    return next((r.consumer for r in routes if r.match(path) is not None), None)


class WebsocketCommunicator(ApplicationCommunicator):
    """Drives a websocket application in tests; every wait ends on a frame or a timeout.

    ``user=`` forces the authenticated user (like DRF's ``force_authenticate``);
    permissions still apply.
    """

    def __init__(
        self,
        application: Any,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        subprotocols: Sequence[str] | None = None,
        *,
        user: Any = None,
        consumer: type[Any] | None = None,
    ) -> None:
        from urllib.parse import unquote, urlparse

        parsed = urlparse(path)
        headers = list(headers or [])
        if not any(name.lower() == b"origin" for name, _ in headers):
            headers.append((b"origin", b"http://testserver"))
        scope: Scope = {
            "type": "websocket",
            "path": unquote(parsed.path),
            "raw_path": parsed.path.encode(),
            "query_string": parsed.query.encode(),
            "headers": headers,
            "subprotocols": list(subprotocols or []),
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        if user is not None:
            scope[_FORCE_USER_KEY] = user
        super().__init__(application, scope)  # type: ignore[no-untyped-call]
        self.consumer = consumer or _consumer_at(application, scope["path"])
        self.received: list[Any] = []  # every frame read, for failure messages
        self.connected = False
        self._peeked: deque[ASGIMessage] = deque()  # read but not yet consumed, in order

    async def _input(self, message: ASGIMessage) -> None:
        if self.future.done():
            self.future.result()  # raise the application's exception, if any
        await self.input_queue.put(message)

    async def _next_output(self, timeout: float) -> ASGIMessage | None:
        """The next message the application sent, or None after ``timeout``."""
        if self._peeked:
            return self._peeked.popleft()
        if not self.output_queue.empty():
            message: ASGIMessage = self.output_queue.get_nowait()
            return message
        getter = asyncio.ensure_future(self.output_queue.get())
        await asyncio.wait({getter, self.future}, timeout=timeout, return_when="FIRST_COMPLETED")
        if getter.done():
            message = getter.result()
            return message
        getter.cancel()
        if self.future.done():
            self.future.result()  # raise the application's exception, if any
            raise AssertionError(f"The application exited; received so far: {self.received}")
        return None

    async def connect(self, timeout: float = 1.0) -> tuple[bool, Any]:
        """Open the socket: (True, subprotocol) when accepted, else (False, close code)."""
        await self._input({"type": "websocket.connect"})
        response = await self._next_output(timeout)
        if response is None:
            raise AssertionError(f"No answer to connect within {timeout}s.")
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        self.connected = response["type"] == "websocket.accept"
        return True, response.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send one text or binary frame."""
        if text_data is not None:
            await self._input({"type": "websocket.receive", "text": text_data})
        else:
            await self._input({"type": "websocket.receive", "bytes": bytes_data or b""})

    async def send_json_to(self, data: Any) -> None:
        await self.send_to(text_data=json.dumps(data))

    def _wire(self) -> tuple[bool, str]:
        """(camelize, action key) as the consumer under test sees the wire."""
        camelize = getattr(self.consumer, "camelize", None)
        if camelize is None:
            camelize = chanx_settings.CAMELIZE
        return bool(camelize), chanx_settings.MESSAGE_ACTION_KEY

    async def send_message(self, message: BaseMessage) -> None:
        """Send a message as a client would (``CAMELIZE``, ``MESSAGE_ACTION_KEY``)."""
        await self.send_json_to(_to_wire(message.model_dump(mode="json"), *self._wire()))

    async def receive_json_from(self, timeout: float = 1.0) -> Any:
        """The next frame, decoded; fails if none arrives within ``timeout``."""
        response = await self._next_output(timeout)
        if response is None:
            raise AssertionError(f"No frame within {timeout}s; received so far: {self.received}")
        if response["type"] != "websocket.send":
            raise AssertionError(f"Expected a frame but got {response}; received: {self.received}")
        data = json.loads(response.get("text") or response.get("bytes") or "null")
        self.received.append(data)
        return data

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0) -> bool:
        """True when nothing arrives within ``timeout`` (``interval``: unused, no polling)."""
        response = await self._next_output(timeout)
        if response is not None:
            self._peeked.appendleft(response)
            return False
        return True

    async def receive_until_action(
        self, action: str, *, timeout: float = 1.0, inclusive: bool = False
    ) -> list[Any]:
        """Frames up to the first one with ``action`` (kept when ``inclusive``)."""
        deadline = time.monotonic() + timeout
        frames: list[Any] = []
        while True:
            remaining = deadline - time.monotonic()
            response = await self._next_output(max(remaining, 0))
            if response is None:
                raise AssertionError(
                    f"Expected a {action!r} frame within {timeout}s; received: {frames}"
                )
            if response["type"] != "websocket.send":
                raise AssertionError(
                    f"Expected a {action!r} frame but the socket sent {response}; "
                    f"received: {frames}"
                )
            data = json.loads(response.get("text") or "null")
            self.received.append(data)
            if isinstance(data, dict) and data.get(self._wire()[1]) == action:
                if inclusive:
                    frames.append(data)
                return frames
            frames.append(data)

    async def receive_all_json(
        self, timeout: float = 1.0, stop_action: str | None = ACTION_COMPLETE
    ) -> list[Any]:
        """Frames until ``stop_action`` (not included). With ``stop_action=None``,
        every frame that arrives before the line is quiet for ``timeout``."""
        if stop_action is not None:
            return await self.receive_until_action(stop_action, timeout=timeout)
        frames = []
        while (response := await self._next_output(timeout)) is not None:
            if response["type"] != "websocket.send":
                self._peeked.appendleft(response)
                break
            frames.append(json.loads(response.get("text") or "null"))
        self.received.extend(frames)
        return frames

    async def receive_all_messages(
        self, stop_action: str | None = ACTION_COMPLETE, timeout: float = 1.0
    ) -> list[BaseMessage]:
        """Like ``receive_all_json`` but as typed messages."""
        return [
            self.to_message(frame)
            for frame in await self.receive_all_json(timeout=timeout, stop_action=stop_action)
        ]

    def to_message(self, data: Any) -> BaseMessage:
        """A received frame as its message class (the consumer's types first)."""
        data = _from_wire(data, *self._wire())
        action = data.get("action") if isinstance(data, dict) else None
        meta = getattr(self.consumer, "_chanx_meta", None)
        declared = [m for m in (meta.outgoing if meta else ()) if action in _message_actions(m)]
        candidates = [*declared, *reversed(_MESSAGE_REGISTRY.get(str(action), []))]
        for model in candidates:
            try:
                message: BaseMessage = model.model_validate(data)
                return message
            except ValidationError:
                continue
        raise AssertionError(f"No message class matches the frame {data!r}.")

    async def assert_authenticated_status_ok(self, timeout: float = 1.0) -> None:
        """The next frame is the authentication frame with status 200."""
        frame = await self.receive_json_from(timeout)
        data = _from_wire(frame, *self._wire())
        ok = isinstance(data, dict) and data.get("action") == "authentication"
        if (
            not ok
            or not isinstance(data.get("payload"), dict)
            or (data["payload"].get("status_code") != 200)
        ):
            raise AssertionError(f"Expected a successful authentication frame, got {frame}")

    async def assert_closed(self, code: int | None = None, timeout: float = 1.0) -> None:
        """The application closes the socket (with ``code`` when given) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            response = await self._next_output(max(deadline - time.monotonic(), 0))
            if response is None:
                raise AssertionError(
                    f"The socket was not closed within {timeout}s; received: {self.received}"
                )
            if response["type"] == "websocket.close":
                got = response.get("code", 1000)
                if code is not None and got != code:
                    raise AssertionError(
                        f"Closed with code {got}, expected {code}; received: {self.received}"
                    )
                self.connected = False
                return
            self.received.append(json.loads(response.get("text") or "null"))

    async def disconnect(self, code: int = 1000, timeout: float = 1.0) -> None:
        """Close from the client side and wait for the application to finish."""
        if not self.future.done():
            await self._input({"type": "websocket.disconnect", "code": code})
            await asyncio.wait({self.future}, timeout=timeout)
            if not self.future.done():
                self.future.cancel()
                await asyncio.wait({self.future})
        self.connected = False


class WebsocketTestCase(TestCase):
    """A Django ``TestCase`` for websocket consumers.

    ``ws_path`` is routed through the project's websocket application (with
    its middleware) unless ``application`` is set; ``consumer`` types the
    frames of ``receive_all_messages``. ``get_ws_headers()`` supplies the
    credentials of ``auth_communicator``; ``create_communicator`` makes more
    users or tabs. Every communicator is disconnected when the test ends.

    Each test runs inside a transaction that is rolled back afterwards (the
    speed of ``TestCase``), and so do the consumers it drives: an async test
    runs its event loop in a helper thread while the ORM's calls run on the
    test's own thread, with the test's connection, so ``setUp`` data is
    visible to the consumer. chanx never closes a connection inside a
    transaction, and during the test Channels' ``database_sync_to_async``
    does the same. Sync code that runs in another thread
    (``thread_sensitive=False``) has its own connection and does not see the
    test's data: use ``TransactionTestCase`` semantics (pytest's
    ``django_db(transaction=True)``) with a plain ``WebsocketCommunicator``.
    """

    ws_path: str = ""
    consumer: type[Any] | None = None
    application: Any = None

    def __init__(self, methodName: str = "runTest") -> None:
        super().__init__(methodName)
        self._communicators: list[WebsocketCommunicator] = []
        self._auth_communicator: WebsocketCommunicator | None = None
        self._ws_credentials: tuple[list[tuple[bytes, bytes]], str] | None = None
        method = getattr(self, methodName, None)
        if inspect.iscoroutinefunction(method):
            test = method

            @functools.wraps(test)
            async def run_then_disconnect() -> None:
                try:
                    await test()
                finally:
                    await self.disconnect_all()

            setattr(self, methodName, run_then_disconnect)

    def _callTestMethod(self, method: Any) -> None:
        # After setUp, in sync code: get_ws_headers() may use the ORM.
        self._ws_credentials = (list(self.get_ws_headers()), self.get_ws_query_string())
        import channels.db
        from unittest import mock

        with mock.patch.object(channels.db, "close_old_connections", _close_old_connections):
            super()._callTestMethod(method)  # type: ignore[misc]

    def get_ws_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers of ``auth_communicator`` (e.g. a token or a session cookie)."""
        return []

    def get_ws_query_string(self) -> str:
        """Query string of ``auth_communicator`` (e.g. ``"token=..."``)."""
        return ""

    def get_application(self) -> Any:
        if self.application is not None:
            return self.application
        from django.conf import settings

        if self.consumer is not None and not getattr(settings, "ASGI_APPLICATION", None):
            return self.consumer.as_asgi()
        from channels.routing import get_default_application

        return get_default_application()

    def create_communicator(
        self,
        *,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        ws_path: str | None = None,
        query_string: str | None = None,
        user: Any = None,
        subprotocols: Sequence[str] | None = None,
    ) -> WebsocketCommunicator:
        """A new communicator (another user, another tab), disconnected at teardown."""
        target = ws_path if ws_path is not None else self.ws_path
        if query_string:
            target = f"{target}{'&' if '?' in target else '?'}{query_string}"
        communicator = WebsocketCommunicator(
            self.get_application(),
            target,
            headers,
            subprotocols,
            user=user,
            consumer=self.consumer,
        )
        self._communicators.append(communicator)
        return communicator

    @property
    def auth_communicator(self) -> WebsocketCommunicator:
        """The communicator with ``get_ws_headers()`` credentials, made on first use."""
        if self._auth_communicator is None:
            headers, query = self._ws_credentials or (
                self.get_ws_headers(),
                self.get_ws_query_string(),
            )
            self._auth_communicator = self.create_communicator(headers=headers, query_string=query)
        return self._auth_communicator

    async def disconnect_all(self) -> None:
        """Disconnect every communicator this test created."""
        for communicator in self._communicators:
            await communicator.disconnect()
        self._communicators.clear()
        self._auth_communicator = None


###############################################################################
# Command line ################################################################
###############################################################################


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chanx asyncapi`` prints the document, ``routes`` the endpoints."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ("asyncapi", "routes"):
        print("usage: python -m chanx {asyncapi|routes}", file=sys.stderr)
        return 2
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        print(
            "chanx: DJANGO_SETTINGS_MODULE is not set; run e.g. "
            "DJANGO_SETTINGS_MODULE=config.settings python -m chanx " + args[0],
            file=sys.stderr,
        )
        return 2
    import django

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    django.setup()
    if args[0] == "asyncapi":
        print(json.dumps(asyncapi_schema(), indent=2))
    else:
        for route in discover_routes():
            consumer = f"{route.consumer.__module__}.{route.consumer.__qualname__}"
            summary = route.description.splitlines()[0] if route.description else ""
            print(f"{route.path}\t{consumer}\t{summary}".rstrip())
    return 0


if __name__ == "__main__":
    import chanx  # the importable module, not this __main__ copy

    sys.exit(chanx.main())
