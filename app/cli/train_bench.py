"""`cdra bench cdpa` and `cdra bench cdpa-reward`: thin commands over training/bench_cdpa.py, on the
policy and PRM roles the settings resolve (the packaged default unless configured)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignment.errors import CdraError

_REPO = Path(__file__).resolve().parents[2]
DEV_PROMPTS = _REPO / "data" / "dev" / "alignment_dev.jsonl"

Generations = Annotated[int, typer.Option("--generations", "-G", min=2, help="samples per prompt (G)")]
CompletionLen = Annotated[int, typer.Option("--max-completion-length", min=4, help="tokens per sampled response")]
PrmTokens = Annotated[int, typer.Option("--prm-max-new-tokens", min=4, help="tokens per PRM critique")]
ReadoutGrid = Annotated[str, typer.Option(
    "--readout-grid", help="score values the PRM weighs by probability when a judgment has no SCORE line")]
Data = Annotated[Path | None, typer.Option("--data", help="(preference, query) JSONL: scenarios, D_RFT or D_Rea")]


def _grid(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise CdraError(f"--readout-grid must be comma-separated numbers, got {text!r}") from exc
    if len(values) < 2 or any(not -1.0 <= v <= 1.0 for v in values):
        raise CdraError("--readout-grid needs at least two values in [-1, 1]")
    return values


def _policy_and_prm(ctx: typer.Context, prm_max_new_tokens: int, readout_grid: str):
    from alignment.prm import PersGenPRM, PRMConfig
    from app.cli import settings_from
    from app.models import engine_for
    from training.registry import ModelRegistry, training_start

    grid = _grid(readout_grid)  # before any model loads
    settings = settings_from(ctx)
    start = training_start(ModelRegistry(settings.registry_dir), "policy", settings.policy, settings.models_dir)
    prm = PersGenPRM(engine_for(settings, "prm"), PRMConfig(max_new_tokens=prm_max_new_tokens, max_retries=0,
                                                             readout_grid=grid))
    return settings, start, prm


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("cdpa")
    def bench_cdpa_cmd(
        ctx: typer.Context,
        steps: Annotated[int, typer.Option(min=1, help="timed optimizer steps per method")] = 2,
        warmup: Annotated[int, typer.Option(min=0, help="untimed steps first")] = 1,
        generations: Generations = 4,
        max_completion_length: CompletionLen = 48,
        prm_max_new_tokens: PrmTokens = 48,
        readout_grid: ReadoutGrid = "-1,-0.5,0,0.5,1",
        methods: Annotated[str, typer.Option(help="comma-separated: cdpa, grpo-outcome, grpo-process")] = "cdpa,grpo-outcome",
        data: Data = None,
    ) -> None:
        """One CDPA step split into generation, PRM scoring, advantages and update, beside outcome-GRPO."""
        import tempfile

        from alignment.cdpa import METHODS
        from training.bench_cdpa import DEFAULT_PROMPTS, bench_step_split, format_step_table
        from training.cdpa_trainer import CDPAConfig, prompt_records

        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if not chosen or unknown:
            raise CdraError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; use {', '.join(METHODS)}")
        prompts = prompt_records(data) if data else list(DEFAULT_PROMPTS)
        settings, start, prm = _policy_and_prm(ctx, prm_max_new_tokens, readout_grid)
        config = CDPAConfig(num_generations=generations, max_completion_length=max_completion_length,
                            prompts_per_step=1, seed=settings.seed)
        with tempfile.TemporaryDirectory(prefix="cdra-bench-cdpa-") as work:
            rows = bench_step_split(start.model_dir, prm, Path(work), config,
                                    methods=chosen, steps=steps, warmup=warmup, prompts=prompts,
                                    adapter_init=start.adapter)
        typer.echo(f"policy {start.base}{' + ' + str(start.adapter) if start.adapter else ''}; PRM {prm.engine.description}; "
                   f"G={generations}, {max_completion_length} tokens/response, 1 prompt/step, median of {steps} steps")
        typer.echo(format_step_table(rows), nl=False)

    @bench_app.command("cdpa-reward")
    def bench_cdpa_reward_cmd(
        ctx: typer.Context,
        data: Data = None,
        train: Annotated[int, typer.Option(min=1, help="training prompts taken from --data")] = 8,
        val: Annotated[int, typer.Option(min=1, help="held-out prompts (after the training ones)")] = 4,
        steps: Annotated[int, typer.Option(min=1, help="CDPA optimizer steps")] = 20,
        eval_every: Annotated[int, typer.Option(min=1, help="validate every N steps")] = 5,
        generations: Generations = 4,
        max_completion_length: CompletionLen = 48,
        prm_max_new_tokens: PrmTokens = 48,
        readout_grid: ReadoutGrid = "-1,-0.5,0,0.5,1",
        learning_rate: Annotated[float, typer.Option(help="LoRA learning rate")] = 1e-4,
        method: Annotated[str, typer.Option(help="cdpa | grpo-outcome | grpo-process")] = "cdpa",
        out: Annotated[Path | None, typer.Option(help="run directory (default: <data_dir>/runs/bench-cdpa-reward)")] = None,
    ) -> None:
        """A short real run: the policy's mean PRM reward on held-out prompts before vs after CDPA."""
        from dataclasses import replace

        from training.bench_cdpa import format_reward_table, reward_run
        from training.cdpa_trainer import CDPAConfig, prompt_records

        source = data or DEV_PROMPTS
        if not Path(source).exists():
            raise CdraError(f"no prompt file at {source}: pass --data with (preference, query) records")
        records = prompt_records(source)
        if len(records) < train + val:
            raise CdraError(f"{source} has {len(records)} distinct (preference, query) pairs; need {train + val}")
        config = CDPAConfig(method=method, num_generations=generations, max_completion_length=max_completion_length,
                            prompts_per_step=1, max_steps=steps, eval_every=eval_every, learning_rate=learning_rate,
                            max_val_prompts=val)
        settings, start, prm = _policy_and_prm(ctx, prm_max_new_tokens, readout_grid)
        config = replace(config, seed=settings.seed)
        out_dir = out or settings.runs_dir / "bench-cdpa-reward"
        result = reward_run(config, records[:train], records[train:train + val], prm, start.model_dir, out_dir,
                            start.adapter)
        typer.echo(format_reward_table(result), nl=False)
