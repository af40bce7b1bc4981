"""The step format shared by the policy's output, Pers-GenPRM, CDPA and the UI.

A policy response is at most ``MAX_STEPS`` numbered reasoning blocks, then the answer::

    Step 1: <the user's deep preference behind the request>
    Step 2: <latent risks in the request or in naive answers>
    Step 3: <the plan>
    Answer: <the reply the user sees>

Responses that ignore the format are still split (by paragraph), so every response has steps
that the PRM can score. Segments are the steps plus the answer; every character of a response
belongs to exactly one segment, which is what maps step scores to token rewards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_STEPS = 5
_STEP = re.compile(r"^[ \t>*#-]*\**\s*step\s*(\d+)\s*\**\s*[:.)-]\**\s*", re.IGNORECASE | re.MULTILINE)
_ANSWER = re.compile(r"^[ \t>*#-]*\**\s*(?:final\s+)?answer\s*\**\s*[:.-]\**\s*", re.IGNORECASE | re.MULTILINE)
#: the label patterns, for callers that follow a response as it streams (alignment/budget_forcing.py)
STEP_LABEL = _STEP
ANSWER_LABEL = _ANSWER


@dataclass(frozen=True)
class Segment:
    """A span of the response: a reasoning step (``is_answer=False``) or the answer."""

    index: int  # 0-based among segments
    text: str  # content without its "Step k:" / "Answer:" label
    start: int  # character span in the response, label included
    end: int
    is_answer: bool = False


@dataclass(frozen=True)
class ParsedResponse:
    segments: tuple[Segment, ...]
    well_formed: bool  # had explicit Step labels and an Answer

    @property
    def steps(self) -> list[str]:
        return [s.text for s in self.segments if not s.is_answer]

    @property
    def answer(self) -> str:
        for s in self.segments:
            if s.is_answer:
                return s.text
        return self.segments[-1].text if self.segments else ""


def parse_response(text: str, max_steps: int = MAX_STEPS) -> ParsedResponse:
    """Split a response into steps and answer; extra steps beyond ``max_steps`` merge into the last."""
    answer_match = None
    for m in _ANSWER.finditer(text):
        answer_match = m  # the last "Answer:" label wins
    reasoning_end = answer_match.start() if answer_match else len(text)
    labels = [m for m in _STEP.finditer(text) if m.start() < reasoning_end]
    segments: list[Segment] = []
    if labels:
        bounds = [m.start() for m in labels] + [reasoning_end]
        # text before the first label belongs to the first step
        bounds[0] = 0
        for i, m in enumerate(labels):
            segments.append(_segment(text, len(segments), bounds[i], bounds[i + 1], m.end() if i else max(m.end(), 0)))
    elif reasoning_end > 0 and text[:reasoning_end].strip():
        segments.extend(_paragraph_segments(text, 0, reasoning_end, max_steps, with_answer=answer_match is None))
    segments = _merge_overflow(text, segments, max_steps)
    if answer_match:
        segments.append(Segment(len(segments), text[answer_match.end():].strip(), answer_match.start(), len(text), True))
    if not segments:
        segments.append(Segment(0, text.strip(), 0, len(text), True))
    well_formed = bool(labels) and answer_match is not None and all(s.text for s in segments)
    return ParsedResponse(tuple(segments), well_formed)


def parse_structured(text: str) -> ParsedResponse:
    """A response known to follow the grammar (alignment/formats ``policy_response``): one ``Step k:`` line per
    step, then the first line that starts with ``Answer:`` opens the answer, which runs to the end, whatever
    it contains (an answer may itself say "Step 4:" or "Answer:"; ``parse_response`` would split there)."""
    segments: list[Segment] = []
    pos = 0
    answer = None
    for line in text.splitlines(keepends=True):
        label = _ANSWER.match(line)
        if label:
            answer = Segment(len(segments), text[pos + label.end():].strip(), pos, len(text), True)
            break
        step = _STEP.match(line)
        if step is None:
            raise ValueError(f"line {len(segments) + 1} is neither a step nor the answer: {line[:60]!r}")
        segments.append(Segment(len(segments), line[step.end():].strip(), pos, pos + len(line)))
        pos += len(line)
    if answer is None:
        raise ValueError("no Answer: line")
    return ParsedResponse((*segments, answer), well_formed=bool(segments) and all(s.text for s in segments))


def read_response(text: str, max_steps: int = MAX_STEPS) -> ParsedResponse:
    """The reading every consumer of a finished response uses: the grammar's structure where the text follows it
    (``parse_structured``), else the tolerant split of ``parse_response`` (unconstrained output)."""
    try:
        parsed = parse_structured(text)
    except ValueError:
        return parse_response(text, max_steps)
    return parsed if len(parsed.steps) <= max_steps else parse_response(text, max_steps)


def _segment(text: str, index: int, start: int, end: int, content_start: int) -> Segment:
    return Segment(index, text[content_start:end].strip(), start, end)


def _paragraph_segments(text: str, start: int, end: int, max_steps: int, with_answer: bool) -> list[Segment]:
    """Unlabelled text: paragraphs become steps; when there is no Answer label the last one is the answer."""
    spans = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S(?:.*?\S)?(?=\n\s*\n|\s*$)", text[start:end], re.S)]
    if not spans:
        return []
    cuts = [start] + [s for s, _ in spans[1:]] + [end]
    segs = [Segment(i, text[cuts[i]:cuts[i + 1]].strip(), cuts[i], cuts[i + 1]) for i in range(len(spans))]
    if with_answer:
        last = segs[-1]
        segs[-1] = Segment(last.index, last.text, last.start, last.end, True)
    return segs


def _merge_overflow(text: str, segments: list[Segment], max_steps: int) -> list[Segment]:
    steps = [s for s in segments if not s.is_answer]
    if len(steps) <= max_steps:
        return segments
    keep = steps[: max_steps - 1]
    tail_start, tail_end = steps[max_steps - 1].start, steps[-1].end
    merged = Segment(max_steps - 1, text[tail_start:tail_end].strip(), tail_start, tail_end)
    rest = [s for s in segments if s.is_answer]
    return keep + [merged] + [Segment(max_steps + i, s.text, s.start, s.end, True) for i, s in enumerate(rest)]


def format_response(steps: Sequence[str], answer: str) -> str:
    """The canonical text of a response (what RFT trains on and the PRM reads)."""
    lines = [f"Step {i + 1}: {s.strip()}" for i, s in enumerate(steps)]
    lines.append(f"Answer: {answer.strip()}")
    return "\n".join(lines)


def token_segment_ids(offsets: Sequence[tuple[int, int]], parsed: ParsedResponse) -> list[int]:
    """For each token (character offsets from a fast tokenizer), the segment it belongs to.

    A token is assigned to the segment that contains its first character; tokens past the end
    (e.g. EOS) belong to the last segment. This is the step -> token map CDPA's rewards use.
    """
    ids: list[int] = []
    segs = parsed.segments
    for start, _end in offsets:
        seg = len(segs) - 1
        for s in segs:
            if s.start <= start < s.end:
                seg = s.index
                break
        ids.append(seg)
    return ids


def tokenize_with_segments(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of a response and the segment index of each token."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), token_segment_ids(enc["offset_mapping"], parse_response(text))
