"""Model registry: versions, publishing, promotion, training starts, and hot pick-up by engine_for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.engines import ModelSpec
from alignment.engines.default_model import ensure_default_model
from training.registry import ModelRegistry, fingerprint, training_start


def make_adapter(model_cache: Path, out: Path, seed: int = 0) -> Path:
    """A real (untrained) PEFT LoRA adapter on the packaged model, as training would save it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(ensure_default_model(model_cache)))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(model_cache, root / "a", 0), make_adapter(model_cache, root / "b", 1)


def test_versions_publish_and_promote(tmp_path, adapters):
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.versions("policy") == [] and reg.next_version("policy") == "policy-0001"
    (tmp_path / "registry" / "policy" / "policy-0007").mkdir(parents=True)  # an unfinished write: invisible
    assert reg.versions("policy") == [] and reg.next_version("policy") == "policy-0008"
    data = tmp_path / "d.jsonl"
    data.write_text('{"a": 1}\n\n{"a": 2}\n')
    m = reg.publish("policy", adapters[0], is_adapter=True, metrics={"loss": 1.5}, data={"rft": fingerprint(data)},
                    config={"lr": 1e-4})
    assert m.version == "policy-0008" and (m.adapter_dir / "adapter_config.json").is_file()
    manifest = json.loads((m.path / "manifest.json").read_text())
    assert manifest["data"]["rft"]["records"] == 2 and len(manifest["data"]["rft"]["sha256"]) == 64
    assert manifest["config"] == {"lr": 1e-4} and manifest["parent"] is None
    assert manifest["metrics"] == {"loss": 1.5} and json.loads((m.path / "metrics.json").read_text()) == {"loss": 1.5}
    m2 = reg.publish("policy", adapters[1], is_adapter=True, parent=m.version)
    assert [v.version for v in reg.versions("policy")] == ["policy-0008", "policy-0009"]
    assert reg.serving("policy") is None
    reg.promote_many({"policy": m2.version})
    assert reg.serving("policy").version == "policy-0009" and reg.get("policy", "policy-0009").parent == "policy-0008"
    with pytest.raises(KeyError):
        reg.promote("policy", "policy-0042")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        reg.publish("prm", tmp_path, is_adapter=True)


def test_flat_metrics_keep_scalars():
    from training.registry import flat_metrics

    nested = {"val_reward": 0.4, "rft": {"train_loss": 2.1, "history": [1, 2]}, "prm": {"counts": {"readout": 5}}, "x": None}
    assert flat_metrics(nested) == {"val_reward": 0.4, "rft_train_loss": 2.1, "prm_counts_readout": 5}


def test_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n')
    first = fingerprint(f)
    f.write_text('{"a": 2}\n')
    assert fingerprint(f)["sha256"] != first["sha256"] and fingerprint(f)["records"] == 1


def test_training_start_continues_the_serving_version(tmp_path, model_cache, adapters):
    reg = ModelRegistry(tmp_path / "registry")
    start = training_start(reg, "prm", ModelSpec(), model_cache)
    assert start.base == "default" and start.adapter is None and start.parent is None
    assert (start.model_dir / "config.json").is_file()
    m = reg.publish("prm", adapters[0], is_adapter=True)
    reg.promote("prm", m.version)
    start = training_start(reg, "prm", ModelSpec(), model_cache)
    assert start.adapter == m.adapter_dir and start.parent == m.version
    from alignment.errors import CdraError

    with pytest.raises(CdraError, match="endpoint"):
        training_start(reg, "prm", ModelSpec(backend="openai", base_url="http://x"), model_cache)


@pytest.mark.slow
def test_engine_for_picks_up_a_promotion_without_restart(settings, adapters):
    """The app resolves the serving version on every call: a promotion by another process is served on the
    next call, and the replaced version's engine leaves the cache."""
    from alignment.engines import factory
    from alignment.engines.base import SamplingParams
    from app.models import engine_for, resolve_spec

    reg = ModelRegistry(settings.registry_dir)
    v1 = reg.publish("policy", adapters[0], is_adapter=True)
    v2 = reg.publish("policy", adapters[1], is_adapter=True, parent=v1.version)
    reg.promote("policy", v1.version)
    e1 = engine_for(settings, "policy")
    # served from the version's directory: its GGUF export by llama.cpp, else its adapter by transformers
    assert e1.version == v1.version and str(v1.path) in e1.description
    assert engine_for(settings, "policy") is e1  # cached while it serves
    spec1, _ = resolve_spec(settings, "policy")
    reg.promote("policy", v2.version)
    e2 = engine_for(settings, "policy")
    assert e2 is not e1 and e2.version == v2.version and str(v2.path) in e2.description
    assert factory._key(spec1, settings.models_dir) not in factory._cache  # the old version was evicted
    out = e2.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=4))
    assert out[0][0].completion_tokens > 0


def test_cli_promote_and_bad_options(settings, adapters):
    from typer.testing import CliRunner

    from alignment.errors import CdraError
    from app.cli import _register, app

    _register()
    reg = ModelRegistry(settings.registry_dir)
    m = reg.publish("policy", adapters[0], is_adapter=True)
    runner = CliRunner()
    root = ["--data-dir", str(settings.data_dir)]
    ok = runner.invoke(app, [*root, "train", "promote", "policy", m.version])
    assert ok.exit_code == 0 and "now serving" in ok.stdout and reg.serving("policy").version == m.version
    missing = runner.invoke(app, [*root, "train", "promote", "policy", "policy-0099"])
    assert isinstance(missing.exception, CdraError) and "cdra models" in str(missing.exception)
    bad = runner.invoke(app, [*root, "train", "grpo", "--data", "x.jsonl", "--reward", "bogus"])
    assert isinstance(bad.exception, CdraError) and "outcome or process" in str(bad.exception)
