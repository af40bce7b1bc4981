"""Training the preference inferrer (AlignXplore §3.2-3.3): cold-start SFT (trl SFTTrainer, LoRA, loss on r and
d: Eq. 8) and GRPO without KL (trl GRPOTrainer, beta=0, per-sequence length normalisation, group-normalised
advantages: Eq. 9-11) with unconstrained rollouts (trl generates itself), so R_format is learned.

Both run in ``.<out>.work`` beside ``out_dir`` with trl checkpoints every ``save_steps``: calling again after an
interruption resumes; ``out_dir`` appears (renamed) only when finished. Promotion: ``validate`` the candidate
and the serving version on the same held-out records; only a better candidate is promoted.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignment.engines import ModelSpec, build_engine
from alignment.errors import CdraError
from alignment.formats import OutputFormat, StatementLine
from alignment.preference_inference import InferenceConfig, read_inference
from training.pref_data import PrefRecord, prompt_for, sft_examples
from training.pref_rewards import GoldScorer, jud_reward, r_agree, r_agree_soft
from training.prm_trainer import SFTStageConfig
from training.registry import ModelRegistry, TrainingStart, write_json_atomic

ROLE = "preference"


# -- where training starts ------------------------------------------------------------------------------
def preference_start(registry: ModelRegistry, spec: ModelSpec, models_dir: Path) -> TrainingStart:
    """Continue the serving preference version; with nothing promoted, the packaged adapter on the packaged
    model (what a fresh install serves); else the role's configured weights (``training_start``)."""
    from alignment.adapters import packaged_adapter
    from alignment.engines.default_model import ensure_default_model
    from training.registry import training_start

    if spec.backend == "auto" and registry.serving(ROLE) is None and not spec.path and packaged_adapter(ROLE):
        return TrainingStart("default", ensure_default_model(Path(models_dir)), packaged_adapter(ROLE), "packaged")
    return training_start(registry, ROLE, spec, models_dir)


def start_spec(start: TrainingStart, like: ModelSpec | None = None, adapter: Path | None = None,
               constrained: bool | None = None) -> ModelSpec:
    """The engine spec serving ``start`` (or ``adapter`` on its base)."""
    like = like or ModelSpec()
    chosen = adapter if adapter is not None else start.adapter
    keep = {"dtype": like.dtype, "device": like.device, "adapter": str(chosen) if chosen else None,
            "constrained": like.constrained if constrained is None else constrained}
    if start.base == "default":
        return ModelSpec(backend="default", **keep)
    return ModelSpec(backend="transformers", path=str(start.model_dir), **keep)


# -- SFT --------------------------------------------------------------------------------------------------
@dataclass
class PrefTrainResult:
    output_dir: Path
    metrics: dict = field(default_factory=dict)

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"


def _last_checkpoint(checkpoints: Path) -> str | None:
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1])) if checkpoints.is_dir() else []
    return str(found[-1]) if found else None


def _finish(trainer, work: Path, out_dir: Path, metrics: dict) -> PrefTrainResult:
    """Rename the work directory into place (rank 0 under `accelerate launch`; the others wait for it)."""
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        write_json_atomic(work / "metrics.json", metrics)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    trainer.accelerator.wait_for_everyone()
    return PrefTrainResult(out_dir, metrics)


def train_sft(records: Sequence[PrefRecord], start: TrainingStart, out_dir: Path, config: SFTStageConfig,
              eval_records: Sequence[PrefRecord] = (), inference: InferenceConfig | None = None,
              save_steps: int = 10) -> PrefTrainResult:
    """Cold-start SFT on (E, r, d) records; resumable (trl checkpoints every ``save_steps``)."""
    from transformers.trainer_utils import IntervalStrategy

    from training.prm_trainer import sft_trainer

    if not records:
        raise CdraError("no training records for the preference SFT")
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "run_config.json", {"sft": config.to_dict(), "records": len(records),
                                                 "adapter_init": str(start.adapter or ""), "kind": "sft"})
    trainer = sft_trainer(sft_examples(records, inference), start, work, config,
                          sft_examples(eval_records, inference) if eval_records else ())
    trainer.args.save_strategy = IntervalStrategy.STEPS  # sft_trainer saves nothing; here a resume needs them
    trainer.args.save_steps = max(1, save_steps)
    trainer.args.save_only_model = False
    resume = _last_checkpoint(work / "checkpoints")
    metrics: dict = {"train_records": len(records), "eval_records": len(eval_records), "resumed_from": resume}
    if eval_records and resume is None:
        metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    metrics.update(train_loss=float(output.training_loss), steps=int(output.global_step),
                   runtime_s=time.perf_counter() - started)
    if eval_records:
        metrics["eval_loss_after"] = float(trainer.evaluate()["eval_loss"])
    trainer.save_model(str(work / "adapter"))  # the main process writes
    return _finish(trainer, work, out_dir, metrics)


# -- GRPO -------------------------------------------------------------------------------------------------
@dataclass
class PrefGRPOConfig:
    """GRPO for the inferrer (paper: G=4 rollouts per prompt, no KL).

    Rollouts: ``num_generations`` (G), ``temperature``/``top_p``/``top_k`` (the paper's T=0.9, p=0.95, k=10),
    ``max_completion_length``, ``prompts_per_step``. Update: ``max_steps``, ``learning_rate``, ``beta`` (0: no
    KL, no reference model), ``epsilon`` (clip), ``loss_type`` ("grpo": 1/(|r|+|d|) per sequence, Eq. 9),
    ``scale_rewards`` ("group": Eq. 11). Reward: ``reward`` ("agreement" with the gold, "agreement-soft", or
    "jud"). Resuming: ``save_steps``. GPU: ``use_vllm``, ``vllm_mode``, ``vllm_gpu_memory_utilization``.
    """

    num_generations: int = 4
    temperature: float = 0.9
    top_p: float = 0.95
    top_k: int = 10
    max_completion_length: int = 192
    prompts_per_step: int = 1
    max_steps: int = 20
    learning_rate: float = 1e-5
    beta: float = 0.0
    epsilon: float = 0.2
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    gradient_accumulation_steps: int = 1
    reward: str = "agreement"
    save_steps: int = 5
    seed: int = 0
    logging_steps: int = 1
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3

    def __post_init__(self) -> None:
        if self.reward not in ("agreement", "agreement-soft", "jud"):
            raise CdraError(f"--reward must be agreement, agreement-soft or jud, not {self.reward!r}")
        if self.num_generations < 2:
            raise CdraError("GRPO needs at least 2 generations per prompt (-G)")

    def to_dict(self) -> dict:
        return asdict(self)

    def grpo_config(self, output_dir: Path):
        import torch
        from trl import GRPOConfig

        return GRPOConfig(
            output_dir=str(output_dir), max_steps=self.max_steps, learning_rate=self.learning_rate,
            per_device_train_batch_size=self.prompts_per_step * self.num_generations,
            gradient_accumulation_steps=self.gradient_accumulation_steps, num_generations=self.num_generations,
            max_completion_length=self.max_completion_length, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, beta=self.beta, epsilon=self.epsilon, loss_type=self.loss_type,
            scale_rewards=self.scale_rewards, seed=self.seed, save_strategy="steps", save_steps=self.save_steps,
            save_only_model=False, logging_steps=self.logging_steps, report_to="none",
            use_cpu=not torch.cuda.is_available(), bf16=bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
            use_vllm=self.use_vllm, vllm_mode=self.vllm_mode,
            vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization, dataloader_num_workers=0)


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": …}]
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def agreement_reward(fmt: OutputFormat, scorer: GoldScorer, soft: bool = False, log: list | None = None) -> Callable:
    """trl reward function: R_format (strict reading of the unconstrained rollout) x agreement with the gold."""

    def reward_agreement(prompts, completions, golds, **_) -> list[float]:
        out = []
        for completion, gold in zip(completions, golds):
            parsed = read_inference(fmt, _completion_text(completion), lenient=False)
            lines = [StatementLine(g["stance"], g["dimension"], g["subject"], g["confidence"]) for g in json.loads(gold)]
            result = scorer.agreement([(s.stance, s.subject) for s in parsed.statements], lines)
            value = (r_agree_soft if soft else r_agree)(result, parsed.r_format)
            out.append(value)
            if log is not None:
                log.append({"r_format": parsed.r_format, "reward": value, "recovered": result.any_recovered})
        return out

    reward_agreement.__name__ = "agreement_soft" if soft else "agreement"
    return reward_agreement


def judge_reward(fmt: OutputFormat, judge, seed: int = 0, log: list | None = None) -> Callable:
    """trl reward function: Eq. 6 (the judge picks y_w given d; A/B order randomised) x R_format; rows without a
    comparison get None (trl leaves them out of that reward)."""
    rng = random.Random(seed)

    def reward_jud(prompts, completions, comparison, **_) -> list[float | None]:
        out: list[float | None] = []
        for completion, raw in zip(completions, comparison):
            if not raw:
                out.append(None)
                continue
            pair = json.loads(raw)
            parsed = read_inference(fmt, _completion_text(completion), lenient=False)
            text = "\n".join(f"- {s.text}" for s in parsed.statements)
            value = jud_reward(judge, pair["post"], text, pair["chosen"], pair["rejected"], parsed.r_format, rng)
            out.append(value)
            if log is not None:
                log.append({"r_format": parsed.r_format, "reward": value})
        return out

    return reward_jud


def grpo_dataset(records: Sequence[PrefRecord], inference: InferenceConfig | None = None):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": prompt_for(r, inference), "rid": r.id,
                               "golds": json.dumps([g.model_dump() for g in r.gold_statements]),
                               "comparison": r.comparison.model_dump_json() if r.comparison else ""} for r in records])


def train_grpo(records: Sequence[PrefRecord], start: TrainingStart, out_dir: Path, config: PrefGRPOConfig,
               reward_funcs: Sequence[Callable], sft_lora: SFTStageConfig | None = None,
               inference: InferenceConfig | None = None, log: list | None = None) -> PrefTrainResult:
    """GRPO (trl GRPOTrainer) from ``start`` (its adapter is trained further; else a fresh LoRA)."""
    from trl import GRPOTrainer

    from training.cdpa_trainer import save_artifact
    from training.prm_trainer import _load_model

    if not records:
        raise CdraError("no prompts for the preference GRPO")
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "run_config.json", {"grpo": config.to_dict(), "records": len(records),
                                                 "adapter_init": str(start.adapter or ""), "kind": "grpo"})
    lora = sft_lora or SFTStageConfig()
    model, tokenizer = _load_model(start, lora)
    tokenizer.padding_side = "left"
    peft_config = None
    if start.adapter is None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=config.grpo_config(work / "checkpoints"),
                          train_dataset=grpo_dataset(records, inference), processing_class=tokenizer,
                          peft_config=peft_config)
    resume = _last_checkpoint(work / "checkpoints")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    if trainer.accelerator.is_main_process:
        save_artifact(trainer, work / "adapter")
    rewards = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    metrics = {"steps": int(output.global_step), "train_loss": float(output.training_loss),
               "runtime_s": time.perf_counter() - started, "prompts": len(records), "resumed_from": resume,
               "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
               "reward_history": rewards, "rollouts": len(log) if log is not None else None,
               "rollout_r_format": (sum(r["r_format"] for r in log) / len(log)) if log else None}
    return _finish(trainer, work, out_dir, metrics)


# -- validation and promotion -----------------------------------------------------------------------------
def validate(spec: ModelSpec, models_dir: Path, records: Sequence[PrefRecord], scorer: GoldScorer,
             inference: InferenceConfig | None = None, max_new_tokens: int = 256) -> dict:
    """Mean R_agree, recovery, junk and R_format of greedy outputs on held-out records (the promotion score)."""
    from training.pref_eval import infer_batch

    engine = build_engine(spec, models_dir)
    outputs = infer_batch(engine, [(r.parsed_signals(), r.previous_description()) for r in records], inference,
                          max_new_tokens=max_new_tokens)
    rewards, recovered, junk, stored, formats = [], [], 0, 0, []
    for record, (_, parsed) in zip(records, outputs):
        result = scorer.agreement([(s.stance, s.subject) for s in parsed.statements], record.golds_lines())
        rewards.append(r_agree(result, parsed.r_format))
        recovered.append(result.recall)
        junk += result.junk
        stored += len(result.states)
        formats.append(parsed.r_format)
    n = max(1, len(records))
    return {"score": sum(rewards) / n, "recovery": sum(recovered) / n, "junk_rate": junk / stored if stored else None,
            "r_format": sum(formats) / n, "records": len(records), "constrained": spec.constrained,
            "sample": outputs[0][0][:300] if outputs else ""}


def decide(candidate: dict, serving: dict, mode: str = "if-better", min_improvement: float = 0.0) -> tuple[bool, str]:
    """Promote only a candidate whose validation score beats serving's (``always`` overrides; ``never``)."""
    if mode == "never":
        return False, "--promote never"
    if mode == "always":
        return True, "--promote always"
    c, s = candidate.get("score"), serving.get("score")
    if c is None or (isinstance(c, float) and math.isnan(c)):
        return False, "the candidate could not be scored"
    if c > s + min_improvement:
        return True, f"candidate {c:.4f} > serving {s:.4f} + {min_improvement:g} on {candidate['records']} held-out records"
    return False, f"candidate {c:.4f} does not beat serving {s:.4f} + {min_improvement:g}: not promoted"


def publish(registry: ModelRegistry, result: PrefTrainResult, start: TrainingStart, kind: str, metrics: dict,
            data: dict, config: dict):
    return registry.publish(ROLE, result.adapter_dir, is_adapter=True, base=start.base,
                            parent=None if start.parent == "packaged" else start.parent,
                            metrics={kind: result.metrics, **metrics}, data=data,
                            config={kind: config, "started_from": str(start.adapter or start.base)})
