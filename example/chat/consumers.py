from __future__ import annotations

from channels.db import database_sync_to_async

from chanx import (
    CLOSE_FORBIDDEN,
    AsyncJsonWebsocketConsumer,
    DjangoAuthenticator,
    PingMessage,
    PongMessage,
    channel,
    event_handler,
    ws_handler,
)
from chat.history import recent_messages, store_message
from chat.messages import (
    ChatHistoryMessage,
    ChatHistoryPayload,
    ChatMessage,
    LoadHistoryMessage,
    MemberAddedEvent,
    MemberAddedMessage,
    MemberRemovedEvent,
    MemberRemovedMessage,
    RoomEvent,
    SendChatMessage,
)
from chat.models import Room
from chat.permissions import IsRoomMember


class RoomAuthenticator(DjangoAuthenticator):
    """The room comes from the URL's `pk`; missing room -> 404, non-member -> 403."""

    permission_classes = [IsRoomMember]
    queryset = Room.objects.all()
    obj: Room


@channel(
    name="chat_room",
    description="Chat room: the messages and member changes of one room, for its members.",
    tags=["chat"],
)
class RoomConsumer(AsyncJsonWebsocketConsumer[RoomEvent]):
    """Chat room: the messages and member changes of one room, for its members.

    Messages are stored, so a page (re)load shows the recent history. A member
    who leaves or is removed hears `member_removed` about themself, then their
    sockets are closed with 4403.
    """

    authenticator_class = RoomAuthenticator
    authenticator: RoomAuthenticator
    # What send_group_message relays (checked on send, listed in the AsyncAPI document).
    OUTGOING_GROUP_MESSAGE_SCHEMA = ChatMessage

    async def build_groups(self) -> list[str]:
        return [self.authenticator.obj.group_name]

    @ws_handler(
        summary="Ping", description="Connectivity check: answered with pong.", tags=["util"]
    )
    async def handle_ping(self, message: PingMessage) -> PongMessage:
        return PongMessage()

    @ws_handler(
        summary="Send a chat message",
        description="Stored, then relayed to every socket in the room, the sender's included.",
    )
    async def handle_send_chat(self, message: SendChatMessage) -> None:
        assert self.user is not None
        stored = await database_sync_to_async(store_message)(
            self.authenticator.obj, self.user, message.payload.text
        )
        await self.send_group_message(ChatMessage(payload=stored), exclude_current=False)

    @ws_handler(
        summary="Load the recent history",
        description="The room's latest messages, oldest first; `after_id` fills a gap.",
    )
    async def handle_load_history(self, message: LoadHistoryMessage) -> ChatHistoryMessage:
        messages = await database_sync_to_async(recent_messages)(
            self.authenticator.obj, message.payload.after_id
        )
        return ChatHistoryMessage(payload=ChatHistoryPayload(messages=messages))

    @event_handler
    async def handle_member_added(self, event: MemberAddedEvent) -> MemberAddedMessage:
        return MemberAddedMessage(payload=event.payload)

    @event_handler
    async def handle_member_removed(self, event: MemberRemovedEvent) -> MemberRemovedMessage | None:
        message = MemberRemovedMessage(payload=event.payload)
        if self.user is not None and self.user.pk == event.payload.user_id:
            # The removed member's own sockets: say so, then hang up.
            await self.send_message(message)
            await self.close(code=CLOSE_FORBIDDEN)
            return None
        return message
