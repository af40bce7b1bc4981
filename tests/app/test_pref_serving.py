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
    signals.write_text("\n".join(json.dumps(s) for s in [
        {"kind": "turn", "id": "t1", "user": "Hi! I'm planning a reading event for my school library. Any ideas?",
         "assistant": "A book-themed scavenger hunt works well with young readers."},
        {"kind": "turn", "id": "t2", "user": "Great. We'll visit a bookstore too; I usually pick places with a cafe "
         "where I can get a gluten-free snack, because of my severe gluten intolerance.",
         "assistant": "A bookstore trip sounds fun."},
    ]) + "\n")
    code, out, err = cdra_main("prefs", "infer", "--user", "dana", "--signals", str(signals))
    assert code == 0, err
    assert "adapter" in err and "preference" in err  # inferred by the shipped adapter
    code, shown, _ = cdra_main("prefs", "export", "--user", "dana")
    export = json.loads(shown)
    inferred = [p for p in export["preferences"] if p["origin"] == "inferred"]
    assert inferred, out
    [log] = export["inferences"]
    assert log["model"] == "packaged" and log["failed"] is False
