"""Budgeted defensive reasoning ("budget forcing"): at most N reasoning steps of at most ``step_tokens`` each,
then an answer of at most ``answer_tokens``. Every response ends in a non-empty answer.

``stream_policy(engine, conversation, budget, …)`` yields the response text (``Step 1: …`` … ``Answer: …``) as
it is written and fills a ``ReasoningOutcome``. Two paths, one result:

* ``grammar`` — the engine enforces ``alignment.formats.policy_response`` (transformers, llama.cpp, vLLM):
  the grammar closes a step at its budget and, after the last step, allows only ``Answer:``. One call.
* ``stop`` — engines that cannot (OpenAI-compatible endpoints, LangChain models): the reply is opened on
  ``Step 1:`` and the reasoning generated with ``stop=["Answer:", "Step N+1"]`` within the total reasoning
  budget; a step over its own budget is cut here and the next one opened (a new call continuing the text).
  Then ``Answer:`` is appended and the answer continued with its own budget (a last call).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

from alignment.engines.base import Conversation, Engine, SamplingParams
from alignment.formats import OutputFormat, policy_response
from alignment.prompts.policy import REASONING_PREFIX, start_reasoning
from alignment.steps import ANSWER_LABEL, STEP_LABEL, read_response

#: a trailing partial line this short may still become a ``Step k:``/``Answer:`` label: held back while streaming
_HOLD = 12


@dataclass(frozen=True)
class ReasoningBudget:
    """How long the policy may think and answer: ``max_steps`` steps of ``step_tokens``, an ``answer_tokens`` answer."""

    max_steps: int = 3
    step_tokens: int = 32
    answer_tokens: int = 128

    @property
    def format(self) -> OutputFormat:
        return policy_response(self.max_steps, self.step_tokens, self.answer_tokens)

    @property
    def reasoning_tokens(self) -> int:
        return self.max_steps * self.step_tokens

    @property
    def total_tokens(self) -> int:
        """An upper bound of the new tokens of one response."""
        return self.format.max_tokens

    @property
    def label(self) -> str:
        """``3×32+128``: steps × tokens per step + answer tokens (logged, shown under the answer)."""
        return f"{self.max_steps}×{self.step_tokens}+{self.answer_tokens}"

    def within(self, max_new_tokens: int) -> ReasoningBudget:
        """This budget shrunk to fit ``max_new_tokens`` where it can: the answer first (down to 16 tokens), then
        the steps (down to 8 tokens), then their number (down to 1). A response is never shorter than that."""
        steps, step, answer = self.max_steps, self.step_tokens, self.answer_tokens

        def fits() -> bool:
            return policy_response(steps, step, answer).max_tokens <= max_new_tokens

        while not fits() and answer > 16:
            answer = max(16, answer - 16)
        while not fits() and step > 8:
            step = max(8, step - 8)
        while not fits() and steps > 1:
            steps -= 1
        return self if (steps, step, answer) == (self.max_steps, self.step_tokens, self.answer_tokens) else \
            ReasoningBudget(steps, step, answer)


@dataclass
class ReasoningOutcome:
    """What happened in one response, for the turn's log (``meta["reasoning"]``) and the UI."""

    path: Literal["grammar", "stop"] = "grammar"
    budget: str = ""
    steps: int = 0
    #: the answer came because a budget ran out (not because the model chose to answer)
    forced: bool = False
    #: ``max_steps`` (all N steps used), ``step_tokens`` (a step hit its budget), ``reasoning_tokens`` (the
    #: total reasoning budget ran out), ``no_answer`` (the model stopped without one), or None
    forced_by: str | None = None
    calls: int = 0
    answer_tokens: int = 0
    finish: Literal["stop", "length"] = "stop"  # "length": the answer reached its own budget

    def as_meta(self) -> dict:
        return asdict(self)


def stream_policy(
    engine: Engine,
    conversation: Conversation,
    budget: ReasoningBudget,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    outcome: ReasoningOutcome | None = None,
) -> Iterator[str]:
    """The policy's response to ``conversation`` (no open assistant message) as text deltas, within ``budget``."""
    outcome = outcome if outcome is not None else ReasoningOutcome()
    outcome.budget = budget.label
    count = token_counter(engine)
    if engine.enforces(budget.format):
        yield from _grammar_path(engine, conversation, budget, temperature, top_p, seed, outcome, count)
    else:
        yield from _stop_path(engine, conversation, budget, temperature, top_p, seed, outcome, count)


def token_counter(engine: Engine) -> Callable[[str], int]:
    """Exact token counts where the engine has a local tokenizer, else ~4 characters a token."""
    encode = getattr(engine, "encode", None)
    if callable(encode) and getattr(engine, "context_window", None) is not None:
        return lambda text: len(encode(text)) if text else 0
    return lambda text: (len(text) + 3) // 4


# -- the grammar path ---------------------------------------------------------------------------------------


def _grammar_path(engine, conversation, budget, temperature, top_p, seed, outcome, count) -> Iterator[str]:
    fmt = budget.format
    params = SamplingParams(max_new_tokens=fmt.max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            format=fmt)
    outcome.path, outcome.calls = "grammar", 1
    text = ""
    for delta in engine.stream(conversation, params):
        if delta:
            text += delta
            yield delta
    parsed = read_response(text, max_steps=budget.max_steps)
    outcome.steps = len(parsed.steps)
    if any(count(s) >= budget.step_tokens for s in parsed.steps):
        outcome.forced, outcome.forced_by = True, "step_tokens"
    elif outcome.steps >= budget.max_steps:
        outcome.forced, outcome.forced_by = True, "max_steps"
    outcome.answer_tokens = count(parsed.answer)
    outcome.finish = "length" if outcome.answer_tokens >= budget.answer_tokens - 1 else "stop"


# -- the stop-sequence path -----------------------------------------------------------------------------------


def _stop_path(engine, conversation, budget, temperature, top_p, seed, outcome, count) -> Iterator[str]:
    outcome.path = "stop"
    text = REASONING_PREFIX  # everything yielded so far; the model continues it
    yield text
    spent = 0  # reasoning tokens generated so far, over all calls
    while True:
        remaining = budget.reasoning_tokens - spent
        if remaining <= 0:
            outcome.forced, outcome.forced_by = True, outcome.forced_by or "reasoning_tokens"
            break
        params = SamplingParams(max_new_tokens=remaining, temperature=temperature, top_p=top_p, seed=seed,
                                stop=("Answer:",))
        outcome.calls += 1
        received, cut, pending = "", None, ""
        pieces = engine.stream(start_reasoning(conversation, text), params)
        try:
            for delta in pieces:
                received += delta
                pending += delta
                cut, keep = _check_reasoning(text + pending, budget, count)
                if cut is not None:  # stop reading: the rest of this call is not wanted
                    pending = keep[len(text):]
                    break
                emit, pending = _release(pending)
                if emit:
                    text += emit
                    yield emit
        finally:
            pieces.close()
        pending = pending.rstrip()
        if pending:
            text += pending
            yield pending
        spent += max(1, count(received))
        if cut == "answer":  # the model wrote its own answer label (not the exact stop string): its choice
            break
        if cut == "extra_step":
            outcome.forced, outcome.forced_by = True, "max_steps"
            break
        if cut == "step_tokens":
            outcome.forced_by = "step_tokens"
            steps = len(_labels(text))
            if steps >= budget.max_steps:
                outcome.forced = True
                break
            opener = f"\nStep {steps + 1}:"
            text += opener
            yield opener
            continue
        # the call ended by itself: at "Answer:" or the end of sequence (the model chose to answer), or at the
        # end of the reasoning budget (forced)
        if spent >= budget.reasoning_tokens:
            outcome.forced, outcome.forced_by = True, outcome.forced_by or "reasoning_tokens"
        elif outcome.forced_by == "step_tokens":  # an earlier step was cut: the answer comes through forcing
            outcome.forced = True
        break
    outcome.steps = len(_labels(text))
    yield from _answer(engine, conversation, budget, temperature, top_p, seed, outcome, count, text.rstrip())


def _answer(engine, conversation, budget, temperature, top_p, seed, outcome, count, reasoning) -> Iterator[str]:
    """Continue ``reasoning + "\nAnswer:"`` with the answer's own budget; an endpoint that repeats the label gets
    it stripped, one that returns nothing is asked once more (sampling)."""
    label = "\nAnswer:"
    yield label
    for attempt in range(2):
        params = SamplingParams(max_new_tokens=budget.answer_tokens, top_p=top_p,
                                temperature=temperature if attempt == 0 else max(temperature, 0.7),
                                seed=None if seed is None else seed + attempt)
        outcome.calls += 1
        head, answer = "", ""  # head: the first characters, held until a repeated label can be told apart
        for delta in engine.stream(start_reasoning(conversation, reasoning + label), params):
            if answer:
                answer += delta
                yield delta
                continue
            head += delta
            if len(head.strip()) < 8:
                continue
            answer = _strip_label(head)
            yield answer
        if not answer and head.strip():
            answer = _strip_label(head)
            yield answer
        if answer.strip():
            outcome.answer_tokens = count(answer)
            outcome.finish = "length" if outcome.answer_tokens >= budget.answer_tokens - 1 else "stop"
            return
    outcome.forced_by = outcome.forced_by or "no_answer"


def _strip_label(head: str) -> str:
    return " " + re.sub(r"^\s*(?:\**\s*answer\s*\**\s*:\**)?\s*", "", head, flags=re.IGNORECASE)


def _labels(text: str) -> list[re.Match]:
    return list(STEP_LABEL.finditer(text))


def _check_reasoning(text: str, budget: ReasoningBudget, count) -> tuple[str | None, str]:
    """Whether the reasoning so far must stop, and the text to keep: an ``Answer`` label (the model's own),
    a step past the last one, or the current step over its token budget."""
    answer = ANSWER_LABEL.search(text)
    if answer is not None:
        return "answer", text[: answer.start()]
    labels = _labels(text)
    if len(labels) > budget.max_steps:
        return "extra_step", text[: labels[budget.max_steps].start()]
    if labels:
        body_start = labels[-1].end()
        body = text[body_start:]
        if count(body) > budget.step_tokens:
            return "step_tokens", text[:body_start] + _truncate(body, budget.step_tokens, count)
    return None, text


def _truncate(body: str, tokens: int, count) -> str:
    """The longest whole-word prefix of ``body`` within ``tokens``."""
    words = re.findall(r"\S+\s*", body)
    out = ""
    for w in words:
        if count(out + w) > tokens:
            break
        out += w
    return out.rstrip()


def _release(pending: str) -> tuple[str, str]:
    """Split streamed text into what can be shown now and a short last line that may still become a label."""
    cut = pending.rfind("\n")
    if cut == -1 or len(pending) - cut > _HOLD:
        return pending, ""
    return pending[:cut], pending[cut:]
