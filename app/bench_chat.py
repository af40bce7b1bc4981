"""`cdra bench chat`: what a chat turn costs on the default model with a 1k-record memory, split into
retrieval, prompt build, generation (time to first token, total) and logging, against a bare generation
of the same query (no memory, no log) — the memory overhead as a ratio. Runs in a temporary data dir.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignment.engines import SamplingParams
from alignment.prompts import render
from alignment.prompts.policy import POLICY_PROMPT, format_preferences
from app.settings import Settings

QUERIES = [
    "Plan a relaxing weekend for me.",
    "What should I cook for friends on Saturday?",
    "Recommend a pet for my small flat.",
    "How should I prepare for a job interview next week?",
    "Suggest a gift for my sister's birthday.",
    "Which laptop should I buy for travel?",
    "Give me ideas for a rainy-day activity.",
    "How can I save money on groceries?",
]
_SUBJECTS = [
    "concise answers",
    "detailed explanations",
    "spicy food",
    "crowded places",
    "early mornings",
    "cats",
    "long hikes",
    "budget options",
    "technical jargon",
    "museums",
    "seafood",
    "road trips",
    "jazz",
    "online shopping",
    "public transport",
    "bullet points",
    "gardening",
    "video games",
    "yoga",
    "night trains",
]
_TOPICS = [
    "weekend plans",
    "dinner recipes",
    "travel tips",
    "work stress",
    "a birthday gift",
    "learning Spanish",
    "a new phone",
    "running shoes",
    "a book club",
    "home office setup",
]


@dataclass
class BenchResult:
    turns: int
    records: int
    max_new_tokens: int
    model: str
    setup_s: float
    full: dict[str, list[float]] = field(default_factory=dict)  # ms per phase per turn
    bare: dict[str, list[float]] = field(default_factory=dict)


def fill_memory(user_memory, records: int) -> None:
    """``records`` memory records for one user: 20% preference statements, 80% past turns."""
    from alignment.preferences import PreferenceStatement

    n_prefs = records // 5
    prefs = []
    for i in range(n_prefs):
        stance = "prefers" if i % 2 == 0 else "avoids"
        subject = (
            f"{_SUBJECTS[i % len(_SUBJECTS)]} ({_TOPICS[(i // len(_SUBJECTS)) % len(_TOPICS)]}, note {i})"
        )
        prefs.append(
            PreferenceStatement.make(
                stance,
                subject,
                dimension="interests",
                evidence=[f"bench-{i}"],
                confidence=0.5 + 0.4 * (i % 3) / 2,
                origin="inferred",
            )
        )
    if prefs:
        user_memory.add_preferences(prefs)
    turns = [
        {
            "session_id": f"bench-session-{i // 20}",
            "turn_id": f"bench-turn-{i}",
            "user": f"Can you help me with {_TOPICS[i % len(_TOPICS)]}? ({i})",
            "assistant": f"Here are some thoughts about {_TOPICS[i % len(_TOPICS)]}, with your preferences in mind. ({i})",
        }
        for i in range(records - n_prefs)
    ]
    if turns:
        user_memory.add_turns(turns)


def _bare_turn(engine, query: str, params: SamplingParams) -> dict[str, float]:
    tokens = engine.count_tokens(render(POLICY_PROMPT, preferences=format_preferences([]), query=query))
    started = time.perf_counter()
    conversation = render(POLICY_PROMPT, preferences=format_preferences([]), query=query)
    first = None
    for delta in engine.stream(conversation, params):
        if delta and first is None:
            first = (time.perf_counter() - started) * 1000
    total = (time.perf_counter() - started) * 1000
    return {"first_token": first or total, "generation": total, "total": total, "prompt_tokens": tokens}


def _full_turn(assistant, session_id: str, query: str) -> dict[str, float]:
    _, lines = assistant.retrieve("bench", query)  # untimed: only to report the prompt's size
    engine = assistant.policy_engine()
    tokens = engine.count_tokens(
        assistant.build_prompt(engine, lines, [], query, assistant.settings.chat.max_new_tokens)
    )
    started = time.perf_counter()
    result = None
    for event in assistant.stream_turn("bench", session_id, query, mode="bench"):
        if event.kind in ("done", "error"):
            result = event.result
    total = (time.perf_counter() - started) * 1000
    if result is None or result.status != "ok":
        raise RuntimeError(f"benchmark turn failed: {result.error if result else 'no result'}")
    lat = dict(result.latency_ms)
    lat["total"] = total
    lat["prompt_tokens"] = tokens
    return lat


def run_bench(
    settings: Settings, turns: int = 5, records: int = 1000, max_new_tokens: int = 64
) -> BenchResult:
    from app.assistant import Assistant, AssistantConfig, policy_engine

    tmp = Path(tempfile.mkdtemp(prefix="cdra-bench-chat-"))
    try:
        chat = settings.chat.model_copy(update={"max_new_tokens": max_new_tokens, "temperature": 0.0})
        bench_settings = settings.model_copy(
            update={"data_dir": tmp, "model_cache_dir": settings.models_dir, "chat": chat}
        )
        t0 = time.perf_counter()
        assistant = Assistant(bench_settings, AssistantConfig(background_inference=False))
        fill_memory(assistant.memory.for_user("bench"), records)
        engine = policy_engine(bench_settings)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        session_id = assistant.log.start_session("bench", "bench", {})
        _full_turn(assistant, session_id, "Hello!")  # warm-up: model, embedder, chroma caches
        _bare_turn(engine, "Hello!", params)
        setup_s = time.perf_counter() - t0
        out = BenchResult(turns, records, max_new_tokens, engine.version, setup_s)
        for i in range(turns):
            query = QUERIES[i % len(QUERIES)]
            for key, value in _bare_turn(engine, query, params).items():
                out.bare.setdefault(key, []).append(value)
            for key, value in _full_turn(assistant, session_id, query).items():
                out.full.setdefault(key, []).append(value)
        assistant.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mean(values: list[float] | None) -> float | None:
    return statistics.fmean(values) if values else None


def print_report(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"chat turn on {result.model}: {result.turns} turns, {result.records} memory records, "
        f"{result.max_new_tokens} new tokens (means)"
    )
    table.add_column("phase")
    table.add_column("with memory + log", justify="right")
    table.add_column("bare generation", justify="right")
    table.add_column("ratio", justify="right")
    for phase in (
        "prompt_tokens",
        "retrieval",
        "prompt",
        "first_token",
        "generation",
        "logging",
        "memory_write",
        "total",
    ):
        full, bare = _mean(result.full.get(phase)), _mean(result.bare.get(phase))
        ratio = f"{full / bare:.2f}x" if full is not None and bare else "-"
        table.add_row(
            phase,
            f"{full:.1f}" if full is not None else "-",
            f"{bare:.1f}" if bare is not None else "-",
            ratio,
        )
    console = Console()
    console.print(table)
    overhead = _mean(result.full["total"]) / _mean(result.bare["total"])
    console.print(
        "prompt_tokens is a count; every other row is milliseconds. first_token includes retrieval."
    )
    console.print(
        f"memory overhead (total turn / bare generation): {overhead:.2f}x; "
        f"setup incl. filling memory and warm-up: {result.setup_s:.1f} s"
    )
