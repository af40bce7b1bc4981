"""AlignXplore preference inference: signals (+ d_prev) -> ``<think> r </think> <answer> d </answer>`` -> typed
description. Streaming by construction: every call sees at most ``max_previous_statements`` of d_prev and
``max_signals_per_call`` new signals, so the prompt never grows with the length of the history.

Output that breaks the format is parsed leniently where that is sound (R_format stays 0), retried with
other seeds up to ``max_retries`` times when nothing usable came out, and then reported as failed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from alignment.engines.base import Completion, Engine, EngineError, PromptTooLongError, SamplingParams
from alignment.preferences import (
    DIMENSIONS,
    PreferenceDescription,
    PreferenceStatement,
    is_suppressed,
    merge_descriptions,
    now_iso,
)
from alignment.prompts import render
from alignment.prompts.preference import INFER_PROMPT, UPDATE_PROMPT, format_previous, format_signals
from alignment.signals import Signal

# -- parsing ---------------------------------------------------------------------------------------

_STRICT = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.S | re.I)
_STANCES = {
    "prefers": "prefers", "prefer": "prefers", "likes": "prefers", "like": "prefers", "loves": "prefers",
    "enjoys": "prefers", "wants": "prefers", "values": "prefers", "positive": "prefers", "+": "prefers",
    "avoids": "avoids", "avoid": "avoids", "dislikes": "avoids", "dislike": "avoids", "hates": "avoids",
    "rejects": "avoids", "negative": "avoids", "-": "avoids", "doesn't like": "avoids", "does not like": "avoids",
    "preferred": "prefers", "liked": "prefers", "loved": "prefers", "enjoyed": "prefers", "chose": "prefers",
    "avoided": "avoids", "disliked": "avoids", "hated": "avoids", "rejected": "avoids",
}
_STANCE_WORDS = sorted((w for w in _STANCES if w.isalpha() or " " in w or "'" in w), key=len, reverse=True)
_FREE_LINE = re.compile(r"^(?P<stance>" + "|".join(re.escape(w) for w in _STANCE_WORDS) + r")\b\s*[:\-–]?\s*(?P<rest>.+)$", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|\(\d+\))\s*")
_CONFIDENCE = re.compile(r"(?:confidence|conf\.?)\s*[:=]?\s*(\d+(?:\.\d+)?|\.\d+)\s*(%?)", re.I)
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(%?)\s*$")
_EVIDENCE = re.compile(r"\be(\d+)\b", re.I)
_PLACEHOLDERS = {"what the user prefers", "what the user avoids", "dimension", "...", "…", ""}


@dataclass
class ParsedInference:
    """What a raw generation contained. ``r_format`` is 1.0 only for the strict paper format."""

    reasoning: str
    statements: list[PreferenceStatement]
    r_format: float
    problems: list[str] = field(default_factory=list)


def _confidence(value: str, percent: str) -> float | None:
    number = float(value)
    if percent or number > 1.0:
        number = number / 100.0 if number <= 100.0 else None  # type: ignore[assignment]
    return None if number is None else max(0.0, min(1.0, number))


def parse_statement_line(line: str, signal_ids: Sequence[str] = (), when: str | None = None) -> PreferenceStatement | None:
    """One statement from a line like ``- prefers | style | concise answers | confidence 0.7``.

    Also reads the looser forms a small model writes ("Prefers: concise answers", "avoids | cats").
    Evidence cited as ``e2`` maps to the second signal of the call; none cited means all of them.
    """
    text = _BULLET.sub("", line.strip()).strip().strip("*").strip()
    if not text or text.startswith("<"):
        return None
    parts = [p.strip().strip("*").strip() for p in text.split("|")]
    stance = _STANCES.get(parts[0].lower()) if len(parts) >= 2 else None
    dimension, confidence, evidence, subject = "general", None, [], ""
    if stance:
        rest = parts[1:]
        if len(rest) >= 2 and not _CONFIDENCE.search(rest[1]) and not _NUMBER.match(rest[1]):
            dimension, subject, extra = rest[0], rest[1], rest[2:]
        else:
            subject, extra = rest[0], rest[1:]
        for part in extra:
            match = _CONFIDENCE.search(part) or _NUMBER.match(part)
            if match and confidence is None:
                confidence = _confidence(match.group(1), match.group(2))
            evidence += [m for m in _EVIDENCE.findall(part)]
    else:
        match = _FREE_LINE.match(text)
        if not match:
            return None
        stance = _STANCES[match.group("stance").lower()]
        subject = match.group("rest")
        found = _CONFIDENCE.search(subject)
        if found:
            confidence = _confidence(found.group(1), found.group(2))
            subject = subject[: found.start()]
        subject = re.sub(r"[\s(,;|]+$", "", subject)
    subject = subject.strip().strip('"').rstrip(".").strip()
    if subject.lower() in _PLACEHOLDERS or len(subject) > 200 or len(dimension) > 40:
        return None
    cited = [signal_ids[int(k) - 1] for k in evidence if 0 < int(k) <= len(signal_ids)]
    created = when or now_iso()
    return PreferenceStatement.make(
        stance,  # type: ignore[arg-type]
        subject,
        dimension=dimension,
        evidence=cited or list(signal_ids),
        confidence=0.5 if confidence is None else confidence,
        origin="inferred",
        created=created,
    )


def _statements(block: str, signal_ids: Sequence[str], when: str | None) -> list[PreferenceStatement]:
    out: list[PreferenceStatement] = []
    seen: set[str] = set()
    for line in block.splitlines():
        statement = parse_statement_line(line, signal_ids, when)
        if statement is not None and statement.id not in seen:
            seen.add(statement.id)
            out.append(statement)
    return out


def parse_inference_output(text: str, signal_ids: Sequence[str] = (), when: str | None = None) -> ParsedInference:
    """Read ``<think> r </think> <answer> d </answer>``; strict first, then leniently where sound.

    Lenient reading takes the reasoning and answer from unclosed or missing tags and statement lines
    from wherever they are; such a result has R_format = 0 and names what was wrong in ``problems``.
    """
    strict = _STRICT.match(text)
    if strict and strict.group("think").strip():
        statements = _statements(strict.group("answer"), signal_ids, when)
        if statements:
            return ParsedInference(strict.group("think").strip(), statements, 1.0)
        return ParsedInference(strict.group("think").strip(), [], 0.0, ["no statement line in <answer>"])
    problems = []
    lower = text.lower()
    think_start, think_end = lower.find("<think>"), lower.find("</think>")
    answer_start, answer_end = lower.find("<answer>"), lower.find("</answer>")
    if think_start == -1 or think_end == -1:
        problems.append("missing <think>…</think>")
    if answer_start == -1 or answer_end == -1:
        problems.append("missing <answer>…</answer>")
    reasoning = ""
    if think_start != -1:
        stop = think_end if think_end > think_start else (answer_start if answer_start > think_start else len(text))
        reasoning = text[think_start + 7: stop].strip()
    if answer_start != -1:
        stop = answer_end if answer_end > answer_start else len(text)
        answer = text[answer_start + 8: stop]
    elif think_end != -1:
        answer = text[think_end + 8:]
    else:
        answer = text
    statements = _statements(answer, signal_ids, when) or _statements(text, signal_ids, when)
    if not statements:
        problems.append("no preference statement could be read")
    return ParsedInference(reasoning, statements, 0.0, problems)


# -- inference -------------------------------------------------------------------------------------

@dataclass
class InferenceConfig:
    """How the preference model is called.

    Bounds that keep streaming cheap: ``max_previous_statements`` (d_prev in the prompt),
    ``max_signals_per_call`` (more new signals are folded in chunks), ``max_signal_chars``.
    Robustness: ``max_retries`` extra samples (other seeds) when nothing usable came back;
    ``accept_lenient`` keeps statements read from a broken format (R_format = 0).
    """

    max_new_tokens: int = 384
    temperature: float = 0.9  # the paper's sampling: T = 0.9, top-p 0.95
    top_p: float = 0.95
    seed: int = 0
    max_retries: int = 2
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


class PreferenceInferrer:
    """Infers and updates a user's preference description with one engine (the `preference` role)."""

    def __init__(self, engine: Engine, config: InferenceConfig | None = None) -> None:
        self.engine = engine
        self.config = config or InferenceConfig()

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
            fresh = [s for s in parsed.statements if not is_suppressed(s, suppressed)]
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
                                seed=cfg.seed)
        completion = self.engine.generate([conversation], params)[0][0]
        return completion, parse_inference_output(completion.text, [s.id for s in signals])

    def _fit(self, signals: list[Signal], previous: PreferenceDescription) -> list:
        conversation = self.prompt(signals, previous)
        window = self.engine.context_window
        if window is not None and self.engine.count_tokens(conversation) + self.config.max_new_tokens > window:
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
            params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_p=cfg.top_p, seed=cfg.seed + attempt)
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
            parsed = parse_inference_output(completion.text, ids)
            if parsed.r_format == 1.0:
                return parsed, None
            if parsed.statements and cfg.accept_lenient and best is None:
                best = parsed
                break
            problems.append(f"attempt {attempt + 1}: " + ", ".join(parsed.problems))
        if best is not None:
            return best, None
        return None, "model output broke the format: " + "; ".join(problems)
