"""The Gradio app: Chat (streamed answers, folded defensive reasoning, the preferences used, feedback),
Memory (the user's preference statements: edit, delete, forget, export) and ALOE evaluation sessions.

Every handler takes the user from the signed-in request (``gr.Request.username``), never from the page;
per-tab state (session id, turn ids) lives server-side in ``gr.State``. With sign-in switched off
(``chat.auth = false``) the app is single-user (``local``) and refuses to listen beyond loopback.
"""

from __future__ import annotations

import html
import ipaddress
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from alignment.errors import CdraError
from alignment.steps import parse_response
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
from app.assistant import (
    Assistant,
    MessageError,
    RetrievedPreference,
    TurnResult,
    clean_message,
    policy_versions,
)
from app.settings import Settings
from app.users import LOCAL_USER, UserStore, ensure_first_account

log = logging.getLogger(__name__)

PACKAGED_PERSONAS = Path(__file__).with_name("aloe_personas.jsonl")
MODEL_EVENTS = "model"  # one concurrency group for everything that runs the policy

CSS = """
.cdra-reasoning { margin-top: .6em; border-left: 3px solid var(--color-accent-soft); padding-left: .6em; }
.cdra-reasoning summary { cursor: pointer; font-size: .9em; opacity: .8; }
.cdra-reasoning ol { margin: .3em 0 0 1.2em; font-size: .92em; }
#turn-status, #aloe-status { font-size: .9em; }
"""


# -- rendering ------------------------------------------------------------------------------------------


def split_reasoning(raw: str) -> tuple[list[str], str]:
    """(steps, answer) of a (possibly partial) response: the same split Pers-GenPRM scores."""
    segments = parse_response(raw).segments
    steps = [s.text for s in segments if not s.is_answer and s.text]
    answer = next((s.text for s in segments if s.is_answer), "")
    return steps, answer


def reasoning_html(steps: list[str], open_: bool) -> str:
    """The numbered steps, folded under the answer (``<details>``); escaped, since it is model text."""
    if steps:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in steps)
        body = f"<ol>{items}</ol>"
        title = f"Defensive reasoning ({len(steps)} step{'s' if len(steps) != 1 else ''})"
    else:
        body = "<p><em>The model wrote no separate reasoning steps for this answer.</em></p>"
        title = "Defensive reasoning (none)"
    return f'<details class="cdra-reasoning"{" open" if open_ else ""}><summary>{title}</summary>{body}</details>'


def render_answer(raw: str, streaming: bool, result: TurnResult | None = None) -> str:
    """The assistant bubble: the answer, then its reasoning folded (open while it is being written)."""
    steps, answer = split_reasoning(raw)
    if result is not None:
        steps, answer = result.steps, result.answer
    if not answer:
        if streaming:
            answer = "_thinking…_"
        elif result is not None and result.status == "ok":
            answer = (
                "_The answer was cut off at the length limit before the model reached it (see its reasoning "
                "below). Press Regenerate, or raise `chat.max_new_tokens`._"
            )
    text = html.escape(answer) if answer and not answer.startswith("_") else answer
    if result is not None and result.status != "ok":
        text = (
            (text + "\n\n" if text else "") + f"Error: {html.escape(result.error or 'the answer failed')} — "
            "your message is saved; send it again or press Regenerate."
        )
    return f"{text}\n\n{reasoning_html(steps, open_=streaming)}"


def render_retrieved(retrieved: list[RetrievedPreference], added: list[str] | None = None) -> str:
    lines = ["#### Preferences used for this answer"]
    if retrieved:
        lines += [
            f"- {html.escape(r.text)}  \n  <small>relevance {r.score:.2f} · confidence {r.confidence:.2f} · "
            f"{r.origin}</small>"
            for r in retrieved
        ]
    else:
        lines.append("_No stored preference was relevant to this message._")
    if added:
        lines += ["", "#### Learned from your message"] + [f"- {html.escape(a)}" for a in added]
    return "\n".join(lines)


def status_line(result: TurnResult, k: int) -> str:
    """One line under the chat: which policy answered turn k, and how fast (or what went wrong)."""
    if result.status != "ok":
        return f"Error: turn {k}: {html.escape(result.error or 'failed')}"
    lat = result.latency_ms
    total = sum(lat.get(phase, 0.0) for phase in ("retrieval", "prompt", "generation", "logging")) / 1000
    first = lat.get("first_token", 0.0) / 1000
    return (
        f"✓ turn {k} answered by policy `{result.version}` in {total:.1f} s (first token after {first:.1f} s)"
    )


# -- identity ---------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class App:
    """The handlers, bound to one Assistant; ``build()`` lays out the Blocks."""

    def __init__(self, settings: Settings, assistant: Assistant, personas: list[Persona]) -> None:
        self.settings = settings
        self.assistant = assistant
        self.log = assistant.log
        self.memory = assistant.memory
        self.aloe = AloeSessions(self.log)
        self.personas = {p.id: p for p in personas}

    def user(self, request: gr.Request | None) -> str:
        """The signed-in user; the only identity any handler acts for."""
        if not self.settings.chat.auth:
            return LOCAL_USER
        name = getattr(request, "username", None)
        if not name:
            raise gr.Error("Sign in first.")
        return str(name)

    # -- chat ------------------------------------------------------------------------------------------
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
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        k = int(index) // 2
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

    # -- memory panel ----------------------------------------------------------------------------------
    def _statements(self, user: str):
        return self.memory.for_user(user).list_preferences()

    def memory_view(self, request: gr.Request) -> tuple:
        """(table rows, picker choices) of the user's preference statements."""
        statements = self._statements(self.user(request))
        rows = [
            [
                s.text,
                s.stance,
                s.dimension,
                round(s.confidence, 2),
                s.origin,
                ", ".join(s.evidence[:4]) + (" …" if len(s.evidence) > 4 else ""),
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

    # -- ALOE --------------------------------------------------------------------------------------------
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
            if rating is None:
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
    def build(self) -> gr.Blocks:
        chat_max = self.settings.chat.max_message_chars
        versions = policy_versions(self.settings)
        private = {"api_visibility": "private"}
        model = {"api_visibility": "private", "concurrency_id": MODEL_EVENTS, "concurrency_limit": 4}
        with gr.Blocks(title="CDRA assistant", analytics_enabled=False) as demo:
            with gr.Row():
                gr.Markdown("## Personal assistant · reasons about what you really want")
                whoami = gr.Markdown(elem_id="whoami")
            with gr.Tabs():
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
                                correct = gr.Button(
                                    "Send correction", elem_id="send-correction", size="sm", scale=1
                                )
                        with gr.Column(scale=1):
                            panel = gr.Markdown(
                                "#### Preferences used for this answer\n_Ask something._",
                                elem_id="prefs-used",
                            )
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
                            blind = gr.Checkbox(
                                label="Blind A/B against a second version", elem_id="aloe-blind"
                            )
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
                            card = gr.Markdown(
                                "_Pick or type a persona and start a session._", elem_id="aloe-card"
                            )
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

            # chat events
            chat_out = [message, chatbot, panel, status, chat_state]
            send.click(self.chat_send, [message, chat_state], chat_out, **model)
            message.submit(self.chat_send, [message, chat_state], chat_out, **model)
            regenerate.click(self.chat_regenerate, [chat_state], chat_out, **model)
            chatbot.like(self.chat_like, [chat_state], [status], **private)
            correct.click(self.chat_correct, [correction, chat_state], [correction, status, panel], **private)
            new_chat.click(self.chat_new, None, [chatbot, panel, status, chat_state], **private)
            chatbot.clear(self.chat_new, None, [chatbot, panel, status, chat_state], **private)
            # memory events
            view_out = [table, pick, memory_summary]
            for trigger in (memory_tab.select, refresh.click):
                trigger(self.memory_view, None, view_out, **private)
            pick.input(self.memory_pick, [pick], [edit_text, edit_stance], **private)
            save.click(self.memory_save, [pick, edit_text, edit_stance], view_out, **private)
            delete.click(self.memory_delete, [pick], view_out, **private)
            forget.click(self.memory_forget, [confirm], [*view_out, chatbot, chat_state, confirm], **private)
            export.click(self.memory_export, None, [exported], **private)
            # ALOE events
            aloe_out = [
                card,
                aloe_status,
                aloe_chat,
                aloe_msg,
                aloe_send,
                rating,
                rate,
                aloe_state,
                resume_pick,
            ]
            aloe_tab.select(
                self.aloe_choices, [aloe_state], [persona_pick, resume_pick, version_a, version_b], **private
            )
            upload.upload(self.aloe_upload, [upload, aloe_state], [aloe_state, persona_pick], **private)
            start.click(
                self.aloe_start,
                [
                    persona_pick,
                    t_profile,
                    t_personality,
                    t_hidden,
                    t_opening,
                    version_a,
                    version_b,
                    blind,
                    aloe_state,
                ],
                aloe_out,
                **private,
            )
            resume.click(self.aloe_resume, [resume_pick, aloe_state], aloe_out, **private)
            pause.click(self.aloe_pause, [aloe_state], aloe_out, **private)
            finish.click(self.aloe_finish, [aloe_state], aloe_out, **private)
            rate.click(self.aloe_rate, [rating, aloe_state], aloe_out, **private)
            aloe_send.click(self.aloe_send, [aloe_msg, aloe_state], aloe_out, **model)
            aloe_msg.submit(self.aloe_send, [aloe_msg, aloe_state], aloe_out, **model)
            demo.load(self.whoami, None, [whoami], **private)
        return demo

    def whoami(self, request: gr.Request) -> str:
        user = self.user(request)
        if not self.settings.chat.auth:
            return f"<div style='text-align:right'>single-user mode · <b>{LOCAL_USER}</b></div>"
        logout = f"{self.settings.chat.root_path.rstrip('/')}/logout"
        return (
            f"<div style='text-align:right'>signed in as <b id='signed-in-user'>{html.escape(user)}</b> · "
            f"<a href='{logout}'>sign out</a></div>"
        )


# -- building and launching ------------------------------------------------------------------------------


def load_personas(settings: Settings, personas_file: str | Path | None = None) -> list[Persona]:
    """The operator's persona file (``--personas``), else ``<data_dir>/aloe_personas.jsonl``, else the packaged examples."""
    candidates = (
        [Path(personas_file)]
        if personas_file
        else [Path(settings.data_dir) / "aloe_personas.jsonl", PACKAGED_PERSONAS]
    )
    for path in candidates:
        if personas_file or path.exists():
            return read_personas(path)
    return []


def build_app(
    settings: Settings, assistant: Assistant | None = None, personas: list[Persona] | None = None
) -> gr.Blocks:
    assistant = assistant or Assistant(settings)
    personas = personas if personas is not None else load_personas(settings)
    return App(settings, assistant, personas).build()


def prepare_auth(settings: Settings):
    """The sign-in callback, creating the first account on a fresh install (printed once).

    With ``chat.auth = false`` there is no sign-in: the app serves the single user ``local`` and
    only on a loopback address, so nobody else can reach that memory.
    """
    chat = settings.chat
    if not chat.auth:
        if not is_loopback(chat.host):
            raise CdraError(
                f"sign-in is off (chat.auth = false) so the app only listens on 127.0.0.1, not {chat.host}: "
                "turn chat.auth on (and add users with `cdra users add`) to serve other machines"
            )
        return None
    store = UserStore.for_data_dir(settings.data_dir)
    created = ensure_first_account(store)
    if created:
        name, password = created
        print(
            f"First start: created the account {name!r} with password {password!r}. Sign in with it; "
            "`cdra users add NAME --password P` adds more, `--replace` changes a password.",
            flush=True,
        )
    return store.verify


def launch(settings: Settings, personas_file: str | Path | None = None, block: bool = True):
    """Serve the app (``cdra chat``): sign-in, queue, loopback by default; returns (blocks, local URL)."""
    auth = prepare_auth(settings)
    assistant = Assistant(settings)
    demo = build_app(settings, assistant, load_personas(settings, personas_file))
    demo.queue(default_concurrency_limit=8, max_size=64)
    chat = settings.chat
    _, url, _ = demo.launch(
        server_name=chat.host,
        server_port=chat.port,
        root_path=chat.root_path or None,
        auth=auth,
        auth_message="Sign in to your personal assistant." if auth else None,
        prevent_thread_lock=not block,
        show_error=True,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        quiet=False,
        css=CSS,
        max_file_size="2mb",
    )
    if not block:
        return demo, url
    assistant.close()
    return demo, url
