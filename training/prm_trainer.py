"""Pers-GenPRM training (CDRA Eq. 2): SFT on D_Rea with loss on the critique and score tokens only.

Also home of the prompt/completion SFT stage both Pers-GenPRM and RFT run (``run_sft``: trl's
SFTTrainer, LoRA by default, written atomically) and of the held-out agreement measurement
(``evaluate_prm``: Spearman between the PRM's step scores and the evaluator's).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignment.critique import SCORE_MAX, SCORE_MIN, format_step_judgment
from alignment.engines.base import Engine
from alignment.errors import CdraError, FormatError
from alignment.prm import PersGenPRM, PRMConfig, segment_texts, step_conversations
from training.registry import TrainingStart

log = logging.getLogger(__name__)

REA_FIELDS = ("preference", "query", "steps", "answer", "critiques", "scores")


# -- data ---------------------------------------------------------------------------------------------
def read_records(path: Path, required: Sequence[str] = ()) -> list[dict]:
    """JSONL records (or a `datasets` directory saved with save_to_disk); a bad line names file:line."""
    path = Path(path)
    if not path.exists():
        raise CdraError(f"{path} does not exist")
    if path.is_dir():
        from datasets import load_from_disk

        rows = [dict(r) for r in load_from_disk(str(path))]
        for n, row in enumerate(rows, 1):
            _require(row, required, f"{path}:{n}")
        return rows
    from alignment.records import jsonl_objects  # bad bytes, nesting, numbers: FormatError file:line

    rows = []
    for where, row in jsonl_objects(path):
        _require(row, required, where)
        rows.append(row)
    return rows


def _require(row: dict, required: Sequence[str], where: str) -> None:
    missing = [k for k in required if k not in row]
    if missing:
        raise FormatError(f"{where}: missing required key(s) {', '.join(missing)}")


def read_rea(path: Path) -> list[dict]:
    """D_Rea records, checked: one critique and one score in [-1, 1] per segment (steps, then answer)."""
    rows = read_records(path, REA_FIELDS)
    for n, row in enumerate(rows, 1):
        segments = len(row["steps"]) + 1
        if len(row["critiques"]) != segments or len(row["scores"]) != segments:
            raise FormatError(f"{path}:{n}: {segments} segments (steps + answer) but "
                              f"{len(row['critiques'])} critiques and {len(row['scores'])} scores")
        for s in row["scores"]:
            if not isinstance(s, (int, float)) or not SCORE_MIN <= s <= SCORE_MAX:
                raise FormatError(f"{path}:{n}: score {s!r} is not a number in [{SCORE_MIN}, {SCORE_MAX}]")
        for c in row["critiques"]:  # the training target is the step-judgment format: a critique is never blank
            if not isinstance(c, str) or not c.strip():
                raise FormatError(f"{path}:{n}: critique {c!r} is not a non-empty string")
    return rows


def split_records(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(train, validation) by the records' ``split`` field; records without one train."""
    val = [r for r in rows if r.get("split") == "validation"]
    return [r for r in rows if r.get("split") != "validation"], val


def prm_examples(records: Iterable[dict]) -> list[dict]:
    """One prompt/completion pair per segment: prompt (P, q, τ^{<j}, s^j), completion c^j then r^j.

    Prompt/completion form makes trl's SFTTrainer put the loss on the completion only, which is
    exactly Eq. 2's log P(c^j | ...) + log P(r^j | c^j, ...).
    """
    out = []
    for r in records:
        segments = segment_texts(r["steps"], r["answer"])
        for conv, critique, score in zip(step_conversations(r["preference"], r["query"], segments),
                                         r["critiques"], r["scores"]):
            out.append({"prompt": list(conv),
                        "completion": [{"role": "assistant", "content": format_step_judgment(critique, score)}]})
    return out


# -- the SFT stage ------------------------------------------------------------------------------------
@dataclass
class SFTStageConfig:
    """One supervised stage (Pers-GenPRM or RFT) on prompt/completion pairs, loss on completions.

    Parameters that control the adapter: ``lora`` (else a full fine-tune), ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules`` (SmolLM2/Qwen/Llama attention projections).
    Parameters that control optimization: ``learning_rate``, ``max_steps`` (-1: by epochs),
    ``num_train_epochs``, ``batch_size``, ``gradient_accumulation_steps``, ``warmup_steps``, ``seed``.
    Parameters that control sequences and hardware: ``max_length`` (tokens, longer pairs are
    truncated), ``bf16`` (None: on when the GPU supports it), ``gradient_checkpointing``.
    """

    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    max_steps: int = -1
    num_train_epochs: float = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_steps: float = 0.0  # an int: steps; a float in [0, 1): share of all steps
    seed: int = 0
    max_length: int = 1024
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = 5

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass
class SFTResult:
    output_dir: Path  # the stage's directory: adapter/ or model/ inside
    artifact: str  # "adapter" or "model" (relative to output_dir)
    is_adapter: bool
    metrics: dict = field(default_factory=dict)

    @property
    def artifact_dir(self) -> Path:
        return self.output_dir / self.artifact


def _use_bf16(flag: bool | None) -> bool:
    import torch

    if flag is not None:
        return flag
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _load_model(start: TrainingStart, config: SFTStageConfig):
    """The model to train: the base, plus the adapter to continue (LoRA) or merge (full fine-tune)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if _use_bf16(config.bf16) else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(start.model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(start.model_dir), dtype=dtype)
    if start.adapter is not None:
        from peft import PeftModel

        if not (Path(start.adapter) / "adapter_config.json").is_file():
            raise CdraError(f"cannot continue training: no PEFT adapter at {start.adapter}")
        model = PeftModel.from_pretrained(model, str(start.adapter), is_trainable=config.lora)
        if not config.lora:
            model = model.merge_and_unload()
    return model, tokenizer


def sft_trainer(examples: Sequence[dict], start: TrainingStart, work_dir: Path, config: SFTStageConfig,
                eval_examples: Sequence[dict] = ()):
    """trl's SFTTrainer on prompt/completion pairs with the loss on completion tokens only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise CdraError("no training examples: the data file has no usable records")
    model, tokenizer = _load_model(start, config)
    peft_config = None
    if config.lora and start.adapter is None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(Path(work_dir) / "checkpoints"),
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        max_length=config.max_length,
        completion_only_loss=True,
        bf16=_use_bf16(config.bf16),
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=not _cuda(),
        dataloader_num_workers=0,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(examples)),
        eval_dataset=Dataset.from_list(list(eval_examples)) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def run_sft(examples: Sequence[dict], start: TrainingStart, out_dir: Path, config: SFTStageConfig,
            eval_examples: Sequence[dict] = ()) -> SFTResult:
    """Train (``sft_trainer``) and write the adapter or full model into ``out_dir``.

    Everything is written into a temporary sibling first and renamed into place, so ``out_dir``
    either holds a finished artifact or does not exist (what makes retrain stages resumable).
    """
    if not examples:
        raise CdraError("no training examples: the data file has no usable records")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        trainer = sft_trainer(examples, start, tmp, config, eval_examples)
        metrics: dict = {"train_examples": len(examples), "eval_examples": len(eval_examples)}
        if eval_examples:
            metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
        train = trainer.train()
        metrics.update(train_loss=float(train.training_loss), steps=int(train.global_step),
                       runtime_s=float(train.metrics.get("train_runtime", 0.0)))
        if eval_examples:
            metrics["eval_loss_after"] = float(trainer.evaluate()["eval_loss"])
        is_adapter = config.lora
        artifact = "adapter" if is_adapter else "model"
        trainer.save_model(str(tmp / artifact))  # writes on the main process only (multi-GPU runs)
        accelerator = trainer.accelerator
        if accelerator.is_main_process:
            if not is_adapter:
                trainer.processing_class.save_pretrained(str(tmp / artifact))
            shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        del trainer
        accelerator.wait_for_everyone()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return SFTResult(out_dir, artifact, is_adapter, metrics)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_prm(rea_path: Path, start: TrainingStart, out_dir: Path, config: SFTStageConfig | None = None,
              validation: bool = True) -> SFTResult:
    """Pers-GenPRM SFT on a D_Rea file; ``split=validation`` records give the held-out eval loss."""
    records = read_rea(rea_path)
    train, val = split_records(records)
    if not train:
        raise CdraError(f"{rea_path}: no training records (all are split=validation)")
    return run_sft(prm_examples(train), start, out_dir, config or SFTStageConfig(),
                   prm_examples(val) if validation else ())


# -- held-out agreement --------------------------------------------------------------------------------
@dataclass
class PRMAgreement:
    """How well a PRM's step scores agree with the evaluator's on held-out paths."""

    segments: int
    parse_rate: float  # share of greedy judgments in the step-judgment format (1.0 on a constrained engine)
    spearman: float  # of the read-out score (model's score distribution's mean) vs the evaluator's
    spearman_parsed: float  # on the parsed subset only (nan when fewer than 3)
    mae: float  # mean absolute error of the read-out score
    unparseable: int = 0  # greedy judgments not in the format (only an unconstrained engine writes those)
    repaired: int = 0  # judgments only the lenient reader accepted (unconstrained engines)

    def row(self) -> dict:
        return asdict(self)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho; nan when undefined (fewer than 3 points or a constant side)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def evaluate_prm(engine: Engine, records: Sequence[dict], max_new_tokens: int = 96) -> PRMAgreement:
    """Score held-out D_Rea paths with the PRM on ``engine`` and compare with the records' scores.

    ``max_new_tokens`` bounds each critique (the step-judgment format's ``critique_tokens``)."""
    if not records:
        raise CdraError("no held-out records to evaluate the PRM on (need split=validation records)")
    prm = PersGenPRM(engine, PRMConfig(critique_tokens=max_new_tokens, max_retries=0, fallback="none"))
    items = [(r["preference"], r["query"], segment_texts(r["steps"], r["answer"])) for r in records]
    parsed, readout = prm.readout_scores(items)
    gold = [float(s) for r in records for s in r["scores"]]
    pred = [s for row in readout for s in row]
    parsed_flat = [s for resp in parsed.responses for s in resp.scores]
    pairs = [(p, g) for p, g in zip(parsed_flat, gold) if p is not None]
    return PRMAgreement(
        segments=len(gold),
        parse_rate=len(pairs) / len(gold),
        spearman=spearman(pred, gold),
        spearman_parsed=spearman([p for p, _ in pairs], [g for _, g in pairs]),
        mae=sum(abs(p - g) for p, g in zip(pred, gold)) / len(gold),
        unparseable=parsed.failures,
        repaired=parsed.repaired,
    )
