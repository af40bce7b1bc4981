"""`cdra bench prefs`: the cost of a streaming update (d_prev + 4 new signals) against re-inferring from the
whole history (past + new signals in one prompt), in prompt tokens and wall time, at several history lengths.

d_prev is filled to the inferrer's cap of statements, the worst case for the streaming prompt; both runs
decode greedily with the same token limit and no retries, so the difference is the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from alignment.engines.base import Engine, PromptTooLongError
from alignment.explicit_extraction import explicit_from_signals
from alignment.preference_inference import InferenceConfig, PreferenceInferrer
from alignment.preferences import PreferenceDescription, PreferenceStatement
from alignment.signals import Signal


@dataclass
class PrefsBenchRow:
    history: int
    new: int
    full_prompt_tokens: int
    stream_prompt_tokens: int
    full_s: float | None  # None: the full history does not fit the model's context window
    stream_s: float
    full_completion_tokens: int
    stream_completion_tokens: int

    @property
    def token_ratio(self) -> float:
        return self.full_prompt_tokens / max(1, self.stream_prompt_tokens)

    @property
    def time_ratio(self) -> float | None:
        return None if self.full_s is None else self.full_s / max(1e-9, self.stream_s)


def filled_previous(past: Sequence[Signal], cap: int) -> PreferenceDescription:
    """A d_prev of exactly ``cap`` statements drawn from the past signals (explicit ones first)."""
    statements: list[PreferenceStatement] = explicit_from_signals(past)[:cap]
    for i, signal in enumerate(past):
        if len(statements) >= cap:
            break
        text = getattr(signal, "chosen", None) or next(iter(signal.texts()), "")
        words = text.split()[:8]
        if words:
            statements.append(PreferenceStatement.make("prefers", " ".join(words), dimension="interests",
                                                       evidence=[signal.id], confidence=0.6))
    return PreferenceDescription(statements=statements[:cap])


def bench_prefs(
    engine: Engine,
    signals: Sequence[Signal],
    histories: Sequence[int] = (8, 32, 128),
    new: int = 4,
    config: InferenceConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[PrefsBenchRow]:
    """One row per history length H: full = infer(past[:H] + new), stream = infer(new, d_prev)."""
    say = progress or (lambda _msg: None)
    base = replace(config or InferenceConfig(max_new_tokens=48), temperature=0.0, max_retries=0)
    if len(signals) < max(histories) + new:
        raise ValueError(f"the benchmark needs {max(histories) + new} signals, got {len(signals)}")
    full_inferrer = PreferenceInferrer(engine, replace(base, max_signals_per_call=10**9))
    stream_inferrer = PreferenceInferrer(engine, base)
    rows = []
    for h in histories:
        past, fresh = list(signals[:h]), list(signals[h: h + new])
        previous = filled_previous(past, base.max_previous_statements)
        full_tokens = engine.count_tokens(full_inferrer.prompt(past + fresh, None))
        stream_tokens = engine.count_tokens(stream_inferrer.prompt(fresh, previous))
        say(f"H={h}: full re-inference ({full_tokens} prompt tokens)")
        full_s, full_completion = None, 0
        try:
            started = time.perf_counter()
            completion, _ = full_inferrer.generate_once(past + fresh, None)
            full_s, full_completion = time.perf_counter() - started, completion.completion_tokens
        except PromptTooLongError:
            pass
        say(f"H={h}: streaming update ({stream_tokens} prompt tokens)")
        started = time.perf_counter()
        completion, _ = stream_inferrer.generate_once(fresh, previous)
        stream_s = time.perf_counter() - started
        stream_completion = completion.completion_tokens
        rows.append(PrefsBenchRow(h, new, full_tokens, stream_tokens, full_s, stream_s, full_completion,
                                  stream_completion))
    return rows


def format_table(rows: Sequence[PrefsBenchRow], engine: Engine, max_new_tokens: int) -> str:
    lines = [f"model: {engine.description}; context window {engine.context_window}; greedy, "
             f"max_new_tokens={max_new_tokens}; d_prev filled to the cap",
             "| past signals | new | full prompt tok | stream prompt tok | tokens full/stream | full s | stream s | "
             "time full/stream |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        full_s = "does not fit" if r.full_s is None else f"{r.full_s:.1f}"
        ratio = "–" if r.time_ratio is None else f"{r.time_ratio:.1f}x"
        lines.append(f"| {r.history} | {r.new} | {r.full_prompt_tokens:,} | {r.stream_prompt_tokens:,} | "
                     f"{r.token_ratio:.1f}x | {full_s} | {r.stream_s:.1f} | {ratio} |")
    return "\n".join(lines)
