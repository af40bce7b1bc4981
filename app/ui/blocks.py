"""The whole page: a signed-in header and the Chat, Memory and ALOE tabs in one ``gr.Blocks``; each tab
object owns its handlers, layout and events (``app.ui.chat_tab``, ``memory_tab``, ``aloe_tab``)."""

from __future__ import annotations

import html

import gradio as gr

from app.aloe import Persona
from app.assistant import Assistant
from app.settings import Settings
from app.ui.aloe_tab import AloeTab
from app.ui.chat_tab import ChatTab
from app.ui.common import PRIVATE, TabHandlers
from app.ui.handler_guard import guard_handlers
from app.ui.memory_tab import MemoryTab
from app.users import LOCAL_USER


class App(TabHandlers):
    """The three tabs bound to one Assistant; ``build()`` lays out the Blocks."""

    def __init__(self, settings: Settings, assistant: Assistant, personas: list[Persona]) -> None:
        super().__init__(settings, assistant)
        self.chat = ChatTab(settings, assistant)
        self.memory_tab = MemoryTab(settings, assistant)
        self.aloe_tab = AloeTab(settings, assistant, personas)

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="CDRA assistant", analytics_enabled=False) as demo:
            with gr.Row():
                gr.Markdown("## Personal assistant · reasons about what you really want")
                whoami = gr.Markdown(elem_id="whoami")
            with gr.Tabs():
                chat = self.chat.layout()
                memory = self.memory_tab.layout()
                aloe = self.aloe_tab.layout()
            self.chat.wire(chat)
            self.memory_tab.wire(memory, chat)
            self.aloe_tab.wire(aloe)
            demo.load(self.whoami, None, [whoami], **PRIVATE)
        return guard_handlers(demo)  # no handler shows the browser an exception

    def whoami(self, request: gr.Request) -> str:
        user = self.user(request)
        if not self.settings.chat.auth:
            return f"<div style='text-align:right'>single-user mode · <b>{LOCAL_USER}</b></div>"
        logout = f"{self.settings.chat.root_path.rstrip('/')}/logout"
        return (
            f"<div style='text-align:right'>signed in as <b id='signed-in-user'>{html.escape(user)}</b> · "
            f"<a href='{logout}'>sign out</a></div>"
        )
