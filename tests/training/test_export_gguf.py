"""GGUF export of a policy version (training/export_gguf.py): a LoRA merged into the packaged GGUF scores, through
llama.cpp, what transformers with the adapter scores; promotion writes it and the app then serves it by llama.cpp."""

from __future__ import annotations

import json

import pytest

from alignment.engines import ModelSpec, SamplingParams, build_engine

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TEXTS = ["The capital of France is Paris.", "Banana purple seventeen."]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, model_cache):
    """A real PEFT LoRA on q/k/v/o/down with non-zero B (as after training), saved like the trainers save it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignment.engines.default_model import ensure_default_model

    model = AutoModelForCausalLM.from_pretrained(str(ensure_default_model(model_cache)), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # large enough to move the scores well beyond kernel noise
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(out))
    return out


def _scores(engine):
    return [s.logprob for s in engine.score([QUESTION, QUESTION], TEXTS)]


def test_merged_lora_gguf_scores_like_transformers_with_the_adapter(adapter, model_cache, tmp_path):
    from training.export_gguf import export_gguf

    gguf = export_gguf(tmp_path / "model.gguf", adapter_dir=adapter)
    llama = build_engine(ModelSpec(backend="llamacpp", path=str(gguf)), model_cache, cache=False)
    base = build_engine(ModelSpec(backend="llamacpp"), model_cache, cache=False)
    tuned = build_engine(ModelSpec(backend="default", adapter=str(adapter)), model_cache, cache=False)
    try:
        got, want, before = _scores(llama), _scores(tuned), _scores(base)
        n = [s.num_tokens for s in tuned.score([QUESTION, QUESTION], TEXTS)]
        print("merged llama.cpp", got, "transformers + adapter", want, "base", before)
        assert max(abs(w - b) for w, b in zip(want, before)) > 1.0  # the adapter matters
        for g, w, b, k in zip(got, want, before, n):
            assert g == pytest.approx(w, abs=0.05 * k + 0.1)  # the adapter's model, through llama.cpp
            assert abs(g - b) > abs(g - w)  # and not the base model any more
        assert llama.generate([QUESTION], SamplingParams(max_new_tokens=8))[0][0].text.strip()
    finally:
        llama.close()
        base.close()


def test_promotion_exports_and_llamacpp_serves_the_version(adapter, settings):
    from app.models import engine_for, resolve_spec
    from training.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    model = registry.publish("policy", adapter, is_adapter=True, base="default")
    assert model.gguf is None
    registry.promote("policy", model.version)
    promoted = registry.get("policy", model.version)
    assert promoted.gguf_path is not None and promoted.gguf_error is None
    assert json.loads((promoted.path / "manifest.json").read_text())["gguf"] == "model.gguf"
    spec, version = resolve_spec(settings, "policy")
    assert (spec.backend, spec.path, version) == ("llamacpp", str(promoted.gguf_path), model.version)
    engine = engine_for(settings, "policy")
    assert engine.version == model.version and engine.description.startswith("llamacpp:")
    assert resolve_spec(settings, "prm")[0].backend == "default"  # other roles stay on transformers


def test_unmergeable_adapter_is_promoted_and_served_by_transformers(adapter, settings, tmp_path):
    import shutil

    from app.models import resolve_spec
    from training.registry import ModelRegistry

    odd = tmp_path / "dora"
    shutil.copytree(adapter, odd)
    config = json.loads((odd / "adapter_config.json").read_text())
    (odd / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    registry = ModelRegistry(settings.registry_dir)
    model = registry.publish("policy", odd, is_adapter=True, base="default")
    registry.promote("policy", model.version)
    promoted = registry.get("policy", model.version)
    assert promoted.gguf_path is None and "DoRA" in promoted.gguf_error
    assert resolve_spec(settings, "policy")[0].backend == "default"
