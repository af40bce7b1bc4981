"""`cdra bench formats`: for every declared output format, on real inputs from the shared dev data, the parse
rate of free decoding vs constrained decoding and the decode cost per token with vs without the constraint,
side by side in one run, on each CPU engine (transformers and llama.cpp on the same packaged model).

Parse rates come from one batched call per (format, mode) over the inputs (the budget is the format's own
bound). Cost per token from greedy batch-1 decodes of the first ``timing`` inputs, each decoded constrained,
then freely for at most as many tokens (both modes at the same context lengths), then constrained again:

* wall ms/token, from the first token to the last, in each mode;
* the engine's sampling clock (``Engine.sampling_clock``), the time spent choosing each token after the forward
  pass, in each mode. The forward pass is the same in both, so the constraint's cost per token is the clock's
  difference, and the **overhead** is that cost over the free wall ms/token. Wall time alone varies by several
  percent from run to run on this machine, more than the constraint costs, so it is shown but not used for it.
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
    #: the sampling clock per token in each mode; None on engines without one (endpoints)
    free_sampling_ms: float | None = None
    constrained_sampling_ms: float | None = None

    @property
    def constraint_ms_per_token(self) -> float | None:
        if self.free_sampling_ms is None or self.constrained_sampling_ms is None:
            return None
        return self.constrained_sampling_ms - self.free_sampling_ms

    @property
    def overhead(self) -> float:
        """What the constraint adds to a token: its clocked cost over the free ms/token (wall-time ratio where
        the engine has no clock)."""
        if not self.free_ms_per_token:
            return 0.0
        cost = self.constraint_ms_per_token
        if cost is None:
            return self.constrained_ms_per_token / self.free_ms_per_token - 1.0
        return cost / self.free_ms_per_token


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


@dataclass
class _Decode:
    tokens: int = 0  # decode steps after the first token
    wall: float = 0.0  # seconds from the first token to the last
    sampling: tuple[float, int] = (0.0, 0)  # the engine's sampling clock: seconds, tokens

    def add(self, other: _Decode) -> None:
        self.tokens += other.tokens
        self.wall += other.wall
        self.sampling = (self.sampling[0] + other.sampling[0], self.sampling[1] + other.sampling[1])

    @property
    def ms_per_token(self) -> float:
        return 1000.0 * self.wall / max(1, self.tokens)

    @property
    def sampling_ms(self) -> float:
        return 1000.0 * self.sampling[0] / self.sampling[1] if self.sampling[1] else 0.0


def _stream_once(engine: Engine, conv: Conversation, params: SamplingParams) -> _Decode:
    """One streamed decode, timed from its first token to its last (prompt processing, and llama.cpp's prompt
    cache, stay out of the comparison). The steps in that window are counted by the sampling clock where it
    ticked (a constrained output's last step, the forward pass that yields end-of-sequence, counts like any
    other; counting text tokens would charge it to the constraint), else by the text's tokens."""
    clock = engine.sampling_clock
    start = clock.reading if clock else (0.0, 0)
    first, text = None, ""
    for delta in engine.stream(conv, params):
        first = first if first is not None else time.perf_counter()
        text += delta
    wall = time.perf_counter() - first if first is not None else 0.0
    sampling = clock.since(start) if clock else (0.0, 0)
    steps = sampling[1] if sampling[1] else (len(engine.encode(text)) if text else 0)  # type: ignore[attr-defined]
    if first is None or steps <= 1:
        return _Decode(sampling=sampling)
    return _Decode(steps - 1, wall, sampling)


def _timing(engine: Engine, fmt: OutputFormat, convs: list[Conversation]) -> tuple[_Decode, _Decode]:
    """(free, constrained) greedy decodes of ``convs``. Each input is decoded constrained, then freely for at
    most as many tokens as the constrained output had (the same context lengths), then constrained again: the
    two constrained decodes bracket the free one, so what runs first (a warmer cache, a drifting clock) does
    not favour either mode."""
    free, constrained = _Decode(), _Decode()
    params = SamplingParams(max_new_tokens=fmt.max_tokens, format=fmt)
    for conv in convs:
        engine.constrained = True
        before = _stream_once(engine, conv, params)
        engine.constrained = False
        free.add(_stream_once(engine, conv, SamplingParams(max_new_tokens=max(2, before.tokens + 1))))
        engine.constrained = True
        constrained.add(before)
        constrained.add(_stream_once(engine, conv, params))
    return free, constrained


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
    total = sum(2 * len(cases[label][1]) + 3 * min(timing, len(cases[label][1])) for label in todo)
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
            free, constrained = _timing(engine, fmt, convs[:timing])
            bar.update(3 * len(convs[:timing]))
            clocked = engine.sampling_clock is not None
            row = FormatRow(name, label, len(convs), parsed["free"], parsed["constrained"], free.ms_per_token,
                            constrained.ms_per_token, tokens["free"], tokens["constrained"], examples,
                            free.sampling_ms if clocked else None, constrained.sampling_ms if clocked else None)
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
    lines = [("| engine | format | inputs | parsed, free | parsed, constrained | ms/token free | ms/token constrained "
              "| constraint ms/token | overhead |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cost = r.constraint_ms_per_token
        lines.append(f"| {r.engine} | {r.format} | {r.inputs} | {r.free_parsed}/{r.inputs} "
                     f"({100 * r.free_parsed / r.inputs:.0f} %) | {r.constrained_parsed}/{r.inputs} "
                     f"({100 * r.constrained_parsed / r.inputs:.0f} %) | {r.free_ms_per_token:.1f} | "
                     f"{r.constrained_ms_per_token:.1f} | {'n/a' if cost is None else f'{cost:.2f}'} | "
                     f"{100 * r.overhead:+.1f} % |")
    return "\n".join(lines)
