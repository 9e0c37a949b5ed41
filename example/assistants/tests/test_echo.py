"""The echo assistant at ws/assistants/ (early style: INCOMING_MESSAGE_SCHEMA)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from assistants.consumers import AssistantConsumer
from assistants.messages import MessagePayload, NewMessage, ReplyMessage
from chanx import CLOSE_UNAUTHORIZED, PingMessage, PongMessage, WebsocketTestCase
from config.testing import session_headers

User = get_user_model()


class EchoAssistantTests(WebsocketTestCase):
    ws_path = "/ws/assistants/"
    consumer = AssistantConsumer

    def setUp(self) -> None:
        super().setUp()
        self.alice = User.objects.create_user("alice")
        self.headers = session_headers(self.client, self.alice)
        self.token = Token.objects.create(user=self.alice)

    def get_ws_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers  # alice's session cookie

    async def test_ping_pong(self) -> None:
        await self.auth_communicator.connect()
        await self.auth_communicator.assert_authenticated_status_ok()
        await self.auth_communicator.send_message(PingMessage())
        assert await self.auth_communicator.receive_all_messages() == [PongMessage()]

    async def test_new_message_gets_a_reply(self) -> None:
        await self.auth_communicator.connect()
        await self.auth_communicator.assert_authenticated_status_ok()
        await self.auth_communicator.send_message(
            NewMessage(payload=MessagePayload(content="Hello assistant!"))
        )
        assert await self.auth_communicator.receive_all_messages() == [
            ReplyMessage(payload=MessagePayload(content="Reply: Hello assistant!"))
        ]

    async def test_unknown_action_is_an_error_and_the_socket_stays_open(self) -> None:
        await self.auth_communicator.connect()
        await self.auth_communicator.assert_authenticated_status_ok()
        await self.auth_communicator.send_json_to({"action": "dance", "payload": None})
        [error] = await self.auth_communicator.receive_all_json()
        assert error["action"] == "error"
        await self.auth_communicator.send_message(PingMessage())
        assert await self.auth_communicator.receive_all_messages() == [PongMessage()]

    async def test_anonymous_is_refused(self) -> None:
        communicator = self.create_communicator(headers=[])  # no session cookie
        await communicator.connect()
        frame = await communicator.receive_json_from()
        assert frame["action"] == "authentication"
        assert frame["payload"]["status_code"] == 401
        await communicator.assert_closed(code=CLOSE_UNAUTHORIZED)

    async def test_token_authentication(self) -> None:
        communicator = self.create_communicator(
            headers=[(b"authorization", f"Token {self.token.key}".encode())]
        )
        await communicator.connect()
        await communicator.assert_authenticated_status_ok()
