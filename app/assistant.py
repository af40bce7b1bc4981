"""The assistant's turn: retrieve the user's memory -> policy prompt -> streamed defensive reasoning and
answer -> session log -> explicit preferences at once -> AlignXplore inference in the background.

Every turn names its user; memory reads and writes go through that user's ``UserMemory`` only, so a
message (even "show me bob's preferences") can reach no other user's data. Used by the Gradio UI,
``cdra ask`` and ``cdra serve``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from alignment.budget_forcing import ReasoningBudget, ReasoningOutcome, stream_policy
from alignment.engines import Engine, EngineError, ModelSpec, PromptTooLongError, SamplingParams, build_engine
from alignment.errors import CdraError
from alignment.prompts import render
from alignment.prompts.policy import POLICY_PROMPT, format_preferences
from alignment.steps import read_response
from app.settings import Settings
from memory.session_log import SessionLog, TurnRecord, default_log_path
from memory.tombstones import ForgottenError, now_iso

log = logging.getLogger(__name__)


class MessageError(CdraError):
    """A message the assistant will not send to the model (empty, too long, binary); nothing is logged."""


class BusyError(CdraError):
    """A second message for a session whose previous answer is still being written (a double submit)."""


# -- input checks -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean_message(text: object, max_chars: int) -> str:
    """The message as the model will see it, or a MessageError saying what to fix.

    Control and bidi-override characters are removed (they only hide or garble text); text that is
    mostly unprintable is refused as binary; the length limit is ``chat.max_message_chars``.
    """
    if not isinstance(text, str):
        raise MessageError("the message must be text")
    if "\x00" in text or text.count("\ufffd") > max(3, len(text) // 20):
        unprintable = sum(
            1 for c in text if c == "\ufffd" or (unicodedata.category(c) == "Cc" and c not in "\n\t\r")
        )
        if unprintable > max(3, len(text) // 10):
            raise MessageError("the message looks like binary data, not text: paste text instead")
    cleaned = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not cleaned:
        raise MessageError("the message is empty: write something first")
    if len(cleaned) > max_chars:
        raise MessageError(
            f"the message has {len(cleaned):,} characters; the limit is {max_chars:,} "
            "(chat.max_message_chars): shorten it or send it in parts"
        )
    return cleaned


# -- results ------------------------------------------------------------------------------------------


@dataclass
class RetrievedPreference:
    """A preference that went into the prompt, shown beside the answer."""

    id: str
    text: str
    score: float
    confidence: float
    origin: str


@dataclass
class TurnResult:
    answer: str
    steps: list[str]
    retrieved: list[RetrievedPreference]
    turn_id: str
    version: str
    session_id: str = ""
    raw: str = ""
    status: Literal["ok", "error", "cancelled"] = "ok"
    error: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    finish: str = "stop"  # "stop" or "length" (the answer reached its own token budget)
    explicit_added: list[str] = field(default_factory=list)
    #: how the reasoning went (alignment.budget_forcing.ReasoningOutcome.as_meta()): budget, steps, forced, path
    reasoning: dict = field(default_factory=dict)
    #: the prompt's length in the engine's tokens (None: an endpoint without a local tokenizer)
    prompt_tokens: int | None = None


@dataclass
class TurnEvent:
    """What ``stream_turn`` yields: ``retrieved`` first, then ``delta`` per decoded piece, then ``done``/``error``."""

    kind: Literal["retrieved", "delta", "done", "error"]
    text: str = ""  # the model's raw text so far
    delta: str = ""
    retrieved: list[RetrievedPreference] = field(default_factory=list)
    result: TurnResult | None = None
    error: str | None = None


@dataclass
class AssistantConfig:
    """Knobs of the turn pipeline that are not user settings.

    Prompt: ``history_turns`` past exchanges of the session go into the prompt (oldest dropped first
    when the context is full). Background inference (AlignXplore): runs after the chat has been idle
    for ``infer_idle_s`` (it shares the model with the chat), at most ``infer_max_signals`` new
    signals per call, ``infer_max_new_tokens`` and ``infer_retries`` per call.
    """

    history_turns: int = 6
    background_inference: bool = True
    infer_idle_s: float = 4.0
    infer_max_signals: int = 8
    infer_max_new_tokens: int = 192
    infer_retries: int = 0
    #: at start, turns logged at least this long ago whose memory write never finished (a crash) are replayed
    recover_after_s: float = 10.0


# -- wiring: memory, log, engines -------------------------------------------------------------------------


def open_log(settings: Settings) -> SessionLog:
    return SessionLog(default_log_path(settings.logs_dir))


def open_memory(settings: Settings):
    """The vector memory under ``settings.chroma_dir`` (or the configured chroma server)."""
    from memory.config import MemoryConfig
    from memory.vector_store import VectorMemory

    return VectorMemory(MemoryConfig.model_validate(settings.memory.model_dump()), settings.chroma_dir)


def user_preference_texts(settings: Settings, user_id: str, memory=None) -> list[str]:
    memory = memory or open_memory(settings)
    return [s.text for s in memory.for_user(user_id).list_preferences()]


def forget_user(settings: Settings, user_id: str, memory=None, session_log: SessionLog | None = None) -> int:
    """Forget everything about a user: their memory, their ALOE sessions' memories, their session log."""
    from app.aloe import memory_scope

    memory = memory or open_memory(settings)
    session_log = session_log or open_log(settings)
    for session in session_log.sessions(user_id=user_id, mode="aloe"):
        memory.for_user(memory_scope(user_id, session["session_id"])).forget()
    memory.for_user(user_id).forget()
    return session_log.forget_user(user_id)


def policy_versions(settings: Settings) -> list[str]:
    """Versions an evaluator can pick: ``serving`` (what the app serves now), ``default``, registered ones."""
    from training.registry import ModelRegistry

    return [
        "serving",
        "default",
        *[m.version for m in ModelRegistry(settings.registry_dir).versions("policy")],
    ]


def policy_engine(settings: Settings, version: str | None = None) -> Engine:
    """The policy that answers: the serving one, the packaged default, or a registered version."""
    from app.models import engine_for

    if version in (None, "", "serving"):
        return engine_for(settings, "policy")
    from app.models import llamacpp_available, registered_spec

    if version == "default":  # the packaged model, on llama.cpp where it is installed (as the serving default)
        return build_engine(ModelSpec(backend="llamacpp" if llamacpp_available() else "default"), settings.models_dir)
    from training.registry import ModelRegistry

    try:
        model = ModelRegistry(settings.registry_dir).get("policy", version)
    except KeyError:
        raise CdraError(f"no policy version {version!r} in the registry: `cdra models` lists them") from None
    return build_engine(registered_spec(model), settings.models_dir, version=model.version)


# -- background preference inference -------------------------------------------------------------------


class _ChatGate:
    """Counts chat turns in flight so background inference waits for a quiet moment."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._last = 0.0

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last = time.monotonic()
                self._cond.notify_all()

    def wait_idle(self, idle_s: float, stop: threading.Event) -> None:
        with self._cond:
            while not stop.is_set():
                quiet = time.monotonic() - self._last
                if self._active == 0 and quiet >= idle_s:
                    return
                self._cond.wait(timeout=max(0.05, idle_s - quiet) if self._active == 0 else 0.5)


class InferenceWorker:
    """One daemon thread that folds new behavioral signals into a user's description (AlignXplore streaming).

    Signals queue per memory scope; each run takes only the pending ones plus the stored statements as
    d_prev, so its cost grows with the new signals, not the history. Failures are logged, never raised.
    """

    def __init__(self, memory, make_inferrer, gate: _ChatGate, config: AssistantConfig) -> None:
        self.memory = memory
        self._make_inferrer = make_inferrer
        self._inferrer = None
        self.gate = gate
        self.config = config
        self._pending: dict[str, list[Any]] = {}
        self._generation: dict[str, int] = {}  # bumped by cancel(): results of older runs are discarded
        self._lock = threading.Lock()
        self._wake = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.runs = 0
        self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="preference-inference", daemon=True)
        self._thread.start()

    def submit(self, scope: str, signal: Any) -> None:
        with self._lock:
            self._pending.setdefault(scope, []).append(signal)
            self._idle.clear()
        self._wake.put(scope)

    def cancel(self, scope: str) -> None:
        """Drop a scope's pending signals (the user asked to forget everything)."""
        with self._lock:
            self._pending.pop(scope, None)
            self._generation[scope] = self._generation.get(scope, 0) + 1

    def cancel_user(self, user_id: str) -> None:
        """Cancel the user's own scope and their ALOE scopes (``user__aloe__…``; ``__`` is not in names)."""
        with self._lock:
            scopes = {
                s for s in [*self._pending, *self._generation] if s == user_id or s.startswith(user_id + "__")
            }
        for scope in scopes | {user_id}:
            self.cancel(scope)

    def drain(self, timeout: float = 120.0) -> bool:
        """Wait until every submitted signal is processed (tests, benchmarks, shutdown)."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work and wait (bounded) for a run inside the model to end: a daemon thread still in
        native code when the interpreter exits aborts the process."""
        self._stop.set()
        self._wake.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _not_forgotten(self, scope: str, signals: list[Any]) -> list[Any]:
        """Drop signals from before the scope's user was forgotten (maybe by another process)."""
        tombstones = getattr(self.memory, "tombstones", None)
        forgotten = tombstones.forgotten_at(scope) if tombstones is not None else None
        return [s for s in signals if forgotten is None or (s.time or now_iso()) >= forgotten]

    def _take(self) -> tuple[str, list[Any]] | None:
        with self._lock:
            for scope, signals in self._pending.items():
                if signals:
                    batch = signals[: self.config.infer_max_signals]
                    rest = signals[len(batch) :]
                    if rest:
                        self._pending[scope] = rest
                    else:
                        del self._pending[scope]
                    return scope, batch
            self._idle.set()
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._wake.get(timeout=1.0)
            except queue.Empty:
                continue
            while not self._stop.is_set():
                self.gate.wait_idle(self.config.infer_idle_s, self._stop)
                job = self._take()
                if job is None:
                    break
                self._run(*job)

    def _run(self, scope: str, signals: list[Any]) -> None:
        from alignment.preferences import PreferenceDescription

        with self._lock:
            generation = self._generation.get(scope, 0)
        try:
            signals = self._not_forgotten(scope, signals)
            if not signals:
                return
            if self._inferrer is None:
                self._inferrer = self._make_inferrer()
            # writes belong to the oldest signal's activity: refused if the user was forgotten since
            user_memory = self.memory.for_user(scope, as_of=min(s.time or now_iso() for s in signals))
            previous = PreferenceDescription(statements=user_memory.list_preferences())
            from alignment.engines.cpu_threads import in_process_work

            with in_process_work():  # llama.cpp leaves this core to it, should a chat turn start meanwhile
                result = self._inferrer.infer(signals, previous, suppressed=user_memory.suppressed())
            self.runs += 1
            with self._lock:
                if self._generation.get(scope, 0) != generation:  # forgotten while it ran: keep nothing
                    return
            user_memory.record_inference(
                {
                    "signals": len(signals),
                    "new_statements": len(result.new_statements),
                    "unsupported": result.unsupported,
                    "r_format": result.r_format,
                    "failed": result.failed,
                    "wall_s": round(result.wall_s, 2),
                    "error": result.error or "",
                },
                raw=result.raw,
            )
            if result.failed:
                self.failures += 1
                self.last_error = result.error
                log.warning("preference inference for %s found nothing usable: %s", scope, result.error)
                return
            with self._lock:
                if self._generation.get(scope, 0) == generation and result.new_statements:
                    from alignment.preferences import with_inference_sources

                    # each statement keeps the signals it rests on and the reasoning that produced it
                    user_memory.add_preferences(with_inference_sources(result.new_statements, signals, result.reasoning))
        except ForgottenError:
            log.info("preference inference for %s dropped: the user was forgotten meanwhile", scope)
        except Exception as exc:  # a background failure must never reach the chat
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("preference inference for %s failed", scope)


# -- the assistant --------------------------------------------------------------------------------------


class Assistant:
    """One per process: shares the loaded engines, the vector memory and the session log across users."""

    def __init__(
        self,
        settings: Settings,
        config: AssistantConfig | None = None,
        memory=None,
        session_log: SessionLog | None = None,
        policy: Engine | None = None,
    ) -> None:
        """``policy`` pins the answering engine (default: resolved per turn, so a promotion takes effect)."""
        self.settings = settings
        self.policy = policy
        self.config = config or AssistantConfig()
        self.memory = memory if memory is not None else open_memory(settings)
        self.log = session_log or open_log(settings)
        self._gate = _ChatGate()
        self._inflight: set[tuple[str, str]] = set()
        self._inflight_lock = threading.Lock()
        self.worker = (
            InferenceWorker(self.memory, self._make_inferrer, self._gate, self.config)
            if self.config.background_inference
            else None
        )
        try:
            self.recover_pending()
        except CdraError:
            log.exception("could not replay turns whose memory write was interrupted")

    def _make_inferrer(self):
        from app.models import preference_inferrer

        return preference_inferrer(self.settings, max_new_tokens=self.config.infer_max_new_tokens,
                                   max_retries=self.config.infer_retries,
                                   max_signals_per_call=self.config.infer_max_signals)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def policy_engine(self, version: str | None = None) -> Engine:
        """The engine that answers a turn: the pinned one, else the serving (or requested) version."""
        if self.policy is not None and version is None:
            return self.policy
        return policy_engine(self.settings, version)

    # -- pieces of a turn -----------------------------------------------------------------------------
    def retrieve(self, memory_user: str, query: str) -> tuple[list[RetrievedPreference], list[str]]:
        """The user's relevant preferences (for display) and the memory lines for the prompt."""
        mem = self.settings.memory
        retrieval = self.memory.for_user(memory_user).retrieve(
            query, top_k=mem.top_k, token_budget=mem.token_budget
        )
        shown = [
            RetrievedPreference(s.id, s.text, round(float(score), 3), s.confidence, s.origin)
            for s, score in retrieval.preferences
        ]
        return shown, list(retrieval.as_prompt_lines())

    def build_prompt(
        self,
        engine: Engine,
        memory_lines: Sequence[str],
        history: Sequence[dict[str, str]],
        query: str,
        max_new_tokens: int,
    ) -> list[dict[str, str]]:
        """POLICY_PROMPT with memory and the last turns; the oldest turns go first when the context is full.
        The reply is not opened here: ``stream_policy`` opens it where no grammar writes the labels."""
        turns = [
            m for m in history if m.get("role") in ("user", "assistant") and str(m.get("content", "")).strip()
        ]
        turns = turns[-2 * self.config.history_turns :] if self.config.history_turns > 0 else []
        while True:
            messages = [("human" if m["role"] == "user" else "ai", str(m["content"])) for m in turns]
            conversation = render(
                POLICY_PROMPT,
                preferences=format_preferences(list(memory_lines)),
                history=messages,
                query=query,
            )
            window = engine.context_window
            if window is None or not turns or engine.count_tokens(conversation) + max_new_tokens <= window:
                return conversation
            turns = turns[2:]

    @contextmanager
    def _session_slot(self, user_id: str, session_id: str) -> Iterator[None]:
        key = (user_id, session_id)
        with self._inflight_lock:
            if key in self._inflight:
                raise BusyError("the previous answer is still being written: wait for it (or stop it) first")
            self._inflight.add(key)
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight.discard(key)

    def stream_turn(
        self,
        user_id: str,
        session_id: str,
        message: str,
        history: Sequence[dict[str, str]] = (),
        *,
        mode: str = "chat",
        policy_version: str | None = None,
        memory_user: str | None = None,
        persona: dict | None = None,
        meta: dict | None = None,
        params: SamplingParams | None = None,
    ) -> Iterator[TurnEvent]:
        """Answer one message, yielding events as the answer is written; the turn is logged exactly once.

        Bad input raises MessageError before anything is logged; a model failure ends with an ``error``
        event (the partial answer is logged with status ``error``); a consumer that stops reading
        (a closed tab) leaves a ``cancelled`` record. ``params`` overrides the chat settings' sampling.
        """
        chat = self.settings.chat
        query = clean_message(message, chat.max_message_chars)
        scope = memory_user or user_id
        arrived = now_iso()  # the activity time: a forget after it refuses this turn's late writes
        with self._session_slot(user_id, session_id), self._gate.turn():
            timings: dict[str, float] = {}
            started = time.perf_counter()
            retrieved, lines = self.retrieve(scope, query)
            timings["retrieval"] = _ms(started)
            yield TurnEvent("retrieved", retrieved=retrieved)
            t = time.perf_counter()
            engine = self.policy_engine(policy_version)
            params = params or SamplingParams(
                max_new_tokens=chat.max_new_tokens, temperature=chat.temperature, top_p=chat.top_p
            )
            budget = reasoning_budget(chat, params.max_new_tokens)
            history = list(history)
            conversation = self.build_prompt(engine, lines, history, query, budget.total_tokens)
            prompt_tokens = _check_fits(engine, conversation, budget.total_tokens)  # the client's to fix: not logged
            timings["prompt"] = _ms(t)
            turn_id = uuid.uuid4().hex
            raw, status, error = "", "ok", None
            t = time.perf_counter()
            n_pieces = 0
            outcome = ReasoningOutcome()

            def finish() -> TurnResult:
                """Log what exists of the turn so far, whatever way it ended."""
                return self._finish(user_id, session_id, turn_id, scope, mode, query, history, retrieved, raw,
                                    engine, timings, status, error, persona, meta, n_pieces, outcome, arrived)

            pieces = stream_policy(engine, conversation, budget, temperature=params.temperature,
                                   top_p=params.top_p, seed=params.seed, outcome=outcome)
            try:
                for delta in pieces:
                    if not delta:
                        continue
                    if not n_pieces:
                        timings["first_token"] = _ms(started)
                    n_pieces += 1
                    raw += delta
                    if "first_answer_token" not in timings and _answer_started(raw):
                        timings["first_answer_token"] = _ms(started)
                    yield TurnEvent("delta", text=raw, delta=delta)
            except GeneratorExit:
                status, error = "cancelled", "the reader left before the answer was finished"
                timings["generation"] = _ms(t)
                finish()
                raise
            except (EngineError, CdraError) as exc:
                status, error = "error", f"the model failed while answering: {exc}"
            except Exception as exc:  # the model crashed in an unforeseen way: the user still gets a message
                log.exception("policy generation failed")
                status, error = "error", f"the model failed while answering ({type(exc).__name__}: {exc})"
            finally:
                pieces.close()
            timings["generation"] = _ms(t)
            result = finish()
            result.prompt_tokens = prompt_tokens
        yield TurnEvent("done" if status == "ok" else "error", text=raw, result=result, error=error)

    def _finish(
        self,
        user_id,
        session_id,
        turn_id,
        scope,
        mode,
        query,
        history,
        retrieved,
        raw,
        engine,
        timings,
        status,
        error,
        persona,
        meta,
        n_pieces,
        outcome: ReasoningOutcome,
        arrived=None,
    ) -> TurnResult:
        """Log the turn, store it in conversation memory, extract explicit preferences, queue inference.

        The log comes first and says ``memory: pending`` until the memory write is done (a crash in
        between is replayed by ``recover_pending``); a user forgotten since ``arrived`` gets neither.
        """
        parsed = read_response(raw)
        segments = parsed.segments
        has_answer = any(s.is_answer for s in segments)
        steps = [s.text for s in segments if not s.is_answer]
        answer = parsed.answer if has_answer else ""
        finish = outcome.finish if n_pieces else "stop"
        t = time.perf_counter()
        record = TurnRecord(
            user_id=user_id,
            session_id=session_id,
            mode=mode,
            query=query,
            answer=answer,
            history=history,
            retrieved_preferences=[r.text for r in retrieved],
            reasoning_steps=steps,
            raw=raw,
            model_versions={"policy": engine.version},
            latency_ms=timings,
            status=status,
            error=error,
            persona=persona,
            meta={**(meta or {}), "finish": finish, "memory_scope": scope, "reasoning": outcome.as_meta()},
            turn_id=turn_id,
            started=arrived or "",
            memory="pending" if status != "cancelled" else "none",
        )
        forgotten = False
        try:
            self.log.log_turn(record)
        except ForgottenError:
            log.info("turn %s not logged: its user was forgotten while it was answered", turn_id)
            forgotten = True
        except Exception:
            log.exception("could not log turn %s", turn_id)
            raise
        timings["logging"] = _ms(t)
        added: list[str] = []
        if status != "cancelled" and not forgotten:
            t = time.perf_counter()
            added, state = self._remember(scope, session_id, turn_id, query, answer, status, arrived)
            if state != "pending":
                self.log.set_memory(user_id, turn_id, state)
            timings["memory_write"] = _ms(t)
        return TurnResult(
            answer=answer,
            steps=steps,
            retrieved=retrieved,
            turn_id=turn_id,
            version=engine.version,
            session_id=session_id,
            raw=raw,
            status=status,
            error=error,
            latency_ms=timings,
            finish=finish,
            explicit_added=added,
            reasoning=outcome.as_meta(),
        )

    def _remember(
        self, scope: str, session_id: str, turn_id: str, query: str, answer: str, status: str,
        arrived: str | None = None,
    ) -> tuple[list[str], str]:
        """Explicit preferences now (the user's own words), conversation memory and inference for good turns.

        Returns the explicit texts stored and the turn's memory state for the log: ``stored``,
        ``skipped`` (the user was forgotten since the turn began) or ``pending`` (failed; replayed later).
        """
        from alignment.explicit_extraction import extract_explicit

        arrived = arrived or now_iso()
        user_memory = self.memory.for_user(scope, as_of=arrived)
        added: list[str] = []
        try:
            found = extract_explicit(query, turn_id)
            if found:
                user_memory.add_preferences(found)
                added = [s.text for s in found]
            if status == "ok":
                user_memory.add_turn(session_id, turn_id, query, answer)
        except ForgottenError:
            return [], "skipped"
        except Exception:
            log.exception("could not store turn %s in memory", turn_id)
            return added, "pending"
        if status == "ok" and self.worker is not None:
            self.worker.submit(scope, _turn_signal(turn_id, query, answer, time=arrived))
        return added, "stored"

    def recover_pending(self, min_age_s: float | None = None) -> int:
        """Finish the memory writes of turns the log holds as ``pending`` (the process died after logging
        them); only turns logged at least ``min_age_s`` ago, so another live process's turn is left alone."""
        from datetime import UTC, datetime, timedelta

        age = self.config.recover_after_s if min_age_s is None else min_age_s
        cutoff = (datetime.now(UTC) - timedelta(seconds=age)).isoformat(timespec="milliseconds")
        done = 0
        for turn in self.log.pending_memory():
            if turn["time"] > cutoff:
                continue
            scope = turn["meta"].get("memory_scope") or turn["user_id"]
            _, state = self._remember(scope, turn["session_id"], turn["turn_id"], turn["query"], turn["answer"],
                                      turn["status"], turn["time"])
            if state != "pending":
                self.log.set_memory(turn["user_id"], turn["turn_id"], state)
                done += 1
        return done

    # -- whole answers and feedback -----------------------------------------------------------------------
    def answer(
        self,
        user_id: str,
        message: str,
        history: Sequence[dict[str, str]] = (),
        mode: str = "ask",
        session_id: str | None = None,
        policy_version: str | None = None,
    ) -> TurnResult:
        """One complete turn (``cdra ask``, ``cdra serve``); a model failure raises after it is logged."""
        session_id = session_id or self.log.start_session(user_id, mode, {})
        result: TurnResult | None = None
        for event in self.stream_turn(
            user_id, session_id, message, history, mode=mode, policy_version=policy_version
        ):
            if event.kind in ("done", "error"):
                result = event.result
        assert result is not None
        if result.status != "ok":
            raise EngineError(result.error or "the model failed")
        return result

    def feedback(
        self,
        user_id: str,
        turn_id: str,
        feedback: str | None = None,
        correction: str | None = None,
        clear: bool = False,
    ) -> list[str]:
        """Thumbs and "I'd rather…" go to the log (training signal) and to inference (behavioral signal).

        ``feedback`` is "up"/"down" (``clear=True`` withdraws an earlier one). A correction is also the
        user's own words, so explicit preferences in it are stored at once; their texts are returned.
        """
        turn = self.log.turn(user_id, turn_id)
        if turn is None:
            raise CdraError("no such turn for you")
        correction = (correction or "").strip() or None
        if feedback is not None or clear:
            self.log.set_feedback(user_id, turn_id, feedback)
        if correction:
            self.log.set_correction(user_id, turn_id, correction)
        scope = turn["meta"].get("memory_scope") or user_id  # the turn is this user's, so is its scope
        added: list[str] = []
        if correction:
            from alignment.explicit_extraction import extract_explicit

            found = extract_explicit(correction, turn_id)
            if found:
                self.memory.for_user(scope).add_preferences(found)
                added = [s.text for s in found]
        if self.worker is not None and (feedback or correction):
            self.worker.submit(
                scope, _turn_signal(turn_id, turn["query"], turn["answer"], feedback, correction, time=now_iso())
            )
        return added

    def forget(self, user_id: str) -> int:
        """Forget a user entirely (memory, ALOE memories, session log), dropping queued inference first."""
        if self.worker is not None:
            self.worker.cancel_user(user_id)
        return forget_user(self.settings, user_id, memory=self.memory, session_log=self.log)


def make_responder(settings: Settings, assistant: Assistant | None = None):
    """The personalization hook of `cdra serve` (app/server.py ``Responder``): the OpenAI ``user`` picks the
    memory, the last user message is the query, earlier user/assistant messages the history; client system
    prompts are ignored (the policy prompt is the assistant's). Yields the policy's text as it is written."""
    from app.users import check_name

    bot = assistant or Assistant(settings)
    if assistant is None:
        import atexit

        atexit.register(bot.close)  # let a background inference finish before the interpreter goes away

    def respond(request) -> Iterator[str]:
        user = check_name(request.user)  # an app user name; never an internal scope such as user__aloe__…
        turns = [m for m in request.messages if m.get("role") in ("user", "assistant")]
        if not turns or turns[-1]["role"] != "user":
            raise MessageError("the last message must be the user's")
        session_id = new_session_id()  # created with the turn: a refused request leaves no row behind
        for event in bot.stream_turn(
            user, session_id, str(turns[-1]["content"]), turns[:-1], mode="serve", params=request.params,
            meta={"client": "openai-api"},
        ):
            if event.kind == "delta":
                yield event.delta
            elif event.kind == "error":
                raise EngineError(event.error or "the model failed")

    return respond


def _turn_signal(
    turn_id: str, user: str, assistant: str, feedback: str | None = None, correction: str | None = None,
    time: str | None = None,
):
    """A behavioral signal for inference; ``time`` is when the user acted (forgetting drops older ones)."""
    from alignment.signals import TurnSignal

    return TurnSignal(
        kind="turn",
        id=f"{turn_id}-{feedback or 'turn'}",
        time=time or now_iso(),
        user=user,
        assistant=assistant,
        feedback=feedback,
        correction=(correction or None),
    )


def _check_fits(engine: Engine, conversation: list[dict[str, str]], max_new_tokens: int) -> int | None:
    """A prompt that cannot fit even with the history dropped is the client's to fix (too many new tokens).
    Returns the prompt's tokens where the engine counts them."""
    window = engine.context_window
    if window is None:
        return None
    n = engine.count_tokens(conversation)
    if n + max_new_tokens > window:
        raise PromptTooLongError(
            f"the prompt has {n} tokens; with {max_new_tokens} new tokens it exceeds the model's context "
            f"window of {window}: ask for fewer tokens or send a shorter message"
        )
    return n


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 1)


def reasoning_budget(chat, max_new_tokens: int | None = None) -> ReasoningBudget:
    """The chat settings' reasoning budget, shrunk to fit ``max_new_tokens`` (a client's ``max_tokens``)."""
    budget = ReasoningBudget(chat.reasoning_steps, chat.step_tokens, chat.answer_tokens)
    return budget.within(max_new_tokens or chat.max_new_tokens)


def _answer_started(raw: str) -> bool:
    """Whether the streamed response has reached its answer's first visible character."""
    at = raw.rfind("Answer:")
    return at != -1 and bool(raw[at + len("Answer:") :].strip())


def new_session_id() -> str:
    return uuid.uuid4().hex
