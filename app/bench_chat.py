"""`cdra bench chat`: what a chat turn gives and costs on the serving policy, over PrefEval dev prompts (a
preference stated, then a question it bears on), for a user with a 1k-record memory, in a temporary data dir.

Per run, side by side: answer-present rate, template-echo rate (alignment/echo.py), reasoning steps and forced
answers, time to first token and to the first answer token, full turn time (p50/p95), the per-phase split, and
the serving engine's decode tokens/s against llama.cpp alone on the same GGUF (in its own process).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignment.engines import SamplingParams
from app.settings import Settings

#: the shared development data (beside the checkout), else the PrefEval items shipped in data/dev
SHARED_PREFEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "prefeval"
SHIPPED_DEV = Path(__file__).resolve().parents[1] / "data" / "dev" / "alignment_dev.jsonl"

_SUBJECTS = [
    "concise answers", "detailed explanations", "spicy food", "crowded places", "early mornings", "cats",
    "long hikes", "budget options", "technical jargon", "museums", "seafood", "road trips", "jazz",
    "online shopping", "public transport", "bullet points", "gardening", "video games", "yoga", "night trains",
]
_TOPICS = [
    "weekend plans", "dinner recipes", "travel tips", "work stress", "a birthday gift", "learning Spanish",
    "a new phone", "running shoes", "a book club", "home office setup",
]


def dev_prompts(n: int, source: Path | None = None) -> list[tuple[str, str]]:
    """``n`` (preference, question) pairs, round-robin over the PrefEval topics so every topic is present:
    ``source`` is a PrefEval directory (its explicit_preference/*.json) or a JSONL with preference/query."""
    source = source or (SHARED_PREFEVAL if SHARED_PREFEVAL.is_dir() else SHIPPED_DEV)
    by_topic: list[list[tuple[str, str]]] = []
    if source.is_dir():
        for f in sorted((source / "explicit_preference").glob("*.json")):
            by_topic.append([(r["preference"], r["question"]) for r in json.loads(f.read_text(encoding="utf-8"))])
    else:
        topics: dict[str, list[tuple[str, str]]] = {}
        for line in source.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                topics.setdefault(r.get("topic", ""), []).append((r["preference"], r["query"]))
        by_topic = list(topics.values())
    if not by_topic:
        from alignment.errors import CdraError

        raise CdraError(f"no PrefEval prompts in {source}")
    out: list[tuple[str, str]] = []
    for i in range(max(len(t) for t in by_topic)):
        out += [t[i] for t in by_topic if i < len(t)]
    return out[:n]


@dataclass
class TurnStats:
    answered: bool
    steps: int
    echoing_steps: int
    forced: bool
    first_token_ms: float
    first_answer_ms: float
    total_ms: float
    decode_tokens: int
    decode_s: float
    phases: dict[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0


@dataclass
class BenchResult:
    turns: int
    records: int
    model: str
    engine: str
    budget: str
    setup_s: float
    stats: list[TurnStats] = field(default_factory=list)
    anchor: dict[str, float] = field(default_factory=dict)  # llama.cpp alone (engines/bench.llamacpp_anchor)
    anchor_1: dict[str, float] = field(default_factory=dict)  # the same with one thread
    anchor_short: dict[str, float] = field(default_factory=dict)  # all threads, a one-line prompt
    anchor_gguf: str = ""
    example: str = ""


def fill_memory(user_memory, records: int) -> None:
    """``records`` memory records for one user: 20% preference statements, 80% past turns."""
    from alignment.preferences import PreferenceStatement

    n_prefs = records // 5
    prefs = [
        PreferenceStatement.make(
            "prefers" if i % 2 == 0 else "avoids",
            f"{_SUBJECTS[i % len(_SUBJECTS)]} ({_TOPICS[(i // len(_SUBJECTS)) % len(_TOPICS)]}, note {i})",
            dimension="interests", evidence=[f"bench-{i}"], confidence=0.5 + 0.4 * (i % 3) / 2, origin="inferred",
        )
        for i in range(n_prefs)
    ]
    if prefs:
        user_memory.add_preferences(prefs)
    turns = [
        {"session_id": f"bench-session-{i // 20}", "turn_id": f"bench-turn-{i}",
         "user": f"Can you help me with {_TOPICS[i % len(_TOPICS)]}? ({i})",
         "assistant": f"Here are some thoughts about {_TOPICS[i % len(_TOPICS)]}, with your preferences in mind. ({i})"}
        for i in range(records - n_prefs)
    ]
    if turns:
        user_memory.add_turns(turns)


def _turn(assistant, engine, query: str, seed: int) -> tuple[TurnStats, str]:
    from alignment.echo import echo_counts
    from alignment.prompts.policy import template_text

    chat = assistant.settings.chat
    params = SamplingParams(max_new_tokens=chat.max_new_tokens, temperature=chat.temperature, top_p=chat.top_p,
                            seed=seed)
    session_id = assistant.log.start_session("bench", "bench", {})
    started = time.perf_counter()
    result, first_delta, last_delta = None, None, None
    for event in assistant.stream_turn("bench", session_id, query, mode="bench", params=params):
        if event.kind == "delta":
            last_delta = time.perf_counter()
            first_delta = first_delta or last_delta
        elif event.kind in ("done", "error"):
            result = event.result
    total = (time.perf_counter() - started) * 1000
    if result is None or result.status != "ok":
        raise RuntimeError(f"benchmark turn failed: {result.error if result else 'no result'}")
    lat = result.latency_ms
    user_texts = [query, *(r.text for r in result.retrieved)]
    echoing, _ = echo_counts([(result.steps, user_texts)], template_text())
    tokens = len(engine.encode(result.raw)) if hasattr(engine, "encode") else len(result.raw) // 4
    stats = TurnStats(
        answered=bool(result.answer.strip()), steps=len(result.steps), echoing_steps=echoing,
        forced=bool(result.reasoning.get("forced")), first_token_ms=lat.get("first_token", total),
        first_answer_ms=lat.get("first_answer_token", total), total_ms=total, decode_tokens=tokens,
        decode_s=(last_delta - first_delta) if first_delta and last_delta else 0.0,
        phases={k: lat[k] for k in ("retrieval", "prompt", "generation", "logging", "memory_write") if k in lat},
        prompt_tokens=result.prompt_tokens or 0,
    )
    return stats, result.raw


def run_bench(settings: Settings, turns: int = 30, records: int = 1000, source: Path | None = None,
              anchor: bool = True, progress=lambda _m: None) -> BenchResult:
    from alignment.engines.default_model import packaged_gguf_path
    from app.assistant import Assistant, AssistantConfig, policy_engine

    prompts = dev_prompts(turns, source)
    tmp = Path(tempfile.mkdtemp(prefix="cdra-bench-chat-"))
    try:
        bench_settings = settings.model_copy(update={"data_dir": tmp, "model_cache_dir": settings.models_dir})
        t0 = time.perf_counter()
        progress(f"filling a {records}-record memory and warming up ...")
        from app.models import share_cpu_with_llamacpp

        share_cpu_with_llamacpp(bench_settings)  # as `cdra chat` does
        assistant = Assistant(bench_settings, AssistantConfig(background_inference=False))
        fill_memory(assistant.memory.for_user("bench"), records)
        engine = policy_engine(bench_settings)
        _turn(assistant, engine, "Hello!", seed=0)  # warm-up: model, embedder, chroma caches, grammar
        from app.assistant import reasoning_budget

        out = BenchResult(len(prompts), records, engine.version, engine.description,
                          reasoning_budget(bench_settings.chat).label, time.perf_counter() - t0)
        for i, (preference, question) in enumerate(prompts):
            progress(f"turn {i + 1}/{len(prompts)} ...")
            stats, raw = _turn(assistant, engine, f"{preference} {question}", seed=i)
            out.stats.append(stats)
            out.example = out.example or raw
        assistant.close()
        if anchor:
            from alignment.engines.bench import llamacpp_anchor
            from app.models import llamacpp_available

            if llamacpp_available():
                gguf = Path(engine.description.removeprefix("llamacpp:")) if engine.description.startswith(
                    "llamacpp:") else packaged_gguf_path()
                context = round(statistics.median(t.prompt_tokens for t in out.stats))
                progress(f"llama.cpp alone on {gguf.name}, in its own process, after a {context}-token prompt ...")
                out.anchor, out.anchor_gguf = llamacpp_anchor(gguf, new_tokens=128, context_tokens=context), str(gguf)
                if out.anchor.get("threads", 1) > 1:
                    out.anchor_1 = llamacpp_anchor(gguf, new_tokens=128, repeats=1, threads=1, context_tokens=context)
                out.anchor_short = llamacpp_anchor(gguf, new_tokens=128, repeats=1)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else 0.0


def summary(result: BenchResult) -> dict[str, float]:
    s = result.stats
    steps = sum(t.steps for t in s)
    decode = [t.decode_tokens / t.decode_s for t in s if t.decode_s > 0]
    numbers = {
        "answer_rate": sum(t.answered for t in s) / len(s),
        "echo_rate": sum(t.echoing_steps for t in s) / steps if steps else 0.0,
        "steps_mean": steps / len(s),
        "forced_rate": sum(t.forced for t in s) / len(s),
        "first_token_p50_s": _pct([t.first_token_ms for t in s], 0.5) / 1000,
        "first_answer_p50_s": _pct([t.first_answer_ms for t in s], 0.5) / 1000,
        "first_answer_p95_s": _pct([t.first_answer_ms for t in s], 0.95) / 1000,
        "turn_p50_s": _pct([t.total_ms for t in s], 0.5) / 1000,
        "turn_p95_s": _pct([t.total_ms for t in s], 0.95) / 1000,
        "serving_decode_tps": statistics.median(decode) if decode else 0.0,
        "prompt_tokens_p50": _pct([t.prompt_tokens for t in s], 0.5),
    }
    for phase in ("retrieval", "prompt", "generation", "logging", "memory_write"):
        values = [t.phases[phase] for t in s if phase in t.phases]
        if values:
            numbers[f"{phase}_ms_mean"] = statistics.fmean(values)
    if result.anchor:
        numbers["llamacpp_decode_tps"] = result.anchor["decode_tokens_per_s"]
        numbers["decode_ratio"] = numbers["serving_decode_tps"] / max(result.anchor["decode_tokens_per_s"], 1e-9)
    return numbers


def print_report(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    n = summary(result)
    table = Table(title=f"cdra bench chat: {result.turns} PrefEval prompts, {result.records} memory records, "
                        f"policy {result.model}, reasoning budget {result.budget}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    rows = [
        ("answers present", f"{n['answer_rate']:.0%}", "100 %"),
        ("template echo (steps repeating the prompt)", f"{n['echo_rate']:.1%}", "≤ 5 %"),
        ("reasoning steps per turn (mean)", f"{n['steps_mean']:.2f}", ""),
        ("prompt tokens, p50", f"{n['prompt_tokens_p50']:.0f}", ""),
        ("answers forced by the budget", f"{n['forced_rate']:.0%}", ""),
        ("time to first token, p50", f"{n['first_token_p50_s']:.2f} s", ""),
        ("time to first answer token, p50 / p95", f"{n['first_answer_p50_s']:.2f} / {n['first_answer_p95_s']:.2f} s", ""),
        ("full turn, p50 / p95", f"{n['turn_p50_s']:.2f} / {n['turn_p95_s']:.2f} s", "p50 ≤ 6 s"),
        ("serving decode tokens/s (median)", f"{n['serving_decode_tps']:.1f}", ""),
    ]
    if result.anchor:
        rows += [
            (f"llama.cpp alone, {int(result.anchor['threads'])} threads, after a "
             f"{int(result.anchor.get('prompt_tokens', 0))}-token prompt: decode tokens/s",
             f"{n['llamacpp_decode_tps']:.1f}", ""),
            ("llama.cpp alone: prefill tokens/s", f"{result.anchor.get('prefill_tokens_per_s', 0):.0f}", ""),
            ("serving / llama.cpp alone", f"{n['decode_ratio']:.2f}x", "≥ 0.8x"),
        ]
    if result.anchor_1:
        rows.append(("llama.cpp alone, 1 thread, same prompt: decode tokens/s",
                     f"{result.anchor_1['decode_tokens_per_s']:.1f}", ""))
    if result.anchor_short:
        rows.append(("llama.cpp alone, all threads, a one-line prompt: decode tokens/s",
                     f"{result.anchor_short['decode_tokens_per_s']:.1f}", ""))
    for phase in ("retrieval", "prompt", "generation", "logging", "memory_write"):
        if f"{phase}_ms_mean" in n:
            rows.append((f"{phase} (mean)", f"{n[f'{phase}_ms_mean']:.1f} ms", ""))
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"serving engine: {result.engine}; setup incl. filling memory and warm-up: {result.setup_s:.1f} s")
    if result.anchor_gguf:
        console.print(f"llama.cpp anchor: {result.anchor_gguf}, its own process, default environment")
    console.print("first turn's response:\n" + result.example)
