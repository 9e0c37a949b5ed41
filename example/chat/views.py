from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.consumers import RoomConsumer
from chat.history import recent_messages
from chat.messages import MemberAddedEvent, MemberPayload, MemberRemovedEvent
from chat.models import Membership, Room
from chat.permissions import IsRoomMember, IsRoomOwner, MayRemoveMember, may_remove_others
from config.views import websocket_token

User = get_user_model()


class AddMemberSerializer(serializers.Serializer[None]):
    username = serializers.CharField(max_length=150)


class RoomMembersBase(APIView):
    """Staff, the room's owner and its members may add members; who may remove
    whom is MayRemoveMember's rule."""

    permission_classes = [IsAdminUser | IsRoomOwner | IsRoomMember]

    def get_room(self, request: Request, pk: int) -> Room:
        room = get_object_or_404(Room, pk=pk)
        self.check_object_permissions(request, room)
        return room


class RoomMembersView(RoomMembersBase):
    """POST {"username"}: add a member; everyone in the room hears about it."""

    def post(self, request: Request, pk: int) -> Response:
        room = self.get_room(request, pk)
        serializer = AddMemberSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = get_object_or_404(User, username=serializer.validated_data["username"])
        _, created = Membership.objects.get_or_create(room=room, user=user)
        member = MemberPayload(user_id=user.pk, username=user.get_username())
        if created:
            RoomConsumer.broadcast_event_sync(MemberAddedEvent(payload=member), [room.group_name])
        return Response(
            member.model_dump(),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class RoomMemberDetailView(RoomMembersBase):
    """DELETE: remove a member (staff, the room's owner) or leave (the member
    themself); the room hears about it and the member's open sockets are closed."""

    def delete(self, request: Request, pk: int, user_id: int) -> Response:
        room = self.get_room(request, pk)
        membership = get_object_or_404(
            Membership.objects.select_related("room", "user"), room=room, user_id=user_id
        )
        permission = MayRemoveMember()
        if not permission.has_object_permission(request, self, membership):
            self.permission_denied(request, message=permission.message)
        member = MemberPayload(user_id=user_id, username=membership.user.get_username())
        membership.delete()
        RoomConsumer.broadcast_event_sync(MemberRemovedEvent(payload=member), [room.group_name])
        return Response(status=status.HTTP_204_NO_CONTENT)


@login_required
def room_page(request: HttpRequest, pk: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=pk)
    members = room.memberships.select_related("user").order_by("user__username")
    is_member = any(m.user_id == request.user.pk for m in members)
    return render(
        request,
        "chat/room.html",
        {
            "room": room,
            "members": [m.user for m in members],
            "is_member": is_member,
            "ws_token": websocket_token(request),
            # Read by the page's script (json_script), rendered with textContent only.
            "room_data": {
                "id": room.pk,
                "user_id": request.user.pk,
                "username": request.user.get_username(),
                "may_remove_others": may_remove_others(request.user, room),
                "history": [m.model_dump() for m in recent_messages(room)] if is_member else [],
            },
        },
    )
