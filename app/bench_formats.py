"""`cdra bench formats`: for every declared output format, on real inputs from the shared dev data, the parse
rate of free decoding vs constrained decoding and the decode cost per token with vs without the constraint,
side by side in one run, on each CPU engine (transformers and llama.cpp on the same packaged model).

Parse rates come from one batched call per (format, mode) over the inputs (the budget is the format's own
bound); ms/token from greedy batch-1 decodes of the first ``timing`` inputs, wall time over tokens decoded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignment.engines import Engine, SamplingParams
from alignment.engines.base import Conversation
from alignment.formats import OutputFormat
from alignment.formats.base import FormatParseError

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "data" / "dev"


@dataclass
class FormatRow:
    engine: str
    format: str
    inputs: int
    free_parsed: int
    constrained_parsed: int
    free_ms_per_token: float
    constrained_ms_per_token: float
    free_tokens: int = 0
    constrained_tokens: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def overhead(self) -> float:
        return self.constrained_ms_per_token / self.free_ms_per_token - 1.0 if self.free_ms_per_token else 0.0


def _jsonl(path: Path, limit: int) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line, _ in zip(fh, range(limit))]


def format_cases(n: int) -> dict[str, tuple[OutputFormat, list[Conversation]]]:
    """``n`` real prompts per declared format, built the way the product builds them."""
    from alignment.formats import (
        council_thought,
        council_value,
        policy_response,
        preference_selection,
        scenario,
        step_judgment,
    )
    from alignment.judges import aloe_turn_request, pairwise_requests, rubric_request, verdict_format
    from alignment.preference_inference import PreferenceInferrer
    from alignment.prm import step_conversations
    from alignment.prompts import render
    from alignment.prompts.council import PERSONAS, PROPOSE_PROMPT, SCENARIO_PROMPT, VALUE_PROMPT
    from alignment.prompts.policy import POLICY_PROMPT, format_preferences
    from alignment.prompts.preference import JUDGE_PROMPT
    from alignment.prompts.prm import format_previous_steps
    from alignment.signals import parse_signal
    from training.scenarios import DEFAULT_DOMAINS

    aligned = _jsonl(DEV / "alignment_dev.jsonl", n)
    prefs = _jsonl(DEV / "prefeval_prefs_test.jsonl", 10 * n)[:: 10][:n]  # spread over the topics
    personas = _jsonl(DEV / "aloe_personas.jsonl", 100)
    inferrer = PreferenceInferrer(engine=None)  # type: ignore[arg-type]  # prompts only
    first_sentence = lambda text: text.split(". ")[0].strip()[:300]  # noqa: E731
    personas_cycle = list(PERSONAS)
    cases: dict[str, tuple[OutputFormat, list[Conversation]]] = {
        "policy": (policy_response(), [
            render(POLICY_PROMPT, preferences=format_preferences([a["preference"]]), query=a["query"]) for a in aligned]),
        "preference": (inferrer.format, [
            inferrer.prompt([parse_signal(s) for s in p["signals"][:6]], None) for p in prefs]),
        "step_judgment": (step_judgment(), [
            step_conversations(p["golden"], p["post"], [first_sentence(p["chosen"]), "Answer: " + p["chosen"][:600]])[0]
            for p in prefs]),
        "verdict_yesno": (verdict_format("yesno"), [
            list(rubric_request("violates", preference=p["golden"], query=p["post"], response=p["chosen"][:800]).messages)
            for p in prefs]),
        "verdict_pair": (verdict_format("pair"), [
            list(pairwise_requests(preference=p["golden"], query=p["post"], response_x=p["chosen"][:500],
                                   response_y=p["rejected"][:500], swap=False)[0].messages) for p in prefs]),
        "verdict_rating": (verdict_format("rating"), [
            list(aloe_turn_request(profile=personas[i % len(personas)]["profile"],
                                   personality=personas[i % len(personas)]["personality"],
                                   hidden_preferences=personas[i % len(personas)]["hidden_preferences"],
                                   message=p["post"], response=p["chosen"][:600]).messages)
            for i, p in enumerate(prefs)]),
        "preference_selection": (preference_selection(), [
            render(JUDGE_PROMPT, prompt=p["post"][:500], preference=p["golden"], response_a=p["chosen"][:400],
                   response_b=p["rejected"][:400]) for p in prefs]),
        "council_thought": (council_thought(1), [
            render(PROPOSE_PROMPT, persona=personas_cycle[i % 5], focus=PERSONAS[personas_cycle[i % 5]],
                   preference=a["preference"], query=a["query"], previous_steps=format_previous_steps([]), step_number=1)
            for i, a in enumerate(aligned)]),
        "council_value": (council_value(), [
            render(VALUE_PROMPT, preference=a["preference"], query=a["query"], previous_steps=format_previous_steps([]),
                   step=first_sentence(a.get("notes") or a["query"])) for a in aligned]),
        "scenario": (scenario(), [render(SCENARIO_PROMPT, domain=DEFAULT_DOMAINS[i % len(DEFAULT_DOMAINS)])
                                  for i in range(n)]),
    }
    return cases


def _parsed(fmt: OutputFormat, text: str) -> bool:
    """Whether the declared reader accepts the text *as written* (strictly): what the product relies on."""
    try:
        fmt.parse(text)
        return True
    except FormatParseError:
        return False


def _per_token_ms(engine: Engine, fmt: OutputFormat, convs: list[Conversation], constrained: bool) -> float:
    """Greedy batch-1 decode cost per token: streamed, timed from the first token to the last, so prompt
    processing (and llama.cpp's prompt cache) does not enter the comparison."""
    engine.constrained = constrained
    tokens, wall = 0, 0.0
    for conv in convs:
        first, text = None, ""
        for delta in engine.stream(conv, SamplingParams(max_new_tokens=fmt.max_tokens, format=fmt)):
            first = first if first is not None else time.perf_counter()
            text += delta
        if first is None:
            continue
        n = len(engine.encode(text))  # type: ignore[attr-defined]
        if n > 1:
            wall += time.perf_counter() - first
            tokens += n - 1
    return 1000.0 * wall / max(1, tokens)


def _generate_all(engine: Engine, convs: list[Conversation], params: SamplingParams, bar, chunk: int = 10) -> list:
    """``engine.generate`` over ``convs`` in chunks, so the progress bar moves while a format is decoded (chunks
    of 10: a batching engine decodes 10 rows at once much faster than 4 rows 2.5 times)."""
    outs = []
    for start in range(0, len(convs), chunk):
        outs += [c[0] for c in engine.generate(convs[start : start + chunk], params)]
        bar.update(len(convs[start : start + chunk]))
    return outs


def bench_engine(name: str, engine: Engine, cases: dict, timing: int, seed: int,
                 progress: Callable[[str], None] = lambda _: None, done: Sequence[FormatRow] = (),
                 on_row: Callable[[FormatRow], None] = lambda _: None) -> list[FormatRow]:
    """Both modes on one engine; the engine's constraint setting is restored afterwards. Rows in ``done`` (a
    resumed run) are kept as they are; ``on_row`` gets each new row as soon as it is measured."""
    from tqdm.auto import tqdm

    finished = {(r.engine, r.format): r for r in done}
    rows: list[FormatRow] = []
    todo = [label for label in cases if (name, label) not in finished]
    before = engine.constrained
    total = sum(2 * len(cases[label][1]) + 2 * min(timing, len(cases[label][1])) for label in todo)
    bar = tqdm(total=total, desc=f"bench formats: {name}", unit="output", dynamic_ncols=True)
    try:
        for label, (fmt, convs) in cases.items():
            if (name, label) in finished:
                rows.append(finished[(name, label)])
                continue
            parsed, examples, tokens = {}, {}, {}
            for mode in ("free", "constrained"):
                progress(f"{name} {label} {mode}")
                bar.set_postfix_str(f"{label} {mode}")
                engine.constrained = mode == "constrained"
                params = SamplingParams(max_new_tokens=fmt.max_tokens, temperature=0.7, top_p=0.95, seed=seed, format=fmt)
                outs = _generate_all(engine, convs, params, bar)
                parsed[mode] = sum(_parsed(fmt, o.text) for o in outs)
                tokens[mode] = sum(o.completion_tokens for o in outs)
                examples[mode] = outs[0].text[:300]
            progress(f"{name} {label} timing")
            bar.set_postfix_str(f"{label} ms/token")
            free_ms = _per_token_ms(engine, fmt, convs[:timing], False)
            constrained_ms = _per_token_ms(engine, fmt, convs[:timing], True)
            bar.update(2 * len(convs[:timing]))
            row = FormatRow(name, label, len(convs), parsed["free"], parsed["constrained"], free_ms,
                            constrained_ms, tokens["free"], tokens["constrained"], examples)
            rows.append(row)
            on_row(row)
    finally:
        engine.constrained = before
        bar.close()
    return rows


def load_rows(path: Path) -> list[FormatRow]:
    """The rows an interrupted run saved (``--out``), to resume from; [] when there are none."""
    if not path.is_file():
        return []
    try:
        return [FormatRow(**r) for r in json.loads(path.read_text(encoding="utf-8"))]
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as exc:
        from alignment.errors import CdraError

        raise CdraError(f"{path} is not a saved `cdra bench formats` result ({exc}): move it away or pass another --out") from None


def format_table(rows: list[FormatRow]) -> str:
    lines = ["| engine | format | inputs | parsed, free | parsed, constrained | ms/token free | ms/token constrained | overhead |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.engine} | {r.format} | {r.inputs} | {r.free_parsed}/{r.inputs} "
                     f"({100 * r.free_parsed / r.inputs:.0f} %) | {r.constrained_parsed}/{r.inputs} "
                     f"({100 * r.constrained_parsed / r.inputs:.0f} %) | {r.free_ms_per_token:.1f} | "
                     f"{r.constrained_ms_per_token:.1f} | {100 * r.overhead:+.1f} % |")
    return "\n".join(lines)
