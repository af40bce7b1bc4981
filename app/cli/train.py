"""`cdra train prm|rft|cdpa|grpo` (one stage on a data file, registered as a new version) and
`cdra retrain` (the periodic loop from logged sessions to a promoted policy; exit codes for cron:
0 promoted, 3 trained but not promoted, 4 nothing new to train on, 5 locked by another run,
6 stopped by --stop-after, 2 bad input)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Optional

import typer

train_app = typer.Typer(help="Train one stage: Pers-GenPRM, RFT, CDPA or a GRPO baseline.", no_args_is_help=True)

DataOpt = Annotated[Path, typer.Option("--data", "-d", help="JSONL file, `datasets` directory, or a DeepPref build directory")]
StepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="optimizer steps (default: one epoch)")]
PromoteFlag = Annotated[bool, typer.Option("--promote/--no-promote", help="serve the new version right away")]
# the SFT knobs `train prm` and `train rft` share
EpochsOpt = Annotated[float, typer.Option(help="epochs when --max-steps is not given")]
BatchOpt = Annotated[int, typer.Option(min=1)]
LoraRankOpt = Annotated[int, typer.Option(min=1, help="LoRA rank")]
FullFlag = Annotated[bool, typer.Option("--full", help="full fine-tune instead of LoRA")]
MaxLengthOpt = Annotated[int, typer.Option(help="tokens per example")]


def _data_file(path: Path, kind: str) -> Path:
    """A DeepPref build directory means its D_Rea / D_RFT file."""
    from alignment.errors import CdraError

    if path.is_dir() and not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
        candidate = path / f"deeppref_{kind}.jsonl"
        if not candidate.is_file():
            raise CdraError(f"{path} is neither a datasets directory nor a DeepPref build (no {candidate.name})")
        return candidate
    return path


def _sft_config(max_steps, epochs, lr, batch_size, lora_r, full, max_length, default_lr):
    from training.prm_trainer import SFTStageConfig

    return SFTStageConfig(lora=not full, lora_r=lora_r, lora_alpha=2 * lora_r, max_steps=max_steps or -1,
                          num_train_epochs=epochs, learning_rate=lr or (1e-5 if full else default_lr),
                          batch_size=batch_size, max_length=max_length)


def _print_prm_eval(before, after, metrics: dict) -> None:
    import math

    from rich.console import Console
    from rich.table import Table

    table = Table("held-out", "before SFT", "after SFT", title="Pers-GenPRM agreement with the evaluator's step scores")
    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    table.add_row("segments", str(before.segments), str(after.segments))
    table.add_row("Spearman (read-out score)", fmt(before.spearman), fmt(after.spearman))
    table.add_row("Spearman (parsed SCORE lines)", fmt(before.spearman_parsed), fmt(after.spearman_parsed))
    table.add_row("SCORE line parse rate", f"{before.parse_rate:.1%}", f"{after.parse_rate:.1%}")
    table.add_row("unparseable judgments", str(before.unparseable), str(after.unparseable))
    table.add_row("mean |score - evaluator|", fmt(before.mae), fmt(after.mae))
    if "eval_loss_after" in metrics:
        table.add_row("completion loss (critique + score)", fmt(metrics["eval_loss_before"]), fmt(metrics["eval_loss_after"]))
    Console().print(table)


def _spec_for(start):
    from alignment.engines import ModelSpec

    if start.base == "default":
        return ModelSpec(backend="default", adapter=str(start.adapter) if start.adapter else None)
    return ModelSpec(backend="transformers", path=str(start.model_dir), adapter=str(start.adapter) if start.adapter else None)


@train_app.command("prm")
def train_prm_cmd(
    ctx: typer.Context,
    data: DataOpt,
    max_steps: StepsOpt = None,
    epochs: EpochsOpt = 1.0,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (default 2e-4 LoRA, 1e-5 full)")] = None,
    batch_size: BatchOpt = 4,
    lora_r: LoraRankOpt = 16,
    full: FullFlag = False,
    max_length: MaxLengthOpt = 1024,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Spearman agreement on held-out records before vs after")] = False,
    eval_records: Annotated[int, typer.Option(help="held-out paths to score with --eval (0: all)")] = 0,
    eval_max_new_tokens: Annotated[int, typer.Option(help="critique length with --eval")] = 64,
    promote: PromoteFlag = False,
) -> None:
    """Pers-GenPRM SFT on D_Rea (loss on critique and score tokens only), registered as a new prm version."""
    from alignment.engines import build_engine
    from app.cli import settings_from
    from training.prm_trainer import evaluate_prm, read_rea, split_records, train_prm
    from training.registry import ModelRegistry, fingerprint, training_start

    settings = settings_from(ctx)
    registry = ModelRegistry(settings.registry_dir)
    path = _data_file(data, "rea")
    _, val = split_records(read_rea(path))
    if eval_records:
        val = val[:eval_records]
    start = training_start(registry, "prm", settings.prm, settings.models_dir)
    before = evaluate_prm(build_engine(_spec_for(start), settings.models_dir), val, eval_max_new_tokens) if evaluate else None
    config = _sft_config(max_steps, epochs, lr, batch_size, lora_r, full, max_length, 2e-4)
    out = settings.runs_dir / f"prm-{_stamp()}"
    result = train_prm(path, start, out, config)
    metrics = dict(result.metrics)
    if evaluate:
        from dataclasses import replace

        after_start = replace(start, adapter=result.artifact_dir) if result.is_adapter else replace(
            start, base=str(result.artifact_dir), model_dir=result.artifact_dir, adapter=None)
        after = evaluate_prm(build_engine(_spec_for(after_start), settings.models_dir), val, eval_max_new_tokens)
        metrics["agreement_before"], metrics["agreement_after"] = before.row(), after.row()
        _print_prm_eval(before, after, metrics)
    if not _is_main_process():
        return
    model = registry.publish("prm", result.artifact_dir, is_adapter=result.is_adapter, base=start.base,
                             parent=start.parent, metrics=metrics, data={"rea": fingerprint(path)},
                             config={"sft": config.to_dict()})
    _announce(registry, model, promote)


@train_app.command("rft")
def train_rft_cmd(
    ctx: typer.Context,
    data: DataOpt,
    max_steps: StepsOpt = None,
    epochs: EpochsOpt = 1.0,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (default 1e-4 LoRA, 1e-5 full)")] = None,
    batch_size: BatchOpt = 4,
    lora_r: LoraRankOpt = 16,
    full: FullFlag = False,
    max_length: MaxLengthOpt = 1024,
    promote: PromoteFlag = False,
) -> None:
    """RFT: policy SFT on D_RFT (the best path per scenario), registered as a new policy version."""
    from app.cli import settings_from
    from training.registry import ModelRegistry, fingerprint, training_start
    from training.rft import train_rft

    settings = settings_from(ctx)
    registry = ModelRegistry(settings.registry_dir)
    path = _data_file(data, "rft")
    start = training_start(registry, "policy", settings.policy, settings.models_dir)
    config = _sft_config(max_steps, epochs, lr, batch_size, lora_r, full, max_length, 1e-4)
    result = train_rft(path, start, settings.runs_dir / f"rft-{_stamp()}", config)
    typer.echo(f"RFT: {result.metrics['steps']} steps, train loss {result.metrics['train_loss']:.4f}"
               + (f", held-out loss {result.metrics['eval_loss_before']:.4f} -> {result.metrics['eval_loss_after']:.4f}"
                  if "eval_loss_after" in result.metrics else ""))
    if not _is_main_process():
        return
    model = registry.publish("policy", result.artifact_dir, is_adapter=result.is_adapter, base=start.base,
                             parent=start.parent, metrics={"rft": result.metrics}, data={"rft": fingerprint(path)},
                             config={"rft": config.to_dict()})
    _announce(registry, model, promote)


def _policy_rl(ctx: typer.Context, data: Path, method: str, max_steps: Optional[int], generations: int,
               max_completion_length: int, lr: float, use_vllm: bool, promote: bool, outcome: str = "mean") -> None:
    """Delegate to the CDPA trainer (training.cdpa_trainer) and register its best policy."""
    from alignment.prm import PersGenPRM
    from app.cli import settings_from
    from app.models import engine_for
    from training.registry import ModelRegistry, fingerprint, training_start

    try:
        cdpa = importlib.import_module("training.cdpa_trainer")
    except ModuleNotFoundError as exc:
        raise NotImplementedError(f"CDPA/GRPO training needs training/cdpa_trainer.py: {exc}") from exc
    settings = settings_from(ctx)
    registry = ModelRegistry(settings.registry_dir)
    start = training_start(registry, "policy", settings.policy, settings.models_dir)
    config = cdpa.CDPAConfig(method=method, outcome=outcome, num_generations=generations,
                             max_completion_length=max_completion_length, learning_rate=lr, use_vllm=use_vllm,
                             **({"max_steps": max_steps} if max_steps else {}))
    path = _data_file(data, "rea") if data.is_dir() else data
    prm = PersGenPRM(engine_for(settings, "prm"))
    result = cdpa.train_policy(config, path, prm, start.model_dir, adapter_init=start.adapter,
                               out_dir=settings.runs_dir / f"{method}-{_stamp()}")
    if not _is_main_process():
        return
    base = start.base if result.is_adapter else str(result.artifact_dir)
    model = registry.publish("policy", result.artifact_dir, is_adapter=result.is_adapter, base=base,
                             parent=start.parent, metrics={method: result.metrics}, data={"prompts": fingerprint(path)},
                             config={"cdpa": config.to_dict()})
    typer.echo(f"{method}: {result.metrics.get('steps')} steps, validation reward "
               f"{result.metrics.get('val_reward_before')} -> best {result.metrics.get('best_val_reward')}")
    _announce(registry, model, promote)


@train_app.command("cdpa")
def train_cdpa_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", "-d", help="(P, q) records: scenarios, D_Rea/D_RFT, or a build directory")],
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="optimizer steps (paper: up to 400)")] = None,
    generations: Annotated[int, typer.Option("--generations", "-G", min=2, help="responses per prompt (paper: 5)")] = 5,
    max_completion_length: Annotated[int, typer.Option(help="tokens per response")] = 384,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-5,
    use_vllm: Annotated[bool, typer.Option("--vllm/--no-vllm", help="vLLM rollouts (GPU; docs/GPU.md)")] = False,
    promote: PromoteFlag = False,
) -> None:
    """CDPA: GRPO with Pers-GenPRM's per-token, critique-grounded advantages (the serving PRM scores)."""
    _policy_rl(ctx, data, "cdpa", max_steps, generations, max_completion_length, lr, use_vllm, promote)


@train_app.command("grpo")
def train_grpo_cmd(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", "-d", help="(P, q) records: scenarios, D_Rea/D_RFT, or a build directory")],
    reward: Annotated[str, typer.Option(help="outcome (one score per response) or process (Appendix D)")] = "outcome",
    outcome: Annotated[str, typer.Option(help="with --reward outcome: mean of step scores or sum (R_dense)")] = "mean",
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="optimizer steps")] = None,
    generations: Annotated[int, typer.Option("--generations", "-G", min=2, help="responses per prompt")] = 5,
    max_completion_length: Annotated[int, typer.Option(help="tokens per response")] = 384,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-5,
    use_vllm: Annotated[bool, typer.Option("--vllm/--no-vllm", help="vLLM rollouts (GPU; docs/GPU.md)")] = False,
    promote: PromoteFlag = False,
) -> None:
    """GRPO baselines of the paper: outcome reward, or process supervision (Appendix D)."""
    from alignment.errors import CdraError

    if reward not in ("outcome", "process"):
        raise CdraError(f"--reward must be outcome or process, not {reward!r}")
    _policy_rl(ctx, data, f"grpo-{reward}", max_steps, generations, max_completion_length, lr, use_vllm, promote, outcome)


def _is_main_process() -> bool:
    """Under `accelerate launch` every rank runs the command; only rank 0 touches the registry."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _announce(registry, model, promote: bool) -> None:
    if promote:
        registry.promote(model.role, model.version)
    typer.echo(f"registered {model.role} {model.version} at {model.path}" + (" (now serving)" if promote else
               f"; serve it with `cdra train promote {model.role} {model.version}`"))


@train_app.command("promote")
def promote_cmd(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="policy or prm")],
    version: Annotated[str, typer.Argument(help="a version from `cdra models`")],
) -> None:
    """Serve a registered version (the app picks it up on its next turn, no restart)."""
    from alignment.errors import CdraError
    from app.cli import settings_from
    from training.registry import ModelRegistry

    registry = ModelRegistry(settings_from(ctx).registry_dir)
    try:
        registry.promote(role, version)
    except KeyError as exc:
        raise CdraError(f"{exc.args[0]}: `cdra models` lists the versions") from None
    typer.echo(f"{role} {version} is now serving")


def _stamp() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def retrain_cmd(
    ctx: typer.Context,
    sessions: Annotated[Optional[Path], typer.Option("--sessions", help="exported session JSONL (default: the data dir's session log)")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="tiny sizes that finish on a CPU (every stage still real)")] = False,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, help="optimizer steps per training stage")] = None,
    promote: Annotated[str, typer.Option("--promote", help="if-better (beat the serving policy) or always")] = "if-better",
    min_improvement: Annotated[float, typer.Option(help="margin the candidate's mean PRM reward must beat serving by")] = 0.0,
    max_scenarios: Annotated[Optional[int], typer.Option(min=1, help="cap on scenarios per run")] = None,
    stop_after: Annotated[Optional[str], typer.Option(help="stop after this stage (exit 6); the next run resumes")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="abandon an unfinished run instead of resuming it")] = False,
    use_vllm: Annotated[bool, typer.Option("--vllm/--no-vllm", help="CDPA rollouts with vLLM (GPU; docs/GPU.md)")] = False,
    accelerate_config: Annotated[Optional[Path], typer.Option(help="run CDPA under `accelerate launch` with this config (configs/accelerate/)")] = None,
) -> None:
    """Periodic retraining: new logged sessions -> DeepPref -> Pers-GenPRM -> RFT -> CDPA -> evaluate -> promote.

    Exit codes: 0 promoted, 3 trained but not promoted, 4 nothing new to train on, 5 another run holds
    the lock, 6 stopped by --stop-after, 2 bad input. Resumable: rerun after a crash (or --stop-after)
    and finished stages are skipped.
    """
    from dataclasses import replace

    from alignment.errors import CdraError
    from app.cli import settings_from
    from app.models import resolve_spec
    from training.retrain import RetrainConfig, file_source, run_retrain, tiny_config

    if promote not in ("if-better", "always"):
        raise CdraError(f"--promote must be if-better or always, not {promote!r}")
    settings = settings_from(ctx)
    config = RetrainConfig(
        data_dir=settings.data_dir, registry_dir=settings.registry_dir, models_dir=settings.models_dir,
        policy=settings.policy, prm=settings.prm, teacher=resolve_spec(settings, "teacher")[0],
        preference=settings.preference,
        evaluator=resolve_spec(settings, "judge")[0], promote=promote, min_improvement=min_improvement,  # type: ignore[arg-type]
        seed=settings.seed,
    )
    if tiny:
        config = tiny_config(config, max_steps)
    elif max_steps:
        config = replace(config, prm_sft=replace(config.prm_sft, max_steps=max_steps),
                         rft=replace(config.rft, max_steps=max_steps))
        from training.cdpa_trainer import CDPAConfig

        config.cdpa = CDPAConfig(seed=settings.seed, max_steps=max_steps, eval_every=max(1, min(25, max_steps)))
    if max_scenarios:
        config = replace(config, max_scenarios=max_scenarios)
    config = replace(config, stop_after=stop_after, accelerate_config=accelerate_config, fresh=fresh)
    if use_vllm:
        from training.cdpa_trainer import CDPAConfig

        config.cdpa = replace(config.cdpa or CDPAConfig(seed=settings.seed), use_vllm=True)
    source = file_source(sessions) if sessions else _log_source(settings)
    result = run_retrain(config, source)
    typer.echo(result.message)
    if result.candidate is not None:
        typer.echo(f"mean PRM reward on validation: candidate {result.policy_version} "
                   f"{_fmt(result.candidate.get('mean_reward'))} vs serving {result.serving.get('version')} "
                   f"{_fmt(result.serving.get('mean_reward'))}")
    raise typer.Exit(int(result.exit_code))


def _fmt(value) -> str:
    return "unscored" if value is None else f"{value:.4f}"


def _log_source(settings):
    """Export the data dir's session log (with each user's active preferences) since a time."""
    from memory.session_log import default_log_path

    path = default_log_path(settings.logs_dir)

    def export(since, out: Path) -> Path:
        if not path.is_file():
            out.write_text("", encoding="utf-8")
            return out
        from app.assistant import open_log, user_preference_texts

        open_log(settings).export_jsonl(out, since=since, user_preferences=lambda uid: user_preference_texts(settings, uid))
        return out

    return export


def register(app: typer.Typer) -> None:
    from app.cli.train_prefs import prefs_train_app

    train_app.add_typer(prefs_train_app, name="prefs")  # `cdra train prefs data|sft|grpo` (the preference role)
    app.add_typer(train_app, name="train")
    app.command("retrain")(retrain_cmd)
    train_app.command("retrain", hidden=True)(retrain_cmd)  # the same command, where `cdra users logs export` points
