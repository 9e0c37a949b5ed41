"""The room page /chat/<pk>/: stored history, and only the member buttons one may use."""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib.auth import get_user_model
from django.test import TestCase
from rest_framework.authtoken.models import Token

from chat.history import HISTORY_LIMIT
from chat.models import Membership, Message, Room

User = get_user_model()
XSS = "<img src=x onerror=alert(1)>"


class RoomPageTests(TestCase):
    def setUp(self) -> None:
        self.alice = User.objects.create_user("alice")
        self.bob = User.objects.create_user("bob")
        self.staff = User.objects.create_user("admin", is_staff=True)
        self.room = Room.objects.create(name="Lobby", owner=self.alice)
        for user in (self.alice, self.bob):
            Membership.objects.create(room=self.room, user=user)
        self.url = f"/chat/{self.room.pk}/"

    def page(self, user: Any) -> tuple[str, dict[str, Any]]:
        """The page's HTML and the data its script reads."""
        self.client.force_login(user)
        response = self.client.get(self.url)
        assert response.status_code == 200
        html = response.content.decode()
        found = re.search(r'<script id="room-data" type="application/json">(.*?)</script>', html)
        assert found, "no room-data script"
        return html, json.loads(found.group(1))

    def buttons(self, html: str) -> dict[str, str]:
        """username -> the button next to it ("" for none)."""
        items = re.findall(r'<li data-user-id="\d+">(\w+)(?: <button class="(\w+)")?', html)
        return dict(items)

    def test_recent_history_is_on_the_page_as_data_never_as_html(self) -> None:
        for i in range(HISTORY_LIMIT + 5):
            Message.objects.create(room=self.room, author=self.bob, text=f"message {i}")
        Message.objects.create(room=self.room, author=self.bob, text=XSS)
        html, data = self.page(self.alice)
        history = data["history"]
        assert len(history) == HISTORY_LIMIT
        assert history[-1]["text"] == XSS and history[-1]["author"] == "bob"
        assert history[0]["text"] == "message 6"  # the latest 50, oldest first
        assert XSS not in html  # json_script escapes <, the script uses textContent
        assert data["username"] == "alice" and data["user_id"] == self.alice.pk

    def test_non_members_get_no_history(self) -> None:
        Message.objects.create(room=self.room, author=self.bob, text="members only")
        html, data = self.page(self.staff)
        assert data["history"] == []
        assert "members only" not in html
        assert "You are not a member of this room" in html

    def test_a_member_may_only_leave(self) -> None:
        html, data = self.page(self.bob)
        assert self.buttons(html) == {"alice": "", "bob": "leave"}
        assert data["may_remove_others"] is False

    def test_the_owner_and_staff_see_remove_buttons(self) -> None:
        html, data = self.page(self.alice)
        assert self.buttons(html) == {"alice": "leave", "bob": "remove"}
        assert data["may_remove_others"] is True
        html, data = self.page(self.staff)
        assert self.buttons(html) == {"alice": "remove", "bob": "remove"}
        assert data["may_remove_others"] is True

    def test_the_send_form_waits_for_the_websocket(self) -> None:
        html, _ = self.page(self.alice)
        start = html.index('<form id="send-form"')
        form = html[start : html.index("</form>", start)]
        assert form.count(" disabled") == 2  # input and button, enabled once authenticated

    def test_logged_in_pages_carry_the_websocket_token(self) -> None:
        """For openSocket()'s chanx.auth subprotocol: the user's own DRF token."""
        html, _ = self.page(self.bob)
        token = Token.objects.get(user=self.bob)
        assert f'<meta name="ws-token" content="{token.key}">' in html
        assistants = self.client.get("/assistants/").content.decode()
        assert f'<meta name="ws-token" content="{token.key}">' in assistants
        self.client.logout()
        assert 'name="ws-token"' not in self.client.get("/assistants/").content.decode()
