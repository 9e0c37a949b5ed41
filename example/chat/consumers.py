from __future__ import annotations

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
from chat.messages import (
    ChatMessage,
    ChatPayload,
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


@channel(name="chat", description="Chat room for its members", tags=["chat"])
class RoomConsumer(AsyncJsonWebsocketConsumer[RoomEvent]):
    authenticator_class = RoomAuthenticator
    authenticator: RoomAuthenticator
    # What send_group_message relays (checked on send, listed in the AsyncAPI document).
    OUTGOING_GROUP_MESSAGE_SCHEMA = ChatMessage

    async def build_groups(self) -> list[str]:
        return [self.authenticator.obj.group_name]

    @ws_handler(summary="Ping", description="Connectivity check", tags=["util"])
    async def handle_ping(self, message: PingMessage) -> PongMessage:
        return PongMessage()

    @ws_handler(
        summary="Send a chat message",
        description="Relayed to every socket in the room, the sender's included.",
    )
    async def handle_send_chat(self, message: SendChatMessage) -> None:
        assert self.user is not None
        await self.send_group_message(
            ChatMessage(
                payload=ChatPayload(author=self.user.get_username(), text=message.payload.text)
            ),
            exclude_current=False,
        )

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
