"""VLLMEngine on the converted default model. Needs a CUDA GPU and vLLM; elsewhere only the clear
"not installed" error is checked, and the GPU tests are skipped with the reason."""

from __future__ import annotations

import importlib.util

import pytest

from alignment.engines import EngineError, ModelSpec, SamplingParams

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


requires_gpu = pytest.mark.skipif(
    not (HAS_VLLM and _has_cuda()),
    reason="needs a CUDA GPU and vLLM (pip install '.[vllm]'); this machine has "
    + ("no vLLM" if not HAS_VLLM else "no CUDA GPU"),
)
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me one tip for sleeping better."}],
]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here, so the missing-package error cannot occur")
def test_missing_vllm_is_a_clear_error(model_cache):
    from alignment.engines.default_model import ensure_default_model
    from alignment.engines.vllm_engine import VLLMEngine

    path = ensure_default_model(model_cache)
    with pytest.raises(EngineError, match=r"pip install '\.\[vllm\]'"):
        VLLMEngine(ModelSpec(backend="vllm", path=str(path)))


@pytest.fixture(scope="module")
def vllm_engine(model_cache):
    from alignment.engines.default_model import ensure_default_model
    from alignment.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(ModelSpec(backend="vllm", path=str(ensure_default_model(model_cache)),
                                  gpu_memory_utilization=0.3))
    yield engine
    engine.close()


@pytest.mark.gpu
@requires_gpu
def test_greedy_generation_matches_transformers(vllm_engine, default_engine):
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    got = [c[0].text for c in vllm_engine.generate(PROMPTS, params)]
    want = [c[0].text for c in default_engine.generate(PROMPTS, params)]
    # different kernels can flip a late near-tie; the first words must agree
    assert [g.split()[:3] for g in got] == [w.split()[:3] for w in want]


@pytest.mark.gpu
@requires_gpu
def test_n_seeded_samples(vllm_engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=4, seed=3)
    out = vllm_engine.generate(PROMPTS, params)
    assert [len(x) for x in out] == [4, 4]
    assert [c.text for c in vllm_engine.generate(PROMPTS, params)[0]] == [c.text for c in out[0]]


@pytest.mark.gpu
@requires_gpu
def test_score_agrees_with_transformers(vllm_engine, default_engine):
    texts = ["The capital of France is Paris.", "Banana purple seventeen."]
    got = vllm_engine.score(PROMPTS[:1] * 2, texts)
    want = default_engine.score(PROMPTS[:1] * 2, texts)
    assert got[0].logprob > got[1].logprob
    for g, w in zip(got, want):
        assert g.num_tokens == w.num_tokens
        assert g.logprob == pytest.approx(w.logprob, abs=0.05 * w.num_tokens + 0.1)


@pytest.mark.gpu
@requires_gpu
def test_every_declared_format_is_enforced_by_structured_outputs(vllm_engine):
    """vLLM's llguidance backend takes our Lark grammars (with their token bounds) as they are."""
    from alignment.formats import declared_formats

    for name, fmt in declared_formats().items():
        params = SamplingParams(max_new_tokens=1, temperature=1.0, n=2, seed=7, format=fmt)
        for completion in vllm_engine.generate(PROMPTS[:1], params)[0]:
            assert completion.format_error is None, (name, completion.text)
            assert completion.parsed == fmt.parse(completion.text)
            assert completion.completion_tokens <= fmt.max_tokens
