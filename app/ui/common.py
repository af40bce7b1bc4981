"""What every tab shares: the handler base class (``user()``, the only identity any handler acts for) and
the event settings (private API, one concurrency group for everything that runs the policy)."""

from __future__ import annotations

import gradio as gr

from app.assistant import Assistant
from app.settings import Settings
from app.users import LOCAL_USER

MODEL_EVENTS = "model"  # one concurrency group for everything that runs the policy
PRIVATE = {"api_visibility": "private"}
MODEL = {"api_visibility": "private", "concurrency_id": MODEL_EVENTS, "concurrency_limit": 4}


class TabHandlers:
    """Handlers bound to one Assistant; subclasses add one tab's handlers, ``layout()`` and ``wire()``."""

    def __init__(self, settings: Settings, assistant: Assistant) -> None:
        self.settings = settings
        self.assistant = assistant
        self.log = assistant.log
        self.memory = assistant.memory

    def user(self, request: gr.Request | None) -> str:
        """The signed-in user; the only identity any handler acts for."""
        if not self.settings.chat.auth:
            return LOCAL_USER
        name = getattr(request, "username", None)
        if not name:
            raise gr.Error("Sign in first.")
        return str(name)
