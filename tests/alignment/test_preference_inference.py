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
    return PreferenceDescription(statements=[
        PreferenceStatement.make("prefers", f"topic number {i}", confidence=0.5) for i in range(n)])


@pytest.mark.slow
def test_real_model_gives_a_typed_result(default_engine):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_new_tokens=48, max_retries=1, temperature=0.0))
    result = inferrer.infer(SIGNALS)
    assert 1 <= result.attempts <= 2 and result.raws and result.prompt_tokens > 0
    assert result.r_format in (0.0, 1.0)
    if result.failed:
        assert result.error and "broke the format" in result.error and result.new_statements == []
    else:
        assert result.new_statements and all(s.origin == "inferred" for s in result.new_statements)
        assert all(set(s.evidence) <= {"c1", "s1", "t1"} for s in result.new_statements)
        assert result.description.statements == result.new_statements


@pytest.mark.slow
def test_broken_format_is_retried_within_the_bound_then_failed(default_engine):
    previous = _previous(2)
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_new_tokens=2, max_retries=2))
    result = inferrer.infer(SIGNALS, previous)
    assert result.failed and result.attempts == 3 and len(result.raws) == 3
    assert result.error.count("attempt") == 3 and result.r_format == 0.0
    assert result.new_statements == [] and result.description.statements == previous.statements  # nothing changed


def test_streaming_prompt_does_not_grow_with_history(default_engine):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_previous_statements=24))
    new = SIGNALS[:2]
    sizes = {default_engine.count_tokens(inferrer.prompt(new, _previous(n))) for n in (24, 100, 1000)}
    assert len(sizes) == 1  # d_prev is capped: 1000 stored statements cost what 24 do
    assert default_engine.count_tokens(inferrer.prompt(new, None)) < sizes.pop()


@pytest.mark.slow
def test_many_new_signals_are_folded_in_bounded_chunks(default_engine):
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_new_tokens=1, max_retries=0,
                                                                  max_signals_per_call=6))
    signals, previous = _many(12), _previous(10)
    result = inferrer.infer(signals, previous)
    assert result.calls == 2
    chunk_prompts = [default_engine.count_tokens(inferrer.prompt(signals[i:i + 6], previous)) for i in (0, 6)]
    assert result.call_prompt_tokens == chunk_prompts
    one_call = default_engine.count_tokens(inferrer.prompt(signals, previous))
    assert max(chunk_prompts) < one_call
