"""The llama.cpp engine on the packaged GGUF itself: same prompt tokens as transformers, generation,
streaming, and scores close to the dequantized transformers model."""

import pytest

from alignment.engines import EngineError, ModelSpec, SamplingParams, build_engine

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llama(model_cache):
    engine = build_engine(ModelSpec(backend="llamacpp"), model_cache, cache=False)
    yield engine
    engine.close()


def test_prompts_tokenize_like_transformers(llama, default_engine):
    assert llama.prompt_ids(QUESTION) == default_engine.prompt_ids(QUESTION)
    assert llama.encode("The capital of France is Paris.") == default_engine.encode("The capital of France is Paris.")


def test_generate_stream_and_n(llama):
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    text = llama.generate([QUESTION], params)[0][0]
    assert text.text.strip() and text.completion_tokens > 0
    assert "".join(llama.stream(QUESTION, params)) == text.text
    samples = llama.generate([QUESTION], SamplingParams(max_new_tokens=4, temperature=1.0, n=2, seed=5))
    assert len(samples[0]) == 2


def test_scores_match_the_dequantized_model(llama, default_engine):
    texts = ["The capital of France is Paris.", "Banana purple seventeen."]
    got = llama.score([QUESTION, QUESTION], texts)
    want = default_engine.score([QUESTION, QUESTION], texts)
    assert got[0].logprob > got[1].logprob
    for g, w in zip(got, want):
        assert g.num_tokens == w.num_tokens
        # same quantized weights, different kernels: per-token agreement within a few hundredths of a nat
        assert g.logprob == pytest.approx(w.logprob, abs=0.05 * w.num_tokens + 0.1)


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="no GGUF file"):
        build_engine(ModelSpec(backend="llamacpp", path=str(tmp_path / "nope.gguf")), tmp_path, cache=False)
