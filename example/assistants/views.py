from __future__ import annotations

from uuid import UUID

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework import serializers, status
from rest_framework.generics import get_object_or_404
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from assistants.models import Conversation, ConversationMessage
from assistants.permissions import ConversationOwner
from assistants.tasks import announce_message, entry, stream_reply
from config.views import websocket_token


def conversation_data(conversation: Conversation) -> dict[str, str]:
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "ws_path": f"/ws/assistants/{conversation.pk}/",
    }


class NewConversationSerializer(serializers.Serializer[None]):
    title = serializers.CharField(max_length=200, required=False, default="")


class NewMessageSerializer(serializers.Serializer[None]):
    content = serializers.CharField(max_length=4000)


class ConversationListView(APIView):
    """POST: start a conversation (owned when logged in, anonymous otherwise)."""

    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        serializer = NewConversationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = Conversation.objects.create(
            user=request.user if request.user.is_authenticated else None,
            title=serializer.validated_data["title"],
        )
        return Response(conversation_data(conversation), status=status.HTTP_201_CREATED)


class ConversationMessagesView(APIView):
    """POST: store the user's message, then stream the reply over the websocket."""

    permission_classes = [ConversationOwner]

    def post(self, request: Request, pk: UUID) -> Response:
        conversation = get_object_or_404(Conversation, pk=pk)
        self.check_object_permissions(request, conversation)
        serializer = NewMessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        content: str = serializer.validated_data["content"]

        if not conversation.title:
            conversation.title = content[:60]
            conversation.save(update_fields=["title"])
        message = conversation.messages.create(role=ConversationMessage.Role.USER, content=content)
        announce_message(message)
        reply = stream_reply(message)
        return Response(
            {"message": entry(message).model_dump(), "reply": entry(reply).model_dump()},
            status=status.HTTP_201_CREATED,
        )


def assistants_page(request: HttpRequest) -> HttpResponse:
    """The streaming assistant page; `?conversation=<id>` reopens a conversation."""
    conversation = None
    conversation_id = request.GET.get("conversation")
    if conversation_id:
        try:
            conversation = Conversation.objects.filter(pk=conversation_id).first()
        except ValidationError:  # not a UUID
            conversation = None
        if conversation and conversation.user_id not in (None, request.user.pk):
            conversation = None
    conversations = (
        Conversation.objects.filter(user_id=request.user.pk)
        if request.user.is_authenticated
        else Conversation.objects.none()
    )
    return render(
        request,
        "assistants/assistants.html",
        {
            "conversation": conversation,
            "history": conversation.messages.all() if conversation else [],
            "conversations": conversations,
            "ws_token": websocket_token(request),
        },
    )
