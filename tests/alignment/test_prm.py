"""Pers-GenPRM: prompts per segment, the step-judgment format on every call, batched judging, bounded retries
(an unconstrained engine), counted failures and lenient reads, read-out; the real constrained model parses all."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from alignment.critique import format_step_judgment
from alignment.engines.base import Completion, Conversation, Engine, SamplingParams, Scored
from alignment.formats import step_judgment
from alignment.prm import (
    PersGenPRM,
    PRMConfig,
    PRMScores,
    StepScores,
    critique_text,
    expected_score,
    read_out_scores,
    response_segments,
    segment_texts,
    step_conversations,
)
from alignment.steps import parse_response

RESPONSE = "Step 1: The user is allergic to cats.\nStep 2: Petting zoos are a risk.\nAnswer: Try a botanical garden."


class ScriptedJudge(Engine):
    """A real Engine subclass replaying judgments per segment number: it stands in for an *unconstrained*
    model (not for Pers-GenPRM, which is what these tests exercise) so retries and counts are exact."""

    def __init__(self, replies: dict[int, list[str]]) -> None:
        self.replies = {k: list(v) for k, v in replies.items()}
        self.calls: list[tuple[int, float]] = []  # (prompts in the call, temperature)
        self.params: list[SamplingParams] = []

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(conversations), params.temperature))
        self.params.append(params)
        out = []
        for conv in conversations:
            step = int(conv[-1]["content"].split("(step ")[1].split(")")[0])
            out.append([Completion(self.replies[step].pop(0) if len(self.replies[step]) > 1 else self.replies[step][0])])
        return out

    def score(self, conversations, continuations) -> list[Scored]:
        # prefers "SCORE: 0.50" strongly, so the read-out lands near 0.5
        return [Scored(logprob=0.0 if c.endswith(" 0.50") else -5.0) for c in continuations]


def test_segments_and_prompts_follow_the_step_format():
    assert response_segments(RESPONSE) == ["The user is allergic to cats.", "Petting zoos are a risk.",
                                           "Answer: Try a botanical garden."]
    assert len(response_segments(RESPONSE)) == len(parse_response(RESPONSE).segments)
    assert segment_texts(["a", "b"], "c") == ["a", "b", "Answer: c"]
    convs = step_conversations("Allergic to cats.", "Outdoor ideas?", response_segments(RESPONSE))
    assert len(convs) == 3
    last = convs[2][-1]["content"]
    assert "Step 1: The user is allergic to cats.\nStep 2: Petting zoos are a risk." in last
    assert "(step 3):\nAnswer: Try a botanical garden." in last
    assert "(none: this is the first step)" in convs[0][-1]["content"]


def test_expected_score_and_critique_text():
    assert expected_score([0.0, 0.0], [-1.0, 1.0]) == pytest.approx(0.0)
    assert expected_score([0.0, -100.0], [0.5, 1.0]) == pytest.approx(0.5)
    assert critique_text("Critique: too vague.\nSCORE: 7") == "too vague."
    assert critique_text("   ") == "(no critique)"


def test_all_pairs_in_one_call_retries_only_failures_and_counts_them():
    engine = ScriptedJudge({
        1: ["Critique: names the allergy.\nSCORE: 0.8"],
        2: ["no score here", "no score here", "Critique: sees the risk.\nSCORE: 0.6"],
        3: ["Critique: fine.\nSCORE: 0.9"],
    })
    prm = PersGenPRM(engine, PRMConfig(critique_tokens=40, max_retries=2, fallback="none"))
    result = prm.score_batch([("P", "q", RESPONSE), ("P", "q", RESPONSE)])
    assert engine.calls == [(6, 0.0), (2, 0.8)]  # all (response, step) pairs at once; then only the two failures, sampled
    fmt = step_judgment(40)
    assert all(p.format is fmt and p.budget >= fmt.max_tokens for p in engine.params)  # the format on every call
    first = result.responses[0]
    assert first.scores == [0.8, 0.6, 0.9] and first.sources == ["parsed"] * 3
    assert first.critiques[1] == "sees the risk."
    assert first.dense == pytest.approx(2.3)  # R_dense = Σ_j r^j
    assert result.failures == 2 and result.unscored == 0


def test_unparseable_is_never_a_silent_zero():
    engine = ScriptedJudge({1: ["Critique: ok.\nSCORE: 0.5"], 2: ["SCORE: 4"], 3: ["Critique: ok.\nSCORE: 0.1"]})
    result = PersGenPRM(engine, PRMConfig(max_retries=1, fallback="none")).score_batch([("P", "q", RESPONSE)])
    scores = result.responses[0]
    assert scores.scores[1] is None and scores.sources[1] == "failed"
    assert scores.dense is None and not scores.complete
    assert result.failures == 2 and result.unscored == 1
    assert "1 unscored" in result.summary()


def test_readout_fallback_is_counted_and_uses_the_models_distribution():
    engine = ScriptedJudge({1: ["Critique: ok.\nSCORE: 0.5"], 2: ["rambling without a score"], 3: ["Critique: ok.\nSCORE: 0.1"]})
    result = PersGenPRM(engine, PRMConfig(max_retries=0, fallback="readout")).score_batch([("P", "q", RESPONSE)])
    scores = result.responses[0]
    assert scores.sources == ["parsed", "readout", "parsed"]
    assert scores.scores[1] == pytest.approx(0.5, abs=0.05)
    assert result.readouts == 1 and result.failures == 1 and scores.complete


def test_lenient_reads_of_an_unconstrained_engine_are_counted_not_guessed():
    engine = ScriptedJudge({1: ["critique:  names the allergy.\n\nscore:0.8"], 2: ["Critique: overshoots.\nSCORE: 1.25"],
                            3: ["Critique: fine.\nSCORE: 0.9"]})
    result = PersGenPRM(engine, PRMConfig(max_retries=0, fallback="none")).score_batch([("P", "q", RESPONSE)])
    scores = result.responses[0]
    assert scores.scores == [0.8, None, 0.9]  # 1.25 is not read as 1: unscored and counted
    assert (result.repaired, result.failures, result.unscored) == (1, 1, 1)
    assert "1 read leniently" in result.summary()


def test_prm_scores_totals():
    a = StepScores(["x"], ["c"], [0.5], ["parsed"], failures=0)
    b = StepScores(["x", "y"], ["c", "d"], [None, 0.2], ["failed", "readout"], failures=3)
    batch = PRMScores([a, b])
    assert (batch.segments, batch.failures, batch.readouts, batch.unscored) == (3, 3, 1, 1)


@pytest.mark.slow
def test_real_model_scores_every_segment(default_engine):
    """The packaged model through the real (constrained) engine: every judgment is in the step-judgment format on
    the first greedy attempt, so every segment is parsed — no retry, no read-out, no failure."""
    prm = PersGenPRM(default_engine, PRMConfig(critique_tokens=16, max_retries=1))
    [scores] = prm.score_responses("Allergic to cats and dogs.", "Outdoor ideas for the weekend?", [RESPONSE])
    assert len(scores.scores) == 3 and scores.complete
    assert all(-1.0 <= s <= 1.0 for s in scores.scores)
    assert scores.sources == ["parsed"] * 3 and scores.failures == 0 and scores.repaired == 0
    assert all(c.strip() for c in scores.critiques)
    assert not math.isnan(scores.dense)
    convs = step_conversations("P", "q", ["a step"])
    values = read_out_scores(default_engine, convs, ["Critique: helpful."], (-1.0, 1.0))
    assert len(values) == 1 and -1.0 <= values[0] <= 1.0
    assert format_step_judgment("helpful.", 1.0).endswith("SCORE: 1.00")
