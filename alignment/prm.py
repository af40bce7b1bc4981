"""Pers-GenPRM (CDRA §2.3): for every segment of a response, a critique c^j and then a score r^j.

``PersGenPRM(engine).score_responses(P, q, responses) -> list[StepScores]``. All (response, segment)
pairs go to the engine in one ``generate`` call, in the declared step-judgment format
(``alignment.formats.step_judgment``): a constrained engine's judgments all parse on the first attempt.
An unconstrained engine's are read leniently (counted as repaired); unparseable ones are retried (sampled)
a bounded number of times, then either read out from the model's own distribution over score values
(``fallback="readout"``, counted) or left unscored (``None``, counted) — never a silent 0.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from alignment.critique import DEFAULT_CRITIQUE_TOKENS, format_step_judgment, read_step_judgment
from alignment.engines.base import Conversation, Engine, SamplingParams
from alignment.formats import step_judgment
from alignment.prompts import render
from alignment.prompts.prm import STEP_CRITIQUE_PROMPT, format_previous_steps
from alignment.steps import parse_response

log = logging.getLogger(__name__)

ScoreSource = Literal["parsed", "readout", "failed"]
_LEADING_LABEL = re.compile(r"^\s*\**\s*critique\s*\**\s*[:=]\s*", re.IGNORECASE)
_SCORE_TAIL = re.compile(r"\n?[^\n]*\bscore\b[^\n]*$", re.IGNORECASE)


@dataclass(frozen=True)
class PRMConfig:
    """How Pers-GenPRM decodes and what it does with judgments it cannot read.

    Decoding: judgments are in ``step_judgment(critique_tokens)``: a critique of at most ``critique_tokens``
    tokens (default: ``max_new_tokens``, the older name of this length), then ``SCORE: x``; the generation
    budget is the format's longest output, so every judgment finishes with its score. The first attempt is
    greedy (reproducible rewards).
    Failures (only possible where the engine does not enforce the format, e.g. ``constrained = false`` or an
    endpoint): ``max_retries`` further *sampled* attempts (``retry_temperature``) for judgments with no
    readable ``SCORE: x``; then ``fallback="readout"`` appends ``SCORE: x`` for every x of
    ``readout_grid`` to the model's own critique and takes the probability-weighted mean, while
    ``fallback="none"`` leaves the segment unscored. Both outcomes are counted in the result.
    """

    critique_tokens: int | None = None
    max_new_tokens: int = DEFAULT_CRITIQUE_TOKENS
    max_retries: int = 2
    retry_temperature: float = 0.8
    fallback: Literal["none", "readout"] = "readout"
    readout_grid: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    seed: int | None = 0

    @property
    def critique_bound(self) -> int:
        return max(4, self.critique_tokens or self.max_new_tokens)


@dataclass
class StepScores:
    """Pers-GenPRM's verdict on one response: one entry per segment (the steps, then the answer)."""

    segments: list[str]
    critiques: list[str]
    scores: list[float | None]
    sources: list[ScoreSource]
    failures: int = 0  # unparseable generations for this response, retries included
    repaired: int = 0  # judgments only the lenient reader accepted (unconstrained engines)

    @property
    def complete(self) -> bool:
        return all(s is not None for s in self.scores)

    @property
    def dense(self) -> float | None:
        """R_dense = Σ_j r^j; ``None`` when any segment has no score (never summed as 0)."""
        return float(sum(self.scores)) if self.complete else None  # type: ignore[arg-type]

    @property
    def readouts(self) -> int:
        return sum(1 for s in self.sources if s == "readout")

    @property
    def unscored(self) -> int:
        return sum(1 for s in self.sources if s == "failed")


@dataclass
class PRMScores:
    """A batch of verdicts plus the failure counts the caller logs or reports."""

    responses: list[StepScores] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.responses)

    @property
    def readouts(self) -> int:
        return sum(r.readouts for r in self.responses)

    @property
    def unscored(self) -> int:
        return sum(r.unscored for r in self.responses)

    @property
    def repaired(self) -> int:
        return sum(r.repaired for r in self.responses)

    @property
    def segments(self) -> int:
        return sum(len(r.scores) for r in self.responses)

    def summary(self) -> str:
        return (f"{self.segments} segments: {self.segments - self.readouts - self.unscored} parsed, "
                f"{self.readouts} read out, {self.unscored} unscored; {self.failures} unparseable generations, "
                f"{self.repaired} read leniently")


def segment_texts(steps: Sequence[str], answer: str | None) -> list[str]:
    """The texts Pers-GenPRM judges: each step, then the answer labelled as such."""
    texts = [s.strip() for s in steps]
    if answer is not None:
        texts.append(f"Answer: {answer.strip()}")
    return texts


def step_conversations(preference: str, query: str, segments: Sequence[str]) -> list[Conversation]:
    """One critique prompt per segment j, showing (P, q, τ^{<j}) and the segment to judge.

    Training (training/prm_trainer.py) and inference both build prompts here, so the PRM is
    always asked the way it was taught.
    """
    conversations = []
    for j, text in enumerate(segments):
        previous = [s.removeprefix("Answer: ") for s in segments[:j]]
        conversations.append(render(
            STEP_CRITIQUE_PROMPT,
            preference=preference.strip(),
            query=query.strip(),
            previous_steps=format_previous_steps(previous),
            step_number=j + 1,
            step=text,
        ))
    return conversations


def response_segments(response: str) -> list[str]:
    """Segments of a policy response in the order CDPA maps them to tokens (alignment/steps.py)."""
    parsed = parse_response(response)
    return [f"Answer: {s.text}" if s.is_answer else s.text for s in parsed.segments]


def expected_score(logprobs: Sequence[float], grid: Sequence[float]) -> float:
    """Probability-weighted mean of the grid values, from unnormalized log-probabilities."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    return sum(w * v for w, v in zip(weights, grid)) / sum(weights)


def critique_text(generated: str) -> str:
    """The critique part of an unparseable judgment: its label and any broken score line removed."""
    text = _SCORE_TAIL.sub("", generated.strip()).strip()
    return _LEADING_LABEL.sub("", text).strip() or "(no critique)"


def read_out_scores(engine: Engine, conversations: Sequence[Conversation], generated: Sequence[str],
                    grid: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0)) -> list[float]:
    """The score a model means after its own critique, when it wrote no readable ``SCORE:`` line.

    For each judgment, ``critique + "SCORE: x"`` is scored for every x in ``grid`` (one batched
    ``Engine.score`` call) and the probability-weighted mean of x is returned. Reusable by any
    critique writer (the DeepPref evaluator too), so weak models still yield grounded scores.
    """
    pairs_conv, pairs_cont = [], []
    for conv, text in zip(conversations, generated):
        critique = critique_text(text)
        for value in grid:
            pairs_conv.append(conv)
            pairs_cont.append(format_step_judgment(critique, value))
    if not pairs_conv:
        return []
    scored = engine.score(pairs_conv, pairs_cont)
    n = len(grid)
    return [expected_score([s.logprob for s in scored[k * n:(k + 1) * n]], grid) for k in range(len(conversations))]


class PersGenPRM:
    """The generative process reward model over any Engine (the packaged default, an adapter, vLLM)."""

    def __init__(self, engine: Engine, config: PRMConfig | None = None) -> None:
        self.engine = engine
        self.config = config or PRMConfig()
        self.format = step_judgment(self.config.critique_bound)

    def _params(self, temperature: float, seed: int | None) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.format.max_tokens, temperature=temperature, seed=seed,
                              format=self.format)

    def _record(self, results: list[StepScores], i: int, j: int, text: str) -> bool:
        """Store the judgment of segment j of response i when it reads; count the failure otherwise."""
        reading = read_step_judgment(self.engine, self.format, text)
        if reading is None:
            results[i].failures += 1
            return False
        results[i].repaired += reading.repaired
        results[i].critiques[j] = reading.value.critique
        results[i].scores[j] = reading.value.score
        results[i].sources[j] = "parsed"
        return True

    def score_responses(self, preference: str, query: str, responses: Sequence[str]) -> list[StepScores]:
        """Per-segment critiques and scores of each response to (P, q)."""
        return self.score_batch([(preference, query, r) for r in responses]).responses

    def score_batch(self, items: Sequence[tuple[str, str, str]]) -> PRMScores:
        """Score many (P, q, response) triples with one generate call per attempt."""
        segs = [response_segments(response) for _, _, response in items]
        return self.score_segments([(p, q, s) for (p, q, _), s in zip(items, segs)])

    def score_segments(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> PRMScores:
        """Score already-split paths (P, q, [segment texts]), e.g. DeepPref records."""
        convs: list[Conversation] = []
        owner: list[tuple[int, int]] = []
        for i, (preference, query, segments) in enumerate(items):
            for j, conv in enumerate(step_conversations(preference, query, segments)):
                convs.append(conv)
                owner.append((i, j))
        results = [
            StepScores(list(s), [""] * len(s), [None] * len(s), ["failed"] * len(s)) for _, _, s in items
        ]
        texts = self._judge(convs, owner, results)
        pending = [k for k, (i, j) in enumerate(owner) if results[i].scores[j] is None]
        if pending and self.config.fallback == "readout":
            self._readout([convs[k] for k in pending], [texts[k] for k in pending], [owner[k] for k in pending], results)
        batch = PRMScores(results)
        if batch.failures:
            log.warning("Pers-GenPRM: %s", batch.summary())
        return batch

    def _judge(self, convs: list[Conversation], owner: list[tuple[int, int]], results: list[StepScores]) -> list[str]:
        """Generate judgments; retry the unparseable ones. Returns the last text seen per pair."""
        cfg = self.config
        texts = [""] * len(convs)
        todo = list(range(len(convs)))
        for attempt in range(cfg.max_retries + 1):
            if not todo:
                break
            params = self._params(0.0 if attempt == 0 else cfg.retry_temperature,
                                  None if cfg.seed is None else cfg.seed + attempt)
            outputs = self.engine.generate([convs[k] for k in todo], params)
            still = []
            for k, out in zip(todo, outputs):
                texts[k] = out[0].text
                if not self._record(results, *owner[k], texts[k]):
                    still.append(k)
            todo = still
        for k in todo:
            i, j = owner[k]
            results[i].critiques[j] = critique_text(texts[k])
        return texts

    def _readout(self, convs: list[Conversation], texts: list[str], owner: list[tuple[int, int]],
                 results: list[StepScores]) -> None:
        values = read_out_scores(self.engine, convs, texts, self.config.readout_grid)
        for value, (i, j) in zip(values, owner):
            results[i].scores[j] = value
            results[i].sources[j] = "readout"

    def readout_scores(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> tuple[PRMScores, list[list[float]]]:
        """One greedy judgment per segment, parsed as is (no retries), plus every segment's read-out score.

        The read-out (the mean of the model's distribution over score values after its own
        critique) exists for every segment, even from a model that rarely writes a well-formed
        ``SCORE:`` line (the untrained base model), so agreement before and after SFT is comparable.
        """
        convs, owner = [], []
        for i, (preference, query, segments) in enumerate(items):
            for j, conv in enumerate(step_conversations(preference, query, segments)):
                convs.append(conv)
                owner.append((i, j))
        parsed = [StepScores(list(s), [""] * len(s), [None] * len(s), ["failed"] * len(s)) for _, _, s in items]
        texts = [o[0].text for o in self.engine.generate(convs, self._params(0.0, None))]
        for text, (i, j) in zip(texts, owner):
            if not self._record(parsed, i, j, text):
                parsed[i].critiques[j] = critique_text(text)
        read = [StepScores(list(s), [""] * len(s), [None] * len(s), ["failed"] * len(s)) for _, _, s in items]
        self._readout(convs, texts, owner, read)
        return PRMScores(parsed), [[float(x) for x in r.scores] for r in read]  # type: ignore[arg-type]
