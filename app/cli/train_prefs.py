"""`cdra train prefs data|sft|grpo`: AlignXplore training of the `preference` role on PrefEval-style data.
Each training run registers a new preference version and promotes it only when it beats the serving
version on held-out records; `--export DIR` also writes the adapter where the package ships it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from alignment.errors import CdraError
from app.cli.prefs import DEFAULT_PREFEVAL

prefs_train_app = typer.Typer(help="Train the preference inferrer (AlignXplore: cold-start SFT, then GRPO).",
                              no_args_is_help=True)

DataDirOpt = Annotated[Path, typer.Option("--data", "-d", help="a directory from `cdra train prefs data` (train.jsonl, validation.jsonl)")]
TinyFlag = Annotated[bool, typer.Option("--tiny", help="a few records and steps (tests, a first look on a CPU)")]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, help="optimizer steps (default: one epoch / the config)")]
PromoteOpt = Annotated[str, typer.Option("--promote", help="if-better (beat serving on held-out records), always, never")]
FromOpt = Annotated[str, typer.Option("--from", help="serving (continue the serving or packaged adapter) or base (a fresh LoRA)")]
ExportOpt = Annotated[Path | None, typer.Option("--export", help="also copy the adapter + card here (e.g. alignment/adapters/preference)")]
SkipOpt = Annotated[int, typer.Option("--skip", min=0, help="skip the first N records of the round-robin order (continue "
                                       "an adapter trained with --limit N on records it has not seen)")]
ValOpt = Annotated[int, typer.Option("--val-records", min=0, help="held-out records for the promotion comparison "
                                                     "(greedy, unconstrained: R_format counts)")]


def _records(data: Path, split: str):
    from training.pref_data import read_pref_records

    path = data / f"{split}.jsonl" if data.is_dir() else data
    if not path.is_file():
        raise CdraError(f"{path} does not exist: build the data with `cdra train prefs data --out {data}`")
    return read_pref_records(path), path


def _spread(records, k: int) -> list:
    """At most ``k`` records, round-robin over forms and, within a form, over topics: a short run sees every form
    and every training topic (the data files list one topic after another)."""
    from training.balanced import grouped, round_robin

    per_form = [round_robin(grouped(form, lambda r: r.topic)) for form in grouped(records, lambda r: r.form)]
    return round_robin(per_form, k)


def _run_dir(settings, kind: str, *parts: object) -> Path:
    """A run directory named by what it trains, so the same command after an interruption resumes it."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts], sort_keys=True).encode()).hexdigest()[:12]
    return settings.runs_dir / f"prefs-{kind}-{digest}"


def _prepare(ctx: typer.Context, data: Path, promote: str):
    """What every training command starts from: settings, the registry, train and validation records."""
    from app.cli import settings_from
    from training.registry import ModelRegistry

    if promote not in ("if-better", "always", "never"):
        raise CdraError(f"--promote must be if-better, always or never, not {promote!r}")
    settings = settings_from(ctx)
    train, path = _records(data, "train")
    val = _records(data, "validation")[0] if (data / "validation.jsonl").is_file() else []
    return settings, ModelRegistry(settings.registry_dir), train, path, val


def _select(train: list, val: list, tiny: bool, limit: int | None, val_records: int, tiny_train: int,
            skip: int = 0) -> tuple[list, list]:
    """The records a run uses: ``--tiny`` a few explicit/choice ones, else at most ``limit`` (every form kept),
    after the first ``skip`` of that round-robin order (what an earlier run with ``--limit skip`` trained on)."""
    if tiny:
        return _spread([r for r in train if r.form in ("explicit", "implicit-choice")], limit or tiny_train), _spread(val, 2)
    ordered = _spread(train, skip + limit if limit else len(train))[skip:]
    if not ordered:
        raise CdraError(f"--skip {skip} leaves none of the {len(train)} training records")
    return ordered, _spread(val, val_records)


def _start(settings, registry, from_: str):
    from alignment.engines.default_model import ensure_default_model
    from training.pref_trainer import preference_start
    from training.registry import TrainingStart

    if from_ == "base":
        return TrainingStart("default", ensure_default_model(settings.models_dir))
    if from_ != "serving":
        raise CdraError(f"--from must be serving or base, not {from_!r}")
    return preference_start(registry, settings.preference, settings.models_dir)


def _compare_and_register(settings, registry, start, result, kind: str, val, promote: str, data_path: Path,
                          config: dict, export: Path | None, command: str, max_new_tokens: int) -> None:
    import os

    from alignment.engines import ModelSpec
    from training.pref_rewards import GoldScorer
    from training.pref_trainer import decide, publish, start_spec, validate
    from training.registry import fingerprint

    if os.environ.get("RANK", "0") != "0":  # under `accelerate launch` only rank 0 evaluates and registers
        return
    scorer = GoldScorer()
    like = settings.preference if settings.preference.backend != "auto" else ModelSpec()
    metrics: dict = {}
    if val:
        serving_start = _start(settings, registry, "serving")
        candidate = validate(start_spec(start, like, adapter=result.adapter_dir, constrained=False), settings.models_dir,
                             val, scorer, max_new_tokens=max_new_tokens)
        serving = validate(start_spec(serving_start, like, constrained=False), settings.models_dir, val, scorer,
                           max_new_tokens=max_new_tokens)
        serving["version"] = serving_start.parent or "base"
        metrics = {"validation": candidate, "serving_validation": serving, "val_score": candidate["score"],
                   "serving_score": serving["score"]}
        typer.echo(f"validation on {len(val)} held-out records: candidate score {candidate['score']:.3f} "
                   f"(recovery {candidate['recovery']:.2f}, R_format {candidate['r_format']:.2f}) vs serving "
                   f"{serving['version']} {serving['score']:.3f}")
        ok, reason = decide(candidate, serving, promote)
    else:
        ok, reason = (promote == "always"), "no held-out records to compare on"
    model = publish(registry, result, start, kind, metrics, {"train": fingerprint(data_path)}, config)
    if ok:
        registry.promote("preference", model.version)
    typer.echo(f"registered preference {model.version} at {model.path}; "
               + ("now serving" if ok else "not promoted") + f" ({reason})")
    if export is not None and ok:  # the shipped adapter is replaced only by a version that beat it
        _export(result, export, data_path, command, {kind: result.metrics, **metrics, "version": model.version},
                continued=start.adapter)
    elif export is not None:
        typer.echo(f"not exported to {export}: {model.version} was not promoted")


def _export(result, target: Path, data_path: Path, command: str, metrics: dict, continued: Path | None = None) -> None:
    """The adapter (only its config and weights) + the data card + how to reproduce it, where the package ships it.
    A run that continued the adapter it replaces (``--from serving`` on a fresh install) keeps that adapter's
    TRAINING.md below its own: without the earlier stages the command alone does not reproduce it."""
    from training.scenarios import write_text_atomic

    target.mkdir(parents=True, exist_ok=True)
    earlier = target / "TRAINING.md"
    same = continued is not None and Path(continued).resolve() == target.resolve() and earlier.is_file()
    before = earlier.read_text(encoding="utf-8") if same else ""
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(result.adapter_dir / name, target / name)
    card = (data_path.parent / "data_card.md") if data_path.is_file() else None
    text = card.read_text(encoding="utf-8") if card and card.is_file() else ""
    write_text_atomic(target / "TRAINING.md", training_record(command, metrics, before))
    if text:
        write_text_atomic(target / "DATA_CARD.md", text)
    typer.echo(f"exported the adapter to {target}")


def training_record(command: str, metrics: dict, before: str = "") -> str:
    """TRAINING.md: this run's command and metrics; then, demoted one heading level, the record of the adapter
    it continued (run those stages first)."""
    trained = json.dumps(metrics, indent=2, default=str)
    text = f"# How this adapter was trained\n\n```\n{command}\n```\n\nMetrics of the run:\n\n```json\n{trained}\n```\n"
    if not before.strip():
        return text
    lines, fenced = [], False
    earlier = before.strip().replace("# How this adapter was trained", "# It continued this adapter: reproduce that one first", 1)
    for line in earlier.splitlines():
        fenced ^= line.startswith("```")
        lines.append("#" + line if line.startswith("#") and not fenced else line)
    return text + "\n" + "\n".join(lines) + "\n"


@prefs_train_app.command("data")
def data_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for train/validation JSONL and the data card")],
    prefeval: Annotated[Path, typer.Option("--prefeval", help="PrefEval benchmark_dataset/ root")] = DEFAULT_PREFEVAL,
    val_topics: Annotated[str, typer.Option(help="comma list of topics held out for validation")] = "",
    per_topic: Annotated[int | None, typer.Option(min=1, help="training preferences per topic and form (default all)")] = None,
    val_per_topic: Annotated[int | None, typer.Option(min=1, help="validation preferences per topic and form")] = None,
    stream_per_topic: Annotated[int, typer.Option(min=0, help="streaming examples (keep and add) per topic")] = 4,
    teacher_samples: Annotated[int, typer.Option(min=0, help="G chains the teacher role samples per record (0: templated only)")] = 0,
    teacher_limit: Annotated[int, typer.Option(min=0, help="training records offered to the teacher")] = 16,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Training data from PrefEval: split by topic, templated (or teacher) chains, streaming examples, data card."""
    import sys

    from alignment.preference_inference import InferenceConfig
    from app.cli import settings_from
    from app.models import engine_for
    from training.pref_build import calibrate, data_card, teacher_chains, token_counter, write_dataset
    from training.pref_data import VALIDATION_TOPICS, PrefRecord, build_prefeval_records
    from training.pref_rewards import GoldScorer

    settings = settings_from(ctx)
    topics = tuple(t.strip() for t in val_topics.split(",") if t.strip()) or VALIDATION_TOPICS
    count = token_counter(settings.models_dir)
    scorer = GoldScorer()
    raw = build_prefeval_records(prefeval, count, scorer, topics, per_topic, val_per_topic, stream_per_topic, seed)
    extra: dict = {"source": str(prefeval), "command": "cdra " + " ".join(sys.argv[1:]), "seed": seed}
    if teacher_samples:
        typer.echo(f"teacher: {teacher_samples} chains for each of {teacher_limit} training records …", err=True)
        extra["teacher"] = teacher_chains(engine_for(settings, "teacher"), raw, teacher_samples, scorer, teacher_limit,
                                          seed=seed)
    records = [PrefRecord.model_validate(r) for r in raw]
    extra["agreement"] = calibrate([r for r in records if r.split == "train"],
                                   [r for r in records if r.split == "validation"], scorer, seed=seed)
    card = data_card(records, count, InferenceConfig(), scorer, extra)
    counts = write_dataset(out, raw, card)
    typer.echo(f"{counts['train']} training and {counts['validation']} validation records in {out} "
               f"(validation topics: {', '.join(topics)}); targets in format: {100 * card['targets_r_format']:.1f} %; "
               f"agreement threshold {extra['agreement']['threshold']:.3f}; card {out / 'data_card.md'}")


@prefs_train_app.command("sft")
def sft_cmd(
    ctx: typer.Context,
    data: DataDirOpt,
    tiny: TinyFlag = False,
    max_steps: StepsOpt = None,
    epochs: Annotated[float, typer.Option(help="epochs when --max-steps is not given")] = 1.0,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-4,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    grad_accum: Annotated[int, typer.Option(min=1, help="gradient accumulation steps (batch 1 x N: no padding)")] = 1,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank")] = 8,
    max_length: Annotated[int, typer.Option(help="tokens per example")] = 1280,
    limit: Annotated[int | None, typer.Option(min=1, help="at most N training records (round-robin over forms)")] = None,
    skip: SkipOpt = 0,
    val_records: ValOpt = 16,
    val_max_new_tokens: Annotated[int, typer.Option(help="tokens per validation output")] = 200,
    from_: FromOpt = "serving",
    promote: PromoteOpt = "if-better",
    export: ExportOpt = None,
    save_steps: Annotated[int, typer.Option(min=1, help="checkpoint every N steps (resume after an interruption)")] = 10,
) -> None:
    """Cold-start SFT (Eq. 8: loss on r and d) with LoRA; resumable; registered, promoted only if better."""
    import sys

    from training.pref_trainer import train_sft
    from training.prm_trainer import SFTStageConfig

    settings, registry, train, path, val = _prepare(ctx, data, promote)
    train, val = _select(train, val, tiny, limit, val_records, tiny_train=4, skip=skip)
    if tiny:
        config = SFTStageConfig(lora_r=4, lora_alpha=8, max_steps=max_steps or 2, batch_size=1, max_length=768,
                                logging_steps=1, learning_rate=1e-3)
        val_max_new_tokens = min(val_max_new_tokens, 48)
    else:
        config = SFTStageConfig(lora_r=lora_r, lora_alpha=2 * lora_r, max_steps=max_steps or -1, num_train_epochs=epochs,
                                learning_rate=lr, batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                                max_length=max_length, logging_steps=1, warmup_steps=0.05)
    start = _start(settings, registry, from_)
    out = _run_dir(settings, "sft", path, len(train), config.to_dict(), start.adapter, tiny, *([skip] if skip else []))
    typer.echo(f"SFT on {len(train)} records from {start.adapter or 'the base model'} in {out} (rerun to resume)", err=True)
    result = train_sft(train, start, out, config, eval_records=val[:8], save_steps=save_steps)
    m = result.metrics
    typer.echo(f"SFT: {m['steps']} steps in {m['runtime_s']:.0f} s, train loss {m['train_loss']:.4f}"
               + (f", held-out loss {m.get('eval_loss_before', float('nan')):.4f} -> {m['eval_loss_after']:.4f}"
                  if "eval_loss_after" in m else ""))
    _compare_and_register(settings, registry, start, result, "sft", val, promote, path, {"sft": config.to_dict()},
                          export, "cdra " + " ".join(sys.argv[1:]), val_max_new_tokens)


@prefs_train_app.command("grpo")
def grpo_cmd(
    ctx: typer.Context,
    data: DataDirOpt,
    reward: Annotated[str, typer.Option(help="agreement (with the data set's own preference), agreement-soft, or jud (R_jud)")] = "agreement",
    tiny: TinyFlag = False,
    max_steps: StepsOpt = None,
    generations: Annotated[int, typer.Option("--generations", "-G", min=2, help="rollouts per prompt (paper: 4)")] = 4,
    max_completion_length: Annotated[int, typer.Option(help="tokens per rollout")] = 192,
    prompts_per_step: Annotated[int, typer.Option(min=1, help="prompts per device per step (paper: 128 in all)")] = 1,
    grad_accum: Annotated[int, typer.Option(min=1, help="gradient accumulation steps")] = 1,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-5,
    limit: Annotated[int | None, typer.Option(min=1, help="at most N prompts (round-robin over forms)")] = None,
    skip: SkipOpt = 0,
    val_records: ValOpt = 16,
    val_max_new_tokens: Annotated[int, typer.Option(help="tokens per validation output")] = 200,
    sanity_items: Annotated[int, typer.Option(min=4, help="comparisons for the judge's sanity check (--reward jud)")] = 40,
    use_vllm: Annotated[bool, typer.Option("--vllm/--no-vllm", help="vLLM rollouts (GPU; docs/GPU.md)")] = False,
    from_: FromOpt = "serving",
    promote: PromoteOpt = "if-better",
    export: ExportOpt = None,
) -> None:
    """GRPO without KL (Eq. 9-11) on unconstrained rollouts; R_jud only with a judge that passes the sanity check."""
    import sys

    from alignment.preference_inference import InferenceConfig, inference_format
    from app.models import engine_for
    from training.pref_rewards import GoldScorer, run_sanity_check
    from training.pref_trainer import PrefGRPOConfig, agreement_reward, judge_reward, train_grpo
    from training.prm_trainer import SFTStageConfig

    settings, registry, train, path, val = _prepare(ctx, data, promote)
    if reward == "jud":
        comparisons = [{"id": r.id, "golden": " ".join(r.golds), **r.comparison.model_dump()}
                       for r in val if r.comparison is not None][:sanity_items]
        check = run_sanity_check(engine_for(settings, "judge"), comparisons, settings.seed)
        typer.echo(check.line())
        if not check.passed:
            raise CdraError("refusing R_jud: the judge fails the sanity check (a correct preference does not help it), "
                            "so its reward is noise; train with --reward agreement, or configure a stronger `judge` role")
        train = [r for r in train if r.comparison is not None]
    train, val = _select(train, val, tiny, limit, val_records, tiny_train=2, skip=skip)
    if tiny:
        config = PrefGRPOConfig(num_generations=2, max_completion_length=24, max_steps=max_steps or 2, reward=reward,
                                learning_rate=1e-4, save_steps=1, seed=settings.seed)
        lora = SFTStageConfig(lora_r=4, lora_alpha=8)
        val_max_new_tokens = min(val_max_new_tokens, 48)
    else:
        config = PrefGRPOConfig(num_generations=generations, max_completion_length=max_completion_length,
                                max_steps=max_steps or 20, learning_rate=lr, reward=reward, use_vllm=use_vllm,
                                prompts_per_step=prompts_per_step, gradient_accumulation_steps=grad_accum,
                                seed=settings.seed)
        lora = SFTStageConfig(lora_r=8, lora_alpha=16)
    fmt = inference_format(InferenceConfig())
    log: list = []
    if reward == "jud":
        funcs = [judge_reward(fmt, engine_for(settings, "judge"), settings.seed, log)]
    else:
        funcs = [agreement_reward(fmt, GoldScorer(), soft=reward == "agreement-soft", log=log)]
    start = _start(settings, registry, from_)
    out = _run_dir(settings, f"grpo-{reward}", path, len(train), config.to_dict(), start.adapter, tiny, *([skip] if skip else []))
    typer.echo(f"GRPO ({reward}) on {len(train)} prompts from {start.adapter or 'the base model'} in {out} "
               "(rerun to resume)", err=True)
    result = train_grpo(train, start, out, config, funcs, lora, log=log)
    m = result.metrics
    typer.echo(f"GRPO: {m['steps']} steps in {m['runtime_s']:.0f} s, mean reward first {m['reward_first']} -> last "
               f"{m['reward_last']}, rollouts in format {m['rollout_r_format']}")
    _compare_and_register(settings, registry, start, result, f"grpo-{reward}", val, promote, path,
                          {"grpo": config.to_dict()}, export, "cdra " + " ".join(sys.argv[1:]), val_max_new_tokens)
