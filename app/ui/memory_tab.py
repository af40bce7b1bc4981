"""The Memory tab: the signed-in user's preference statements, to view, edit, add, delete, export, or forget
everything (memory, ALOE memories and logs; it also clears the Chat tab)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from app.ui.chat_tab import ChatView
from app.ui.common import PRIVATE, TabHandlers


@dataclass
class MemoryView:
    tab: gr.Tab
    memory_summary: gr.Markdown
    table: gr.Dataframe
    pick: gr.Dropdown
    refresh: gr.Button
    edit_text: gr.Textbox
    edit_stance: gr.Radio
    save: gr.Button
    delete: gr.Button
    export: gr.Button
    confirm: gr.Checkbox
    forget: gr.Button
    exported: gr.Code


class MemoryTab(TabHandlers):
    """The memory-panel handlers and layout."""

    def _statements(self, user: str):
        return self.memory.for_user(user).list_preferences()

    def memory_view(self, request: gr.Request) -> tuple:
        """(table rows, picker choices) of the user's preference statements."""
        from memory.evidence import evidence_text, explain

        mem = self.memory.for_user(self.user(request))
        statements = mem.list_preferences()
        # why each is believed: the user's quoted words and when (inferred: the signals and the reasoning)
        why = explain(statements, mem.turns(), mem.inferences())
        rows = [
            [
                s.text,
                s.stance,
                s.dimension,
                round(s.confidence, 2),
                s.origin,
                "\n".join(evidence_text(why[s.id][-4:])) + (" …" if len(why[s.id]) > 4 else ""),
                s.updated,
                s.id,
            ]
            for s in statements
        ]
        choices = [(s.text, s.id) for s in statements]
        summary = (
            f"{len(statements)} preference statement{'s' if len(statements) != 1 else ''} in your memory."
        )
        return rows, gr.update(choices=choices, value=None), summary

    def memory_pick(self, pref_id: str | None, request: gr.Request) -> tuple:
        for s in self._statements(self.user(request)):
            if s.id == pref_id:
                return s.text, s.stance
        return "", "prefers"

    def memory_save(self, pref_id: str | None, text: str, stance: str, request: gr.Request) -> tuple:
        user = self.user(request)
        text = text if isinstance(text, str) else ""  # inputs are whatever the browser sent: check them
        stance = stance if stance in ("prefers", "avoids") else "prefers"
        if not text.strip():
            gr.Warning("Write the preference as one sentence first.")
            return self.memory_view(request)
        mem = self.memory.for_user(user)
        if pref_id:
            mem.edit_preference(pref_id, text=text.strip(), stance=stance)
        else:
            from alignment.preferences import PreferenceStatement

            mem.add_preferences(
                [
                    PreferenceStatement(
                        text=text.strip(),
                        stance=stance,
                        origin="user_edit",
                        confidence=1.0,
                        evidence=["memory-panel"],
                        sources=[{"id": "memory-panel", "quote": text.strip(), "origin": "user_edit"}],
                    )
                ]
            )
        return self.memory_view(request)

    def memory_delete(self, pref_id: str | None, request: gr.Request) -> tuple:
        if not pref_id:
            gr.Warning("Pick a preference to delete first.")
        else:
            self.memory.for_user(self.user(request)).delete_preference(pref_id)
        return self.memory_view(request)

    def memory_forget(self, confirm: bool, request: gr.Request) -> tuple:
        user = self.user(request)
        if not confirm:
            gr.Warning(
                "Tick the box to confirm: this deletes all your preferences, conversation memory and logs."
            )
            return (*self.memory_view(request), gr.skip(), gr.skip(), False)
        turns = self.assistant.forget(user)
        gr.Info(f"Forgot everything: your memory and {turns} logged turns are deleted.")
        return (*self.memory_view(request), [], {"user": user, "session_id": None, "turns": []}, False)

    def memory_export(self, request: gr.Request) -> str:
        return json.dumps(
            self.memory.for_user(self.user(request)).export(), indent=2, ensure_ascii=False, default=str
        )

    # -- layout ------------------------------------------------------------------------------------------
    def layout(self) -> MemoryView:
        with gr.Tab("Memory", id="memory") as memory_tab:
            memory_summary = gr.Markdown(elem_id="memory-summary")
            table = gr.Dataframe(
                headers=[
                    "statement",
                    "stance",
                    "dimension",
                    "confidence",
                    "origin",
                    "evidence",
                    "updated",
                    "id",
                ],
                interactive=False,
                wrap=True,
                elem_id="memory-table",
            )
            with gr.Row():
                pick = gr.Dropdown(label="Preference", choices=[], elem_id="pref-pick", scale=3)
                refresh = gr.Button("Refresh", size="sm", elem_id="memory-refresh", scale=1)
            with gr.Row():
                edit_text = gr.Textbox(
                    label="Statement (edit, or write a new one with nothing picked)",
                    elem_id="pref-text",
                    scale=3,
                )
                edit_stance = gr.Radio(
                    ["prefers", "avoids"],
                    value="prefers",
                    label="Stance",
                    elem_id="pref-stance",
                    scale=1,
                )
            with gr.Row():
                save = gr.Button("Save", elem_id="pref-save")
                delete = gr.Button("Delete", variant="stop", elem_id="pref-delete")
                export = gr.Button("Export", elem_id="pref-export")
            with gr.Row():
                confirm = gr.Checkbox(
                    label="Yes, forget everything about me (memory and logs)",
                    elem_id="forget-confirm",
                )
                forget = gr.Button("Forget all", variant="stop", elem_id="forget-all")
            exported = gr.Code(language="json", label="Export", elem_id="pref-export-json")
        return MemoryView(
            memory_tab,
            memory_summary,
            table,
            pick,
            refresh,
            edit_text,
            edit_stance,
            save,
            delete,
            export,
            confirm,
            forget,
            exported,
        )

    def wire(self, v: MemoryView, chat: ChatView) -> None:
        view_out = [v.table, v.pick, v.memory_summary]
        for trigger in (v.tab.select, v.refresh.click):
            trigger(self.memory_view, None, view_out, **PRIVATE)
        v.pick.input(self.memory_pick, [v.pick], [v.edit_text, v.edit_stance], **PRIVATE)
        v.save.click(self.memory_save, [v.pick, v.edit_text, v.edit_stance], view_out, **PRIVATE)
        v.delete.click(self.memory_delete, [v.pick], view_out, **PRIVATE)
        v.forget.click(
            self.memory_forget, [v.confirm], [*view_out, chat.chatbot, chat.chat_state, v.confirm], **PRIVATE
        )
        v.export.click(self.memory_export, None, [v.exported], **PRIVATE)
