"""CDPA's trl subclass end to end: real SmolLM2 policy, real Pers-GenPRM (the same model), real steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignment.cdpa import compute_advantages
from alignment.errors import CdraError
from alignment.prm import PersGenPRM, PRMConfig
from training.cdpa_trainer import CDPAConfig, build_trainer, prompt_records, split_prompts, train_policy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deeppref"
PROMPT = {"preference": "Allergic to cats and dogs; wants calm outdoor time; dislikes crowds.",
          "query": "Recommend some outdoor experiences for this weekend."}


def tiny(**overrides) -> CDPAConfig:
    base = {"num_generations": 2, "max_completion_length": 24, "prompts_per_step": 1, "max_steps": 1,
            "eval_every": 1, "learning_rate": 1e-3, "save_checkpoints": False, "val_max_new_tokens": 16}
    return CDPAConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def prm(model_cache):
    # Decoded freely, with the readout fallback: every step gets a graded score (the probability-weighted SCORE)
    # when the untrained model writes no SCORE line. Under the grammar the untrained PRM writes "SCORE: 1" for
    # every sample, so a group's advantages are all 0 and no step could show that the update reaches the LoRA.
    from alignment.engines import ModelSpec, build_engine

    engine = build_engine(ModelSpec(backend="default", constrained=False), model_cache)
    return PersGenPRM(engine, PRMConfig(max_new_tokens=16, max_retries=0, fallback="readout",
                                        readout_grid=(-1.0, 0.0, 1.0)))


@pytest.fixture(scope="module")
def policy_dir(model_cache):
    from alignment.engines.default_model import ensure_default_model

    return ensure_default_model(model_cache)


def lora_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad}


# -- data (no model) -------------------------------------------------------------------------------------


def test_prompt_records_dedupe_paths_and_keep_split():
    rows = prompt_records(FIXTURES / "rea.jsonl")
    raw = [json.loads(line) for line in (FIXTURES / "rea.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len({(r["preference"], r["query"]) for r in raw}) < len(raw)
    assert {r["split"] for r in rows} <= {"train", "validation"}
    train, val = split_prompts(prompt_records(FIXTURES / "rft.jsonl"), 0.5, seed=0)
    assert len(val) == 3 and len(train) == 9  # the file's split=validation records win over val_fraction
    train, val = split_prompts([{**PROMPT, "query": f"q{i}"} for i in range(10)], 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2


def test_bad_records_and_configs_fail_clearly(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROMPT) + "\n" + json.dumps({"query": "no preference"}) + "\n")
    with pytest.raises(CdraError, match=r"bad.jsonl:2: missing required key\(s\) preference"):
        prompt_records(bad)
    with pytest.raises(CdraError, match="record 1: missing or empty query"):
        prompt_records([{"preference": "x", "query": " "}])
    with pytest.raises(CdraError, match="unknown CDPA method"):
        CDPAConfig(method="ppo")  # type: ignore[arg-type]
    with pytest.raises(CdraError, match="at least 2"):
        CDPAConfig(num_generations=1)


def test_config_maps_to_trl_with_paper_defaults(tmp_path):
    cfg = CDPAConfig()
    assert (cfg.num_generations, cfg.temperature, cfg.max_steps) == (5, 1.0, 400)
    args = CDPAConfig(prompts_per_step=3, use_vllm=True, vllm_mode="server").grpo_config(tmp_path)
    assert args.per_device_train_batch_size == 15 and args.num_generations == 5
    assert args.beta > 0 and args.use_vllm and args.vllm_mode == "server"


# -- the trainer on the real model -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cdpa", "grpo-outcome", "grpo-process"])
def test_each_method_takes_a_real_step_with_per_token_advantages(method, prm, policy_dir, tmp_path):
    trainer = build_trainer(tiny(method=method), [PROMPT], prm, policy_dir, tmp_path / "ck")
    before = lora_weights(trainer)
    assert before, "LoRA adapters are trained by default"
    trainer.train()

    after = lora_weights(trainer)
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert moved, "no LoRA weight changed after an optimizer step"

    seen = trainer.last_loss_inputs
    assert math.isfinite(seen["loss"])
    b, t = seen["completion_ids_shape"]
    assert b == 2 and t > 1
    assert seen["advantages_shape"] == (b, t)  # per-token advantages reached trl's _compute_loss

    rollout = trainer.last_rollout
    expected = compute_advantages(method, rollout["step_scores"], rollout["segment_ids"], rollout["mask"],
                                  rollout["group_size"], trainer.eps, trainer.outcome,
                                  torch.tensor([int((~torch.isnan(r)).sum()) for r in rollout["step_scores"]]))
    torch.testing.assert_close(rollout["advantages"], expected)
    assert torch.isfinite(rollout["advantages"]).all()
    assert (rollout["advantages"][rollout["mask"] == 0] == 0).all()
    assert trainer.prm_totals["segments"] >= 2  # every sample had at least one step scored by the PRM
    assert set(trainer.timings) >= {"generation", "prm", "advantages", "step"}


@pytest.mark.slow
def test_train_policy_keeps_best_adapter_by_validation_reward(prm, policy_dir, tmp_path):
    val = [{"preference": "Vegetarian; training for a marathon; avoids supplements.",
            "query": "What should I eat before a long run?"}]
    out = tmp_path / "cdpa"
    result = train_policy(tiny(), FIXTURES / "rft.jsonl", prm, policy_dir, out_dir=out, val_dataset=val)

    assert result.output_dir == out and out.is_dir() and not (tmp_path / ".cdpa.work").exists()
    assert (result.artifact_dir / "adapter_config.json").is_file()
    assert (out / "result.json").is_file() and not (out / "checkpoints").exists()
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"]["steps"] == 1 and saved["method"] == "cdpa"
    assert [h["step"] for h in result.history] == [0, 1]  # before training, then after the last step
    m = result.metrics
    assert math.isfinite(m["val_reward_before"]) and math.isfinite(m["final_val_reward"])
    assert m["best_val_reward"] == max(h["reward"] for h in result.history)
    assert m["best_step"] in (0, 1) and m["prm"]["segments"] > 0


@pytest.mark.gpu
def test_vllm_rollouts_on_gpu(prm, policy_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: the vLLM rollout path (use_vllm, colocate) needs one")
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install '.[vllm]')")
    trainer = build_trainer(tiny(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2),
                            [PROMPT], prm, policy_dir, tmp_path / "ck")
    before = lora_weights(trainer)
    trainer.train()
    after = lora_weights(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert trainer.last_loss_inputs["advantages_shape"] == trainer.last_loss_inputs["completion_ids_shape"]
