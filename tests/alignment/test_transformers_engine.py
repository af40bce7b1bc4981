"""The local transformers engine on the real packaged model."""

import pytest

from alignment.engines import EmptyPromptError, PromptTooLongError, SamplingParams

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me one tip for sleeping better."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a primary color."}],
]


def test_batched_greedy_equals_one_by_one(default_engine):
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    batched = [c[0].text for c in default_engine.generate(PROMPTS, params)]
    single = [default_engine.generate([p], params)[0][0].text for p in PROMPTS]
    assert batched == single
    assert all(t.strip() for t in batched)


def test_n_samples_per_prompt_are_returned_per_prompt(default_engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=1)
    out = default_engine.generate(PROMPTS[:2], params)
    assert [len(x) for x in out] == [3, 3]
    assert all(c.completion_tokens > 0 for x in out for c in x)


def test_seeded_sampling_is_reproducible(default_engine):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    a = default_engine.generate(PROMPTS[:1], params)[0][0].text
    b = default_engine.generate(PROMPTS[:1], params)[0][0].text
    assert a == b


def test_score_ranks_likely_continuation_above_unlikely(default_engine):
    conv = PROMPTS[0]
    likely, unlikely = default_engine.score([conv, conv], ["The capital of France is Paris.", "Banana purple seventeen."])
    assert likely.logprob > unlikely.logprob
    assert likely.num_tokens > 0 and all(lp <= 0 for lp in likely.token_logprobs)


def test_stream_yields_the_greedy_answer(default_engine):
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    streamed = "".join(default_engine.stream(PROMPTS[0], params))
    assert streamed == default_engine.generate([PROMPTS[0]], params)[0][0].text


def test_empty_and_too_long_prompts_fail_clearly(default_engine):
    with pytest.raises(EmptyPromptError):
        default_engine.generate([[{"role": "user", "content": "   "}]], SamplingParams())
    huge = [{"role": "user", "content": "word " * 10_000}]
    with pytest.raises(PromptTooLongError, match="context window"):
        default_engine.generate([huge], SamplingParams(max_new_tokens=8))
