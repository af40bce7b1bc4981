"""The Chat tab: a streamed answer per turn with its reasoning folded, the preferences used, like/dislike,
corrections, regenerate and new chat. Per-tab state ``{user, session_id, turns}`` lives in ``gr.State``."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from alignment.errors import CdraError
from app.assistant import MessageError, clean_message
from app.ui.common import MODEL, PRIVATE, TabHandlers
from app.ui.rendering import render_answer, render_retrieved, status_line


@dataclass
class ChatView:
    """The Chat tab's components (the Memory tab's "forget all" clears ``chatbot`` and ``chat_state``)."""

    chat_state: gr.State
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    regenerate: gr.Button
    new_chat: gr.Button
    status: gr.Markdown
    correction: gr.Textbox
    correct: gr.Button
    panel: gr.Markdown


class ChatTab(TabHandlers):
    """The chat handlers and layout."""

    @staticmethod
    def _own(state: dict | None, user: str) -> dict:
        """Per-tab chat state, reset if it belonged to someone else (sign-out and in, same tab)."""
        if not state or state.get("user") != user:
            return {"user": user, "session_id": None, "turns": []}
        return state

    @staticmethod
    def _messages(turns: list[dict]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for t in turns:
            out += [
                {"role": "user", "content": html.escape(t["query"])},
                {"role": "assistant", "content": t["display"]},
            ]
        return out

    @staticmethod
    def _history(turns: list[dict]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for t in turns:
            if t["status"] == "ok":
                out += [
                    {"role": "user", "content": t["query"]},
                    {"role": "assistant", "content": t["answer"]},
                ]
        return out

    def chat_send(self, message: str, state: dict, request: gr.Request) -> Iterator[tuple]:
        user = self.user(request)
        state = self._own(state, user)
        yield from self._chat_turn(message, state, user, previous=None)

    def chat_regenerate(self, state: dict, request: gr.Request) -> Iterator[tuple]:
        user = self.user(request)
        state = self._own(state, user)
        if not state["turns"]:
            gr.Warning("Nothing to regenerate yet.")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
            return
        last = state["turns"][-1]
        yield from self._chat_turn(last["query"], state, user, previous=last)

    def _chat_turn(self, message: str, state: dict, user: str, previous: dict | None) -> Iterator[tuple]:
        """Outputs: (textbox, chatbot, preferences panel, status line, state)."""
        try:
            query = clean_message(message, self.settings.chat.max_message_chars)
        except MessageError as exc:
            gr.Warning(str(exc))
            yield gr.skip(), gr.skip(), gr.skip(), f"Error: {exc}", state
            return
        if state["session_id"] is None:
            state["session_id"] = self.log.start_session(user, "chat", {"client": "gradio"})
        kept = state["turns"][:-1] if previous else state["turns"]
        base = self._messages(kept) + [{"role": "user", "content": html.escape(query)}]
        bubble = {"role": "assistant", "content": render_answer("", streaming=True)}
        yield "", base + [bubble], gr.skip(), "Reading your memory…", state
        meta = {"regenerated_from": previous["turn_id"]} if previous else {}
        events = self.assistant.stream_turn(
            user, state["session_id"], query, self._history(kept), mode="chat", meta=meta
        )
        result = None
        panel = gr.skip()
        try:
            for event in events:
                if event.kind == "retrieved":
                    panel = render_retrieved(event.retrieved)
                    yield "", base + [bubble], panel, "Writing…", state
                elif event.kind == "delta":
                    bubble = {"role": "assistant", "content": render_answer(event.text, streaming=True)}
                    yield gr.skip(), base + [bubble], gr.skip(), gr.skip(), state
                else:
                    result = event.result
        except CdraError as exc:  # a double submit, or the memory store failing
            gr.Warning(str(exc))
            yield gr.skip(), self._messages(state["turns"]), gr.skip(), f"Error: {exc}", state
            return
        finally:
            events.close()
        assert result is not None
        turn = {
            "turn_id": result.turn_id,
            "query": query,
            "answer": result.answer,
            "status": result.status,
            "display": render_answer(result.raw, streaming=False, result=result),
        }
        state["turns"] = kept + [turn]
        panel = render_retrieved(result.retrieved, result.explicit_added)
        yield "", self._messages(state["turns"]), panel, status_line(result, len(state["turns"])), state

    def chat_like(self, state: dict, data: gr.LikeData, request: gr.Request) -> str:
        user = self.user(request)
        state = self._own(state, user)
        index = getattr(data, "index", None)
        index = index[0] if isinstance(index, (list, tuple)) and index else index
        k = index // 2 if isinstance(index, int) else -1
        if not 0 <= k < len(state["turns"]):
            return "That answer is not part of this chat any more."
        liked = data.liked
        feedback = "up" if liked in (True, "Like") else "down" if liked in (False, "Dislike") else None
        self.assistant.feedback(user, state["turns"][k]["turn_id"], feedback, clear=feedback is None)
        return {
            "up": "Thanks, noted as helpful.",
            "down": "Noted as unhelpful: tell me below what you'd rather have.",
        }.get(feedback or "", "Feedback cleared.")

    def chat_correct(self, text: str, state: dict, request: gr.Request) -> tuple[str, str, Any]:
        user = self.user(request)
        state = self._own(state, user)
        if not state["turns"]:
            gr.Warning("Ask something first; the correction applies to the last answer.")
            return text, gr.skip(), gr.skip()
        try:
            correction = clean_message(text, self.settings.chat.max_message_chars)
        except MessageError as exc:
            gr.Warning(str(exc))
            return text, gr.skip(), gr.skip()
        added = self.assistant.feedback(user, state["turns"][-1]["turn_id"], None, correction)
        note = "Correction saved: it will shape what I learn about you."
        panel = render_retrieved([], added) if added else gr.skip()
        return "", note, panel

    def chat_new(self, request: gr.Request) -> tuple:
        user = self.user(request)
        return (
            [],
            "#### Preferences used for this answer\n_Ask something._",
            "",
            {"user": user, "session_id": None, "turns": []},
        )

    # -- layout ------------------------------------------------------------------------------------------
    def layout(self) -> ChatView:
        chat_max = self.settings.chat.max_message_chars
        with gr.Tab("Chat", id="chat"):
            chat_state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        elem_id="chatbot",
                        height=460,
                        sanitize_html=True,
                        feedback_options=("Like", "Dislike"),
                        buttons=["copy"],
                        placeholder="Ask anything. I remember what matters to you.",
                    )
                    with gr.Row():
                        message = gr.Textbox(
                            elem_id="message",
                            show_label=False,
                            scale=5,
                            max_lines=8,
                            placeholder=f"Message (up to {chat_max:,} characters)",
                        )
                        send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                    with gr.Row():
                        regenerate = gr.Button("Regenerate", elem_id="regenerate", size="sm")
                        new_chat = gr.Button("New chat", elem_id="new-chat", size="sm")
                    status = gr.Markdown(elem_id="turn-status")
                    with gr.Row():
                        correction = gr.Textbox(
                            elem_id="correction",
                            show_label=False,
                            scale=5,
                            placeholder="I'd rather… (a correction for the last answer)",
                        )
                        correct = gr.Button("Send correction", elem_id="send-correction", size="sm", scale=1)
                with gr.Column(scale=1):
                    panel = gr.Markdown(
                        "#### Preferences used for this answer\n_Ask something._",
                        elem_id="prefs-used",
                    )
        return ChatView(
            chat_state, chatbot, message, send, regenerate, new_chat, status, correction, correct, panel
        )

    def wire(self, v: ChatView) -> None:
        chat_out = [v.message, v.chatbot, v.panel, v.status, v.chat_state]
        v.send.click(self.chat_send, [v.message, v.chat_state], chat_out, **MODEL)
        v.message.submit(self.chat_send, [v.message, v.chat_state], chat_out, **MODEL)
        v.regenerate.click(self.chat_regenerate, [v.chat_state], chat_out, **MODEL)
        v.chatbot.like(self.chat_like, [v.chat_state], [v.status], **PRIVATE)
        v.correct.click(
            self.chat_correct, [v.correction, v.chat_state], [v.correction, v.status, v.panel], **PRIVATE
        )
        v.new_chat.click(self.chat_new, None, [v.chatbot, v.panel, v.status, v.chat_state], **PRIVATE)
        v.chatbot.clear(self.chat_new, None, [v.chatbot, v.panel, v.status, v.chat_state], **PRIVATE)
