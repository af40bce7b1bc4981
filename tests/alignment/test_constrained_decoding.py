"""Constrained decoding on the real packaged model: every declared format, sampled, comes out parseable and
finished on each CPU engine (transformers and llama.cpp), streamed too, and through LangChain; an engine set
to decode freely does not enforce (what R_format measurements and RL rollouts need)."""

from __future__ import annotations

import pytest

from alignment.engines import ModelSpec, SamplingParams, build_engine
from alignment.engines.langchain_engine import EngineChatModel, LangChainEngine
from alignment.formats import (
    council_thought,
    council_value,
    policy_response,
    preference_inference,
    preference_selection,
    scenario,
    step_judgment,
    verdict,
)
from alignment.formats.constrain import TokenizerBridge
from alignment.preferences import DIMENSIONS

pytestmark = pytest.mark.slow

ASK = [{"role": "system", "content": "The user is vegetarian and hates long answers."},
       {"role": "user", "content": "Suggest a dinner for tonight."}]

#: every declared format at small bounds, so the whole matrix decodes in about a minute
FORMATS = {
    "policy": policy_response(max_steps=2, step_tokens=12, answer_tokens=24),
    "preference": preference_inference(tuple(DIMENSIONS), max_statements=2, think_tokens=16, statement_tokens=8),
    "step_judgment": step_judgment(critique_tokens=16),
    "yesno": verdict("yesno", 16),
    "pair": verdict("pair", 16),
    "rating": verdict("rating", 16),
    "selection": preference_selection(),
    "thought": council_thought(1, 12),
    "value": council_value(),
    "scenario": scenario(16, 10),
}


@pytest.fixture(scope="module")
def llama(model_cache):
    engine = build_engine(ModelSpec(backend="llamacpp"), model_cache, cache=False)
    yield engine
    engine.close()


@pytest.fixture(params=["transformers", "llamacpp"])
def engine(request, default_engine, llama):
    return default_engine if request.param == "transformers" else llama


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_comes_out_parsed_and_finished(engine, name):
    fmt = FORMATS[name]
    params = SamplingParams(max_new_tokens=1, temperature=1.0, top_p=1.0, n=2, seed=11, format=fmt)
    assert params.budget == fmt.max_tokens  # the budget grows to the grammar's longest output
    for completion in engine.generate([ASK], params)[0]:
        assert completion.format_error is None, completion.text
        assert completion.parsed == fmt.parse(completion.text)  # exactly the declared format, strictly
        assert completion.finish_reason == "stop" and completion.completion_tokens <= fmt.max_tokens
    assert engine.format_stats["failed"] == 0


#: well-formed outputs a model would write: the grammar must accept them as the engine tokenizes them
WRITTEN = {
    "preference": "<think>[e1] The user says they avoid heights.</think>\n<answer>\n"
                  "- avoids | values | activities that involve heights | confidence 0.70\n</answer>",
    "policy": "Step 1: The user is vegetarian.\nAnswer: A lentil soup.",
    "step_judgment": "Critique: It respects the diet.\nSCORE: 0.50",
    "scenario": "PREFERENCE: Keeps answers short.\nQUERY: What should I cook?",
}


def _bridge(engine) -> TokenizerBridge:
    if hasattr(engine, "llm"):
        return TokenizerBridge.from_llamacpp(engine.llm)
    return TokenizerBridge.from_hf(engine.tokenizer, engine.model.get_output_embeddings().weight.shape[0])


@pytest.mark.parametrize("name", list(WRITTEN))
def test_the_grammar_accepts_a_well_formed_output_token_by_token(engine, name):
    """A free text followed by " | confidence " once made the model's own token " |" illegal, so every
    constrained subject ran on to its bound; the reader alone could not see it."""
    fmt, text = FORMATS[name], WRITTEN[name]
    fmt.parse(text)
    matcher = _bridge(engine).matcher(fmt)
    ids = engine.encode(text)
    for i, token in enumerate(ids):
        assert matcher.consume_token(token), f"{name}: rejected {engine.decode([token])!r} after {engine.decode(ids[:i])!r}"
    assert matcher.is_accepting()


def test_streamed_output_is_in_the_format_too(engine):
    fmt = FORMATS["policy"]
    text = "".join(engine.stream(ASK, SamplingParams(temperature=0.8, seed=2, format=fmt)))
    parsed = fmt.parse(text)
    assert 1 <= len(parsed.steps) <= 2 and parsed.answer


def test_decoding_freely_is_a_role_setting(engine, unconstrained):
    fmt = FORMATS["yesno"]
    assert engine.enforces(fmt)
    with unconstrained(engine):
        assert not engine.enforces(fmt)
        out = engine.generate([ASK], SamplingParams(max_new_tokens=8, format=fmt))[0][0]
    assert out.format_error is not None and out.parsed is None  # a free 135M does not write this JSON


def test_langchain_passes_the_format_to_the_engine_underneath(default_engine):
    lc = LangChainEngine(EngineChatModel(engine=default_engine, max_new_tokens=4))
    fmt = FORMATS["value"]
    assert lc.enforces(fmt)
    out = lc.generate([ASK], SamplingParams(temperature=0.9, seed=1, format=fmt))[0][0]
    assert out.format_error is None and 0.0 <= out.parsed <= 1.0


def test_the_sampling_clock_times_each_token_choice(engine):
    """What `cdra bench formats` reads for the constraint's cost: one tick per sampled token, its time > 0."""
    clock = engine.sampling_clock
    start = clock.reading
    out = engine.generate([ASK], SamplingParams(format=FORMATS["value"]))[0][0]
    seconds, ticks = clock.since(start)
    assert seconds > 0 and out.completion_tokens <= ticks <= out.completion_tokens + 1  # + the end-of-sequence
