"""Preference inference on the real packaged model: typed results, bounded retries, bounded streaming prompts."""

from __future__ import annotations

import pytest

from alignment.preference_inference import InferenceConfig, PreferenceInferrer
from alignment.preferences import PreferenceDescription, PreferenceStatement
from alignment.signals import parse_signal

SIGNALS = [parse_signal(s) for s in (
    {"kind": "comparison", "post": "Lunch ideas near the office?", "chosen": "The salad bar has gluten-free bowls.",
     "rejected": "The bakery has fresh baguettes.", "id": "c1"},
    {"kind": "statement", "text": "I'm allergic to cats.", "id": "s1"},
    {"kind": "turn", "user": "Explain transformers", "assistant": "Multi-head self-attention over token embeddings…",
     "feedback": "down", "correction": "Shorter please, no jargon.", "id": "t1"},
)]


def _many(n: int) -> list:
    return [parse_signal({"kind": "post", "text": f"Post {i}: I went hiking again and skipped the museum.", "id": f"p{i}"})
            for i in range(n)]


def _previous(n: int) -> PreferenceDescription:
    """n stored statements whose texts all cost the same tokens (which ones the cap keeps depends on the clock)."""
    return PreferenceDescription(statements=[
        PreferenceStatement.make("prefers", f"topic number {i:04d}", confidence=0.5) for i in range(n)])


#: a small format (few, short statements) keeps the end-to-end tests fast on a CPU
SMALL = {"think_tokens": 24, "max_statements": 2, "statement_tokens": 8}


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 3}])
def test_constrained_decoding_always_gives_the_declared_format(default_engine, sampling):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_retries=0, **SMALL, **sampling))
    result = inferrer.infer(SIGNALS)
    assert not result.failed and result.attempts == 1 and result.r_format == 1.0, result.raw
    assert result.raw.startswith("<think>") and result.raw.rstrip().endswith("</answer>")
    assert 1 <= len(result.new_statements) <= 2 and all(s.origin == "inferred" for s in result.new_statements)
    assert all(set(s.evidence) == {"c1", "s1", "t1"} for s in result.new_statements)
    assert result.description.statements == result.new_statements


@pytest.mark.slow
def test_unconstrained_output_is_retried_within_the_bound_then_failed(default_engine, unconstrained):
    previous = _previous(2)
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_retries=2, max_statements=1, think_tokens=4,
                                                                  statement_tokens=4, accept_lenient=False))
    with unconstrained(default_engine):
        result = inferrer.infer(SIGNALS, previous)
    assert result.attempts == 3 and len(result.raws) == 3 or result.r_format == 1.0  # a free 135M rarely hits it
    if result.failed:
        assert result.error.count("attempt") == 3 and result.r_format == 0.0
        assert result.new_statements == [] and result.description.statements == previous.statements  # unchanged


def test_streaming_prompt_does_not_grow_with_history(default_engine):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_previous_statements=24))
    new = SIGNALS[:2]
    sizes = {default_engine.count_tokens(inferrer.prompt(new, _previous(n))) for n in (24, 100, 1000)}
    assert len(sizes) == 1  # d_prev is capped: 1000 stored statements cost what 24 do
    assert default_engine.count_tokens(inferrer.prompt(new, None)) < sizes.pop()


@pytest.mark.slow
def test_many_new_signals_are_folded_in_bounded_chunks(default_engine):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_new_tokens=1, max_retries=0,
                                                                  max_signals_per_call=6, **SMALL))
    signals, previous = _many(12), _previous(10)
    result = inferrer.infer(signals, previous)
    assert result.calls == 2
    first = default_engine.count_tokens(inferrer.prompt(signals[:6], previous))
    assert len(result.call_prompt_tokens) == 2 and result.call_prompt_tokens[0] == first
    one_call = default_engine.count_tokens(inferrer.prompt(signals, previous))
    assert max(result.call_prompt_tokens) < one_call  # the second chunk sees d_prev updated by the first


@pytest.mark.slow
def test_votes_drop_the_statements_too_few_samples_state(default_engine):
    """The votes are real samples of the same prompt; the agreement decides which of them count as support."""
    import numpy as np

    from alignment.consensus import Agreement

    every = Agreement(similarity=lambda a, b: np.ones((len(a), len(b))), threshold=0.5)
    none = Agreement(similarity=lambda a, b: np.zeros((len(a), len(b))), threshold=0.5)
    config = InferenceConfig(max_retries=0, votes=2, min_support=2, **SMALL)
    alone = PreferenceInferrer(default_engine, InferenceConfig(max_retries=0, **SMALL)).infer(SIGNALS)
    kept = PreferenceInferrer(default_engine, config, every).infer(SIGNALS)
    dropped = PreferenceInferrer(default_engine, config, none).infer(SIGNALS)
    assert alone.new_statements and [s.text for s in kept.new_statements] == [s.text for s in alone.new_statements]
    assert kept.unsupported == 0 and kept.completion_tokens > alone.completion_tokens  # two more samples were drawn
    assert dropped.new_statements == [] and dropped.unsupported == len(alone.new_statements)
    assert not dropped.failed and dropped.r_format == 1.0  # the output was well formed: nothing was supported
