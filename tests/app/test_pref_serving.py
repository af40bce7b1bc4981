"""A fresh install's `preference` role serves the adapter shipped with the package, and `cdra prefs infer` on a
PrefEval-style conversation stores statements that adapter inferred."""

from __future__ import annotations

import json

import pytest

from alignment.adapters import packaged_adapter


def test_the_package_ships_a_small_preference_adapter():
    shipped = packaged_adapter("preference")
    assert shipped is not None, "alignment/adapters/preference/ must hold the trained LoRA (see its TRAINING.md)"
    weights = shipped / "adapter_model.safetensors"
    assert weights.stat().st_size < 8_000_000  # a small LoRA, a few MB
    config = json.loads((shipped / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] <= 16
    assert (shipped / "DATA_CARD.md").is_file() and "cdra" in (shipped / "TRAINING.md").read_text()


def test_a_fresh_data_dir_resolves_the_preference_role_to_it(settings):
    from app.models import PACKAGED_VERSION, describe_roles, resolve_spec
    from training.registry import ModelRegistry

    spec, version = resolve_spec(settings, "preference")
    assert version == PACKAGED_VERSION and spec.backend == "default" and spec.adapter == str(packaged_adapter("preference"))
    assert resolve_spec(settings, "judge")[0].adapter is None  # the other roles stay on the base model
    row = next(r for r in describe_roles(settings) if r["role"] == "preference")
    assert row["version"] == PACKAGED_VERSION and "adapter" in row["source"]
    assert ModelRegistry(settings.registry_dir).serving("preference") is None  # nothing promoted: the packaged one


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_prefs_infer_in_a_fresh_data_dir_stores_what_the_shipped_adapter_inferred(cdra_main, tmp_path):
    signals = tmp_path / "conversation.jsonl"
    # PrefEval's explicit form (a preference said in passing, then a question it bears on). On the implicit
    # persona-driven form the shipped 135M adapter still mostly repeats the prompt's worked example, which the
    # inferrer drops (copies_the_example): docs/BENCHMARKS.md has its recovery on held-out topics.
    signals.write_text("\n".join(json.dumps(s) for s in [
        {"kind": "turn", "id": "t1", "user": "I have a severe gluten intolerance, so I always avoid bread, pasta and "
         "anything made with wheat.", "assistant": "Thanks for telling me."},
        {"kind": "turn", "id": "t2", "user": "Can you suggest a place for lunch with my team on Friday?",
         "assistant": "A salad bar downtown could work."},
    ]) + "\n")
    code, out, err = cdra_main("prefs", "infer", "--user", "dana", "--signals", str(signals))
    assert code == 0, err
    assert "adapter" in err and "preference" in err  # inferred by the shipped adapter
    code, shown, _ = cdra_main("prefs", "export", "--user", "dana")
    export = json.loads(shown)
    # what the adapter inferred is stored: a new statement, or (when it says what the user stated, as greedy
    # decoding here does) a reinforcement of the explicit one, which then carries the inference's reasoning
    inferred = [p for p in export["preferences"]
                if any(e["origin"] == "inferred" and e["reasoning"] for e in p["sources"])]
    assert inferred, out
    assert any(w in p["text"].lower() for p in inferred for w in ("gluten", "wheat")), inferred
    assert not any("cats" in p["text"].lower() for p in inferred)  # never the prompt's example
    [log] = export["inferences"]
    assert log["model"] == "packaged" and log["failed"] is False
