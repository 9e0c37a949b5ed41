"""chanx: the missing toolkit for Django Channels, in one module.

DRF authentication and permissions on connect, Pydantic-validated messages
dispatched to typed handlers, group pub/sub and server-side events, clear
error frames, JSON logging, route discovery, an AsyncAPI 3.0 document, a
playground page and test utilities, for Django Channels consumers.

Install it from its repository (``pip install .``) or copy this file next to
``manage.py``. The README is the guide; this file is the reference. Licence:
MIT. Runtime dependencies: django, channels, djangorestframework, pydantic.

The parts, in the order a connection lives through them (``grep '^# .* ####'
chanx.py``): Errors, Settings, Messages, Logging, Authentication, Consumer,
Routing and discovery, AsyncAPI, Playground, Testing, Command line.
"""

from __future__ import annotations

__version__ = "3.2.0"
__license__ = "MIT"

# fmt: off
__all__ = [
    # Errors and settings
    "ChanxError", "ChanxConfigError", "InvalidEventError", "chanx_settings",
    # Messages
    "BaseMessage", "BaseIncomingMessage", "BaseGroupMessage", "BaseChannelEvent",
    "IncomingMessage", "PingMessage", "PongMessage", "ErrorMessage", "AuthenticationPayload",
    "AuthenticationMessage", "CompleteMessage", "GroupCompleteMessage", "EventCompleteMessage",
    "ACTION_COMPLETE", "GROUP_ACTION_COMPLETE", "EVENT_ACTION_COMPLETE", "MESSAGE_ACTION_COMPLETE",
    # Close codes and the subprotocol
    "CLOSE_UNAUTHORIZED", "CLOSE_FORBIDDEN", "CLOSE_NOT_FOUND", "CLOSE_TOO_MANY_REQUESTS",
    "CLOSE_SERVER_ERROR", "SUBPROTOCOL",
    # Logging
    "logger", "JsonFormatter",
    # Authentication (the DRF view and serializer are built on first use)
    "AuthenticationResult", "ChanxSerializer", "ChanxAuthView", "ChanxWebsocketAuthenticator",  # noqa: F822
    "DjangoAuthenticator",
    # Consumer
    "AsyncJsonWebsocketConsumer", "ws_handler", "event_handler", "channel",
    # Routing, discovery, AsyncAPI and playground
    "include", "path", "re_path", "RouteInfo", "discover_routes", "asyncapi_schema",
    "playground_view", "routes_view", "asyncapi_view", "urlpatterns",
    # Testing (WebsocketTestCase is built on first use: servers never import django.test)
    "WebsocketCommunicator", "WebsocketTestCase", "CapturedEvent", "capture_events",
    "capture_broadcast_events",
]
# fmt: on

import argparse
import asyncio
import base64
import contextlib
import contextvars
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
import os
import queue
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
from concurrent.futures import Executor, Future
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union
from urllib.parse import unquote, urlparse

import channels.db
import django
from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer as _ChannelsJsonConsumer
from channels.layers import get_channel_layer
from channels.routing import ProtocolTypeRouter, URLRouter, get_default_application
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, SuspiciousOperation
from django.core.signals import setting_changed
from django.db import close_old_connections as _django_close_old_connections
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import include as django_include
from django.urls import path, re_path, reverse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticSerializationError, to_json
from typing_extensions import TypeVar as TypeVar_

if typing.TYPE_CHECKING:
    from django.test import TestCase
    from rest_framework.request import Request

#: Actions of the completion frames (``MESSAGE_ACTION_COMPLETE``: chanx 2.x's name).
ACTION_COMPLETE = MESSAGE_ACTION_COMPLETE = "complete"
GROUP_ACTION_COMPLETE = "group_complete"
EVENT_ACTION_COMPLETE = "event_complete"

#: Close codes: 4000 + the HTTP status of the refused handshake.
CLOSE_UNAUTHORIZED = 4401  # not authenticated: log in again
CLOSE_FORBIDDEN = 4403  # authenticated, not allowed
CLOSE_NOT_FOUND = 4404  # the URL's object does not exist
CLOSE_TOO_MANY_REQUESTS = 4429  # a DRF throttle refused the handshake
CLOSE_SERVER_ERROR = 4500

#: The subprotocol chanx consumers speak; a browser may add its token as
#: ``chanx.auth.<base64url of an Authorization header value>``.
SUBPROTOCOL = "chanx"
_AUTH_SUBPROTOCOL = "chanx.auth."
_GROUP_TYPE, _EVENT_TYPE = "chanx.group", "chanx.event"  # channel-layer message types

# A default, so ``class C(AsyncJsonWebsocketConsumer)`` (no events) passes mypy --strict.
EventT = TypeVar_("EventT", default=Any)
Scope = dict[str, Any]
ASGIMessage = dict[str, Any]
Ref = str | int | None
Groups = str | Iterable[str] | None


# Errors ######################################################################


class ChanxError(Exception):
    """Root of every exception chanx raises."""


class ChanxConfigError(ChanxError, ValueError):
    """A configuration mistake: the message says what, where and how to fix it."""


class InvalidEventError(ChanxError, TypeError):
    """An event that the receiving consumer does not accept (raised at the sender)."""


# Settings ####################################################################

_NUMBER = (int, float)
#: ``settings.CHANX`` keys: default, accepted types (or values).
_SETTINGS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "MESSAGE_ACTION_KEY": ("action", (str,)),  # the discriminator's name on the wire
    "CAMELIZE": (False, (bool,)),  # camelCase keys out, snake_case in
    "SEND_COMPLETION": (False, (bool,)),  # complete / group_complete / event_complete frames
    "SEND_MESSAGE_IMMEDIATELY": (True, (bool,)),  # yield to the loop after each send
    "SEND_AUTHENTICATION_MESSAGE": (True, (bool,)),  # the {"action": "authentication"} frame
    "LOG_RECEIVED_MESSAGE": (True, (bool,)),
    "LOG_SENT_MESSAGE": (True, (bool,)),
    "LOG_IGNORED_ACTIONS": ((), (list, tuple, set, frozenset)),
    "WEBSOCKET_BASE_URL": (None, (str, None)),  # None: the host the page came from
    "ASYNCAPI_TITLE": ("AsyncAPI Documentation", (str,)),
    "ASYNCAPI_DESCRIPTION": ("", (str,)),
    "ASYNCAPI_VERSION": ("1.0.0", (str,)),
    "MAX_MESSAGE_SIZE": (1024 * 1024, (int,)),  # bytes of one incoming frame
    "MAX_IN_FLIGHT_MESSAGES": (64, (int,)),  # frames waiting per connection (backpressure)
    "BACKPRESSURE_TIMEOUT": (1.0, _NUMBER),  # seconds reading stops before frames are refused
    "DRAIN_TIMEOUT": (5.0, _NUMBER),  # seconds a running handler may finish after a close
    "ORM_THREADS": (8, (int, None)),  # threads for the ORM's calls; None: Channels' one
    "RATE_LIMIT": (None, (*_NUMBER, None)),  # frames per second per connection
    "RATE_LIMIT_BURST": (None, (*_NUMBER, None)),
    "PLAYGROUND_ACCESS": ("debug_or_staff", ("debug_or_staff", "staff", "public", "off")),
    # chanx 2.x: LOG_WEBSOCKET_MESSAGE is the default of both LOG_*_MESSAGE, and the
    # AsyncAPI server is ASYNCAPI_SERVER_PROTOCOL://ASYNCAPI_SERVER_URL.
    "LOG_WEBSOCKET_MESSAGE": (None, (bool, None)),
    "ASYNCAPI_SERVER_URL": (None, (str, None)),
    "ASYNCAPI_SERVER_PROTOCOL": (None, (str, None)),
}
DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in _SETTINGS.items()}


def _setting_errors(user: Any) -> list[str]:
    """Every problem of a ``settings.CHANX`` value (empty: fine)."""
    if not isinstance(user, dict):
        return [f"settings.CHANX must be a dict, but got {type(user).__name__}."]
    problems = []
    for key, value in user.items():
        allowed = _SETTINGS.get(key, (None, ()))[1]
        types_ = tuple(type(None) if a is None else a for a in allowed if not isinstance(a, str))
        if key not in _SETTINGS:
            valid = ", ".join(sorted(_SETTINGS))
            problems.append(f"Unknown key {key!r} in settings.CHANX. Valid keys: {valid}.")
        elif types_ and (not isinstance(value, types_) or type(value) is bool not in types_):
            expected = " or ".join(t.__name__ for t in types_)
            got = type(value).__name__
            problems.append(f"settings.CHANX[{key!r}] should be {expected}, but got {got}.")
        elif not types_ and value not in allowed:
            expected = ", ".join(allowed)
            problems.append(f"settings.CHANX[{key!r}] is {value!r}; expected one of {expected}.")
        elif isinstance(value, _NUMBER) and type(value) is not bool and value <= 0:
            problems.append(f"settings.CHANX[{key!r}] must be positive, but got {value}.")
    return problems


class ChanxSettings:
    """``settings.CHANX`` read lazily, checked, and refreshed in place: ``setting_changed``
    (``override_settings``) empties the cache, the object is never replaced (DRF #5668).
    A bad value raises ``ChanxConfigError`` on first use (``manage.py check``: chanx.E001)."""

    def __init__(self) -> None:
        self._user: dict[str, Any] | None = None
        self.version = 0  # bumped on every reload, for caches built from settings

    def __getattr__(self, name: str) -> Any:
        if name not in _SETTINGS:
            valid = ", ".join(sorted(_SETTINGS))
            raise AttributeError(f"Unknown chanx setting {name!r}. Valid settings: {valid}.")
        if self._user is None:
            user = getattr(settings, "CHANX", {})
            if problems := _setting_errors(user):
                raise ChanxConfigError(" ".join(problems))
            self._user = dict(user)
            if self._user.get("LOG_WEBSOCKET_MESSAGE") is not None:  # chanx 2.x
                for key in ("LOG_RECEIVED_MESSAGE", "LOG_SENT_MESSAGE"):
                    self._user.setdefault(key, self._user["LOG_WEBSOCKET_MESSAGE"])
        value = self._user.get(name, DEFAULTS[name])
        if name == "LOG_IGNORED_ACTIONS":
            value = frozenset(value)
        setattr(self, name, value)  # cached: later reads skip __getattr__
        return value

    def reload(self) -> None:
        """Forget cached values; the next read sees ``settings.CHANX`` again."""
        for name in _SETTINGS:
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
    """``manage.py check``: configuration mistakes reported once, at start-up."""
    problems = _setting_errors(getattr(settings, "CHANX", {}))
    return [checks.Error(p, hint="Fix settings.CHANX.", id="chanx.E001") for p in problems]


# Messages ####################################################################

#: Every concrete message class by action, for typed reads in tests.
_MESSAGE_REGISTRY: dict[str, list[type[BaseMessage]]] = {}


class BaseMessage(BaseModel):
    """A frame on the wire: ``{"action": "...", "payload": ...}``::

        class ChatMessage(BaseMessage):
            action: Literal["chat"] = "chat"   # required: a Literal action
            payload: ChatPayload

    An intermediate base class without an action says ``abstract=True``.
    """

    model_config = ConfigDict(defer_build=True)  # validators built on first use, not at import

    action: str
    payload: Any = None

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # ``abstract`` is read below

    @classmethod
    def __pydantic_init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if abstract:
            return
        actions = _message_actions(cls)
        if not actions:
            name = _to_snake(cls.__name__).lstrip("_")
            raise ChanxConfigError(
                f"{cls.__module__}.{cls.__qualname__} needs a Literal action, e.g. "
                f'action: Literal["{name}"] = "{name}" (or abstract=True in the class '
                "statement for a base class)."
            )
        for action in actions:
            _MESSAGE_REGISTRY.setdefault(action, []).append(cls)


def _message_actions(model: type[BaseModel]) -> tuple[str, ...]:
    field = model.model_fields.get("action")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return ()
    return tuple(str(value) for value in typing.get_args(field.annotation))


class BaseIncomingMessage(BaseModel):
    """Early-style container: ``message`` is a union of accepted messages."""

    model_config = ConfigDict(defer_build=True)
    message: BaseMessage


class BaseGroupMessage(BaseMessage, abstract=True):
    """A message relayed to a group; receivers see who sent it."""

    is_mine: bool = False
    is_current: bool = False


class BaseChannelEvent(BaseMessage, abstract=True):
    """A server-side event sent through the channel layer to consumers."""


class _NoPayload(BaseMessage, abstract=True):
    """A frame that is only its action: ``{"action": "ping"}``."""

    payload: None = None


class PingMessage(_NoPayload):
    action: Literal["ping"] = "ping"


class PongMessage(_NoPayload):
    action: Literal["pong"] = "pong"


class IncomingMessage(BaseIncomingMessage):
    message: PingMessage


class ErrorMessage(BaseMessage):
    """``payload`` is a list of ``{"type", "loc", "msg"}`` or ``{"detail": ...}``."""

    action: Literal["error"] = "error"
    payload: Any = None


class AuthenticationPayload(BaseModel):
    model_config = ConfigDict(defer_build=True)
    status_code: int
    status_text: str
    data: Any = None


class AuthenticationMessage(BaseMessage):
    action: Literal["authentication"] = "authentication"
    payload: AuthenticationPayload


class CompleteMessage(_NoPayload):
    action: Literal["complete"] = "complete"


class GroupCompleteMessage(_NoPayload):
    action: Literal["group_complete"] = "group_complete"


class EventCompleteMessage(_NoPayload):
    action: Literal["event_complete"] = "event_complete"


_COMPLETIONS = (CompleteMessage, GroupCompleteMessage, EventCompleteMessage)


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


# The wire: camelCase and the action key. snake_case names round-trip
# losslessly: an underscore goes only before a lowercase letter that follows
# a letter or digit ("address_line_2" <-> "addressLine_2", "_id" stays), and
# on the way in each capital becomes "_" + its lowercase. Names that are not
# snake_case ("userID") do not round-trip.


@functools.cache
def _any_json() -> TypeAdapter[Any]:
    """Pydantic's JSON parser, so a frame's errors are the same whatever the settings."""
    return TypeAdapter(Any)


@functools.lru_cache(maxsize=4096)
def _to_camel(name: str) -> str:
    return re.sub(r"(?<=[a-zA-Z0-9])_([a-z])", lambda m: m[1].upper(), name)


@functools.lru_cache(maxsize=4096)
def _to_snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), name)


def _convert_keys(value: Any, convert: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {
            convert(k) if isinstance(k, str) else k: _convert_keys(v, convert)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_convert_keys(v, convert) for v in value]
    return value


def _json_with(text: str, fields: dict[str, Any]) -> str:
    """``text``, a JSON object chanx serialised, with ``fields`` added at its end."""
    extra = json.dumps(fields, separators=(",", ":"))[1:]
    return text[:-1] + ("," if len(text) > 2 else "") + extra


@dataclasses.dataclass(frozen=True)
class _Wire:
    """How frames look to a client (``CAMELIZE``, ``MESSAGE_ACTION_KEY``): every frame
    in and out goes through one; Python code sees snake_case names and ``action``."""

    camelize: bool = False
    key: str = "action"

    @functools.cached_property
    def plain(self) -> bool:
        return not self.camelize and self.key == "action"

    def name(self, field: str, top: bool = True) -> str:
        """A field name as the client sees it (``top``: of the frame itself)."""
        if top and field == "action":
            return self.key
        return _to_camel(field) if self.camelize else field

    def out(self, data: Any) -> Any:
        """Python-side JSON -> what the client sees."""
        if self.camelize:
            data = _convert_keys(data, _to_camel)
        if self.key != "action" and isinstance(data, dict) and "action" in data:
            data = {(self.key if k == "action" else k): v for k, v in data.items()}
        return data

    def into(self, data: Any) -> Any:
        """The client's JSON -> the field names of the message models."""
        if self.key != "action" and isinstance(data, dict):  # only the configured key counts
            data = {("action" if k == self.key else k): v for k, v in data.items() if k != "action"}
        return _convert_keys(data, _to_snake) if self.camelize else data

    def text(self, canonical: str) -> str:
        """A frame's JSON text, as the Python side names it, as this client sees it."""
        return canonical if self.plain else _dumps(self.out(json.loads(canonical)))

    def dump(self, message: BaseModel, exclude: set[str] | None = None) -> str:
        """A message as a text frame: strict JSON (pydantic writes inf and nan as null)."""
        return self.text(message.model_dump_json(exclude=exclude))

    def load(self, text: str, adapter: TypeAdapter[Any]) -> Any:
        """Validate a frame from its JSON text whatever the wire (``ValidationError``;
        ``ChanxError`` for a bad ``ref``, which otherwise goes on ``_FRAME_REF``)."""
        if self.plain and '"ref"' not in text:
            return adapter.validate_json(text)  # straight from the text: the fast path
        data = _any_json().validate_json(text)
        if not isinstance(data, dict):
            return adapter.validate_json(text)  # the very same error as the fast path
        if (ref := data.pop("ref", None)) is not None:
            small = abs(ref) <= 2**53 if type(ref) is int else type(ref) is str and len(ref) <= 128
            if not small:
                raise ChanxError(_REF_ERROR)
            _FRAME_REF.set(ref)
        return adapter.validate_json(json.dumps(self.into(data)))

    def errors(
        self, error: ValidationError, tags: Sequence[str] = (), names: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Pydantic's errors in wire names, bounded, with nothing the client wrote: a
        ``loc`` keeps the models' own ``names`` (other keys are the client's), a message
        loses the parser's account of the input and any value filled into it."""
        cleaned = []
        for item in error.errors(include_input=False, include_url=False)[:20]:
            kind, msg, ctx = item["type"], item["msg"], item.get("ctx", {})
            template = _error_templates().get(kind)
            if kind == "union_tag_invalid":
                msg = f"Unknown action; expected one of: {ctx.get('expected_tags', '')}"
            elif kind == "union_tag_not_found":
                msg = f"Missing {self.key!r} field"
            elif template is None:  # a custom error type: its values may be the input
                for value in ctx.values():
                    msg = msg.replace(str(value), "...") if isinstance(value, str) else msg
            elif "{error}" in template and kind not in _OWN_WORDS:
                msg = template.partition("{error}")[0].rstrip(" ,:")
            loc: list[Any] = list(item["loc"][:10])
            start = 1 if loc and loc[0] in tags else 0  # a union's tag leads the loc
            for i, part in enumerate(loc[start:], start):
                if isinstance(part, str):
                    loc[i] = self.name(part, top=i == start) if part in names else "<key>"
            cleaned.append({"type": kind, "loc": loc, "msg": msg})
        return cleaned

    def schema(self, schema: dict[str, Any], message: bool) -> dict[str, Any]:
        """A model's JSON schema as it looks on the wire (``message``: a frame's,
        whose action is always there)."""
        properties = schema.get("properties", {})
        names = {name: self.name(name, top=message) for name in properties}
        required = [names[n] for n in schema.get("required", [])]
        if message and self.key not in required:
            required.insert(0, self.key)
        wire = {**schema, "properties": {names[k]: v for k, v in properties.items()}}
        return {**wire, "required": required} if required else wire


def _dumps(value: Any) -> str:
    """Strict JSON, as browsers parse it: inf and nan are null, as pydantic writes them."""
    return to_json(value, inf_nan_mode="null").decode()


_REF_ERROR = "ref must be a string of at most 128 characters or an integer in [-2**53, 2**53]."
_OWN_WORDS = ("value_error", "assertion_error", "json_invalid")  # a validator's or the parser's


@functools.cache
def _error_templates() -> dict[str, str]:
    """pydantic-core's message template of each of its error types."""
    from pydantic_core._pydantic_core import list_all_errors

    return {e["type"]: e["message_template_python"] for e in list_all_errors()}


def _schema_names(schema: Any) -> frozenset[str]:
    """Every property name and title in a JSON schema: the names a model defines."""
    found, stack = set[str](), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.update(node.get("properties") or (), [node.get("title") or ""])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


#: The ``ref`` of the client frame being handled (per task: the frame worker's).
_FRAME_REF: contextvars.ContextVar[Ref] = contextvars.ContextVar("chanx_ref", default=None)


# Logging #####################################################################

logger = logging.getLogger("chanx")

#: Attribute names every LogRecord has; anything else came from ``extra``.
_RESERVED_LOG_KEYS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (time, level, logger, message, ``extra`` fields), for
    the ``chanx`` logger or any: ``"formatters": {"json": {"()": "chanx.JsonFormatter"}}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **{key: value for key, value in vars(record).items() if key not in _RESERVED_LOG_KEYS},
        }
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
    if consumer._user_key is not None:
        context["user_id"] = consumer._user_key
    context.update(extra)
    return context


# Authentication ##############################################################


@dataclasses.dataclass
class AuthenticationResult:
    """What authenticating a connection found."""

    is_authenticated: bool
    status_code: int
    status_text: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    user: Any = None
    obj: Any = None


@functools.cache
def _drf_classes() -> tuple[type[Any], type[Any]]:
    """``ChanxSerializer`` and ``ChanxAuthView``, built on first use.

    DRF's views read settings while their module is imported, so chanx
    imports them only when a handshake needs them.
    """
    from rest_framework import serializers
    from rest_framework.generics import GenericAPIView
    from rest_framework.response import Response

    class ChanxSerializer(serializers.Serializer[Any]):
        """Serializer of the authentication view (it validates nothing)."""

    class ChanxAuthView(GenericAPIView):  # type: ignore[type-arg]
        """The DRF view a websocket handshake is checked with: authentication,
        permissions, throttles, and ``get_object()`` with object permissions
        when a queryset is set, exactly what a REST view runs first."""

        serializer_class = ChanxSerializer

        def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
            return Response({"detail": "OK"})

        post = put = patch = delete = get

    return ChanxSerializer, ChanxAuthView


#: Users forced by the test communicator (``user=``), by the random key it puts
#: in the scope: a scope built by a server or middleware names no entry.
_FORCED_USERS: dict[str, Any] = {}
_FORCE_USER_KEY = "chanx.force_user"
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_REQUEST_SCOPE_KEYS = ("path", "raw_path", "root_path", "query_string", "client", "server")


def _subprotocol_authorization(scope: Scope) -> bytes | None:
    """The ``Authorization`` value a browser sent as ``chanx.auth.<base64url>``."""
    for protocol in scope.get("subprotocols") or ():
        if isinstance(protocol, str) and protocol.startswith(_AUTH_SUBPROTOCOL):
            encoded = protocol[len(_AUTH_SUBPROTOCOL) :]
            try:
                value = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except ValueError:
                return None
            return value if value.isascii() and value.decode().isprintable() else None
    return None


def _build_request(scope: Scope, method: str) -> HttpRequest:
    """The handshake as a Django request, parsed by Django's own ASGIRequest: headers
    (repeated cookies joined), query string, client and server; ``wss`` is secure. A
    token offered as a subprotocol is its ``Authorization`` header, unless it has one."""
    from django.core.handlers.asgi import ASGIRequest

    headers = scope.get("headers", [])
    names = {name.lower() for name, _ in headers}
    cookies = [v for k, v in headers if k.lower() == b"cookie"]
    if len(cookies) > 1:  # HTTP/2 splits cookies over headers; they join with "; "
        headers = [
            *((k, v) for k, v in headers if k.lower() != b"cookie"),
            (b"cookie", b"; ".join(cookies)),
        ]
    token = None if b"authorization" in names else _subprotocol_authorization(scope)
    if token is not None:
        headers = [*headers, (b"authorization", token)]
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


class _AuthOptions:
    """DRF's view attributes, on an authenticator or (early style) a consumer; unset
    (``None``) means DRF's defaults, such as ``DEFAULT_PERMISSION_CLASSES``."""

    authentication_classes: ClassVar[Sequence[Any] | None] = None
    permission_classes: ClassVar[Sequence[Any] | None] = None
    throttle_classes: ClassVar[Sequence[Any] | None] = None
    queryset: ClassVar[Any] = None
    lookup_field: ClassVar[str | None] = None
    lookup_url_kwarg: ClassVar[str | None] = None
    auth_method: ClassVar[str | None] = None  # the handshake request's method: "get"


class ChanxWebsocketAuthenticator(_AuthOptions):
    """Authenticates a websocket connection with DRF classes, configured like an ``APIView``::

        class RoomAuthenticator(DjangoAuthenticator):
            permission_classes = [IsAuthenticated, IsRoomMember]
            queryset = Room.objects.all()   # object looked up from the URL kwarg

    Then ``user``, ``obj``, ``request``. Not authenticated is always 401 (whatever
    DRF's ``WWW-Authenticate`` rule), denied 403, no object 404, throttled 429.
    """

    #: Names a consumer may set to override the authenticator (early style).
    OPTIONS: ClassVar[tuple[str, ...]] = tuple(_AuthOptions.__annotations__)

    def __init__(self) -> None:
        self.user: Any = None
        self.obj: Any = None
        self.request: Request | None = None

    async def authenticate(self, scope: Scope) -> AuthenticationResult:
        """Run DRF once, on the ORM's thread."""
        result: AuthenticationResult = await sync_to_async(self.authenticate_sync)(scope)
        return result

    def build_view(self, request: HttpRequest, kwargs: dict[str, Any]) -> Any:
        """The configured ``ChanxAuthView`` instance for one handshake."""
        view = _drf_classes()[1]()
        for name in self.OPTIONS[:-1]:  # all but auth_method: the view's own attributes
            if getattr(self, name) is not None:
                setattr(view, name, getattr(self, name))
        view.args, view.kwargs, view.format_kwarg, view.headers = (), kwargs, None, {}
        return view

    def authenticate_sync(self, scope: Scope) -> AuthenticationResult:
        """Authenticate, check permissions and throttles, look up the object."""
        from rest_framework import exceptions
        from rest_framework.request import ForcedAuthentication

        kwargs = dict(scope.get("url_route", {}).get("kwargs", {}))
        django_request = _build_request(scope, self.auth_method or "get")
        view = self.build_view(django_request, kwargs)
        forced = _FORCED_USERS.get(scope.get(_FORCE_USER_KEY, ""))
        if forced is not None:
            view.get_authenticators = lambda: [ForcedAuthentication(forced, None)]
        request = self.request = view.request = view.initialize_request(django_request)
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
        except (exceptions.APIException, Http404, PermissionDenied) as exc:
            if isinstance(exc, Http404):  # DRF's own detail, whatever DRF's version says of it
                exc = exceptions.NotFound()
            response = view.handle_exception(exc)  # DRF's detail (and EXCEPTION_HANDLER)
            unauthenticated = (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)
            status = 401 if isinstance(exc, unauthenticated) else response.status_code
            data = response.data if isinstance(response.data, dict) else {"detail": response.data}
            if isinstance(exc, exceptions.NotAuthenticated) and "authorization" in request.headers:
                data = {**data, "hint": 'Not accepted; DRF tokens are "Token <key>".'}
            return AuthenticationResult(False, status, http.HTTPStatus(status).phrase, _plain(data))
        self.user, self.obj = request.user, obj
        # The request lives as long as the connection; the view and the
        # authenticators that were tried need not (memory per connection).
        request.parser_context.pop("view", None)
        request.authenticators = ()
        return AuthenticationResult(True, 200, "OK", {"detail": "OK"}, self.user, obj)


#: Seed 003's name for the authenticator.
DjangoAuthenticator = ChanxWebsocketAuthenticator


def _plain(data: Any) -> Any:
    """DRF error data (ErrorDetail, lazy strings) as plain JSON types."""
    return json.loads(json.dumps(data, default=str))


# Consumer ####################################################################


class AsyncJsonWebsocketConsumer(_AuthOptions, _ChannelsJsonConsumer, Generic[EventT]):  # type: ignore[misc]
    """A websocket consumer with DRF auth, typed messages, groups and events.

    A connection: ``websocket_connect`` authenticates, joins the groups, accepts,
    calls ``post_authentication()`` and sends the authentication frame; each text
    frame is validated against the accepted messages and handed to its
    ``@ws_handler``, in arrival order, on a worker task; channel-layer messages
    have their own task; the disconnect cancels and awaits both. The generic
    parameter is the union of accepted events: ``AsyncJsonWebsocketConsumer[A | B]``.
    """

    # Messages, early style (decorated handlers add to these).
    INCOMING_MESSAGE_SCHEMA: ClassVar[Any] = None
    OUTGOING_GROUP_MESSAGE_SCHEMA: ClassVar[Any] = None

    # Authentication: the _AuthOptions set here (early style) win over those of
    # the authenticator, which win over DRF's defaults.
    authenticator_class: ClassVar[type[ChanxWebsocketAuthenticator]] = ChanxWebsocketAuthenticator

    #: Groups to join: set a list on the class; each connection gets its own copy.
    groups: list[str]
    #: Subprotocols this consumer speaks; the first one the client offers is accepted.
    subprotocols: ClassVar[Sequence[str]] = (SUBPROTOCOL,)

    # Behaviour flags: None means "use settings.CHANX".
    send_completion: bool | None = None
    send_message_immediately: bool | None = None
    send_authentication_message: bool | None = None
    log_received_message: bool | None = None
    log_sent_message: bool | None = None
    log_ignored_actions: Iterable[str] | None = None
    camelize: bool | None = None

    # After connect (class-level defaults keep an idle connection small).
    user: Any = None
    obj: Any = None
    request: Request | None = None
    authenticator: Any = None

    _chanx_meta: ClassVar[_ConsumerMeta]
    # Built from the class's current attributes, and again when they change.
    _chanx_authenticator: ClassVar[tuple[Any, type[ChanxWebsocketAuthenticator]] | None] = None
    _chanx_config: ClassVar[tuple[Any, _Config] | None] = None
    # Per connection, set when they first change.
    _cfg: _Config
    _conn_id = ""
    _user_key: str | None = None  # str(user.pk) when authenticated: is_mine, the log
    _open = False  # authenticated and reading frames
    _closed = False  # closed (or gone): nothing more is handled or sent
    _left = False  # tasks stopped and groups left
    _stalled = False  # the queue stayed full past BACKPRESSURE_TIMEOUT
    _layer_busy = False  # the layer reader is handling a message
    _frames: _Frames | None = None  # made on the first frame
    _worker: asyncio.Task[None] | None = None
    _layer_reader: asyncio.Task[None] | None = None
    _relayed: deque[str] | None = None  # ids of multi-group messages and events
    _frame_seq = 0
    _tokens = _last_refill = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__[: cls.__mro__.index(AsyncJsonWebsocketConsumer)]:
            for name in _CHANNELS_HOOKS.keys() & vars(klass).keys():
                raise ChanxConfigError(
                    f"{klass.__qualname__}.{name}() is a Channels hook that chanx never "
                    f"calls; override {_CHANNELS_HOOKS[name]} instead."
                )
        if "handle_validation_error" in vars(cls):  # chanx 2.x's name
            cls.on_validation_error = vars(cls)["handle_validation_error"]  # type: ignore[method-assign]
        cls._chanx_meta = _build_meta(cls)
        cls._chanx_authenticator = cls._chanx_config = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups = list(getattr(type(self), "groups", None) or ())

    # The connection ########################################################

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Read the client: the connect, each frame (queued for the worker), the disconnect.

        While ``MAX_IN_FLIGHT_MESSAGES`` frames wait, reading stops until a handler
        finishes; after ``BACKPRESSURE_TIMEOUT`` it goes on, refusing frames until there
        is room, so a stuck handler never holds a disconnect.
        """
        self.scope, self.base_send = scope, send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
        try:
            while True:
                if self._frames is not None and self._frames.full and not self._stalled:
                    self._stalled = not await self._frames.wait_for_room(self._cfg.backpressure)
                message = await receive()
                if message["type"] == "websocket.receive":
                    if self._open and not self._closed:
                        self._take_frame(message)
                elif message["type"] == "websocket.connect":
                    await self.websocket_connect(message)
                elif message["type"] == "websocket.disconnect":
                    await self.websocket_disconnect(message)
                    return
        finally:
            await self._leave()

    async def websocket_connect(self, message: ASGIMessage) -> None:
        """Authenticate, join groups, accept, run the hook, send the authentication frame."""
        self._cfg = _Config.of(self)
        if self._cfg.rate is not None:
            self._tokens, self._last_refill = self._cfg.burst, time.monotonic()
        self._conn_id = uuid.uuid4().hex[:12]
        async with _OrmUnit(self._cfg.pool):
            try:
                result = await self.authenticate()
                if result.is_authenticated:
                    self.user, self.obj = result.user, result.obj
                    if getattr(self.user, "is_authenticated", False):
                        self._user_key = str(self.user.pk)
                    await self.add_groups()  # before the handshake completes: no event is missed
            except Exception as exc:
                result = self._server_error(exc)
            offered = self.scope.get("subprotocols") or ()
            await self.accept(next((p for p in offered if p in self.subprotocols), None))
            try:
                if result.is_authenticated:
                    await self.post_authentication()
            except Exception as exc:
                result = self._server_error(exc)
        if self._cfg.send_authentication_message:
            payload = AuthenticationPayload.model_validate(result, from_attributes=True)
            await self.send_message(AuthenticationMessage(payload=payload))
        if not result.is_authenticated:
            if logger.isEnabledFor(logging.INFO):
                context = _log_context(self, status_code=result.status_code)
                logger.info("Websocket authentication refused", extra=context)
            await self.close(code=4000 + result.status_code)
            return
        self._open = True
        if self.channel_layer is not None:  # group traffic only after the auth frame
            self._layer_reader = asyncio.create_task(self._read_layer())
        if logger.isEnabledFor(logging.INFO):
            logger.info("Websocket connected", extra=_log_context(self))

    def _server_error(self, exc: Exception) -> AuthenticationResult:
        config = isinstance(exc, ChanxConfigError)
        message = "Websocket configuration error" if config else "Websocket authentication failed"
        logger.exception(message, extra=_log_context(self))
        detail = "Authentication failed because of a server error."
        if config and settings.DEBUG:  # details as Django shows them: with DEBUG only
            detail = f"Server configuration error: {exc}"
        return AuthenticationResult(False, 500, "Internal Server Error", {"detail": detail})

    def _take_frame(self, message: ASGIMessage) -> None:
        """Queue a client frame for the worker, or refuse it at once (in order, text dropped)."""
        cfg, text = self._cfg, message.get("text")
        frames = self._frames = self._frames or _Frames(cfg.max_in_flight)
        if text is None:
            frames.refuse("Binary frames are not supported; send JSON text.")
        elif len(text) > cfg.max_size or (
            len(text) * 4 > cfg.max_size
            and len(text.encode("utf-8", "surrogatepass")) > cfg.max_size
        ):
            frames.refuse(f"Message too large; the limit is {cfg.max_size} bytes.")
        elif cfg.rate is not None and not self._take_token(cfg.rate):
            frames.refuse("Rate limit exceeded; slow down.")
        elif frames.full:
            frames.refuse("Too many messages in flight; wait for the replies.")
        else:
            frames.put(text)
            self._stalled = False
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(frames))

    def _take_token(self, rate: float) -> bool:
        now = time.monotonic()
        self._tokens = min(self._cfg.burst, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _work(self, frames: _Frames) -> None:
        """The worker: handle queued frames one at a time, in arrival order (once closed,
        it drops them)."""
        while frames.items:
            item = frames.items.popleft()
            refusals = item.counts.items() if isinstance(item, _Refused) else [(None, 1)]
            try:
                for detail, count in refusals:
                    for _ in range(count):
                        if _FRAME_REF.get() is not None:  # the previous frame's
                            _FRAME_REF.set(None)
                        if detail is not None:
                            await self.on_bad_frame(detail)
                        elif not self._closed:
                            await self._dispatch_text(item)  # type: ignore[arg-type]
                        if self._cfg.send_completion:
                            await self._send_complete(ACTION_COMPLETE)
            except StopConsumer:
                await self.close()
            except Exception:
                logger.exception("Failed to handle a websocket frame", extra=_log_context(self))
            finally:
                if isinstance(item, str):
                    frames.done()

    async def _dispatch_text(self, text: str) -> None:
        cfg = self._cfg
        if cfg.incoming is None:
            await self.on_bad_frame("This endpoint does not accept messages.")
            return
        try:
            message = cfg.wire.load(text, cfg.incoming)
        except ValidationError as exc:
            await self.on_validation_error(exc)
            return
        except ChanxError as exc:  # a bad ref
            await self.on_bad_frame(str(exc))
            return
        self._frame_seq += 1
        if cfg.logs(cfg.log_received_message, message.action):
            context = _log_context(self, action=message.action, message_id=self._message_id())
            logger.info("Received websocket message", extra=context)
        try:
            await self._run(self._chanx_meta.ws_handlers, message, self.receive_message)
        except StopConsumer:
            raise
        except Exception as exc:
            await self.on_handler_error(exc, message)

    async def _run(self, handlers: dict[str, _Handler], message: Any, fallback: Any) -> None:
        """Call the handler of ``message`` (or ``fallback``), on the ORM's thread of a unit
        of work of its own, and send what it returns."""
        handler = handlers.get(message.action)
        async with _OrmUnit(self._cfg.pool):
            reply = await (fallback if handler is None else getattr(self, handler.name))(message)
        if reply is not None:
            await self.send_message(reply)

    def _message_id(self) -> str:
        return f"{self._conn_id}:{self._frame_seq}"

    async def websocket_disconnect(self, message: ASGIMessage) -> None:
        """Stop the connection's tasks (a running handler may finish), leave groups, call
        ``disconnect``."""
        await self._leave()
        try:
            async with _OrmUnit(_orm_pool()):
                await self.disconnect(message.get("code", 1000))
        except Exception:
            logger.exception("disconnect() failed", extra=_log_context(self))
        if logger.isEnabledFor(logging.INFO):
            context = _log_context(self, close_code=message.get("code", 1000))
            logger.info("Websocket disconnected", extra=context)

    async def _leave(self) -> None:
        """Stop this connection's tasks, then leave its groups (once). A running handler
        (a frame's or a layer message's) may finish within ``DRAIN_TIMEOUT``, so a server
        that stops (SIGTERM) cuts none mid-way; nothing new starts, its sends are dropped."""
        if self._left:
            return
        self._closed = self._left = True
        tasks = {t for t in (self._worker, self._layer_reader) if t is not None and not t.done()}
        busy = {t for t in tasks if t is self._worker or self._layer_busy}
        try:
            for task in tasks - busy:
                task.cancel()
            if busy:
                await asyncio.wait(busy, timeout=chanx_settings.DRAIN_TIMEOUT)
        finally:
            pending = {t for t in tasks if not t.done()}
            while pending:  # again until done: a cancel can be swallowed (CPython gh-86296)
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.5)
        if self._frames is not None:
            self._frames.items.clear()
        for group in self.groups if self.channel_layer is not None else ():
            try:  # the list stays, for disconnect()
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                logger.exception("Could not leave group %s", group, extra=_log_context(self))

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close the socket; no frame is handled after this."""
        if not self._closed:
            self._closed = True
            await super().close(code=code, reason=reason)

    # Hooks #################################################################

    async def authenticate(self) -> AuthenticationResult:
        """Authenticate the handshake; override to replace DRF entirely."""
        self.authenticator = self.get_authenticator_class()()
        result: AuthenticationResult = await self.authenticator.authenticate(self.scope)
        self.request = self.authenticator.request
        return result

    @classmethod
    def get_authenticator_class(cls) -> type[ChanxWebsocketAuthenticator]:
        """``authenticator_class`` with the consumer's own auth attributes applied."""
        options = ChanxWebsocketAuthenticator.OPTIONS
        own = {n: getattr(cls, n) for n in options if getattr(cls, n, None) is not None}
        key = (cls.authenticator_class, *((n, id(v)) for n, v in own.items()))
        if cls._chanx_authenticator is None or cls._chanx_authenticator[0] != key:
            base, name = cls.authenticator_class, f"{cls.__name__}Authenticator"  # in errors
            cls._chanx_authenticator = (key, type(name, (base,), own) if own else base)
        return cls._chanx_authenticator[1]

    async def build_groups(self) -> Iterable[str]:
        """Groups to join once authenticated, besides ``groups`` (a string is one group)."""
        return []

    async def add_groups(self) -> None:
        """Join ``groups`` and ``build_groups()``; all are left on disconnect."""
        self.groups = list(dict.fromkeys([*self.groups, *_group_list(await self.build_groups())]))
        if self.groups and self.channel_layer is None:
            raise ChanxConfigError(
                f"{type(self).__name__} joins groups but no channel layer is configured; "
                "set CHANNEL_LAYERS in settings."
            )
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def post_authentication(self) -> None:
        """Called once authenticated and in its groups, before the authentication frame."""

    async def receive_message(self, message: BaseMessage) -> None:
        """Called with a validated message that no ``@ws_handler`` takes."""
        logger.warning("No handler for action %r", message.action, extra=_log_context(self))
        await self.on_bad_frame("No handler for this action.")

    async def receive_event(self, event: EventT) -> None:
        """Called with a validated event that no ``@event_handler`` takes."""
        logger.warning("No handler for event %r", event, extra=_log_context(self))

    async def on_validation_error(self, error: ValidationError) -> None:
        """A frame is not JSON or not a valid message: sends pydantic's errors (chanx
        2.x's ``handle_validation_error`` is called instead when a class has one)."""
        payload = self._cfg.wire.errors(error, self._cfg.tags, self._chanx_meta.names)
        await self.send_message(ErrorMessage(payload=payload))

    async def on_bad_frame(self, detail: str) -> None:
        """A frame was refused (binary, too large, rate limit, ...): sends the detail."""
        await self.send_message(ErrorMessage(payload={"detail": detail}))

    async def on_handler_error(self, exc: Exception, message: BaseMessage) -> None:
        """A handler raised: logs the traceback, sends the client a generic error."""
        context = _log_context(self, action=message.action, message_id=self._message_id())
        logger.exception("Websocket handler failed", extra=context)
        detail = f"Failed to process message for {message.action}"
        await self.send_message(ErrorMessage(payload={"detail": detail}))

    # Sending ###############################################################

    async def send_message(self, message: BaseMessage) -> None:
        """Serialise a message and send it to this client."""
        await self._send_text(self._cfg.wire.dump(message), message.action)

    async def send_json(self, content: Any, close: bool = False) -> None:
        """Send any JSON-serialisable content (keys translated like messages)."""
        action = content.get("action") if isinstance(content, dict) else None
        await self._send_text(_dumps(self._cfg.wire.out(content)), action)
        if close:
            await self.close()

    async def _send_complete(self, action: str) -> None:
        await self._send_text(self._cfg.completions[action])  # completion frames are not logged

    async def _send_text(self, text: str, action: str | None = None) -> None:
        """Send a text frame, with the ``ref`` of the client frame being handled."""
        if self._closed:
            return
        if (ref := _FRAME_REF.get()) is not None and text.startswith("{"):
            text = _json_with(text, {"ref": ref})
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except OSError:  # the client is gone (uvicorn: ClientDisconnected); not an error
            self._closed = True
            return
        if action is not None and self._cfg.logs(self._cfg.log_sent_message, action):
            logger.info("Sent websocket message", extra=_log_context(self, action=action))
        if self._cfg.send_message_immediately:
            await asyncio.sleep(0)

    # Groups ################################################################

    async def send_group_message(
        self, message: BaseMessage, groups: Groups = None, *, exclude_current: bool = True
    ) -> None:
        """Send a message to groups (default: this connection's). Each receiver gets it
        with ``is_mine`` (sent by the same user) and ``is_current`` (by this connection)."""
        allowed = _message_types(self.OUTGOING_GROUP_MESSAGE_SCHEMA)
        if allowed and not isinstance(message, tuple(allowed)):
            raise InvalidEventError(
                f"{type(message).__name__} is not in {type(self).__name__}.OUTGOING_GROUP_"
                f"MESSAGE_SCHEMA ({', '.join(m.__name__ for m in allowed)})."
            )
        text = message.model_dump_json(exclude={"is_mine", "is_current"})  # each receiver's wire
        await self._publish(text, message.action, groups, exclude_current)

    async def send_to_groups(
        self, content: dict[str, Any], groups: Groups = None, *, exclude_current: bool = True
    ) -> None:
        """Send a JSON object to groups, relayed like ``send_group_message``."""
        await self._publish(_dumps(content), content.get("action"), groups, exclude_current)

    async def broadcast_message(
        self,
        message: BaseMessage | dict[str, Any],
        groups: Groups = None,
        *,
        exclude_current: bool = False,
    ) -> None:
        """chanx 2.x's name: ``send_group_message`` (``send_to_groups`` for a dict),
        the sender included by default."""
        if isinstance(message, dict):
            await self.send_to_groups(message, groups, exclude_current=exclude_current)
        else:
            await self.send_group_message(message, groups, exclude_current=exclude_current)

    async def _publish(self, text: str, action: Any, groups: Groups, exclude: bool) -> None:
        if self.channel_layer is None:
            raise ChanxConfigError("Group messages need a channel layer (CHANNEL_LAYERS).")
        message = {"type": _GROUP_TYPE, "text": text, "action": action, "exclude_current": exclude}
        message.update(from_channel=self.channel_name, from_user=self._user_key)
        targets = _group_list(self.groups if groups is None else groups)
        if len(targets) > 1:  # a member of several of them gets it once
            message["id"] = uuid.uuid4().hex
        for group in targets:
            await self.channel_layer.group_send(group, message)

    async def _read_layer(self) -> None:
        """Read channel-layer messages in order, beside the frame worker. A failing layer
        (a Redis restart) is logged once and retried with backoff, and the groups are
        joined again (a restarted Redis may have lost them) before reading resumes."""
        layer, name = self.channel_layer, self.channel_name
        failing, delay = False, 0.05
        while not self._closed:
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
            if "id" in message:  # sent to several groups: handled once
                self._relayed = self._relayed or deque(maxlen=256)
                if message["id"] in self._relayed:
                    continue
                self._relayed.append(message["id"])
            self._layer_busy = True  # a disconnect lets the handler finish (DRAIN_TIMEOUT)
            try:
                if message.get("type") == _GROUP_TYPE:
                    await self._relay_group_message(message)
                elif message.get("type") == _EVENT_TYPE:
                    await self._dispatch_event(message)
                else:
                    await self._dispatch_custom(message)
            except StopConsumer:
                await self.close()
            except Exception:
                context = _log_context(self)
                logger.exception("Failed to handle a channel-layer message", extra=context)
            finally:
                self._layer_busy = False

    async def _relay_group_message(self, message: ASGIMessage) -> None:
        """Pass a group message on: the text the sender serialised once for every
        receiver, with this receiver's ``is_mine`` and ``is_current`` added."""
        is_current = message["from_channel"] == self.channel_name
        if is_current and message["exclude_current"]:
            return
        sender, wire = message["from_user"], self._cfg.wire
        mine = sender is not None and sender == self._user_key
        flags = {wire.name("is_mine"): mine, wire.name("is_current"): is_current}
        await self._send_text(_json_with(wire.text(message["text"]), flags), message["action"])
        if self._cfg.send_completion:
            await self._send_complete(GROUP_ACTION_COMPLETE)

    async def _dispatch_custom(self, message: ASGIMessage) -> None:
        """Channels-style ``type`` -> method dispatch for other layer messages."""
        kind = message.get("type")
        name = kind.replace(".", "_") if isinstance(kind, str) else ""
        # Never a private method, nor a fake client frame (websocket_receive).
        handler = None if name.startswith(("_", "websocket_")) else getattr(self, name, None)
        if handler is None:
            context = _log_context(self)
            logger.warning("No handler for channel-layer message %r", kind, extra=context)
            return
        async with _OrmUnit(self._cfg.pool):
            await handler(message)

    # Server-side events ####################################################

    async def _dispatch_event(self, message: ASGIMessage) -> None:
        adapter = self._chanx_meta.adapter("events")
        if adapter is None:
            logger.warning("%s accepts no events", type(self).__name__, extra=_log_context(self))
            return
        data = message["event"]  # JSON text (a dict from chanx before 3.2, in a rolling deploy)
        validate = adapter.validate_json if isinstance(data, str) else adapter.validate_python
        event = validate(data)
        try:
            await self._run(self._chanx_meta.event_handlers, event, self.receive_event)
        except StopConsumer:
            raise
        except Exception:
            logger.exception("Event handler failed", extra=_log_context(self, action=event.action))
        if self._cfg.send_completion:
            await self._send_complete(EVENT_ACTION_COMPLETE)

    @classmethod
    def _event_message(cls, event: Any) -> ASGIMessage:
        """Check ``event`` against this consumer's event union and pack it."""
        meta = cls._chanx_meta
        adapter = meta.adapter("events")
        if adapter is None or not isinstance(event, meta.events):
            accepted = ", ".join(m.__name__ for m in meta.events) or "none"
            raise InvalidEventError(
                f"{cls.__name__} does not accept {type(event).__name__} events; "
                f"it accepts: {accepted}."
            )
        try:
            text = event.model_dump_json()  # any layer carries text; read as a frame is
            adapter.validate_json(text)
        except (ValidationError, PydanticSerializationError) as exc:
            raise InvalidEventError(f"Invalid {type(event).__name__}: {exc}") from exc
        return {"type": _EVENT_TYPE, "event": text}

    @classmethod
    def _layer(cls) -> Any:
        layer = get_channel_layer(cls.channel_layer_alias)
        if layer is None:
            raise ChanxConfigError("Events need a channel layer; set CHANNEL_LAYERS.")
        return layer

    @classmethod
    async def broadcast_event(cls, event: EventT, groups: Groups = None) -> None:
        """Send a typed event to every connection in ``groups`` (default: the class's
        ``groups``), from anywhere async."""
        message = cls._event_message(event)
        targets = _group_list(getattr(cls, "groups", None) or () if groups is None else groups)
        if len(targets) > 1:  # a member of several of them gets it once
            message["id"] = uuid.uuid4().hex
        if not _captured(cls, event, targets, None):
            for group in targets:
                await cls._layer().group_send(group, message)

    @classmethod
    def broadcast_event_sync(cls, event: EventT, groups: Groups = None) -> None:
        """``broadcast_event`` for sync code: views, tasks, signals, commands."""
        async_to_sync(cls.broadcast_event)(event, groups)

    @classmethod
    async def send_event(cls, event: EventT, channel_name: str) -> None:
        """Send a typed event to one connection by its channel name."""
        message = cls._event_message(event)
        if not _captured(cls, event, [], channel_name):
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


#: Channels' hooks that chanx's loop never calls, and what to override instead.
_CHANNELS_HOOKS = {
    "connect": "authenticate() or post_authentication()",
    "receive": "@ws_handler methods (or receive_message())",
    "receive_json": "@ws_handler methods (or receive_message())",
    "websocket_receive": "@ws_handler methods (or receive_message())",
}


def _group_list(groups: str | Iterable[str]) -> list[str]:
    return [groups] if isinstance(groups, str) else list(groups)


@dataclasses.dataclass
class _Refused:
    """Frames refused in a row, counted by reason (a handful), answered in their place:
    at most one per waiting text in a queue, so refusals cost no memory per frame."""

    counts: dict[str, int]


class _Frames:
    """A connection's frames waiting for its worker, in arrival order: texts
    (counted against ``MAX_IN_FLIGHT_MESSAGES`` until handled) and refusals."""

    def __init__(self, limit: int) -> None:
        self.items: deque[str | _Refused] = deque()
        self.texts, self.limit, self.room = 0, limit, asyncio.Event()

    @property
    def full(self) -> bool:
        return self.texts >= self.limit

    def put(self, text: str) -> None:
        self.items.append(text)
        self.texts += 1

    def refuse(self, detail: str) -> None:
        if not self.items or not isinstance(last := self.items[-1], _Refused):
            self.items.append(last := _Refused({}))
        last.counts[detail] = last.counts.get(detail, 0) + 1

    def done(self) -> None:
        self.texts -= 1
        if not self.full:
            self.room.set()

    async def wait_for_room(self, timeout: float) -> bool:
        """Wait until a text is handled; False after ``timeout`` seconds."""
        self.room.clear()
        try:
            await asyncio.wait_for(self.room.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


# Flags and limits: attribute -> settings.CHANX (the attribute's name in capitals)
# -> default, once per class.

# fmt: off
_FLAGS = (
    "send_completion", "send_message_immediately", "send_authentication_message",
    "log_received_message", "log_sent_message", "log_ignored_actions", "camelize",
)
# fmt: on


@dataclasses.dataclass(frozen=True)
class _Config:
    """A consumer class's flags, limits and wire, shared by its connections; built
    again when settings or a flag (of the class or an instance) change."""

    send_completion: bool
    send_message_immediately: bool
    send_authentication_message: bool
    log_received_message: bool
    log_sent_message: bool
    ignored: frozenset[str]
    wire: _Wire
    max_size: int
    max_in_flight: int
    backpressure: float
    rate: float | None
    burst: float
    incoming: TypeAdapter[Any] | None
    pool: _OrmPool
    tags: tuple[str, ...]  # the actions, when the incoming adapter is a tagged union
    completions: dict[str, str]  # the completion frames' text

    @classmethod
    def of(cls, consumer: Any) -> _Config:
        """The config of a consumer instance, or of a class (for the docs)."""
        klass: type[AsyncJsonWebsocketConsumer[Any]]
        klass = consumer if isinstance(consumer, type) else type(consumer)
        flags = {name: getattr(consumer, name) for name in _FLAGS}
        key = (chanx_settings.version, *map(id, flags.values()))  # flags set since count
        if (cached := klass._chanx_config) is not None and cached[0] == key:
            return cached[1]
        for name, value in flags.items():
            flags[name] = getattr(chanx_settings, name.upper()) if value is None else value
        wire = _Wire(bool(flags.pop("camelize")), chanx_settings.MESSAGE_ACTION_KEY)
        ignored, meta = frozenset(flags.pop("log_ignored_actions")), klass._chanx_meta
        rate, actions = chanx_settings.RATE_LIMIT, [_message_actions(m) for m in meta.incoming]
        config = cls(
            **flags,
            ignored=ignored,
            wire=wire,
            max_size=chanx_settings.MAX_MESSAGE_SIZE,
            max_in_flight=chanx_settings.MAX_IN_FLIGHT_MESSAGES,
            backpressure=chanx_settings.BACKPRESSURE_TIMEOUT,
            rate=rate,
            burst=max(1.0, float(chanx_settings.RATE_LIMIT_BURST or rate or 1)),  # 1 frame at least
            incoming=meta.adapter("incoming"),
            pool=_orm_pool(),
            tags=tuple(a for group in actions for a in group) if len(actions) > 1 else (),
            completions={
                m.model_construct().action: wire.dump(m.model_construct()) for m in _COMPLETIONS
            },
        )
        klass._chanx_config = (key, config)
        return config

    def logs(self, flag: bool, action: str) -> bool:
        """Whether a message record with ``action`` is wanted (and would be emitted)."""
        return flag and action not in self.ignored and logger.isEnabledFor(logging.INFO)


def _config_of(consumer: Any) -> _Config | None:
    """The config of a chanx consumer class (None for other consumers)."""
    is_chanx = isinstance(consumer, type) and issubclass(consumer, AsyncJsonWebsocketConsumer)
    return _Config.of(consumer) if is_chanx else None


def _sends(consumer: Any) -> tuple[type[BaseModel], ...]:
    """What a consumer class sends: its handlers' replies, and chanx's frames as its flags say."""
    if (config := _config_of(consumer)) is None:
        return ()
    own: list[type[BaseModel]] = [ErrorMessage]
    if config.send_authentication_message:
        own.insert(0, AuthenticationMessage)
    if config.send_completion:
        own.extend(_COMPLETIONS)
    return tuple(dict.fromkeys([*own, *consumer._chanx_meta.outgoing]))


# Handlers: marked by decorators, collected once per class.


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


class _HandlerDecorator(typing.Protocol):
    """``@ws_handler`` / ``@event_handler``, bare or with keyword arguments."""

    @typing.overload
    def __call__(self, func: _F, /) -> _F: ...
    @typing.overload
    def __call__(
        self, /, *, action: str | None = ..., summary: str | None = ...,
        description: str | None = ..., tags: Iterable[str] | None = ...,
    ) -> Callable[[_F], _F]: ...  # fmt: skip


def _handler_decorator(kind: Literal["ws", "event"], doc: str) -> _HandlerDecorator:
    def decorator(func: Any = None, /, *, action: str | None = None, summary: str | None = None,
                  description: str | None = None, tags: Iterable[str] | None = None,
                  ) -> Any:  # fmt: skip
        def mark(fn: Any) -> Any:
            if not inspect.iscoroutinefunction(fn):
                raise ChanxConfigError(f"Handler {fn.__qualname__} must be an async def method.")
            text = inspect.getdoc(fn)
            first_line = text.splitlines()[0] if text else None
            spec = _HandlerSpec(kind, action, summary or first_line, description or text)
            fn.__chanx_handler__ = dataclasses.replace(spec, tags=tuple(tags or ()))
            return fn

        return mark(func) if func is not None else mark

    decorator.__doc__ = doc
    return decorator


ws_handler = _handler_decorator(
    "ws",
    """Mark ``async def handle_x(self, message: XMessage) -> Reply | None``.

    The argument's type (or union) is what the consumer accepts for it; a
    returned message is sent to the client. ``action`` narrows a handler to
    one action of its argument's type; ``summary``, ``description`` (default:
    the docstring) and ``tags`` document it.
    """,
)
event_handler = _handler_decorator(
    "event",
    """Mark ``async def on_x(self, event: XEvent) -> Message | None`` for server events;
    the arguments are ``ws_handler``'s, and a returned message is sent to the client.""",
)

_C = TypeVar("_C", bound=type)


def channel(
    name: str | None = None, description: str | None = None, tags: Iterable[str] | None = None
) -> Callable[[_C], _C]:
    """Name and describe a consumer for the AsyncAPI document and the playground."""

    def decorate(cls: _C) -> _C:
        info = {"name": name, "description": description, "tags": tuple(tags or ())}
        setattr(cls, "__chanx_channel__", info)  # noqa: B010 - a class attribute of any class
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
    params = list(inspect.signature(fn).parameters.values())[1:]
    if len(params) != 1 or params[0].name not in hints:
        raise ChanxConfigError(
            f"{cls.__qualname__}.{fn.__name__} must take exactly one annotated "
            "argument, the message, e.g. (self, message: PingMessage)."
        )
    return _message_types(hints[params[0].name]), _message_types(hints.get("return"))


@dataclasses.dataclass
class _ConsumerMeta:
    """Everything chanx derives from a consumer class, built once per class."""

    ws_handlers: dict[str, _Handler]
    event_handlers: dict[str, _Handler]
    incoming: tuple[type[BaseModel], ...]
    events: tuple[type[BaseModel], ...]
    outgoing: tuple[type[BaseModel], ...]  # what handlers return, besides chanx's own frames
    adapters: dict[str, TypeAdapter[Any] | None] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The names the accepted messages define: what an error's ``loc`` may show."""
        adapter = self.adapter("incoming")
        try:
            return _schema_names(adapter.json_schema()) if adapter else frozenset()
        except Exception:  # a type without a JSON schema: every key is hidden
            return frozenset()

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
    outgoing: list[type[BaseModel]] = []
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
            if (other := handlers[spec.kind].setdefault(action, handler)) is not handler:
                raise ChanxConfigError(
                    f"{cls.__qualname__}: two handlers for action {action!r}: "
                    f"{other.name} and {name}. Keep one."
                )
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
    ws, events, sent = (
        tuple(dict.fromkeys(m)) for m in (accepted["ws"], accepted["event"], outgoing)
    )
    return _ConsumerMeta(handlers["ws"], handlers["event"], ws, events, sent)


AsyncJsonWebsocketConsumer._chanx_meta = _ConsumerMeta({}, {}, (), (), ())


# The ORM's threads. Channels runs every thread-sensitive call (the async ORM,
# database_sync_to_async, sync_to_async) on asgiref's one thread, one at a time:
# a slow query holds every connection of the process, and a transaction held
# across awaits takes in the others' writes. Django's HTTP handler gives each
# request a thread; chanx gives each unit of work (a handshake, a frame, a layer
# message, the disconnect) one of ORM_THREADS, taken at its first
# thread-sensitive call and kept until it ends (first come, first served when
# all are held; a unit that never calls the ORM takes none). So a frame sees one
# connection per database, and a process opens at most ORM_THREADS per database.
# ORM_THREADS=None keeps Channels' shared thread, call by call.
#
# Hygiene costs no hop: close_old_connections(), sparing transactions, runs on
# the thread before a unit's first call and when the thread goes idle. Under
# CONN_MAX_AGE=0 connections close once no unit holds a thread (under load one
# serves unit after unit, as on Channels' shared thread); a psycopg pool's goes
# back after every unit; a failed one (a killed backend) is replaced.


class _OrmThread:
    """A thread of the pool: runs, in order, the calls of the unit holding it."""

    def __init__(self, name: str) -> None:
        self.calls = queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        self.calls.put((fn, future := Future[Any]()))
        return future

    def _serve(self) -> None:
        _POOL_THREAD.serving = True
        while True:
            fn, future = self.calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # raised in the awaiting coroutine
                    future.set_exception(exc)


class _OrmPool:
    """``ORM_THREADS`` threads (started as needed) and the units waiting for one; with
    ``None``, every unit shares asgiref's one thread."""

    def __init__(self, size: int | None) -> None:
        self.size, self.threads, self.free = size, list[_OrmThread](), list[_OrmThread]()
        self.waiting: deque[_OrmUnit] = deque()  # each with its calls, in order
        self.used: set[_OrmThread] = set()  # threads that served a unit since all were idle
        self.lock = threading.Lock()

    def submit(self, unit: _OrmUnit, fn: Callable[[], Any]) -> Future[Any]:
        with self.lock:
            if unit._exited:  # a task the unit started outlived it (asgiref refuses it too)
                raise RuntimeError("A database call after its frame ended; await it in there.")
            if unit.thread is None:
                if self.size is None:
                    unit.thread = SyncToAsync.single_thread_executor
                elif self.free or len(self.threads) < self.size:
                    if not self.free:
                        self.threads.append(_OrmThread(f"chanx-orm-{len(self.threads)}"))
                    unit.thread = self.free.pop() if self.free else self.threads[-1]
                else:
                    if not unit.pending:
                        self.waiting.append(unit)
                    unit.pending = [*unit.pending, (fn, future := Future[Any]())]
                    return future
                fn = functools.partial(_cleanly, fn, handoff=self.size is not None)
            return unit.thread.submit(fn)  # type: ignore[no-any-return]

    def release(self, unit: _OrmUnit) -> None:
        """``unit`` is done: its thread goes to the first unit waiting, else back."""
        with self.lock:
            unit._exited = True
            if unit.pending:  # cancelled while it waited
                self.waiting.remove(unit)
                for _, future in unit.pending:
                    future.cancel()
            thread, unit.thread = unit.thread, None
            if thread is None or self.size is None:
                return
            if not self.waiting:  # the thread goes idle
                self.free.append(thread)
                self.used.add(thread)
                if _closing_when_idle():  # a pooled connection goes back; all close once idle
                    idle = len(self.free) == len(self.threads)  # no unit holds a thread
                    for each in self.used if idle else (thread,):
                        each.submit(functools.partial(_close_old_connections, not idle))
                    self.used = set() if idle else self.used
                return
            waiter = self.waiting.popleft()
            waiter.thread, calls, waiter.pending = thread, waiter.pending, ()
            for i, (fn, future) in enumerate(calls):  # all it asked for meanwhile, in order
                fn = functools.partial(_cleanly, fn, handoff=True) if i == 0 else fn
                thread.calls.put((fn, future))


_POOLS: dict[int | None, _OrmPool] = {}  # by size: a settings change strands no unit


def _orm_pool() -> _OrmPool:
    size = chanx_settings.ORM_THREADS
    return _POOLS.get(size) or _POOLS.setdefault(size, _OrmPool(size))


class _OrmUnit(Executor):
    """One unit of work: asgiref's thread-sensitive context (and executor) while it
    lasts, so that its calls go to the thread it takes at the first of them."""

    _exited = False  # what asgiref asks of a thread-sensitive context
    thread: Any = None
    pending: Sequence[tuple[Callable[[], Any], Future[Any]]] = ()  # calls waiting for a thread

    def __init__(self, pool: _OrmPool | None) -> None:
        self.pool = pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        assert self.pool is not None
        return self.pool.submit(self, functools.partial(fn, *args, **kwargs))

    async def __aenter__(self) -> None:
        if asyncio.get_running_loop() in AsyncToSync.loop_thread_executors:
            self.pool = None  # sync code runs this loop (a TestCase): its thread, as asgiref does
            return
        unit: Any = self  # asgiref's types name its own context class
        self.token = SyncToAsync.thread_sensitive_context.set(unit)
        SyncToAsync.context_to_thread_executor[unit] = unit

    async def __aexit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            unit: Any = self
            SyncToAsync.thread_sensitive_context.reset(self.token)
            SyncToAsync.context_to_thread_executor.pop(unit, None)
            self.pool.release(self)


def _close_old_connections(handoff: bool = False) -> None:
    """``close_old_connections()`` on this thread, sparing transactions (in tests, the
    ``TestCase``'s); on a ``handoff``, sparing what ``CONN_MAX_AGE=0`` alone condemns."""
    wrappers: Sequence[Any] = connections.all(initialized_only=True)
    for conn in wrappers:
        if conn.in_atomic_block:
            continue
        db = conn.settings_dict
        sound = not conn.errors_occurred and conn.autocommit == db["AUTOCOMMIT"]
        if handoff and sound and db["CONN_MAX_AGE"] == 0 and not db["OPTIONS"].get("pool"):
            conn.health_check_done = False  # checked before its next query (health checks)
        else:
            conn.close_if_unusable_or_obsolete()


def _closing_when_idle() -> bool:
    """Whether a database's connections close when idle (``CONN_MAX_AGE=0``, a pool)."""
    return any(
        db["CONN_MAX_AGE"] == 0 or db["OPTIONS"].get("pool") for db in connections.settings.values()
    )


def _cleanly(fn: Callable[[], Any], handoff: bool = False) -> Any:
    _close_old_connections(handoff)
    return fn()


_POOL_THREAD = threading.local()


def _channels_cleanup() -> None:
    """Channels' ``database_sync_to_async`` closes stale connections around each call; on
    a pool thread the unit's hygiene does it, once per unit as Django's per request."""
    if not getattr(_POOL_THREAD, "serving", False):
        _django_close_old_connections()


channels.db.close_old_connections = _channels_cleanup


def _close_orm_connections(close: Callable[[], Any] | None = None) -> None:
    """Run ``close`` (default: ``connections.close_all``) on every ORM thread, the pools'
    and the shared one, and wait: for tests, and before a database is dropped."""
    threads: list[Any] = [t for pool in _POOLS.values() for t in pool.threads]
    threads.append(SyncToAsync.single_thread_executor)
    for future in [thread.submit(close or connections.close_all) for thread in threads]:
        future.result()


# Routing and discovery #######################################################

# Websocket routes use Django's own ``path`` / ``re_path`` (imported above):
# Channels' URLRouter routes with them.


def include(target: Any) -> Any:
    """``include("chat.routing")``: that module's ``router`` (a ``URLRouter``, or a list of
    routes); a module with Django ``urlpatterns`` goes to Django's ``include``, so
    ``include("chanx")`` also works in ``urls.py``. A router is returned as it is."""
    if isinstance(target, str):
        target = importlib.import_module(target)
    if not isinstance(target, types.ModuleType):
        return target
    router = getattr(target, "router", None)
    if router is None and hasattr(target, "urlpatterns"):
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
    def config(self) -> _Config | None:
        return _config_of(self.consumer)

    @property
    def incoming(self) -> tuple[type[BaseModel], ...]:
        return self.consumer._chanx_meta.incoming if self.config else ()

    @property
    def outgoing(self) -> tuple[type[BaseModel], ...]:
        return _sends(self.consumer)

    @property
    def wire(self) -> _Wire:
        return self.config.wire if self.config else _Wire()


#: A named group of a re_path, with one level of nested groups in it.
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*)\)")


def _pattern_segment(pattern: Any) -> tuple[str, dict[str, str]]:
    """A route's path with ``<name>`` placeholders, and the regex of each parameter."""
    route = getattr(pattern, "_route", None)
    if isinstance(route, str):  # path("<int:pk>/")
        converters = getattr(pattern, "converters", {})
        params = {name: converter.regex for name, converter in converters.items()}
        return re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route), params
    regex = getattr(pattern, "_regex", None)  # re_path("^(?P<pk>\d+)/$")
    regex = regex if isinstance(regex, str) else str(pattern)
    params = {match[1]: match[2] for match in _NAMED_GROUP.finditer(regex)}
    text = _NAMED_GROUP.sub(r"<\1>", regex).removesuffix("\\Z")
    return re.sub(r"\\(.)|[\^$?]", lambda m: m[1] or "", text), params


def _inner_application(app: Any) -> Any:
    """The application a middleware wraps (OriginValidator, AuthMiddleware, ...)."""
    for name in ("inner", "application", "app"):
        inner = getattr(app, name, None)
        if inner is not None and inner is not app:
            return inner
    return None


def _default_application() -> Any:
    """``ASGI_APPLICATION``, or a ChanxConfigError saying how to set it."""
    try:
        return get_default_application()
    except ImproperlyConfigured as exc:
        raise ChanxConfigError(
            f"{exc} chanx finds the websocket routes through settings.ASGI_APPLICATION: "
            "set it to your ASGI application, e.g. 'mysite.asgi.application'."
        ) from exc


def discover_routes(application: Any = None) -> list[RouteInfo]:
    """Every websocket endpoint of an application (default: ``ASGI_APPLICATION``),
    through ``ProtocolTypeRouter``, middleware and nested ``URLRouter``s."""
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
            name = info.get("name") or consumer.__name__
            found.append(RouteInfo("/" + prefix.lstrip("/"), params, consumer, name, doc))
        else:
            walk(_inner_application(app), prefix, params, depth + 1)

    walk(_default_application() if application is None else application, "", {}, 0)
    return found


@checks.register("chanx", checks.Tags.security)
def _check_origin(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check``: consumers that join groups need a channel layer (E002), and
    session cookies over a websocket need an Origin check (W001) that is not "*" (W002)."""
    if not getattr(settings, "ASGI_APPLICATION", None):
        return []
    try:
        app = _default_application()
        routes = discover_routes(app)
    except ChanxConfigError:
        return []  # Channels reports an ASGI_APPLICATION it cannot import
    found: list[checks.CheckMessage] = [
        checks.Error(
            f"{route.consumer.__qualname__} joins groups but no channel layer is configured.",
            hint="Set CHANNEL_LAYERS in settings (channels_redis, or the in-memory layer).",
            id="chanx.E002",
        )
        for route in routes
        if issubclass(route.consumer, AsyncJsonWebsocketConsumer)
        and not getattr(settings, "CHANNEL_LAYERS", None)
        if getattr(route.consumer, "groups", None)
        or route.consumer.build_groups is not AsyncJsonWebsocketConsumer.build_groups
    ]
    if isinstance(app, ProtocolTypeRouter) and "websocket" not in app.application_mapping:
        return found
    while app is not None and not isinstance(app, OriginValidator):
        mapping = getattr(app, "application_mapping", None)
        app = mapping.get("websocket") if isinstance(mapping, dict) else _inner_application(app)
    if app is None:
        found.append(
            checks.Warning(
                "No origin check found around the websocket application of "
                "ASGI_APPLICATION: any web page can open a websocket with your users' "
                "session cookies (cross-site websocket hijacking).",
                hint="Wrap it: AllowedHostsOriginValidator(AuthMiddlewareStack(router)). If "
                "another guard checks the Origin header, silence chanx.W001.",
                id="chanx.W001",
            )
        )
    elif "*" in app.allowed_origins:
        found.append(
            checks.Warning(
                "The websocket origin check accepts any origin (ALLOWED_HOSTS has '*'), "
                "so it stops no cross-site websocket hijacking.",
                hint="List your hosts in ALLOWED_HOSTS (or the OriginValidator).",
                id="chanx.W002",
            )
        )
    return found


# AsyncAPI ####################################################################


def _base_url(request: HttpRequest | None = None) -> str:
    """Where clients connect: ``WEBSOCKET_BASE_URL``, else chanx 2.x's
    ``ASYNCAPI_SERVER_PROTOCOL``://``ASYNCAPI_SERVER_URL``, else the host the
    request came to (``localhost:8000`` without a request)."""
    if chanx_settings.WEBSOCKET_BASE_URL:
        return str(chanx_settings.WEBSOCKET_BASE_URL)
    secure = request is not None and request.is_secure()
    protocol = chanx_settings.ASYNCAPI_SERVER_PROTOCOL or ("wss" if secure else "ws")
    host = chanx_settings.ASYNCAPI_SERVER_URL or (
        request.get_host() if request else "localhost:8000"
    )
    return f"{protocol}://{host}"


def _wire_schemas(
    models: Sequence[type[BaseModel]], wire: _Wire, suffix: str
) -> tuple[dict[type[BaseModel], str], dict[str, Any]]:
    """Component names (pydantic's, fit for a URL, with ``suffix``) and JSON schemas
    of ``models`` as they look on the wire."""
    models = list(dict.fromkeys(models))
    template = f"#/components/schemas/{{model}}{suffix}"
    refs, top = models_json_schema([(m, "validation") for m in models], ref_template=template)
    names = {m: refs[(m, "validation")]["$ref"].rsplit("/", 1)[-1] for m in models}
    frames = set(names.values())
    schemas = {
        name + suffix: wire.schema(schema, message=name + suffix in frames)
        for name, schema in top.get("$defs", {}).items()
    }
    return names, schemas


def _described(entry: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``entry`` with the ``fields`` that have a value (tags as AsyncAPI tag objects)."""
    if fields.get("tags"):
        fields["tags"] = [{"name": tag} for tag in fields["tags"]]
    return {**entry, **{key: value for key, value in fields.items() if value}}


def asyncapi_schema(
    routes: Sequence[RouteInfo] | None = None,
    *,
    title: str | None = None,
    version: str | None = None,
    description: str | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a dict): a channel per endpoint, the message models'
    JSON schemas as the frames look on the wire, and what each endpoint receives (an
    operation per handler, with its reply) and sends."""
    routes = [r for r in (discover_routes() if routes is None else routes) if r.config]
    models_by_wire: dict[_Wire, list[type[BaseModel]]] = {}
    for route in routes:
        models_by_wire.setdefault(route.wire, []).extend((*route.incoming, *route.outgoing))
    names: dict[tuple[_Wire, type[BaseModel]], str] = {}
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for i, (wire, wire_models) in enumerate(models_by_wire.items()):  # components per wire
        found, wire_schemas = _wire_schemas(wire_models, wire, f"_{i}" if i else "")
        schemas.update(wire_schemas)
        for model, name in found.items():
            names[wire, model] = name
            doc = inspect.getdoc(model) or ""
            doc = "" if doc == inspect.getdoc(BaseMessage) else doc
            entry = {
                "name": ", ".join(_message_actions(model)) or model.__name__,
                "title": model.__name__,
                "payload": {"$ref": f"#/components/schemas/{name}"},
            }
            messages[name] = _described(entry, summary=doc.split("\n")[0], description=doc)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for route in routes:
        cid = re.sub(r"[^\w.\-]", "_", route.name)
        while cid in channels:
            cid += "_"
        ref = {"$ref": f"#/channels/{cid}"}
        own = {m: names[route.wire, m] for m in (*route.incoming, *route.outgoing)}
        params = {
            n: {"description": f"Path parameter matching {p}"} for n, p in route.path_params.items()
        }
        channel = {
            "address": route.address,
            "title": route.name,
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in own.values()},
        }
        info = getattr(route.consumer, "__chanx_channel__", {})
        channels[cid] = _described(
            channel, description=route.description, tags=info.get("tags"), parameters=params
        )

        def refs(models: Iterable[type[BaseModel]]) -> list[dict[str, str]]:
            return [{"$ref": f"#/channels/{cid}/messages/{own[m]}"} for m in models]  # noqa: B023

        handled: set[type[BaseModel]] = set()
        for handler in dict.fromkeys(route.consumer._chanx_meta.ws_handlers.values()):
            accepts = [
                m for m in handler.accepts if set(_message_actions(m)) & set(handler.actions)
            ]
            handled.update(accepts)
            spec, reply = handler.spec, {"channel": ref, "messages": refs(handler.returns)}
            operations[f"{cid}.{handler.name}"] = _described(
                {"action": "receive", "channel": ref, "messages": refs(accepts)},
                summary=spec.summary, description=spec.description, tags=spec.tags,
                reply=reply if handler.returns else None,
            )  # fmt: skip
        unhandled = tuple(m for m in route.incoming if m not in handled)
        for action, models in (("receive", unhandled), ("send", route.outgoing)):
            for model in models:
                operation = {"action": action, "channel": ref, "messages": refs([model])}
                operations[f"{cid}.{action}.{own[model]}"] = operation
    protocol, _, host = (base_url or _base_url()).partition("://")
    server = {"host": host.rstrip("/") or protocol, "protocol": protocol if host else "ws"}
    info = {
        "title": title or chanx_settings.ASYNCAPI_TITLE,
        "version": version or chanx_settings.ASYNCAPI_VERSION,
    }
    text = chanx_settings.ASYNCAPI_DESCRIPTION if description is None else description
    return {
        "asyncapi": "3.0.0",
        "info": _described(info, description=text),
        "servers": {"default": server},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


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
    if schema.get("type") == "object" or "properties" in schema:
        return {
            name: _example(sub, defs, depth + 1)
            for name, sub in schema.get("properties", {}).items()
        }
    if schema.get("type") == "array":
        return [_example(schema["items"], defs, depth + 1)] if "items" in schema else []
    return {"string": "", "integer": 0, "number": 0, "boolean": False}.get(str(schema.get("type")))


def _route_summary(route: RouteInfo) -> dict[str, Any]:
    """An endpoint for the playground, with a template per message it accepts."""
    wire, messages = route.wire, []
    for model in route.incoming:
        schema = model.model_json_schema()
        defs = {k: wire.schema(v, message=False) for k, v in schema.pop("$defs", {}).items()}
        schema = wire.schema(schema, message=True)
        doc = inspect.getdoc(model) or ""
        messages.append(
            {
                "action": ", ".join(_message_actions(model)),
                "name": model.__name__,
                "description": "" if doc == inspect.getdoc(BaseMessage) else doc,
                "example": _example(schema, defs),
                "schema": {**schema, "$defs": defs} if defs else schema,
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


# Playground ##################################################################

_PLAYGROUND_HTML = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>chanx websocket playground</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<style>
*{box-sizing:border-box} body{margin:0;font:14px/1.45 system-ui,sans-serif;background:#f3f5f8}
header{display:flex;padding:10px 20px;background:#1f2430;color:#fff} header a{color:#9cc4ff}
h1{margin:0 auto 0 0;font-size:17px} h2{margin:4px 0 0;font-size:12px;color:#6b7385}
main{display:grid;grid-template-columns:minmax(320px,440px) 1fr;gap:16px;padding:16px 20px}
section{display:flex;flex-direction:column;gap:8px;min-width:0;padding:14px 16px;
  background:#fff;border:1px solid #dde2ea;border-radius:8px}
input,select,textarea{width:100%;padding:6px 8px;font:inherit} input.bad{border-color:#d33}
textarea{min-height:170px}
pre,#url,textarea{font:12.5px/1.4 monospace;white-space:pre-wrap;margin:0}
label,.hint,#description{font-size:12px;color:#4a5163} .row{display:flex;gap:8px}
#status{margin-left:auto} #status.open{color:#17692f} #status.closed{color:#9b1c1c}
#log{display:flex;flex-direction:column;gap:6px;overflow:auto;max-height:calc(100vh - 150px)}
.entry{border-left:4px solid #9aa3b5;background:#f7f8fb;padding:5px 10px}
.sent{border-color:#2f6fde} .received{border-color:#1f9d55} .err{border-color:#d33}
.meta{display:flex;gap:10px;font-size:12px;color:#6b7385}
@media (max-width:860px){main{grid-template-columns:1fr}}
</style></head>
<body data-routes-url="{{ROUTES_URL}}">
<header><h1>chanx websocket playground</h1>
<a id="asyncapi" href="{{ASYNCAPI_URL}}" target="_blank">AsyncAPI document</a></header>
<main><section><h2>Endpoint</h2>
<select id="endpoint" aria-label="Endpoint"></select>
<p id="description"></p><div id="params"></div>
<label for="query">Query string (optional)</label><input id="query" autocomplete="off">
<label for="token">Authorization, e.g. "Token abc" (optional; sent as the chanx.auth
subprotocol)</label><input id="token" autocomplete="off"><div id="url"></div>
<div class="row"><button id="connect">Connect</button>
<button id="disconnect" disabled>Disconnect</button><span id="status">disconnected</span></div>
<h2>Message</h2><select id="template" aria-label="Message template"></select>
<textarea id="message" spellcheck="false" aria-label="Message"></textarea>
<div class="row"><button id="send" disabled>Send</button>
<span class="hint">Ctrl+Enter sends; the text is sent as is</span></div></section>
<section><div class="row"><h2>Log</h2><button id="clear">Clear</button></div>
<div id="log" aria-live="polite"></div></section></main>
<script>
"use strict";  // What the server or the user wrote is shown with textContent, never as HTML.
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) =>
  Object.assign(document.createElement(tag), {className: cls || "", textContent: text || ""});
const LABELS = {sent: "\u2192 sent", received: "\u2190 received", system: "system"};
const b64url = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
let routes = [], baseUrl = "", ws = null;
const current = () => routes[$("endpoint").value] || null;
const params = () => [...$("params").querySelectorAll("input")];

function log(kind, text) {
  const entry = el("div", "entry " + kind), meta = el("div", "meta");
  meta.append(el("b", "", LABELS[kind]), el("span", "", new Date().toISOString().slice(11, 23)));
  let body = text, frame = null;
  try { frame = kind === "system" ? null : JSON.parse(text); } catch (e) { frame = null; }
  if (frame !== null) body = JSON.stringify(frame, null, 2);
  const action = frame && typeof frame === "object" && Object.values(frame)[0];
  if (typeof action === "string") meta.append(el("span", "action", action));
  const status = frame && frame.payload && (frame.payload.status_code || frame.payload.statusCode);
  if (kind === "received" && (action === "error" || status >= 400)) entry.classList.add("err");
  entry.append(meta, el("pre", "", body));
  $("log").append(entry);
  $("log").scrollTop = $("log").scrollHeight;
}
function setStatus(state, text) {
  Object.assign($("status"), {className: state, textContent: text || state});
  $("connect").disabled = state === "open" || state === "connecting";
  $("disconnect").disabled = !$("connect").disabled;
  $("send").disabled = state !== "open";
}
function buildUrl() {
  let addr = (current() || {}).address || "";
  for (const input of params()) {
    addr = addr.split("{" + input.dataset.name + "}").join(encodeURIComponent(input.value));
  }
  let base = baseUrl || (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
  if (base.endsWith("/") && addr.startsWith("/")) base = base.slice(0, -1);
  const query = $("query").value.trim().replace(/^[?]/, "");
  return base + addr + (query ? "?" + query : "");
}
function paramsOk() {  // filled in, and matching the route's regex where JavaScript can tell
  let ok = true;
  for (const input of params()) {
    let good = input.value !== "";
    try { good = good && new RegExp("^(?:" + input.placeholder + ")$").test(input.value); }
    catch (e) { /* a Python-only regex */ }
    input.classList.toggle("bad", !good);
    ok = ok && good;
  }
  $("url").textContent = buildUrl();
  return ok;
}
function selectEndpoint() {  // a socket stays with its endpoint: switching closes it
  if (ws) { log("system", "switched endpoint: closing the connection"); ws.close(1000); }
  const r = current();
  $("description").textContent = r ? r.description : "";
  $("params").replaceChildren();
  for (const p of (r && r.path_params) || []) {
    const input = Object.assign(el("input"), {id: "param-" + p.name, placeholder: p.pattern});
    input.dataset.name = p.name;
    input.addEventListener("input", paramsOk);
    $("params").append(Object.assign(el("label", "", p.name), {htmlFor: input.id}), input);
  }
  const label = (m) => m.action + " \u2014 " + m.name;
  const options = ((r && r.messages) || []).map((m, i) => new Option(label(m), i));
  $("template").replaceChildren(...options, new Option("(custom message)", ""));
  selectTemplate();
  $("url").textContent = buildUrl();
}
function selectTemplate() {
  const r = current(), i = $("template").value, m = r && i !== "" ? r.messages[Number(i)] : null;
  $("message").value = m ? JSON.stringify(m.example ?? null, null, 2) : "";
  $("message").title = (m && m.description) || "";
}
function connect() {
  if (!paramsOk()) return log("system", "fill in every path parameter (in red) first");
  const url = buildUrl(), token = $("token").value.trim();
  const protocols = ["chanx", ...(token ? ["chanx.auth." + b64url(token)] : [])];
  const sock = ws = new WebSocket(url, protocols);
  setStatus("connecting", "connecting\u2026");
  log("system", "connecting to " + url);
  sock.onopen = () => ws === sock && (setStatus("open"), log("system", "connection open"));
  sock.onmessage = (ev) => log("received", String(ev.data));
  sock.onerror = () => log("system", "websocket error");
  sock.onclose = (ev) => {
    const text = "closed (code " + ev.code + (ev.reason ? ": " + ev.reason : "") + ")";
    log("system", text);
    if (ws === sock) { ws = null; setStatus("closed", text); }
  };
}
function send() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return log("system", "not connected");
  ws.send($("message").value);
  log("sent", $("message").value);
}
$("endpoint").onchange = selectEndpoint;
$("template").onchange = selectTemplate;
$("query").oninput = paramsOk;
$("connect").onclick = connect;
$("disconnect").onclick = () => ws && ws.close(1000, "closed by user");
$("send").onclick = send;
$("clear").onclick = () => $("log").replaceChildren();
$("message").oninput = () => { $("template").value = ""; };
$("message").onkeydown = (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
};
fetch(document.body.dataset.routesUrl, {credentials: "same-origin"})
  .then(async (res) => {
    const data = await res.json();
    if (!res.ok) throw new Error(data.detail || "HTTP " + res.status);
    baseUrl = data.base_url || "";
    routes = data.routes || [];
    const label = (r) => r.path + "  (" + r.name + ")";
    $("endpoint").replaceChildren(...routes.map((r, i) => new Option(label(r), i)));
    if (!routes.length) log("system", "no websocket routes found");
    selectEndpoint();
  })
  .catch((e) => log("system", "failed to load the routes: " + e.message));
</script></body></html>"""


def _playground_endpoint(
    view: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Answer allowed users only (404 otherwise, per ``PLAYGROUND_ACCESS``); a
    configuration error says what is missing, any other exception stays in the log."""

    @functools.wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        access, user = chanx_settings.PLAYGROUND_ACCESS, getattr(request, "user", None)
        staff = bool(user is not None and user.is_active and user.is_staff)
        allowed = {"public": True, "staff": staff, "debug_or_staff": staff or settings.DEBUG}
        if not allowed.get(access):  # "off": nobody
            raise Http404("Not found")
        try:
            return view(request)
        except SuspiciousOperation:  # a bad Host: Django's 400, logged to django.security
            raise
        except Exception as exc:
            logger.exception("Playground endpoint failed")
            known = isinstance(exc, ChanxConfigError)  # it says what is missing
            detail = str(exc) if known else "Could not build the websocket description."
            return JsonResponse({"detail": detail}, status=500)

    return guarded


@_playground_endpoint
def playground_view(request: HttpRequest) -> HttpResponse:
    """The playground page: pick an endpoint, connect, send, read the log."""
    match = request.resolver_match
    namespace = f"{match.namespace}:" if match and match.namespace else ""
    page = _PLAYGROUND_HTML.replace(
        "{{ROUTES_URL}}", html.escape(reverse(f"{namespace}chanx-routes"))
    )
    page = page.replace("{{ASYNCAPI_URL}}", html.escape(reverse(f"{namespace}chanx-asyncapi")))
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self' ws: wss:; img-src 'self' data:"
    )
    return response


@_playground_endpoint
def routes_view(request: HttpRequest) -> HttpResponse:
    """The endpoints as JSON, with a message template per accepted message."""
    routes = [_route_summary(route) for route in discover_routes() if route.config is not None]
    return JsonResponse({"base_url": chanx_settings.WEBSOCKET_BASE_URL or "", "routes": routes})


@_playground_endpoint
def asyncapi_view(request: HttpRequest) -> HttpResponse:
    """The AsyncAPI 3.0 document; ``?format=yaml`` serves it as YAML (JSON is YAML 1.2)."""
    yaml = request.GET.get("format") == "yaml"
    text = json.dumps(asyncapi_schema(base_url=_base_url(request)), indent=2)
    return HttpResponse(text, content_type="application/yaml" if yaml else "application/json")


#: ``path("playground/", include("chanx"))`` in urls.py serves these (the last
#: two under chanx 2.x's URL names).
urlpatterns = [
    path("websocket/", playground_view, name="chanx-playground"),
    path("routes.json", routes_view, name="chanx-routes"),
    path("asyncapi.json", asyncapi_view, name="chanx-asyncapi"),
    path("schema/", asyncapi_view, name="asyncapi_schema"),
    path("docs/", playground_view, name="asyncapi_docs"),
]


# Testing #####################################################################


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
    """Record the events broadcast or sent inside the block (``suppress``: not sent), as
    ``CapturedEvent``s: ``with capture_events(ChatConsumer) as events: ...``."""
    entry: tuple[list[CapturedEvent], type[Any] | None, bool] = ([], consumer, suppress)
    _CAPTURES.append(entry)
    try:
        yield entry[0]
    finally:
        _CAPTURES.remove(entry)


def capture_broadcast_events(
    consumer: type[Any], suppress: bool = True
) -> contextlib.AbstractContextManager[list[CapturedEvent]]:
    """chanx 2.x's name: ``capture_events`` (suppressing by default)."""
    return capture_events(consumer, suppress=suppress)


class WebsocketCommunicator(ApplicationCommunicator):
    """Drives a websocket application in tests as a client would, on the consumer's wire.

    Every wait ends on a frame or a timeout; a failure shows what arrived. ``user=``
    forces the authenticated user (DRF's ``force_authenticate``; permissions apply).
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
        parsed, headers = urlparse(path), list(headers or [])
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
        if user is not None:  # honoured until this communicator disconnects (or is gone)
            key = scope[_FORCE_USER_KEY] = uuid.uuid4().hex
            _FORCED_USERS[key] = user
            weakref.finalize(self, _FORCED_USERS.pop, key, None)
        super().__init__(application, scope)  # type: ignore[no-untyped-call]
        self.consumer = consumer or _consumer_at(application, scope["path"])
        self.received: list[Any] = []  # every frame read, for failure messages
        self._ahead: deque[ASGIMessage] = deque()  # read, not yet consumed, in order

    @property
    def _wire(self) -> _Wire:
        if config := _config_of(self.consumer):
            return config.wire
        return _Wire(chanx_settings.CAMELIZE, chanx_settings.MESSAGE_ACTION_KEY)

    async def _next(self, timeout: float) -> ASGIMessage | None:
        """The next message the application sent, or None after ``timeout``."""
        if self._ahead:
            return self._ahead.popleft()
        getter = asyncio.ensure_future(self.output_queue.get())
        await asyncio.wait({getter, self.future}, timeout=timeout, return_when="FIRST_COMPLETED")
        if getter.done():
            message: ASGIMessage = getter.result()
            return message
        getter.cancel()
        if self.future.done():
            self.future.result()  # raise the application's exception, if any
            raise AssertionError(f"The application exited; received so far: {self.received}")
        return None

    async def _peek(self, timeout: float) -> ASGIMessage | None:
        """The next message the application sent, left unread; None after ``timeout``."""
        output = await self._next(timeout)
        if output is not None:
            self._ahead.appendleft(output)
        return output

    async def _until(
        self, done: Callable[[ASGIMessage, Any], bool], timeout: float, failure: str
    ) -> tuple[list[Any], ASGIMessage]:
        """Frames read until ``done(message, frame)``, and that last message."""
        deadline, frames = time.monotonic() + timeout, list[Any]()
        while (output := await self._next(max(deadline - time.monotonic(), 0))) is not None:
            frame = None
            if output["type"] == "websocket.send":
                frame = json.loads(
                    output.get("text") or output.get("bytes") or "null", parse_constant=_not_json
                )
                frames.append(frame)
                self.received.append(frame)
            if done(output, frame):
                return frames, output
        raise AssertionError(f"{failure} within {timeout}s; received so far: {self.received}")

    async def _input(self, message: ASGIMessage) -> None:
        await self.send_input(message)  # type: ignore[no-untyped-call]

    async def connect(self, timeout: float = 1.0) -> tuple[bool, Any]:
        """Open the socket: (True, subprotocol) when accepted, else (False, close code)."""
        await self._input({"type": "websocket.connect"})
        _, response = await self._until(
            lambda message, frame: True, timeout, "No answer to connect"
        )
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        return True, response.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Send one text or binary frame."""
        frame = {"text": text_data} if text_data is not None else {"bytes": bytes_data or b""}
        await self._input({"type": "websocket.receive", **frame})

    async def send_json_to(self, data: Any) -> None:
        await self.send_to(text_data=json.dumps(data))

    async def send_message(self, message: BaseMessage, *, ref: Ref = None) -> None:
        """Send a message as a client would, with a ``ref`` to match what it causes."""
        data = self._wire.out(message.model_dump(mode="json"))
        await self.send_json_to(data if ref is None else {**data, "ref": ref})

    async def receive_json_from(self, timeout: float = 1.0) -> Any:
        """The next frame, decoded; fails if none arrives within ``timeout``."""
        frames, last = await self._until(lambda message, frame: True, timeout, "No frame")
        if last["type"] != "websocket.send":
            self._ahead.appendleft(last)
            raise AssertionError(f"Expected a frame but got {last}; received: {self.received}")
        return frames[-1]

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0) -> bool:
        """True when nothing arrives within ``timeout`` (``interval``: unused, no polling)."""
        return await self._peek(timeout) is None

    async def receive_until_action(
        self, action: str, *, timeout: float = 1.0, inclusive: bool = False, ref: Ref = None
    ) -> list[Any]:
        """Frames up to the first with ``action`` (and ``ref``): kept when ``inclusive``."""
        key = self._wire.key

        def done(message: ASGIMessage, frame: Any) -> bool:
            if not isinstance(frame, dict):
                return frame is None  # the socket closed
            return frame.get(key) == action and (ref is None or frame.get("ref") == ref)

        frames, last = await self._until(done, timeout, f"Expected a {action!r} frame")
        if last["type"] != "websocket.send":
            self._ahead.appendleft(last)
            raise AssertionError(
                f"Expected a {action!r} frame but got {last}; received: {self.received}"
            )
        return frames if inclusive else frames[:-1]

    async def receive_all_json(
        self, timeout: float = 1.0, stop_action: str | None = ACTION_COMPLETE, *, ref: Ref = None
    ) -> list[Any]:
        """Frames until ``stop_action`` (not included). With ``stop_action=None``,
        every frame that arrives before the line is quiet for ``timeout``."""
        if stop_action is not None:
            return await self.receive_until_action(stop_action, timeout=timeout, ref=ref)
        frames = []
        while (output := await self._peek(timeout)) and output["type"] == "websocket.send":
            frames.append(await self.receive_json_from())
        return frames

    async def receive_all_messages(
        self, stop_action: str | None = ACTION_COMPLETE, timeout: float = 1.0, *, ref: Ref = None
    ) -> list[BaseMessage]:
        """Typed messages until ``stop_action``, as in chanx 2.x: completion frames
        are left out and a ``stop_action`` frame that is not one is included."""
        if stop_action is None:
            frames = await self.receive_all_json(timeout, None)
        else:  # a completion frame is read, then left out with the others
            frames = await self.receive_until_action(
                stop_action, timeout=timeout, inclusive=True, ref=ref
            )
        key = self._wire.key
        return [self.to_message(f) for f in frames if f.get(key) not in _COMPLETION_ACTIONS]

    def to_message(self, data: Any) -> BaseMessage:
        """A received frame as its message class (the consumer's types first)."""
        data = self._wire.into(data)
        action = data.get("action") if isinstance(data, dict) else None
        sent = _sends(self.consumer)
        declared = [m for m in sent if issubclass(m, BaseMessage) and action in _message_actions(m)]
        for model in [*declared, *reversed(_MESSAGE_REGISTRY.get(str(action), []))]:
            try:
                return model.model_validate(data)
            except ValidationError:
                continue
        raise AssertionError(f"No message class matches the frame {data!r}.")

    async def wait_for_auth(
        self, send_authentication_message: bool | None = None, max_auth_time: float = 1.0
    ) -> AuthenticationMessage | None:
        """The authentication frame (None, at once, when the consumer sends none)."""
        if send_authentication_message is None:
            config = _config_of(self.consumer)
            default = chanx_settings.SEND_AUTHENTICATION_MESSAGE
            send_authentication_message = config.send_authentication_message if config else default
        if not send_authentication_message:
            return None
        frame = await self.receive_json_from(max_auth_time)
        try:
            return AuthenticationMessage.model_validate(self._wire.into(frame))
        except ValidationError:
            raise AssertionError(f"Expected the authentication frame, got {frame}") from None

    async def assert_authenticated_status_ok(self, timeout: float = 1.0) -> None:
        """The next frame is the authentication frame with status 200."""
        message = await self.wait_for_auth(True, timeout)
        if message is None or message.payload.status_code != 200:
            raise AssertionError(
                f"Expected a successful authentication frame, got {self.received[-1]}"
            )

    async def assert_closed(self, code: int | None = None, timeout: float = 1.0) -> None:
        """The application closes the socket (with ``code`` when given) within ``timeout``."""
        closed = lambda message, frame: message["type"] == "websocket.close"  # noqa: E731
        _, close = await self._until(closed, timeout, "The socket was not closed")
        got = close.get("code", 1000)
        if code is not None and got != code:
            raise AssertionError(
                f"Closed with code {got}, expected {code}; received: {self.received}"
            )

    async def disconnect(self, code: int = 1000, timeout: float = 1.0) -> None:
        """Close from the client side and wait for the application to finish."""
        _FORCED_USERS.pop(self.scope.get(_FORCE_USER_KEY, ""), None)
        if not self.future.done():
            await self._input({"type": "websocket.disconnect", "code": code})
            await asyncio.wait({self.future}, timeout=timeout)
            if not self.future.done():
                self.future.cancel()
                await asyncio.wait({self.future})


def _not_json(constant: str) -> Any:
    raise AssertionError(f"A frame has {constant}, which a browser's JSON.parse refuses.")


_COMPLETION_ACTIONS = frozenset((ACTION_COMPLETE, GROUP_ACTION_COMPLETE, EVENT_ACTION_COMPLETE))


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


class _WebsocketTestCase:
    """A Django ``TestCase`` for websocket consumers (``WebsocketTestCase``).

    ``ws_path`` goes through the project's websocket application unless
    ``application`` (2.x: ``router``) is set; ``consumer`` types the messages read.
    Communicators use ``get_ws_headers()``, ``get_ws_query_string()`` and
    ``get_subprotocols()`` (run after ``setUp``, in sync code: the ORM is fine) unless
    given others; ``auth_communicator`` is the first; all disconnect at the end.

    ``TestCase`` for its speed, and so that consumers see ``setUp`` data: the ORM's
    calls run on the test's thread and connection, inside its transaction, which
    chanx (and, during the test, Channels' ``database_sync_to_async``) never closes.
    Code in other threads has its own connection: use ``django_db(transaction=True)``.
    """

    ws_path: str = ""
    consumer: type[Any] | None = None
    application: Any = None
    router: Any = None
    _credentials: tuple[list[tuple[bytes, bytes]], str, list[str]] | None = None

    def __init__(self, methodName: str = "runTest") -> None:
        super().__init__(methodName)  # type: ignore[call-arg]
        self._communicators: list[WebsocketCommunicator] = []
        test = getattr(self, methodName, None)
        if inspect.iscoroutinefunction(test):

            @functools.wraps(test)
            async def run_then_disconnect() -> None:
                try:
                    await test()
                finally:
                    await self.disconnect_all()

            setattr(self, methodName, run_then_disconnect)

    def _callTestMethod(self, method: Any) -> None:
        from unittest import mock

        self._ws_credentials()
        with mock.patch.object(channels.db, "close_old_connections", _close_old_connections):
            super()._callTestMethod(method)  # type: ignore[misc]

    def _ws_credentials(self) -> tuple[list[tuple[bytes, bytes]], str, list[str]]:
        if self._credentials is None:
            headers, query = list(self.get_ws_headers()), self.get_ws_query_string()
            self._credentials = (headers, query, list(self.get_subprotocols()))
        return self._credentials

    def get_ws_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers of the test's communicators (e.g. a token or a session cookie)."""
        return []

    def get_ws_query_string(self) -> str:
        """Query string of the test's communicators (e.g. ``"token=..."``)."""
        return ""

    def get_subprotocols(self) -> list[str]:
        """Subprotocols the test's communicators offer."""
        return []

    def get_application(self) -> Any:
        if self.application is not None or self.router is not None:
            return self.application or self.router
        if self.consumer is not None and not getattr(settings, "ASGI_APPLICATION", None):
            return self.consumer.as_asgi()
        return _default_application()

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
        default_headers, query, default_protocols = self._ws_credentials()
        target, query = ws_path or self.ws_path, query if query_string is None else query_string
        if query:
            target = f"{target}{'&' if '?' in target else '?'}{query}"
        communicator = WebsocketCommunicator(
            self.get_application(),
            target,
            default_headers if headers is None else headers,
            default_protocols if subprotocols is None else subprotocols,
            user=user,
            consumer=self.consumer,
        )
        self._communicators.append(communicator)
        return communicator

    @property
    def auth_communicator(self) -> WebsocketCommunicator:
        """The first communicator of the test (made with the defaults on first use)."""
        return self._communicators[0] if self._communicators else self.create_communicator()

    async def disconnect_all(self) -> None:
        """Disconnect every communicator this test created."""
        for communicator in self._communicators:
            await communicator.disconnect()
        self._communicators.clear()


if typing.TYPE_CHECKING:

    class WebsocketTestCase(_WebsocketTestCase, TestCase): ...


@functools.cache
def _websocket_test_case() -> type[Any]:
    from django.test import TestCase

    namespace = {"__doc__": _WebsocketTestCase.__doc__, "__module__": __name__}
    return type("WebsocketTestCase", (_WebsocketTestCase, TestCase), namespace)


_LAZY: dict[str, Callable[[], Any]] = {
    "ChanxSerializer": lambda: _drf_classes()[0],
    "ChanxAuthView": lambda: _drf_classes()[1],
    "WebsocketTestCase": _websocket_test_case,  # django.test is imported only by tests
}


def __getattr__(name: str) -> Any:  # PEP 562: public names built on first use
    if name in _LAZY:
        return _LAZY[name]()
    raise AttributeError(f"module 'chanx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


# Command line ################################################################


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chanx routes`` lists the endpoints, ``asyncapi`` prints the document."""
    # options that go before or after the command (an unset one hides no value given)
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--settings", help="e.g. mysite.settings")
    common.add_argument("--pythonpath", help="e.g. manage.py's directory")
    parser = argparse.ArgumentParser("python -m chanx", parents=[common], description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("routes", parents=[common], help="list the websocket endpoints")
    document = commands.add_parser("asyncapi", parents=[common], help="print the AsyncAPI document")
    document.add_argument(
        "--format", choices=("json", "yaml"), default="json",
        help="json (default) or yaml: both print JSON, which is valid YAML 1.2",
    )  # fmt: skip
    document.add_argument(
        "--base-url", help="where clients connect (default ws://localhost:8000; the AsyncAPI "
        "view uses the host of its request)",
    )  # fmt: skip
    for option in ("--file", "--title", "--api-version", "--description"):
        document.add_argument(option)
    args = parser.parse_args(argv)
    if getattr(args, "settings", None):
        os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        parser.error("DJANGO_SETTINGS_MODULE is not set: pass --settings mysite.settings")
    sys.path.insert(0, os.path.abspath(getattr(args, "pythonpath", None) or os.getcwd()))
    try:
        django.setup()
    except ImportError as exc:
        module = os.environ["DJANGO_SETTINGS_MODULE"]
        hint = "pass --pythonpath (the directory of manage.py)"
        parser.error(f"cannot load the settings {module!r}: {exc}; {hint}")
    if args.command == "routes":
        for route in discover_routes():
            consumer = f"{route.consumer.__module__}.{route.consumer.__qualname__}"
            summary = route.description.splitlines()[0] if route.description else ""
            print(f"{route.path}\t{consumer}\t{summary}".rstrip())
        return 0
    options = {"title": args.title, "version": args.api_version, "description": args.description}
    text = json.dumps(asyncapi_schema(base_url=args.base_url, **options), indent=2)
    if args.file:
        with open(args.file, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    import chanx  # the importable module, not this __main__ copy

    sys.exit(chanx.main())
