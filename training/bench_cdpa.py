"""`cdra bench cdpa`: one CDPA step split into generation, PRM scoring, advantages and update, beside
outcome-reward GRPO on the same prompts (ratio per part); and `cdra bench cdpa-reward`: a short real
CDPA run that reports the policy's mean PRM reward on held-out prompts before and after.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.cdpa_trainer import CDPAConfig, TrainResult, build_trainer, train_policy

#: (P, q) pairs for timing when no data file is given; one is enough per step, a few vary the lengths.
DEFAULT_PROMPTS: tuple[dict, ...] = (
    {"preference": "Allergic to cats and dogs; wants calm outdoor time; dislikes crowds.",
     "query": "Recommend some outdoor experiences for this weekend."},
    {"preference": "Risk-averse; saving for a house in two years; no debt.",
     "query": "Where should I put my savings?"},
    {"preference": "Introverted; values deep focus; dislikes networking events.",
     "query": "How can I get promoted faster?"},
)
PARTS = ("generation", "prm", "advantages", "update", "step")


@dataclass
class StepSplit:
    """Median seconds per optimizer step of one method, after ``warmup`` untimed steps."""

    method: str
    steps: int
    generation: float
    prm: float
    advantages: float  # CDPA's own work: generated tokens -> steps, then the advantage math
    update: float  # the step minus the other parts: old/ref log-probs, loss, backward, optimizer
    step: float
    segments: int  # PRM-scored segments over the timed steps


def bench_step_split(policy_model_dir: Path, prm: Any, work_dir: Path, config: CDPAConfig,
                     methods: Sequence[str] = ("cdpa", "grpo-outcome"), steps: int = 2, warmup: int = 1,
                     prompts: Sequence[dict] = DEFAULT_PROMPTS, adapter_init: Path | None = None) -> list[StepSplit]:
    """Train each method for ``warmup + steps`` real steps from the same start and seed; time the parts."""
    rows = []
    for method in methods:
        cfg = replace(config, method=method, max_steps=warmup + steps, save_checkpoints=False)
        trainer = build_trainer(cfg, list(prompts), prm, policy_model_dir, Path(work_dir) / method / "ck",
                                adapter_init)
        before = dict(trainer.prm_totals)
        trainer.train()
        t = trainer.timings
        parts = {name: t[name][warmup:] for name in ("generation", "prm", "advantages", "step")}
        update = [s - g - p - a for s, g, p, a in zip(parts["step"], parts["generation"], parts["prm"],
                                                        parts["advantages"])]
        rows.append(StepSplit(
            method=method,
            steps=len(parts["step"]),
            generation=statistics.median(parts["generation"]),
            prm=statistics.median(parts["prm"]),
            advantages=statistics.median(parts["advantages"]),
            update=statistics.median(update),
            step=statistics.median(parts["step"]),
            segments=trainer.prm_totals["segments"] - before.get("segments", 0),
        ))
        del trainer
    return rows


def format_step_table(rows: Sequence[StepSplit]) -> str:
    """Seconds per step by part, one column per method, and each method's ratio to the first baseline."""
    base = next((r for r in rows if r.method == "grpo-outcome"), rows[-1])
    others = [r for r in rows if r is not base]
    head = ["part"] + [r.method for r in rows] + [f"{r.method} / {base.method}" for r in others]
    lines = [head]
    for part in PARTS:
        cells = [part] + [_seconds(getattr(r, part)) for r in rows]
        cells += [_ratio(getattr(r, part), getattr(base, part)) for r in others]
        lines.append(cells)
    lines.append(["share of step in PRM"] + [f"{r.prm / r.step:.0%}" for r in rows] + [""] * len(others))
    lines.append(["PRM segments (timed)"] + [str(r.segments) for r in rows] + [""] * len(others))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def _seconds(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def reward_run(config: CDPAConfig, train_records: Sequence[dict], val_records: Sequence[dict], prm: Any,
               policy_model_dir: Path, out_dir: Path, adapter_init: Path | None = None) -> TrainResult:
    """A short real CDPA run; the result's history holds the validation reward at every evaluation."""
    return train_policy(config, list(train_records), prm, policy_model_dir, adapter_init, out_dir,
                        val_dataset=list(val_records))


def format_reward_table(result: TrainResult) -> str:
    lines = ["step  mean PRM reward (held-out)  scored/responses  unparseable"]
    for h in result.history:
        lines.append(f"{h['step']:>4}  {h['reward']:>26.4f}  {h['scored']:>7}/{h['responses']:<8}  {h['unparseable']:>11}")
    m = result.metrics
    before, best, final = m.get("val_reward_before"), m.get("best_val_reward"), m.get("final_val_reward")
    if before is not None and final is not None:
        lines.append(f"before {before:.4f} -> after {final:.4f} (change {final - before:+.4f}); "
                     f"best {best:.4f} at step {m.get('best_step')}; kept: {result.artifact_dir}")
    lines.append(f"PRM over training: {m.get('prm')}; {m.get('steps')} steps, "
                 f"{m.get('mean_step_s') or 0:.1f} s/step, {m.get('runtime_s', 0):.0f} s in all")
    return "\n".join(lines) + "\n"
