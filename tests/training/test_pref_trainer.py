"""Training the preference inferrer for real (trl SFTTrainer / GRPOTrainer on the packaged model, a few optimizer
steps): the `cdra train prefs` pipeline, resuming an interrupted SFT, and refusing R_jud from a judge at chance."""

from __future__ import annotations

import json
import os

import pytest

from training.pref_data import build_prefeval_records, read_pref_records

pytestmark = pytest.mark.slow


@pytest.mark.timeout(2400)
def test_train_prefs_data_sft_grpo_and_a_refused_judge(prefeval_root, cdra_main, tmp_path):
    data = tmp_path / "prefdata"
    code, out, err = cdra_main("train", "prefs", "data", "--prefeval", str(prefeval_root), "--out", str(data),
                               "--val-topics", "music", "--stream-per-topic", "1")
    assert code == 0, err
    assert "validation topics: music" in out and "targets in format: 100.0 %" in out
    card = json.loads((data / "data_card.json").read_text())
    assert card["topics_validation"] == ["music"] and card["topics_train"] == ["food"]
    assert card["agreement"]["train"]["positives"] > 0

    code, out, err = cdra_main("train", "prefs", "sft", "--data", str(data), "--tiny", "--from", "base")
    assert code == 0, err
    assert "SFT: 2 steps" in out and "validation on 2 held-out records" in out
    assert "registered preference preference-0001" in out
    manifest = json.loads((tmp_path / "data" / "registry" / "preference" / "preference-0001" / "manifest.json").read_text())
    assert manifest["metrics"]["sft_steps"] == 2 and "val_score" in manifest["metrics"]
    assert manifest["metrics"]["serving_score"] is not None  # compared with what serves now
    if "not promoted" in out:  # a tie or worse is never promoted
        assert manifest["metrics"]["val_score"] <= manifest["metrics"]["serving_score"]

    code, out, err = cdra_main("train", "prefs", "grpo", "--data", str(data), "--tiny", "--promote", "never")
    assert code == 0, err
    assert "GRPO: 2 steps" in out and "rollouts in format" in out and "preference-0002" in out
    grpo = json.loads((tmp_path / "data" / "registry" / "preference" / "preference-0002" / "metrics.json").read_text())
    assert grpo["grpo-agreement"]["rollouts"] == 2 * 1 * 2  # 2 steps x 1 prompt x G=2, each rewarded
    assert len(grpo["grpo-agreement"]["reward_history"]) == 2

    code, out, err = cdra_main("train", "prefs", "grpo", "--data", str(data), "--tiny", "--reward", "jud",
                               "--sanity-items", "4")
    assert code == 2
    assert "judge sanity check on" in out and "FAILS" in out
    assert "refusing R_jud" in err


@pytest.mark.timeout(1800)
def test_an_interrupted_sft_resumes_from_its_checkpoint(prefeval_root, model_cache, tmp_path, monkeypatch,
                                                       write_pref_dataset):
    from transformers import TrainerCallback

    from alignment.engines.default_model import ensure_default_model
    from training import prm_trainer
    from training.pref_trainer import train_sft
    from training.registry import TrainingStart

    raw = build_prefeval_records(prefeval_root, lambda t: len(t.split()), validation_topics=("music",))
    write_pref_dataset(tmp_path / "d", raw)
    records = [r for r in read_pref_records(tmp_path / "d" / "train.jsonl") if r.form == "explicit"][:2]
    start = TrainingStart("default", ensure_default_model(model_cache))
    config = prm_trainer.SFTStageConfig(lora_r=4, lora_alpha=8, max_steps=2, batch_size=1, max_length=512,
                                        learning_rate=1e-3, logging_steps=1)

    class Killed(Exception):
        pass

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Killed(f"killed after checkpoint {state.global_step}")

    original = prm_trainer.sft_trainer

    def interrupted(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(KillAfterFirstCheckpoint())
        return trainer

    monkeypatch.setattr(prm_trainer, "sft_trainer", interrupted)
    out = tmp_path / "sft"
    with pytest.raises(Killed, match="checkpoint 1"):
        train_sft(records, start, out, config, save_steps=1)
    assert not out.exists() and (tmp_path / ".sft.work" / "checkpoints" / "checkpoint-1").is_dir()
    monkeypatch.setattr(prm_trainer, "sft_trainer", original)
    result = train_sft(records, start, out, config, save_steps=1)
    assert result.metrics["resumed_from"].endswith("checkpoint-1") and result.metrics["steps"] == 2
    assert (result.adapter_dir / "adapter_config.json").is_file() and not (tmp_path / ".sft.work").exists()
    assert not (out / "checkpoints").exists()
    assert os.path.getsize(result.adapter_dir / "adapter_model.safetensors") < 5_000_000
