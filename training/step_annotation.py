"""Step-wise critique and score (CDRA §2.2 stage 2): the evaluator reads (P, q, τ^{≤j}) and writes c^j, then r^j.

Segments are the path's steps and then its answer (the last segment), exactly as Pers-GenPRM scores a
policy response. The evaluator gets Pers-GenPRM's own prompts (``alignment.prm.step_conversations``, plus
two solved demonstrations) and writes in Pers-GenPRM's declared format (``alignment.formats.step_judgment``,
enforced by constrained decoding), so each record holds precisely the critique-then-``SCORE`` text
Pers-GenPRM learns. Only an unconstrained evaluator can write something else: its replies are read
leniently (counted), unreadable ones retried, and a path with a segment still unreadable is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from alignment.critique import StepJudgment, read_step_judgment
from alignment.engines.base import Engine, Message, SamplingParams
from alignment.errors import CdraError
from alignment.formats import step_judgment
from alignment.prm import segment_texts, step_conversations
from alignment.prompts.council import evaluator_demonstrations
from training.council import ReasoningPath
from training.scenarios import Scenario, derive_seed


@dataclass
class AnnotationConfig:
    r"""
    Configuration of the evaluator's step-wise critiques.

    Parameters that control generation:
        critique_tokens (`int`, defaults to `96`):
            Most tokens of one critique: the bound of the ``step_judgment`` format the evaluator writes in
            (``Critique: c`` then ``SCORE: x``), so every judgment finishes with its score.
        max_new_tokens (`int`, defaults to `0`):
            Generation budget of one judgment; it is raised to the format's longest output when smaller.
        temperature (`float`, defaults to `0.0`):
            The evaluator is greedy by default, so the same step always gets the same judgment.
        retries (`int`, defaults to `2`):
            Extra attempts for judgments that cannot be read (only an evaluator that does not enforce the
            format writes those); then the path is dropped and counted.
        retry_temperature (`float`, defaults to `0.7`):
            Retries are sampled (seeded), since a greedy retry would repeat the same reply.
        demonstrations (`bool`, defaults to `True`):
            Prepend two solved critique turns (same instruction, same output format) to every prompt.

    Parameters that control batching:
        batched (`bool`, defaults to `True`):
            All segments of all paths of a scenario in one generation call per attempt; `False`: one call each.
    """

    critique_tokens: int = 96
    max_new_tokens: int = 0
    temperature: float = 0.0
    retries: int = 2
    retry_temperature: float = 0.7
    demonstrations: bool = True
    batched: bool = True

    def __post_init__(self) -> None:
        if self.critique_tokens < 4 or self.max_new_tokens < 0 or self.retries < 0:
            raise CdraError("annotation needs critique_tokens >= 4, max_new_tokens >= 0 and retries >= 0")

    @property
    def format(self):
        """The declared output of one judgment (``alignment.formats.step_judgment``)."""
        return step_judgment(self.critique_tokens)


@dataclass
class AnnotatedPath:
    path: ReasoningPath
    critiques: list[str]
    scores: list[float]

    @property
    def total_score(self) -> float:
        """R(τ) = Σ_j r^j over every segment (steps and answer)."""
        return round(sum(self.scores), 4)


@dataclass
class AnnotationStats:
    judgments: int = 0  # segments judged (first attempts)
    parse_failures: int = 0  # unreadable replies, retries included (only from an unconstrained evaluator)
    retries: int = 0
    dropped_paths: int = 0
    repaired: int = 0  # replies only the lenient reader accepted (an unconstrained evaluator)
    model_calls: int = 0
    completion_tokens: int = 0


def segments_of(path: ReasoningPath) -> list[str]:
    """What Pers-GenPRM judges, in its own wording (``alignment.prm.segment_texts``): each step, then
    the answer labelled ``Answer: …``."""
    return segment_texts(path.steps, path.answer)


def critique_conversations(preference: str, query: str, path: ReasoningPath,
                           demonstrations: bool = True) -> list[list[Message]]:
    """The evaluator's prompt for every segment: Pers-GenPRM's own prompts
    (``alignment.prm.step_conversations``), with the solved demonstrations after the instruction."""
    convs = [list(c) for c in step_conversations(preference, query, segments_of(path))]
    if not demonstrations:
        return convs
    demo = evaluator_demonstrations()[1:]
    return [[c[0], *demo, *c[1:]] for c in convs]


def annotate_paths(engine: Engine, scenario: Scenario, paths: list[ReasoningPath], config: AnnotationConfig,
                   seed: int = 0) -> tuple[list[AnnotatedPath], AnnotationStats]:
    """Critique and score every segment of every path; return the fully annotated paths (in order)."""
    stats = AnnotationStats()
    jobs = [(i, j) for i, p in enumerate(paths) for j in range(len(segments_of(p)))]
    stats.judgments = len(jobs)
    judged: dict[tuple[int, int], StepJudgment] = {}
    pending = jobs
    for attempt in range(1 + config.retries):
        if not pending:
            break
        if attempt:
            stats.retries += len(pending)
        temperature = config.temperature if attempt == 0 else config.retry_temperature
        prompts = {i: critique_conversations(scenario.preference, scenario.query, paths[i], config.demonstrations)
                   for i in {i for i, _ in pending}}
        convs = [prompts[i][j] for i, j in pending]
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=temperature, format=config.format)
        if config.batched:
            calls = [(convs, pending, derive_seed(seed, scenario.id, "critique", attempt))]
        else:
            calls = [([c], [job], derive_seed(seed, scenario.id, "critique", attempt, *job))
                     for c, job in zip(convs, pending)]
        failed: list[tuple[int, int]] = []
        for batch, batch_jobs, call_seed in calls:
            outputs = engine.generate(batch, replace(params, seed=call_seed))
            stats.model_calls += 1
            for job, completions in zip(batch_jobs, outputs):
                stats.completion_tokens += completions[0].completion_tokens
                reading = read_step_judgment(engine, config.format, completions[0].text)
                if reading is None:
                    stats.parse_failures += 1
                    failed.append(job)
                    continue
                judged[job] = reading.value
                stats.repaired += reading.repaired
        pending = failed
    annotated = []
    for i, path in enumerate(paths):
        keys = [(i, j) for j in range(len(segments_of(path)))]
        if all(k in judged for k in keys):
            annotated.append(AnnotatedPath(path, [judged[k].critique for k in keys],
                                           [round(judged[k].score, 4) for k in keys]))
        else:
            stats.dropped_paths += 1
    return annotated, stats
