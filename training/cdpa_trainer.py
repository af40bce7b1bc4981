"""CDPA (CDRA §2.4): trl's GRPOTrainer with Pers-GenPRM step scores turned into per-token advantages.

``CDPATrainer`` subclasses trl's ``GRPOTrainer``: rollouts, the clipped loss and β·KL are trl's; this
module adds one batched PRM call per generation batch and replaces trl's (B,) advantages with the
(B, T) ones of ``alignment.cdpa`` (``cdpa``, or the ``grpo-outcome`` / ``grpo-process`` baselines).
``train_policy`` is the stage retrain calls: (P, q) records in, the best adapter by validation reward out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from alignment.cdpa import (
    METHODS,
    Method,
    Outcome,
    completion_segments,
    compute_advantages,
    step_scores_tensor,
)
from alignment.errors import CdraError
from alignment.prm import PRMScores
from training.registry import write_json_atomic

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("preference", "query")


# -- configuration ------------------------------------------------------------------------------------
@dataclass
class CDPAConfig:
    """One CDPA (or baseline GRPO) run. Defaults follow the paper where it says (G=5, temperature 1.0,
    at most 400 steps, best checkpoint by validation reward).

    Parameters that choose the method: ``method`` ("cdpa": Eq. 3 per-token advantages; "grpo-outcome":
    one score per response, ``outcome`` = mean of its step scores or their sum R_dense; "grpo-process":
    Appendix D's sums of group-normalized future step rewards), ``eps`` (ε of Eq. 3).
    Parameters that control rollouts: ``num_generations`` (G), ``temperature``, ``top_p``,
    ``max_completion_length`` (tokens per response), ``prompts_per_step`` (prompts per device per step).
    Parameters that control the update: ``max_steps``, ``learning_rate``, ``beta`` (KL to the reference:
    the initial policy), ``epsilon`` (PPO clip), ``loss_type`` ("dr_grpo": Σ_i Σ_t over a constant, the
    paper's (1/G) Σ_i Σ_t up to scale; any trl loss type works), ``num_iterations``,
    ``gradient_accumulation_steps``, ``seed``, ``bf16`` (None: on when the GPU supports it),
    ``gradient_checkpointing``.
    Parameters that control the adapter: ``lora`` (else full fine-tuning), ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules`` (an ``adapter_init`` keeps its own).
    Parameters that control validation: ``eval_every`` (steps), ``val_fraction`` (held out when no record
    has split=validation), ``max_val_prompts``, ``val_temperature`` (0: greedy, comparable across steps),
    ``val_max_new_tokens`` (None: ``max_completion_length``).
    Parameters that control generation on a GPU (trl's own): ``use_vllm``, ``vllm_mode`` ("colocate": vLLM
    shares the training GPU; "server": a ``trl vllm-serve`` process), ``vllm_gpu_memory_utilization``,
    ``vllm_tensor_parallel_size``, ``vllm_server_base_url``, ``vllm_enable_sleep_mode``.
    Parameters that control output: ``save_checkpoints`` (every ``eval_every`` steps, for resuming),
    ``logging_steps``, ``log_completions``.
    """

    method: Method = "cdpa"
    outcome: Outcome = "mean"
    eps: float = 1e-4

    num_generations: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 384
    prompts_per_step: int = 2

    max_steps: int = 400
    learning_rate: float = 2e-5
    beta: float = 0.04
    epsilon: float = 0.2
    loss_type: str = "dr_grpo"
    num_iterations: int = 1
    gradient_accumulation_steps: int = 1
    seed: int = 0
    bf16: bool | None = None
    gradient_checkpointing: bool = False

    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    eval_every: int = 25
    val_fraction: float = 0.1
    max_val_prompts: int = 32
    val_temperature: float = 0.0
    val_max_new_tokens: int | None = None

    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    vllm_server_base_url: str | None = None
    vllm_enable_sleep_mode: bool = False

    save_checkpoints: bool = True
    logging_steps: int = 1
    log_completions: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CdraError(f"unknown CDPA method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.num_generations < 2:
            raise CdraError("num_generations (G) must be at least 2: advantages compare samples of a group")
        if self.max_steps < 1 or self.eval_every < 1 or self.prompts_per_step < 1:
            raise CdraError("max_steps, eval_every and prompts_per_step must be positive")
        self.target_modules = tuple(self.target_modules)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    def grpo_config(self, output_dir: Path) -> GRPOConfig:
        """trl's configuration for this run (what `accelerate launch` distributes over GPUs)."""
        cuda = torch.cuda.is_available()
        return GRPOConfig(
            output_dir=str(output_dir),
            max_steps=self.max_steps,
            learning_rate=self.learning_rate,
            per_device_train_batch_size=self.prompts_per_step * self.num_generations,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            beta=self.beta,
            epsilon=self.epsilon,
            loss_type=self.loss_type,
            num_iterations=self.num_iterations,
            seed=self.seed,
            bf16=_use_bf16(self.bf16),
            gradient_checkpointing=self.gradient_checkpointing,
            use_vllm=self.use_vllm,
            vllm_mode=self.vllm_mode,
            vllm_gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            vllm_tensor_parallel_size=self.vllm_tensor_parallel_size,
            vllm_server_base_url=self.vllm_server_base_url,
            vllm_enable_sleep_mode=self.vllm_enable_sleep_mode,
            save_strategy="steps" if self.save_checkpoints else "no",
            save_steps=self.eval_every,
            save_only_model=False,
            logging_steps=self.logging_steps,
            log_completions=self.log_completions,
            report_to="none",
            use_cpu=not cuda,
            dataloader_num_workers=0,
        )


def _use_bf16(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# -- data ---------------------------------------------------------------------------------------------
def prompt_records(dataset: Any) -> list[dict]:
    """(P, q) records from a JSONL file, a `datasets` directory, a Dataset or a list of dicts.

    D_RFT, D_Rea and scenario files all carry ``preference`` and ``query``; paths of one scenario
    collapse into one prompt (CDPA samples its own responses). ``split`` is kept.
    """
    from training.prm_trainer import read_records

    if isinstance(dataset, (str, os.PathLike)):
        rows = read_records(Path(dataset), PROMPT_FIELDS)
    else:
        rows = [dict(r) for r in dataset]
        for n, row in enumerate(rows, 1):
            missing = [k for k in PROMPT_FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing:
                raise CdraError(f"record {n}: missing or empty {', '.join(missing)}")
    seen: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["preference"].strip(), row["query"].strip())
        if key not in seen:
            seen[key] = {"preference": key[0], "query": key[1], "split": row.get("split") or "train"}
    return list(seen.values())


def split_prompts(records: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): records marked split=validation, else a seeded random ``val_fraction``."""
    import random

    val = [r for r in records if r.get("split") == "validation"]
    train = [r for r in records if r.get("split") != "validation"]
    if val or val_fraction <= 0 or len(train) < 2:
        return train, val
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    k = max(1, round(val_fraction * len(train)))
    held = set(order[:k])
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]


def trainer_dataset(records: Sequence[dict]):
    """trl's prompt dataset: the policy's conversation (the one RFT and the app use) plus P and q."""
    from datasets import Dataset

    from training.rft import policy_prompt

    return Dataset.from_list(
        [{"prompt": list(policy_prompt(r["preference"], r["query"])), "preference": r["preference"],
          "query": r["query"]} for r in records]
    )


# -- the trainer --------------------------------------------------------------------------------------
@dataclass
class _Rollout:
    """What the reward path learned about the local completions, kept for the advantage step."""

    step_scores: list[list[float | None]]
    segment_ids: list[list[int]]


class CDPATrainer(GRPOTrainer):
    """GRPOTrainer whose reward is Pers-GenPRM's step scores and whose advantages are per token.

    The PRM scores all completions of a generation batch in one ``score_batch`` call (inside trl's
    reward path, so trl's reward metrics show the mean step score). Steps the PRM left unscored get
    zero advantage (their tokens are also left out of the group statistics) and are counted in
    ``prm/unscored``; unparseable generations (retries included) are counted in ``prm/unparseable``.
    """

    def __init__(self, *args: Any, prm: Any, method: Method = "cdpa", outcome: Outcome = "mean",
                 eps: float = 1e-4, **kwargs: Any) -> None:
        if method not in METHODS:
            raise CdraError(f"unknown CDPA method {method!r}: use one of {', '.join(METHODS)}")
        self.prm = prm
        self.method: Method = method
        self.outcome: Outcome = outcome
        self.eps = eps
        self._rollout: _Rollout | None = None
        self._mapping_s = 0.0
        self.prm_totals: Counter = Counter()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.last_loss_inputs: dict[str, Any] = {}  # shapes and loss of the latest _compute_loss call
        self.last_rollout: dict[str, Any] = {}  # the latest batch's scores, step map, mask and advantages
        super().__init__(*args, reward_funcs=[self.prm_reward], **kwargs)

    # The reward path: one batched PRM call; returns trl's scalar reward (for its logs).
    def prm_reward(self, prompts, completions, completion_ids, preference, query, **_: Any) -> list[float | None]:
        start = time.perf_counter()
        texts, segments = [], []
        for ids in completion_ids:
            if self.method == "grpo-outcome":  # one score per response: no token -> step map needed
                text, seg = self._tokenizer.decode(ids, skip_special_tokens=True), []
            else:
                text, seg = completion_segments(self._tokenizer, ids)
            texts.append(text)
            segments.append(seg)
        self._mapping_s = time.perf_counter() - start  # counted with the advantages: CDPA's own overhead
        start = time.perf_counter()
        scored: PRMScores = self.prm.score_batch(list(zip(preference, query, texts)))
        scores = [list(r.scores) for r in scored.responses]
        self._rollout = _Rollout(scores, segments)
        self.timings["prm"].append(time.perf_counter() - start)
        mode = "train" if self.model.training else "eval"
        counts = {"segments": scored.segments, "unparseable": scored.failures, "readout": scored.readouts,
                  "unscored": scored.unscored}
        for name, value in counts.items():
            self.prm_totals[name] += value
            self._metrics[mode][f"prm/{name}"].append(float(value))
        means = [_mean(s) for s in scores]
        return means

    def _generate(self, prompts: list):
        start = time.perf_counter()
        out = super()._generate(prompts)
        self.timings["generation"].append(time.perf_counter() - start)
        return out

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        start = time.perf_counter()
        rollout, self._rollout = self._rollout, None
        if rollout is None:
            raise RuntimeError("the PRM reward was not computed for this batch")
        output["advantages"] = self._token_advantages(rollout, output["completion_mask"])
        self.timings["advantages"].append(time.perf_counter() - start + self._mapping_s)
        return output

    def _token_advantages(self, rollout: _Rollout, mask: torch.Tensor) -> torch.Tensor:
        """(B_local, T) advantages; groups may straddle processes, so statistics use the gathered batch."""
        device = mask.device
        b, t = mask.shape
        seg = torch.full((b, t), -1, dtype=torch.long)
        for i, ids in enumerate(rollout.segment_ids):
            seg[i, : min(t, len(ids))] = torch.tensor(ids[:t], dtype=torch.long)
        width = max([len(s) for s in rollout.step_scores] + [1])
        scores = step_scores_tensor(rollout.step_scores, width).to(device)
        num_steps = torch.tensor([len(s) for s in rollout.step_scores], device=device)
        seg = seg.to(device)
        acc = self.accelerator
        if acc.num_processes > 1:
            g_scores = acc.gather(acc.pad_across_processes(scores, dim=1, pad_index=math.nan))
            g_seg = acc.gather(acc.pad_across_processes(seg, dim=1, pad_index=-1))
            g_mask = acc.gather(acc.pad_across_processes(mask, dim=1, pad_index=0))
            g_steps = acc.gather(num_steps)
        else:
            g_scores, g_seg, g_mask, g_steps = scores, seg, mask, num_steps
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        adv = compute_advantages(self.method, g_scores, g_seg, g_mask, group, self.eps, self.outcome, g_steps)
        rows = slice(acc.process_index * b, (acc.process_index + 1) * b)
        adv = adv[rows, :t].contiguous()
        self.last_rollout = {"step_scores": scores.cpu(), "segment_ids": seg.cpu(), "mask": mask.cpu(),
                             "advantages": adv.detach().cpu(), "group_size": group}
        active = mask.bool()
        if active.any():
            self._metrics[mode]["cdpa/advantage_abs_mean"].append(adv[active].abs().mean().item())
        return adv

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        self.last_loss_inputs = {
            "advantages_shape": tuple(inputs["advantages"].shape),
            "completion_ids_shape": tuple(inputs["completion_ids"].shape),
            "loss": float(loss.detach()),
        }
        return loss

    # -- validation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_reward(self, records: Sequence[dict], max_new_tokens: int, temperature: float = 0.0) -> dict:
        """Mean PRM reward (mean step score per response) of the current policy on held-out (P, q)."""
        from training.rft import policy_prompt

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        tok = self._tokenizer
        texts: list[str] = []
        try:
            for start in range(0, len(records), 8):
                chunk = records[start : start + 8]
                convs = [list(policy_prompt(r["preference"], r["query"])) for r in chunk]
                ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
                       for c in convs]
                ids = [list(i["input_ids"] if hasattr(i, "keys") else i) for i in ids]
                width = max(len(i) for i in ids)
                pad = tok.pad_token_id
                device = next(model.parameters()).device
                input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
                attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
                if temperature > 0:
                    sample = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                else:
                    sample = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad, eos_token_id=self.eos_token_ids, **sample)
                for row in out[:, width:].tolist():
                    texts.append(tok.decode(_until_eos(row, self.eos_token_ids, pad), skip_special_tokens=True))
        finally:
            if was_training:
                model.train()
        scored = self.prm.score_batch([(r["preference"], r["query"], t) for r, t in zip(records, texts)])
        means = [m for m in (_mean(r.scores) for r in scored.responses) if m is not None]
        return {"reward": sum(means) / len(means) if means else math.nan, "responses": len(texts),
                "scored": len(means), "unparseable": scored.failures, "unscored": scored.unscored,
                "sample": texts[0] if texts else ""}


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def _until_eos(row: list[int], eos: Sequence[int], pad: int | None) -> list[int]:
    out = []
    for tok in row:
        if tok in eos:
            break
        if tok != pad:
            out.append(tok)
    return out


# -- validation and best checkpoint -------------------------------------------------------------------
class BestByValidation(TrainerCallback):
    """Evaluates the mean PRM reward on the validation prompts every ``eval_every`` steps (and before
    training) and keeps the best artifact in ``best_dir``; its history survives a resume."""

    def __init__(self, trainer: CDPATrainer, config: CDPAConfig, val_records: Sequence[dict], work_dir: Path):
        self.trainer = trainer
        self.config = config
        self.val = list(val_records)[: config.max_val_prompts]
        self.best_dir = work_dir / "best"
        self.state_file = work_dir / "validation.json"
        saved = json.loads(self.state_file.read_text(encoding="utf-8")) if self.state_file.is_file() else {}
        self.history: list[dict] = saved.get("history", [])
        self.best: dict | None = saved.get("best")

    def _evaluate(self, step: int) -> None:
        if not self.val or any(h["step"] == step for h in self.history):
            return
        cfg = self.config
        result = self.trainer.validation_reward(self.val, cfg.val_max_new_tokens or cfg.max_completion_length,
                                                cfg.val_temperature)
        entry = {"step": step, **{k: v for k, v in result.items() if k != "sample"}, "sample": result["sample"][:400]}
        self.history.append(entry)
        improved = not math.isnan(result["reward"]) and (self.best is None or result["reward"] > self.best["reward"])
        if improved:
            self.best = {"step": step, "reward": result["reward"]}
            if self.trainer.accelerator.is_main_process:
                save_artifact(self.trainer, self.best_dir)
        if self.trainer.accelerator.is_main_process:
            write_json_atomic(self.state_file, {"history": self.history, "best": self.best})
        log.info("CDPA validation at step %d: mean PRM reward %.4f%s", step, result["reward"],
                 " (best)" if improved else "")

    def on_train_begin(self, args, state, control, **kwargs):
        self._evaluate(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.config.eval_every == 0 or state.global_step >= state.max_steps:
            self._evaluate(state.global_step)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation, PRM, advantages and update together)."""

    def __init__(self, trainer: CDPATrainer) -> None:
        self.trainer = trainer
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.timings["step"].append(time.perf_counter() - self._start)


def save_artifact(trainer: CDPATrainer, target: Path) -> None:
    """Write the policy (only the trained adapter, or the full model + tokenizer) atomically to ``target``."""
    from accelerate.utils import is_peft_model

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model):
        model.save_pretrained(str(tmp), selected_adapters=["default"])
    else:
        model.save_pretrained(str(tmp))
        trainer._tokenizer.save_pretrained(str(tmp))
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# -- building and running -----------------------------------------------------------------------------
def load_policy(policy_model_dir: Path, adapter_init: Path | None, config: CDPAConfig,
                scratch_dir: Path | None = None):
    """The model to train and its tokenizer: the base plus the adapter to continue (LoRA) or merge (full).

    A full fine-tune from an adapter saves the merged model into ``scratch_dir/init_model`` and trains
    that: trl builds the KL reference from the model's own directory, which must be the RFT policy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy_model_dir = Path(policy_model_dir)
    if not (policy_model_dir / "config.json").is_file():
        raise CdraError(f"no policy model at {policy_model_dir} (config.json missing)")
    dtype = torch.bfloat16 if _use_bf16(config.bf16) else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(policy_model_dir), padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(policy_model_dir), dtype=dtype)
    if adapter_init is not None:
        from peft import PeftModel

        if not (Path(adapter_init) / "adapter_config.json").is_file():
            raise CdraError(f"cannot start CDPA from {adapter_init}: no PEFT adapter there (adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter_init), is_trainable=config.lora)
        if not config.lora:
            if scratch_dir is None:
                raise CdraError("a full fine-tune from an adapter needs a scratch directory for the merged model")
            merged = Path(scratch_dir) / "init_model"
            model.merge_and_unload().save_pretrained(str(merged))
            tokenizer.save_pretrained(str(merged))
            model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=dtype)
    return model, tokenizer


def build_trainer(config: CDPAConfig, train_records: Sequence[dict], prm: Any, policy_model_dir: Path,
                  output_dir: Path, adapter_init: Path | None = None,
                  callbacks: Sequence[TrainerCallback] = ()) -> CDPATrainer:
    """A ready CDPATrainer on the (P, q) prompts; trl checkpoints go to ``output_dir``."""
    if not train_records:
        raise CdraError("no training prompts: the data has no usable (preference, query) records")
    model, tokenizer = load_policy(policy_model_dir, adapter_init, config, Path(output_dir).parent)
    peft_config = None
    if config.lora and adapter_init is None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    trainer = CDPATrainer(
        model=model,
        args=config.grpo_config(output_dir),
        train_dataset=trainer_dataset(train_records),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
        prm=prm,
        method=config.method,
        outcome=config.outcome,
        eps=config.eps,
    )
    trainer.add_callback(StepTimer(trainer))
    return trainer


@dataclass
class TrainResult:
    """What a CDPA run left in ``output_dir``: the best artifact (``adapter/`` or ``model/``) and metrics."""

    output_dir: Path
    artifact: str  # "adapter" or "model", relative to output_dir
    is_adapter: bool
    method: str
    metrics: dict = field(default_factory=dict)  # val_reward_before, best_val_reward, best_step, prm counts...
    history: list[dict] = field(default_factory=list)  # one entry per validation

    @property
    def artifact_dir(self) -> Path:
        return self.output_dir / self.artifact

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


def _last_checkpoint(checkpoints: Path) -> str | None:
    if not checkpoints.is_dir():
        return None
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None


def train_policy(config: CDPAConfig, dataset: Any, prm: Any, policy_model_dir: Path,
                 adapter_init: Path | None = None, out_dir: Path | None = None, *,
                 val_dataset: Any = None) -> TrainResult:
    """Run CDPA (or a GRPO baseline, ``config.method``) from the policy at ``policy_model_dir`` (+ the RFT
    adapter ``adapter_init``) on the (P, q) prompts of ``dataset``, scoring rollouts with ``prm``
    (an ``alignment.prm.PersGenPRM``). Writes the best artifact by validation reward into ``out_dir``.

    Work happens in ``<out_dir>.work`` beside it (trl checkpoints, validation history, the best artifact
    so far); calling again after a crash resumes from there. ``out_dir`` appears only when finished.
    """
    if out_dir is None:
        raise CdraError("train_policy needs out_dir: where the trained policy goes")
    out_dir = Path(out_dir)
    records = prompt_records(dataset)
    if val_dataset is not None:
        train = [r for r in records if r["split"] != "validation"] or records
        val = prompt_records(val_dataset)
    else:
        train, val = split_prompts(records, config.val_fraction, config.seed)
    work = out_dir.with_name(f".{out_dir.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "run_config.json", {"config": config.to_dict(), "train_prompts": len(train),
                                             "val_prompts": len(val), "adapter_init": str(adapter_init or "")})
    trainer = build_trainer(config, train, prm, policy_model_dir, work / "checkpoints", adapter_init)
    best = BestByValidation(trainer, config, val, work)
    trainer.add_callback(best)
    resume = _last_checkpoint(work / "checkpoints")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    runtime = time.perf_counter() - started
    is_adapter = config.lora
    artifact = "adapter" if is_adapter else "model"
    if trainer.accelerator.is_main_process:
        if best.best is None:  # no validation prompts: keep the last policy
            save_artifact(trainer, work / "best")
        os.replace(work / "best", work / artifact)
    metrics = _run_metrics(trainer, best, output, runtime, len(train), len(val), resume)
    result = TrainResult(out_dir, artifact, is_adapter, config.method, metrics, best.history)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        shutil.rmtree(work / "init_model", ignore_errors=True)
        write_json_atomic(work / "result.json", result.to_dict())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    trainer.accelerator.wait_for_everyone()
    return result


def _run_metrics(trainer: CDPATrainer, best: BestByValidation, output, runtime: float, n_train: int,
                 n_val: int, resumed: str | None) -> dict:
    history = best.history
    steps = trainer.timings.get("step", [])
    return {
        "steps": int(output.global_step),
        "train_loss": float(output.training_loss),
        "runtime_s": runtime,
        "train_prompts": n_train,
        "val_prompts": n_val,
        "val_reward_before": history[0]["reward"] if history else None,
        "best_val_reward": best.best["reward"] if best.best else None,
        "best_step": best.best["step"] if best.best else int(output.global_step),
        "final_val_reward": history[-1]["reward"] if history else None,
        "prm": dict(trainer.prm_totals),
        "mean_step_s": sum(steps) / len(steps) if steps else None,
        "resumed_from": resumed,
    }
