"""AlignXplore preference inference: signals (+ d_prev) -> ``<think> r </think> <answer> d </answer>`` -> typed
description. Streaming by construction: every call sees at most ``max_previous_statements`` of d_prev and
``max_signals_per_call`` new signals, so the prompt never grows with the length of the history.

The output format is declared once (alignment/formats: ``preference_inference``) and enforced by constrained
decoding where the engine can; an unconstrained model's output is read by the declaration's relaxed reader
(R_format 0), retried with other seeds up to ``max_retries`` times when unreadable, then reported as failed.
The first output is greedy; with ``votes``, sampled outputs vote on its statements and the unsupported ones are
not stored (alignment/consensus.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from alignment.consensus import Agreement, supported
from alignment.engines.base import Completion, Engine, EngineError, PromptTooLongError, SamplingParams
from alignment.formats import (
    FormatParseError,
    InferredDescription,
    OutputFormat,
    StatementLine,
    preference_inference,
)
from alignment.preferences import (
    DIMENSIONS,
    PreferenceDescription,
    PreferenceStatement,
    coherent,
    is_suppressed,
    merge_descriptions,
    now_iso,
    plain_stance,
)
from alignment.prompts import render
from alignment.prompts.preference import (
    INFER_PROMPT,
    UPDATE_PROMPT,
    copies_the_example,
    format_previous,
    format_signals,
)
from alignment.signals import Signal, signal_to_json

# -- reading ---------------------------------------------------------------------------------------


@dataclass
class ParsedInference:
    """What one generation contained. ``r_format`` is 1.0 only for the paper's format exactly as declared."""

    reasoning: str
    statements: list[PreferenceStatement]
    r_format: float
    problems: list[str] = field(default_factory=list)


def inference_format(config: InferenceConfig) -> OutputFormat:
    """The declared ``<think> r </think> <answer> d </answer>`` format at this config's bounds."""
    return preference_inference(tuple(config.dimensions), config.max_statements, config.think_tokens,
                                config.statement_tokens)


def to_statements(lines: Sequence[StatementLine], signal_ids: Sequence[str], when: str | None = None
                  ) -> list[PreferenceStatement]:
    """Typed statements from the format's lines; evidence is the call's signals (each line rests on them)."""
    created = when or now_iso()
    out: dict[str, PreferenceStatement] = {}
    for line in lines:
        stance, subject = plain_stance(line.stance, line.subject)
        statement = PreferenceStatement.make(stance, subject, dimension=line.dimension,  # type: ignore[arg-type]
                                             evidence=list(signal_ids), confidence=line.confidence,
                                             origin="inferred", created=created)
        out.setdefault(statement.id, statement)
    return list(out.values())


def read_inference(fmt: OutputFormat, text: str, signal_ids: Sequence[str] = (), *, lenient: bool = False,
                   when: str | None = None) -> ParsedInference:
    """Strict reading (R_format 1) of one output; with ``lenient`` (an unconstrained model) the declaration's
    relaxed reader may accept it with R_format 0. Nothing readable: no statements and the reason why."""
    try:
        reading = fmt.read(text, lenient=lenient)
    except FormatParseError as exc:
        return ParsedInference("", [], 0.0, [exc.problem])
    value: InferredDescription = reading.value
    return ParsedInference(value.reasoning, to_statements(value.statements, signal_ids, when),
                           0.0 if reading.repaired else 1.0, ["repaired"] if reading.repaired else [])


# -- inference -------------------------------------------------------------------------------------

@dataclass
class InferenceConfig:
    """How the preference model is called.

    Bounds that keep streaming cheap: ``max_previous_statements`` (d_prev in the prompt),
    ``max_signals_per_call`` (more new signals are folded in chunks), ``max_signal_chars``.
    The output format's bounds: ``think_tokens`` of reasoning, at most ``max_statements`` lines of at most
    ``statement_tokens`` each (the generation budget is at least the format's longest output).
    Decoding: the first attempt at ``temperature`` (greedy), ``max_retries`` extra samples at
    ``sample_temperature`` (other seeds) when nothing usable came back; ``accept_lenient`` keeps statements an
    unconstrained model wrote in a relaxed form (R_format = 0).
    Defence against junk: with ``votes`` > 0, that many samples (one engine call) vote on the usable output, and
    a statement fewer than ``min_support`` of them state is dropped (``Agreement`` says when two say the same).
    """

    max_new_tokens: int = 64
    think_tokens: int = 96
    max_statements: int = 5
    statement_tokens: int = 20
    temperature: float = 0.0  # the first attempt is greedy: what `cdra eval prefs` measures, and it stores far less junk
    sample_temperature: float = 0.9  # the paper's sampling (T = 0.9, top-p 0.95): retries, votes, teacher chains
    top_p: float = 0.95
    seed: int = 0
    max_retries: int = 2
    votes: int = 0  # sampled outputs that vote on the first one's statements (alignment/consensus.py); 0: no vote
    min_support: int = 1  # votes that must state a statement for it to be kept
    accept_lenient: bool = True
    max_previous_statements: int = 24
    max_signals_per_call: int = 16
    max_signal_chars: int = 400
    dimensions: tuple[str, ...] = DIMENSIONS[:8]


@dataclass
class InferenceResult:
    """r, d (merged with d_prev), the statements this call found, R_format, and what it cost."""

    reasoning: str
    description: PreferenceDescription
    r_format: float
    raw: str
    failed: bool
    new_statements: list[PreferenceStatement] = field(default_factory=list)
    attempts: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    error: str | None = None
    raws: list[str] = field(default_factory=list)
    call_prompt_tokens: list[int] = field(default_factory=list)  # one entry per model call: bounded by design
    echoed_example: int = 0  # statements dropped because they repeat the prompt's worked example, not the user
    unsupported: int = 0  # statements dropped because too few of the votes stated them
    incoherent: int = 0  # placeholders ("no value") and later statements on a subject the output already stated


def storable(statements: Sequence[PreferenceStatement], signals: Sequence[Signal]
             ) -> tuple[list[PreferenceStatement], int, int]:
    """What of one output may be stored (what `cdra eval prefs` measures, too): statements that repeat the prompt's
    worked example and that no signal mentions are dropped, then the output made coherent (``coherent``).
    Returns (kept, dropped as the example's, dropped as incoherent)."""
    said = " ".join(json.dumps(signal_to_json(s), ensure_ascii=False) for s in signals)
    grounded = [s for s in statements if not copies_the_example(s.text, said)]
    kept = coherent(grounded)
    return kept, len(statements) - len(grounded), len(grounded) - len(kept)


class PreferenceInferrer:
    """Infers and updates a user's preference description with one engine (the `preference` role)."""

    def __init__(self, engine: Engine, config: InferenceConfig | None = None,
                 agreement: Agreement | None = None) -> None:
        self.engine = engine
        self.config = config or InferenceConfig()
        self.format = inference_format(self.config)
        self.agreement = agreement or Agreement()

    def prompt(self, signals: Sequence[Signal], previous: PreferenceDescription | None) -> list:
        """The chat messages for one call: INFER without d_prev, UPDATE with the capped d_prev."""
        cfg = self.config
        dims = ", ".join(cfg.dimensions)
        text = format_signals(signals, cfg.max_signal_chars)
        if previous is None or not previous.statements:
            return render(INFER_PROMPT, dimensions=dims, signals=text)
        lines = previous.capped(cfg.max_previous_statements).as_lines()
        return render(UPDATE_PROMPT, dimensions=dims, signals=text, previous=format_previous(lines))

    def infer(
        self,
        signals: Sequence[Signal],
        previous: PreferenceDescription | None = None,
        suppressed: Iterable[str] = (),
    ) -> InferenceResult:
        """d_new from the new ``signals`` and ``previous`` (d_prev), never from the whole history.

        More signals than ``max_signals_per_call`` are folded in chunks, each an update of the last.
        ``suppressed`` texts (deleted or edited by the user) are never brought back. The result is
        ``failed`` when no chunk produced a usable description; callers must not store it then.
        """
        started = time.perf_counter()
        suppressed = list(suppressed)
        current = previous or PreferenceDescription()
        result = InferenceResult("", current, 0.0, "", failed=False)
        if not signals:
            result.r_format = 1.0
            return result
        step = max(1, self.config.max_signals_per_call)
        chunks = [list(signals[i: i + step]) for i in range(0, len(signals), step)]
        formats, reasonings, errors = [], [], []
        for chunk in chunks:
            parsed, error = self._infer_chunk(chunk, current, result)
            if parsed is None:
                errors.append(error or "no usable output")
                formats.append(0.0)
                continue
            kept, echoed, incoherent = storable(parsed.statements, chunk)
            result.echoed_example += echoed
            result.incoherent += incoherent
            fresh = [s for s in kept if not is_suppressed(s, suppressed)]
            result.new_statements.extend(fresh)
            current = merge_descriptions(current, fresh, suppressed)
            formats.append(parsed.r_format)
            reasonings.append(parsed.reasoning)
        result.reasoning = "\n\n".join(r for r in reasonings if r)
        result.description = PreferenceDescription(statements=current.statements, reasoning=result.reasoning)
        result.r_format = min(formats) if formats else 0.0
        result.failed = len(errors) == len(chunks)
        result.error = "; ".join(errors) if errors else None
        result.wall_s = time.perf_counter() - started
        return result

    def generate_once(
        self, signals: Sequence[Signal], previous: PreferenceDescription | None = None
    ) -> tuple[Completion, ParsedInference]:
        """Exactly one model call on exactly these signals (no chunking, no retry): benchmarks, debugging."""
        cfg = self.config
        conversation = self._fit(list(signals), previous or PreferenceDescription())
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=cfg.seed, format=self.format)
        completion = self.engine.generate([conversation], params)[0][0]
        return completion, self.read(completion.text, [s.id for s in signals])

    def read(self, text: str, signal_ids: Sequence[str]) -> ParsedInference:
        """One output of this inferrer's engine, read strictly if its decoding was constrained, else leniently."""
        lenient = not (self.engine.enforces(self.format) and self.engine.exact_formats)
        return read_inference(self.format, text, signal_ids, lenient=lenient)

    def _fit(self, signals: list[Signal], previous: PreferenceDescription) -> list:
        conversation = self.prompt(signals, previous)
        window = self.engine.context_window
        budget = max(self.config.max_new_tokens, self.format.max_tokens)
        if window is not None and self.engine.count_tokens(conversation) + budget > window:
            raise PromptTooLongError(
                f"{len(signals)} signals do not fit the preference model's context of {window} tokens: "
                "lower max_signals_per_call or max_signal_chars")
        return conversation

    def _infer_chunk(
        self, signals: list[Signal], previous: PreferenceDescription, result: InferenceResult
    ) -> tuple[ParsedInference | None, str | None]:
        cfg = self.config
        try:
            conversation = self._fit(signals, previous)
        except PromptTooLongError:
            if len(signals) == 1:
                raise
            half = len(signals) // 2
            first, err = self._infer_chunk(signals[:half], previous, result)
            merged = merge_descriptions(previous, first.statements) if first else previous
            second, err2 = self._infer_chunk(signals[half:], merged, result)
            if first is None or second is None:
                return first or second, err or err2
            return ParsedInference("\n".join([first.reasoning, second.reasoning]),
                                   first.statements + second.statements, min(first.r_format, second.r_format)), None
        ids = [s.id for s in signals]
        result.calls += 1
        problems: list[str] = []
        best: ParsedInference | None = None
        for attempt in range(cfg.max_retries + 1):
            params = SamplingParams(max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, seed=cfg.seed + attempt,
                                    temperature=cfg.temperature if attempt == 0 else cfg.sample_temperature,
                                    format=self.format)
            try:
                completion = self.engine.generate([conversation], params)[0][0]
            except PromptTooLongError:
                raise
            except EngineError as exc:
                problems.append(f"attempt {attempt + 1}: {exc}")
                continue
            result.attempts += 1
            n_prompt = completion.prompt_tokens or self.engine.count_tokens(conversation)
            result.prompt_tokens += n_prompt
            result.call_prompt_tokens.append(n_prompt)
            result.completion_tokens += completion.completion_tokens
            result.raw = completion.text
            result.raws.append(completion.text)
            parsed = self.read(completion.text, ids)
            if parsed.r_format == 1.0 and parsed.statements:
                return self.voted(parsed, conversation, signals, result), None
            if parsed.statements and cfg.accept_lenient and best is None:
                best = parsed
                break
            problems.append(f"attempt {attempt + 1}: " + ", ".join(parsed.problems or ["no statement"]))
        if best is not None:
            return self.voted(best, conversation, signals, result), None
        return None, "model output broke the format: " + "; ".join(problems)

    def voted(self, parsed: ParsedInference, conversation: list, signals: Sequence[Signal],
              result: InferenceResult | None = None) -> ParsedInference:
        """``parsed`` (the output for ``conversation``) without the statements that could be stored (``storable``)
        but fewer than ``min_support`` of ``votes`` further samples state; their cost and the dropped count go
        into ``result``."""
        cfg = self.config
        candidates = storable(parsed.statements, signals)[0]
        if cfg.votes <= 0 or not candidates:
            return parsed
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature,
                                top_p=cfg.top_p, n=cfg.votes, seed=cfg.seed + 1000, format=self.format)
        try:
            completions = self.engine.generate([conversation], params)[0]
        except EngineError as exc:  # no vote is no reason to lose the output: keep it as it was
            parsed.problems.append(f"votes: {exc}")
            return parsed
        ids = [s.id for s in signals]
        votes = [self.read(c.text, ids).statements for c in completions]
        weak = {id(s) for s, n in zip(candidates, supported(candidates, votes, self.agreement)) if n < cfg.min_support}
        if result is not None:
            result.completion_tokens += sum(c.completion_tokens for c in completions)
            result.unsupported += len(weak)
        kept = [s for s in parsed.statements if id(s) not in weak]  # what `storable` drops is left to it (and counted)
        return ParsedInference(parsed.reasoning, kept, parsed.r_format, parsed.problems)
