"""`python manage.py demo`: create the demo users, room and conversation (idempotent)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from assistants.models import Conversation
from chat.models import Membership, Room

USERS = [
    # username, password, is_staff
    ("alice", "alice-password", False),
    ("bob", "bob-password", False),
    ("admin", "admin-password", True),
]


class Command(BaseCommand):
    help = "Create demo users (alice, bob, admin), the Lobby room and a conversation."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        users = {}
        for username, password, is_staff in USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"is_staff": is_staff, "is_superuser": is_staff},
            )
            if created:
                user.set_password(password)
                user.save()
            users[username] = user

        # alice owns the Lobby: she (and admin, who is staff) may remove members; bob may leave.
        lobby, _ = Room.objects.get_or_create(name="Lobby")
        if lobby.owner_id is None:  # also a Lobby made before rooms had owners
            lobby.owner = users["alice"]
            lobby.save(update_fields=["owner"])
        for username in ("alice", "bob"):
            Membership.objects.get_or_create(room=lobby, user=users[username])
        conversation, _ = Conversation.objects.get_or_create(
            user=users["alice"], title="Alice's first conversation"
        )

        base = "http://127.0.0.1:8000"
        lines = [
            # `python3 dev.py example` runs this command, then starts the server itself
            # (by hand: `python manage.py runserver`, see example/README.md).
            "Demo data ready. Once the server is up (`python3 dev.py example` starts it"
            " right after this), open:",
            f"  {base}/  (index)",
            f"  {base}/login/",
            f"  {base}/chat/{lobby.pk}/  (the Lobby chat room, as alice and as bob)",
            f"  {base}/assistants/?conversation={conversation.pk}  (the streaming assistant)",
            f"  {base}/playground/websocket/  (every endpoint; try the echo assistant)",
            "Logins: " + ", ".join(f"{name} / {password}" for name, password, _ in USERS),
        ]
        self.stdout.write("\n".join(lines))
