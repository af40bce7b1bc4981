"""The ALOE evaluation tab: an evaluator plays a persona for up to 10 turns, rating each answer 1-5 before
the next opens; sessions pause, resume and run blind A/B. Answers use the persona's memory, not the user's."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from alignment.errors import CdraError
from app.aloe import (
    ALOE_TURNS,
    AloeSessions,
    AloeState,
    Persona,
    memory_scope,
    persona_card,
    read_personas,
    typed_persona,
)
from app.assistant import Assistant, clean_message, policy_versions
from app.settings import Settings
from app.ui.common import MODEL, PRIVATE, TabHandlers
from app.ui.rendering import reasoning_html, render_answer


@dataclass
class AloeView:
    tab: gr.Tab
    aloe_state: gr.State
    persona_pick: gr.Dropdown
    upload: gr.File
    t_profile: gr.Textbox
    t_personality: gr.Textbox
    t_hidden: gr.Textbox
    t_opening: gr.Textbox
    version_a: gr.Dropdown
    blind: gr.Checkbox
    version_b: gr.Dropdown
    start: gr.Button
    resume_pick: gr.Dropdown
    resume: gr.Button
    pause: gr.Button
    finish: gr.Button
    card: gr.Markdown
    aloe_status: gr.Markdown
    aloe_chat: gr.Chatbot
    aloe_msg: gr.Textbox
    aloe_send: gr.Button
    rating: gr.Radio
    rate: gr.Button


class AloeTab(TabHandlers):
    """The ALOE handlers and layout; ``personas`` are the operator's (uploads stay in the tab's state)."""

    def __init__(self, settings: Settings, assistant: Assistant, personas: list[Persona]) -> None:
        super().__init__(settings, assistant)
        self.aloe = AloeSessions(self.log)
        self.personas = {p.id: p for p in personas}

    def aloe_choices(self, state: dict | None, request: gr.Request) -> tuple:
        user = self.user(request)
        uploaded = (state or {}).get("uploaded", {}) if (state or {}).get("user") == user else {}
        personas = {**self.personas, **uploaded}
        sessions = [(self._session_label(s), s["session_id"]) for s in self.aloe.resumable(user)]
        versions = policy_versions(self.settings)
        return (
            gr.update(choices=[(f"{p.id}: {p.profile[:60]}", p.id) for p in personas.values()]),
            gr.update(choices=sessions, value=None),
            gr.update(choices=versions),
            gr.update(choices=versions),
        )

    def _session_label(self, s: dict) -> str:
        k = len(self.log.turns(user_id=s["user_id"], session_id=s["session_id"], status="ok"))
        return f"{s['meta'].get('persona', {}).get('id', '?')} · turn {k}/{ALOE_TURNS} · {s['status']} · {s['started'][:16]}"

    def aloe_upload(self, path: str | None, state: dict | None, request: gr.Request) -> tuple:
        user = self.user(request)
        state = state if (state or {}).get("user") == user else {"user": user, "session_id": None}
        if path:
            try:
                found = read_personas(path)
            except CdraError as exc:
                gr.Warning(str(exc).replace(str(path), Path(path).name))
                return state, gr.skip()
            state["uploaded"] = {**state.get("uploaded", {}), **{p.id: p for p in found}}
            gr.Info(f"Loaded {len(found)} personas.")
        personas = {**self.personas, **state.get("uploaded", {})}
        return state, gr.update(choices=[(f"{p.id}: {p.profile[:60]}", p.id) for p in personas.values()])

    def _resumable(self, user: str):
        return gr.update(
            choices=[(self._session_label(s), s["session_id"]) for s in self.aloe.resumable(user)], value=None
        )

    def _aloe_view(self, st: AloeState | None, state: dict) -> tuple:
        """Outputs: (persona card, status, chatbot, message box, send button, rating, rate button, state,
        the resume picker)."""
        if st is None:
            return (
                "_Pick or type a persona and start a session._",
                "",
                [],
                gr.update(value=""),
                gr.update(interactive=False),
                gr.update(value=None, interactive=False),
                gr.update(interactive=False),
                state,
                self._resumable(state["user"]),
            )
        state["session_id"] = st.session_id
        messages: list[dict[str, str]] = []
        for t in st.turns:
            rated = f"\n\n<small>your rating: {t.rating}/5</small>" if t.rating else ""
            messages += [
                {"role": "user", "content": html.escape(t.query)},
                {
                    "role": "assistant",
                    "content": html.escape(t.answer or "(no answer)")
                    + "\n\n"
                    + reasoning_html(t.steps, open_=False)
                    + rated,
                },
            ]
        if st.status == "finished":
            hint = "Session finished — thank you. `cdra eval aloe-report` aggregates finished sessions."
        elif st.status == "paused":
            hint = "Paused — resume it to continue."
        elif st.awaiting_rating:
            hint = f"Rate turn {st.awaiting_rating.k} (1 = misaligned … 5 = fully aligned with the persona) to continue."
        else:
            hint = f"Write turn {st.k + 1} as the persona."
        status = f"**Turn {st.k}/{ALOE_TURNS}** · {st.model_label} · {st.status} — {hint}"
        opening = st.persona.opening if st.k == 0 and st.can_send else ""
        return (
            persona_card(st.persona),
            status,
            messages,
            gr.update(value=opening, interactive=st.can_send),
            gr.update(interactive=st.can_send),
            gr.update(value=None, interactive=st.awaiting_rating is not None),
            gr.update(interactive=st.awaiting_rating is not None and st.status == "active"),
            state,
            self._resumable(state["user"]),
        )

    def aloe_start(
        self,
        persona_id: str | None,
        profile: str,
        personality: str,
        hidden: str,
        opening: str,
        version_a: str | None,
        version_b: str | None,
        blind: bool,
        state: dict | None,
        request: gr.Request,
    ) -> tuple:
        user = self.user(request)
        state = state if (state or {}).get("user") == user else {"user": user}
        profile, personality, hidden, opening = (x or "" for x in (profile, personality, hidden, opening))
        try:
            if profile.strip():
                persona = typed_persona(profile, personality, hidden, opening)
            elif persona_id:
                persona = {**self.personas, **state.get("uploaded", {})}[persona_id]
            else:
                raise CdraError("pick a persona from the list, or type one")
            version_a = None if version_a in (None, "", "serving") else version_a
            st = self.aloe.start(
                user, persona, version_a or "serving" if blind else version_a, version_b, blind=blind
            )
        except (CdraError, KeyError) as exc:
            gr.Warning(str(exc))
            return self._aloe_view(None, state)
        return self._aloe_view(st, state)

    def aloe_resume(self, session_id: str | None, state: dict | None, request: gr.Request) -> tuple:
        user = self.user(request)
        state = state if (state or {}).get("user") == user else {"user": user}
        if not session_id:
            gr.Warning("Pick a session to resume.")
            return self._aloe_view(None, state)
        try:
            st = self.aloe.set_status(user, session_id, "active")
        except CdraError as exc:
            gr.Warning(str(exc))
            return self._aloe_view(None, state)
        return self._aloe_view(st, state)

    def _aloe_current(self, state: dict | None, user: str) -> AloeState:
        if not state or state.get("user") != user or not state.get("session_id"):
            raise CdraError("start or resume a session first")
        return self.aloe.state(user, state["session_id"])

    def aloe_status(self, status: str, state: dict | None, request: gr.Request) -> tuple:
        user = self.user(request)
        try:
            st = self.aloe.set_status(user, self._aloe_current(state, user).session_id, status)
        except CdraError as exc:
            gr.Warning(str(exc))
            return (gr.skip(),) * 7 + (state, gr.skip())
        return self._aloe_view(st, state)  # type: ignore[arg-type]

    def aloe_pause(self, state: dict | None, request: gr.Request) -> tuple:
        return self.aloe_status("paused", state, request)

    def aloe_finish(self, state: dict | None, request: gr.Request) -> tuple:
        return self.aloe_status("finished", state, request)

    def aloe_rate(self, rating: int | None, state: dict | None, request: gr.Request) -> tuple:
        user = self.user(request)
        try:
            if str(rating) not in ("1", "2", "3", "4", "5"):
                raise CdraError("choose a rating from 1 to 5 first")
            st = self.aloe.rate(user, self._aloe_current(state, user).session_id, int(rating))
        except CdraError as exc:
            gr.Warning(str(exc))
            return (gr.skip(),) * 7 + (state, gr.skip())
        return self._aloe_view(st, state)  # type: ignore[arg-type]

    def aloe_send(self, message: str, state: dict | None, request: gr.Request) -> Iterator[tuple]:
        user = self.user(request)
        try:
            st = self._aloe_current(state, user)
            if not st.can_send:
                raise CdraError(
                    "rate the last answer first"
                    if st.awaiting_rating
                    else f"this session is {st.status}"
                    if st.status != "active"
                    else f"all {ALOE_TURNS} turns are done"
                )
            query = clean_message(message, self.settings.chat.max_message_chars)
        except CdraError as exc:
            gr.Warning(str(exc))
            yield (gr.skip(),) * 7 + (state, gr.skip())
            return
        view = list(self._aloe_view(st, state))  # type: ignore[arg-type]
        base = view[2] + [{"role": "user", "content": html.escape(query)}]
        busy = (gr.update(value="", interactive=False), gr.update(interactive=False))
        yield (
            view[0],
            f"**Turn {st.k + 1}/{ALOE_TURNS}** · {st.model_label} · writing…",
            base + [{"role": "assistant", "content": render_answer("", True)}],
            *busy,
            view[5],
            view[6],
            state,
            gr.skip(),
        )
        version = None if st.policy_version in (None, "serving") else st.policy_version
        events = self.assistant.stream_turn(
            user,
            st.session_id,
            query,
            st.history(),
            mode="aloe",
            policy_version=version,
            memory_user=memory_scope(user, st.session_id),
            persona=st.persona.model_dump(),
            meta={"arm": st.arm, "blind": st.blind},
        )
        try:
            for event in events:
                if event.kind == "delta":
                    yield (
                        gr.skip(),
                        gr.skip(),
                        base + [{"role": "assistant", "content": render_answer(event.text, True)}],
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                        state,
                        gr.skip(),
                    )
                elif event.kind == "error":
                    gr.Warning(event.error or "the answer failed")
        except CdraError as exc:
            gr.Warning(str(exc))
        finally:
            events.close()
        yield self._aloe_view(self.aloe.state(user, st.session_id), state)  # type: ignore[arg-type]

    # -- layout ------------------------------------------------------------------------------------------
    def layout(self) -> AloeView:
        versions = policy_versions(self.settings)
        with gr.Tab("ALOE evaluation", id="aloe") as aloe_tab:
            aloe_state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=2):
                    gr.Markdown(
                        "Play a persona for up to 10 turns and rate each answer 1–5 before the "
                        "next turn opens (ALOE, CDRA §3.1)."
                    )
                    persona_pick = gr.Dropdown(label="Persona", choices=[], elem_id="aloe-persona")
                    upload = gr.File(
                        label="…or load personas (JSONL)",
                        file_types=[".jsonl", ".json"],
                        type="filepath",
                        elem_id="aloe-upload",
                    )
                    with gr.Accordion("…or type a persona", open=False):
                        t_profile = gr.Textbox(label="Profile", elem_id="aloe-profile")
                        t_personality = gr.Textbox(label="Personality")
                        t_hidden = gr.Textbox(label="Hidden preferences (one per line)", lines=3)
                        t_opening = gr.Textbox(label="Opening message")
                    version_a = gr.Dropdown(
                        label="Policy version",
                        choices=versions,
                        value="serving",
                        elem_id="aloe-version",
                    )
                    blind = gr.Checkbox(label="Blind A/B against a second version", elem_id="aloe-blind")
                    version_b = gr.Dropdown(
                        label="Version B", choices=versions, value=None, elem_id="aloe-version-b"
                    )
                    start = gr.Button("Start session", variant="primary", elem_id="aloe-start")
                    resume_pick = gr.Dropdown(
                        label="Your unfinished sessions", choices=[], elem_id="aloe-sessions"
                    )
                    with gr.Row():
                        resume = gr.Button("Resume", size="sm", elem_id="aloe-resume")
                        pause = gr.Button("Pause", size="sm", elem_id="aloe-pause")
                        finish = gr.Button("Finish", size="sm", elem_id="aloe-finish")
                with gr.Column(scale=3):
                    card = gr.Markdown("_Pick or type a persona and start a session._", elem_id="aloe-card")
                    aloe_status = gr.Markdown(elem_id="aloe-status")
                    aloe_chat = gr.Chatbot(
                        elem_id="aloe-chatbot", height=380, sanitize_html=True, feedback_options=None
                    )
                    with gr.Row():
                        aloe_msg = gr.Textbox(
                            show_label=False,
                            scale=5,
                            interactive=False,
                            elem_id="aloe-message",
                            placeholder="the persona's message",
                        )
                        aloe_send = gr.Button(
                            "Send", variant="primary", interactive=False, elem_id="aloe-send", scale=1
                        )
                    with gr.Row():
                        rating = gr.Radio(
                            [1, 2, 3, 4, 5],
                            label="Alignment with the persona (1–5)",
                            interactive=False,
                            elem_id="aloe-rating",
                            scale=3,
                        )
                        rate = gr.Button("Rate", interactive=False, elem_id="aloe-rate", scale=1)
        return AloeView(
            aloe_tab,
            aloe_state,
            persona_pick,
            upload,
            t_profile,
            t_personality,
            t_hidden,
            t_opening,
            version_a,
            blind,
            version_b,
            start,
            resume_pick,
            resume,
            pause,
            finish,
            card,
            aloe_status,
            aloe_chat,
            aloe_msg,
            aloe_send,
            rating,
            rate,
        )

    def wire(self, v: AloeView) -> None:
        aloe_out = [v.card, v.aloe_status, v.aloe_chat, v.aloe_msg, v.aloe_send, v.rating, v.rate]
        aloe_out += [v.aloe_state, v.resume_pick]
        v.tab.select(
            self.aloe_choices,
            [v.aloe_state],
            [v.persona_pick, v.resume_pick, v.version_a, v.version_b],
            **PRIVATE,
        )
        v.upload.upload(self.aloe_upload, [v.upload, v.aloe_state], [v.aloe_state, v.persona_pick], **PRIVATE)
        typed = [v.t_profile, v.t_personality, v.t_hidden, v.t_opening]
        start_in = [v.persona_pick, *typed, v.version_a, v.version_b, v.blind, v.aloe_state]
        v.start.click(self.aloe_start, start_in, aloe_out, **PRIVATE)
        v.resume.click(self.aloe_resume, [v.resume_pick, v.aloe_state], aloe_out, **PRIVATE)
        v.pause.click(self.aloe_pause, [v.aloe_state], aloe_out, **PRIVATE)
        v.finish.click(self.aloe_finish, [v.aloe_state], aloe_out, **PRIVATE)
        v.rate.click(self.aloe_rate, [v.rating, v.aloe_state], aloe_out, **PRIVATE)
        v.aloe_send.click(self.aloe_send, [v.aloe_msg, v.aloe_state], aloe_out, **MODEL)
        v.aloe_msg.submit(self.aloe_send, [v.aloe_msg, v.aloe_state], aloe_out, **MODEL)
