"""`cdra eval prefs`: Acc_jud / Acc_gen (AlignXplore Eq. 6, 5) of inferred preference descriptions and the
Null / E / Golden baselines, over a preference-inference test set. Thin: alignment/preference_metrics.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alignment.errors import CdraError
from app.cli.prefs import DEV_PREFS_TESTSET


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def register_eval(eval_app: typer.Typer) -> None:
    @eval_app.command("prefs")
    def prefs_cmd(
        ctx: typer.Context,
        testset: Annotated[Path, typer.Option("--testset", "-t", help="JSONL (formats.md) or datasets dir")] = DEV_PREFS_TESTSET,
        methods: Annotated[str, typer.Option(help="comma list of null, signals (E), golden, explicit, inferred")] = (
            "null,signals,golden,explicit,inferred"),
        metrics: Annotated[str, typer.Option(help="comma list of jud, gen")] = "jud,gen",
        limit: Annotated[Optional[int], typer.Option(help="first N items only")] = None,
        seed: Annotated[int, typer.Option(help="A/B order and sampling seed")] = 0,
        max_new_tokens: Annotated[int, typer.Option(help="tokens for inference (r and d)")] = 256,
        retries: Annotated[int, typer.Option(help="extra samples when the inference output breaks the format")] = 2,
        gen_role: Annotated[str, typer.Option(help="model role that scores replies for R_gen")] = "judge",
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="results dir (resumable); default runs_dir/eval-prefs")] = None,
    ) -> None:
        """Acc_jud and Acc_gen with the configured judge (and preference model for 'inferred')."""
        from tqdm import tqdm

        from alignment.preference_inference import InferenceConfig, PreferenceInferrer
        from alignment.preference_metrics import PrefEvalConfig, evaluate_preferences
        from alignment.signals import read_testset
        from app.cli import settings_from
        from app.models import engine_for

        if gen_role not in ("policy", "preference", "prm", "judge", "teacher"):
            raise CdraError(f"unknown role {gen_role!r}")
        settings = settings_from(ctx)
        items = read_testset(testset)
        config = PrefEvalConfig(methods=_split(methods), metrics=_split(metrics), seed=seed, limit=limit)
        judge = engine_for(settings, "judge")
        gen = engine_for(settings, gen_role) if "gen" in config.metrics else None  # type: ignore[arg-type]
        inferrer = None
        if "inferred" in config.methods:
            inferrer = PreferenceInferrer(engine_for(settings, "preference"),
                                          InferenceConfig(max_new_tokens=max_new_tokens, max_retries=retries, seed=seed))
        out_dir = out or settings.runs_dir / "eval-prefs" / testset.stem
        report = evaluate_preferences(items, judge, gen, inferrer, config, out_dir=out_dir,
                                      progress=lambda work: tqdm(work, desc="eval prefs", unit="row"))
        n = len(items) if limit is None else min(limit, len(items))
        typer.echo(f"{n} items of {testset}; judge {judge.description}; A/B order seeded ({seed})")
        typer.echo(report.table())
        typer.echo(f"rows and summary in {out_dir}")
