"""A deterministic stand-in for a language model: no network, no keys.

It echoes the user's words back inside a canned sentence, one word at a time,
so the streaming path (view -> channel layer -> consumer -> browser) can be
watched and tested exactly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from django.conf import settings


def reply_for(content: str) -> str:
    words = " ".join(content.split())
    return f'You said: "{words}". I am a tiny local model, so I can only repeat it.'


def generate_tokens(content: str, delay: float | None = None) -> Iterator[str]:
    """Yield the reply word by word (each token keeps its trailing space)."""
    if delay is None:
        delay = settings.ASSISTANT_TOKEN_DELAY
    for index, token in enumerate(re.findall(r"\S+\s*", reply_for(content))):
        if index and delay:
            time.sleep(delay)  # pretend to think
        yield token
