"""The streaming assistant: ws/assistants/<uuid>/ and the HTTP API that feeds it."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth import get_user_model
from django.test import override_settings

from assistants.consumers import ConversationAssistantConsumer
from assistants.generator import reply_for
from assistants.messages import (
    CompleteStreamingEvent,
    NewAssistantMessageEvent,
    StreamingEvent,
)
from assistants.models import Conversation, ConversationMessage
from chanx import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    EVENT_ACTION_COMPLETE,
    PingMessage,
    PongMessage,
    WebsocketCommunicator,
    WebsocketTestCase,
    capture_events,
)
from config.testing import session_headers

User = get_user_model()


def conversation_path(conversation: Conversation | uuid.UUID) -> str:
    pk = conversation.pk if isinstance(conversation, Conversation) else conversation
    return f"/ws/assistants/{pk}/"


def messages_url(conversation: Conversation) -> str:
    return f"/api/assistants/conversations/{conversation.pk}/messages/"


async def receive_reply(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Frames up to and including `complete_streaming`, without the event_complete markers."""
    frames = await communicator.receive_until_action("complete_streaming", inclusive=True)
    return [f for f in frames if f["action"] != EVENT_ACTION_COMPLETE]


@override_settings(ASSISTANT_TOKEN_DELAY=0)
class ConversationConsumerTests(WebsocketTestCase):
    consumer = ConversationAssistantConsumer

    def setUp(self) -> None:
        super().setUp()
        self.alice = User.objects.create_user("alice")
        self.bob = User.objects.create_user("bob")
        self.owned = Conversation.objects.create(user=self.alice, title="Alice's")
        self.anonymous = Conversation.objects.create(user=None)
        self.ws_path = conversation_path(self.owned)
        self.headers = session_headers(self.async_client, self.alice)

    def get_ws_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers

    async def test_owner_connects_and_pings(self) -> None:
        await self.auth_communicator.connect()
        await self.auth_communicator.assert_authenticated_status_ok()
        await self.auth_communicator.send_message(PingMessage())
        assert await self.auth_communicator.receive_all_messages() == [PongMessage()]

    async def test_anonymous_conversation_is_open_without_login(self) -> None:
        communicator = self.create_communicator(
            ws_path=conversation_path(self.anonymous),
            headers=[],  # no session cookie
        )
        await communicator.connect()
        await communicator.assert_authenticated_status_ok()

    async def test_someone_elses_conversation_is_refused(self) -> None:
        communicator = self.create_communicator(user=self.bob)
        await communicator.connect()
        frame = await communicator.receive_json_from()
        assert frame["payload"]["status_code"] == 403
        await communicator.assert_closed(code=CLOSE_FORBIDDEN)

    async def test_missing_conversation_is_not_found(self) -> None:
        communicator = self.create_communicator(ws_path=conversation_path(uuid.uuid4()))
        await communicator.connect()
        frame = await communicator.receive_json_from()
        assert frame["payload"]["status_code"] == 404
        await communicator.assert_closed(code=CLOSE_NOT_FOUND)

    async def test_posted_message_streams_the_reply_token_by_token(self) -> None:
        await self.auth_communicator.connect()
        await self.auth_communicator.assert_authenticated_status_ok()

        response = await self.async_client.post(
            messages_url(self.owned), {"content": "hello there"}, content_type="application/json"
        )
        assert response.status_code == 201, response.content

        expected = reply_for("hello there")
        frames = await receive_reply(self.auth_communicator)
        user_entry, *tokens, complete = frames
        message_id = response.json()["message"]["id"]
        assert user_entry == {
            "action": "new_assistant_message",
            "payload": {"id": message_id, "role": "user", "content": "hello there"},
        }
        assert {f["action"] for f in tokens} == {"streaming"}
        words = [f["payload"]["content"] for f in tokens]
        assert len(words) == len(expected.split()) and "".join(words) == expected
        assert all(f["payload"]["message_id"] == message_id for f in tokens)
        assert complete["action"] == "complete_streaming"
        assert complete["payload"]["reply"]["content"] == expected
        assert response.json()["reply"] == complete["payload"]["reply"]

    async def test_anonymous_conversation_streams_to_anonymous_watchers(self) -> None:
        watcher = self.create_communicator(
            ws_path=conversation_path(self.anonymous),
            headers=[],  # not logged in
        )
        await watcher.connect()
        await watcher.assert_authenticated_status_ok()
        async_client = self.async_client_class()  # not logged in
        response = await async_client.post(
            messages_url(self.anonymous), {"content": "hi"}, content_type="application/json"
        )
        assert response.status_code == 201
        frames = await receive_reply(watcher)
        assert frames[-1]["payload"]["reply"]["content"] == reply_for("hi")

    def test_http_flow_broadcasts_events_in_order(self) -> None:
        # No websocket needed: capture what the view broadcasts.
        with capture_events(ConversationAssistantConsumer, suppress=True) as events:
            self.client.force_login(self.alice)
            response = self.client.post(
                messages_url(self.owned), {"content": "one two"}, content_type="application/json"
            )
        assert response.status_code == 201
        kinds = [type(e.event) for e in events]
        assert kinds[0] is NewAssistantMessageEvent
        assert kinds[-1] is CompleteStreamingEvent
        assert set(kinds[1:-1]) == {StreamingEvent}
        assert {tuple(e.groups) for e in events} == {
            (f"user_{self.alice.pk}_conversation_{self.owned.pk}",)
        }
        tokens = [e.event.payload.content for e in events[1:-1]]
        assert "".join(tokens) == reply_for("one two")
        assert list(self.owned.messages.values_list("role", "content")) == [
            (ConversationMessage.Role.USER, "one two"),
            (ConversationMessage.Role.ASSISTANT, reply_for("one two")),
        ]

    def test_http_cannot_post_to_someone_elses_conversation(self) -> None:
        self.client.force_login(self.bob)
        with capture_events(ConversationAssistantConsumer, suppress=True) as events:
            response = self.client.post(
                messages_url(self.owned), {"content": "hi"}, content_type="application/json"
            )
        assert response.status_code == 403
        assert events == []

    def test_http_create_conversation(self) -> None:
        response = self.client.post(
            "/api/assistants/conversations/", {}, content_type="application/json"
        )
        assert response.status_code == 201
        anonymous = Conversation.objects.get(pk=response.json()["id"])
        assert anonymous.user is None
        assert response.json()["ws_path"] == conversation_path(anonymous)

        self.client.force_login(self.alice)
        response = self.client.post(
            "/api/assistants/conversations/", {}, content_type="application/json"
        )
        assert Conversation.objects.get(pk=response.json()["id"]).user == self.alice
