from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from assistants.models import Conversation
from chat.models import Room


def index(request: HttpRequest) -> HttpResponse:
    user = request.user
    return render(
        request,
        "index.html",
        {
            "rooms": Room.objects.filter(memberships__user_id=user.pk).order_by("name")
            if user.is_authenticated
            else Room.objects.none(),
            "conversations": Conversation.objects.filter(user_id=user.pk)[:10]
            if user.is_authenticated
            else Conversation.objects.none(),
        },
    )
