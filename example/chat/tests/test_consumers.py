"""The chat room websocket ws/chat/<pk>/ and the member API that broadcasts to it."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.test import TestCase

from chanx import (
    CLOSE_FORBIDDEN,
    EVENT_ACTION_COMPLETE,
    GROUP_ACTION_COMPLETE,
    PingMessage,
    PongMessage,
    WebsocketCommunicator,
    WebsocketTestCase,
    capture_events,
)
from chat.consumers import RoomConsumer
from chat.messages import (
    ChatHistoryMessage,
    ChatHistoryPayload,
    ChatPayload,
    LoadHistoryMessage,
    LoadHistoryPayload,
    MemberAddedEvent,
    MemberAddedMessage,
    MemberPayload,
    MemberRemovedEvent,
    MemberRemovedMessage,
    SendChatMessage,
    SendChatPayload,
)
from chat.models import Membership, Message, Room
from config.testing import session_headers

User = get_user_model()


async def refused_with(communicator: WebsocketCommunicator) -> tuple[int, Any]:
    """Connect, read the authentication frame, wait for the close: (status, detail)."""
    await communicator.connect()
    frame = await communicator.receive_json_from()
    assert frame["action"] == "authentication"
    status = frame["payload"]["status_code"]
    await communicator.assert_closed(code=4000 + status)
    return status, frame["payload"]["data"]["detail"]


class RoomConsumerTests(WebsocketTestCase):
    consumer = RoomConsumer

    def setUp(self) -> None:
        super().setUp()
        self.alice = User.objects.create_user("alice")
        self.bob = User.objects.create_user("bob")
        self.carol = User.objects.create_user("carol")
        self.room = Room.objects.create(name="Lobby", owner=self.alice)
        for user in (self.alice, self.bob):
            Membership.objects.create(room=self.room, user=user)
        self.ws_path = f"/ws/chat/{self.room.pk}/"
        self.members_url = f"/api/chat/rooms/{self.room.pk}/members/"
        self.headers = session_headers(self.async_client, self.alice)

    def get_ws_headers(self) -> list[tuple[bytes, bytes]]:
        return self.headers  # alice is logged in with her session cookie

    async def connect(self, communicator: WebsocketCommunicator) -> WebsocketCommunicator:
        await communicator.connect()
        await communicator.assert_authenticated_status_ok()
        return communicator

    # Who may connect ##########################################################

    async def test_member_connects_and_pings(self) -> None:
        await self.connect(self.auth_communicator)
        await self.auth_communicator.send_message(PingMessage())
        assert await self.auth_communicator.receive_all_messages() == [PongMessage()]

    async def test_non_member_is_forbidden(self) -> None:
        status, _ = await refused_with(self.create_communicator(user=self.carol))
        assert status == 403

    async def test_anonymous_is_unauthorized(self) -> None:
        status, _ = await refused_with(self.create_communicator(headers=[]))  # no cookie
        assert status == 401

    async def test_missing_room_is_not_found(self) -> None:
        communicator = self.create_communicator(ws_path="/ws/chat/999999/", user=self.alice)
        status, _ = await refused_with(communicator)
        assert status == 404

    # Chatting #################################################################

    async def test_chat_message_reaches_everyone_with_is_mine(self) -> None:
        alice = await self.connect(self.auth_communicator)
        alice_tab2 = await self.connect(self.create_communicator(user=self.alice))
        bob = await self.connect(self.create_communicator(user=self.bob))

        await alice.send_message(SendChatMessage(payload=SendChatPayload(text="hi all")))

        def relayed(frames: list[dict[str, Any]]) -> dict[str, Any]:
            [chat] = [f for f in frames if f["action"] == "chat_message"]
            return chat

        received = {
            name: relayed(await communicator.receive_all_json(stop_action=GROUP_ACTION_COMPLETE))
            for name, communicator in [("alice", alice), ("alice_tab2", alice_tab2), ("bob", bob)]
        }
        # Stored before it was relayed (a reload shows it); the frame carries its id.
        stored = await Message.objects.aget()
        assert (stored.room_id, stored.author_id, stored.text) == (
            self.room.pk,
            self.alice.pk,
            "hi all",
        )
        payload = {"id": stored.pk, "author": "alice", "text": "hi all"}
        assert received == {
            name: {
                "action": "chat_message",
                "payload": payload,
                "is_mine": is_mine,
                "is_current": is_current,
            }
            for name, is_mine, is_current in [
                ("alice", True, True),
                ("alice_tab2", True, False),
                ("bob", False, False),
            ]
        }

    async def test_invalid_chat_message_gets_an_error_and_is_not_relayed(self) -> None:
        alice = await self.connect(self.auth_communicator)
        bob = await self.connect(self.create_communicator(user=self.bob))
        await alice.send_json_to({"action": "send_chat", "payload": {"text": ""}})
        [error] = await alice.receive_all_json()
        assert error["action"] == "error"
        assert error["payload"][0]["loc"][-1] == "text"
        assert await bob.receive_nothing()
        assert not await Message.objects.aexists()

    # History ##################################################################

    async def test_history_is_stored_and_loaded_on_request(self) -> None:
        alice = await self.connect(self.auth_communicator)
        for text in ("first", "second", "third"):
            await alice.send_message(SendChatMessage(payload=SendChatPayload(text=text)))
            await alice.receive_all_json(stop_action=GROUP_ACTION_COMPLETE)
        ids = [pk async for pk in Message.objects.order_by("id").values_list("id", flat=True)]

        bob = await self.connect(self.create_communicator(user=self.bob))  # a reload, say
        await bob.send_message(LoadHistoryMessage())
        entries = [
            ChatPayload(id=pk, author="alice", text=text)
            for pk, text in zip(ids, ("first", "second", "third"), strict=True)
        ]
        assert await bob.receive_all_messages() == [
            ChatHistoryMessage(payload=ChatHistoryPayload(messages=entries))
        ]
        # after_id: only what the page has not shown yet.
        await bob.send_message(LoadHistoryMessage(payload=LoadHistoryPayload(after_id=ids[1])))
        assert await bob.receive_all_messages() == [
            ChatHistoryMessage(payload=ChatHistoryPayload(messages=entries[2:]))
        ]

    # HTTP -> websocket events #################################################

    async def test_adding_a_member_over_http_notifies_the_room(self) -> None:
        alice = await self.connect(self.auth_communicator)
        bob = await self.connect(self.create_communicator(user=self.bob))

        response = await self.async_client.post(
            self.members_url, {"username": "carol"}, content_type="application/json"
        )
        assert response.status_code == 201, response.content

        carol = MemberPayload(user_id=self.carol.pk, username="carol")
        for communicator in (alice, bob):
            assert await communicator.receive_all_messages(stop_action=EVENT_ACTION_COMPLETE) == [
                MemberAddedMessage(payload=carol)
            ]
        # ...and carol may now connect.
        await self.connect(self.create_communicator(user=self.carol))

    async def test_removing_a_member_notifies_the_room_and_closes_their_socket(self) -> None:
        alice = await self.connect(self.auth_communicator)
        bob = await self.connect(self.create_communicator(user=self.bob))

        # alice owns the room, so she may remove bob.
        response = await self.async_client.delete(f"{self.members_url}{self.bob.pk}/")
        assert response.status_code == 204

        removed = MemberRemovedMessage(payload=MemberPayload(user_id=self.bob.pk, username="bob"))
        assert await alice.receive_all_messages(stop_action=EVENT_ACTION_COMPLETE) == [removed]
        assert bob.to_message(await bob.receive_json_from()) == removed
        await bob.assert_closed(code=CLOSE_FORBIDDEN)

    def test_only_members_and_staff_may_add_members(self) -> None:
        self.client.force_login(self.carol)  # not a member
        response = self.client.post(
            self.members_url, {"username": "carol"}, content_type="application/json"
        )
        assert response.status_code == 403

        staff = User.objects.create_user("admin", is_staff=True)
        self.client.force_login(staff)
        with capture_events(RoomConsumer, suppress=True) as events:
            response = self.client.post(
                self.members_url, {"username": "carol"}, content_type="application/json"
            )
            again = self.client.post(
                self.members_url, {"username": "carol"}, content_type="application/json"
            )
        assert (response.status_code, again.status_code) == (201, 200)
        assert [(e.event, e.groups) for e in events] == [
            (
                MemberAddedEvent(payload=MemberPayload(user_id=self.carol.pk, username="carol")),
                [f"room_{self.room.pk}"],
            )
        ]


class RemoveMemberPermissionTests(TestCase):
    """DELETE /api/chat/rooms/<pk>/members/<user_id>/: staff and the room's owner
    may remove anyone, a member only themself (leave), nobody else anyone."""

    def setUp(self) -> None:
        self.owner = User.objects.create_user("alice")
        self.bob = User.objects.create_user("bob")
        self.carol = User.objects.create_user("carol")
        self.outsider = User.objects.create_user("dave")
        self.staff = User.objects.create_user("admin", is_staff=True)
        self.room = Room.objects.create(name="Lobby", owner=self.owner)
        for user in (self.owner, self.bob, self.carol):
            Membership.objects.create(room=self.room, user=user)

    def remove(self, by: Any, member: Any) -> tuple[int, list[Any]]:
        """(status, events broadcast) of `by` removing `member`."""
        self.client.force_login(by)
        with capture_events(RoomConsumer, suppress=True) as events:
            response = self.client.delete(f"/api/chat/rooms/{self.room.pk}/members/{member.pk}/")
        return response.status_code, [e.event for e in events]

    def is_member(self, user: Any) -> bool:
        return Membership.objects.filter(room=self.room, user=user).exists()

    def test_a_member_may_not_remove_another_member(self) -> None:
        for victim in (self.carol, self.owner):
            status, events = self.remove(self.bob, victim)
            assert (status, events) == (403, [])
            assert self.is_member(victim)
        self.client.force_login(self.bob)
        response = self.client.delete(f"/api/chat/rooms/{self.room.pk}/members/{self.carol.pk}/")
        assert "you may only leave" in response.json()["detail"]

    def test_a_member_may_leave(self) -> None:
        status, events = self.remove(self.bob, self.bob)
        assert (status, events) == (
            204,
            [MemberRemovedEvent(payload=MemberPayload(user_id=self.bob.pk, username="bob"))],
        )
        assert not self.is_member(self.bob)

    def test_the_owner_and_staff_may_remove_anyone(self) -> None:
        assert self.remove(self.owner, self.bob)[0] == 204
        assert self.remove(self.staff, self.carol)[0] == 204  # staff need not be members
        assert not self.is_member(self.bob) and not self.is_member(self.carol)

    def test_outsiders_may_remove_nobody_nor_learn_who_is_in(self) -> None:
        assert self.remove(self.outsider, self.bob) == (403, [])
        assert self.remove(self.outsider, self.outsider) == (403, [])  # not a member: 403, not 404
        assert self.is_member(self.bob)
        self.client.logout()
        response = self.client.delete(f"/api/chat/rooms/{self.room.pk}/members/{self.bob.pk}/")
        assert response.status_code in (401, 403)
        assert self.is_member(self.bob)

    def test_removing_a_non_member_is_not_found(self) -> None:
        assert self.remove(self.staff, self.outsider) == (404, [])
