"""`cdra eval prefs`: what preference inference recovers, per description source (Null, E, Golden, the explicit
extractor, the base model, trained versions): recovery, junk rate, R_format (unconstrained by default),
Acc_jud / Acc_gen where items have a comparison, with 95% bootstrap CIs; the judge's sanity check first.
Thin: training/pref_eval.py (recovery), alignment/preference_metrics.py (Acc_jud / Acc_gen)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignment.errors import CdraError
from app.cli.prefs import DEV_PREFS_TESTSET


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def model_spec(settings, what: str, constrained: bool):
    """``base`` (the packaged model alone), ``serving`` (the preference role now), ``packaged`` (the shipped
    adapter), a registry version (``preference-0003``) or an adapter directory -> (spec, description)."""
    from alignment.adapters import packaged_adapter
    from alignment.engines import ModelSpec
    from app.models import registered_spec, resolve_spec
    from training.registry import ModelRegistry

    flag = {"constrained": constrained}
    if what == "base":
        return ModelSpec(backend="default", **flag)
    if what == "serving":
        return resolve_spec(settings, "preference")[0].model_copy(update=flag)
    if what == "packaged":
        shipped = packaged_adapter("preference")
        if shipped is None:
            raise CdraError("this install ships no preference adapter (alignment/adapters/preference)")
        return ModelSpec(backend="default", adapter=str(shipped), **flag)
    path = Path(what)
    if (path / "adapter_config.json").is_file():
        return ModelSpec(backend="default", adapter=str(path.resolve()), **flag)
    try:
        model = ModelRegistry(settings.registry_dir).get("preference", what)
    except KeyError:
        raise CdraError(f"--model {what!r}: not base, serving, packaged, a preference version (`cdra models`) "
                        "or an adapter directory") from None
    return registered_spec(model, ModelSpec(), llamacpp=False).model_copy(update=flag)


def _per_form(items, n: int | None):
    if not n:
        return items
    seen: dict[str, int] = {}
    out = []
    for item in items:
        form = getattr(item, "form", None) or "?"
        if seen.get(form, 0) < n:
            seen[form] = seen.get(form, 0) + 1
            out.append(item)
    return out


def register_eval(eval_app: typer.Typer) -> None:
    @eval_app.command("prefs")
    def prefs_cmd(
        ctx: typer.Context,
        testset: Annotated[Path, typer.Option("--testset", "-t", help="JSONL (formats.md; post/chosen/rejected optional) or datasets dir")] = DEV_PREFS_TESTSET,
        sources: Annotated[str, typer.Option(help="baselines: comma list of null, signals (E), golden, explicit")] = "null,signals,golden,explicit",
        methods: Annotated[str | None, typer.Option(help="older spelling: baselines plus 'inferred' (= --model inferred=serving)")] = None,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="NAME=WHAT, WHAT: base, serving, packaged, a preference version or an adapter dir (repeatable)")] = None,
        metrics: Annotated[str, typer.Option(help="judge metrics where items have a comparison: jud, gen, or none")] = "jud",
        limit: Annotated[int | None, typer.Option(help="first N items only")] = None,
        per_form: Annotated[int | None, typer.Option(help="at most N items of each form (explicit, choice, persona, stream…)")] = None,
        seed: Annotated[int, typer.Option(help="A/B order seed")] = 0,
        threshold: Annotated[float | None, typer.Option(help="agreement threshold of 'states the gold' (default: the calibrated one)")] = None,
        constrained: Annotated[bool, typer.Option("--constrained/--unconstrained", help="decode the models with or without the format's grammar (R_format: unconstrained)")] = False,
        max_new_tokens: Annotated[int, typer.Option(help="tokens per unconstrained output")] = 256,
        votes: Annotated[int, typer.Option(min=0, max=16, help="sampled outputs that vote on each statement, as the product's inference.votes")] = 0,
        min_support: Annotated[int, typer.Option(min=1, help="votes a statement needs to be kept")] = 1,
        batch_size: Annotated[int, typer.Option(min=1, help="prompts per generation call")] = 8,
        sanity: Annotated[bool, typer.Option("--sanity/--no-sanity", help="the judge's sanity check (Golden above Null) first")] = True,
        gen_role: Annotated[str, typer.Option(help="model role that scores replies for R_gen")] = "judge",
        out: Annotated[Path | None, typer.Option("--out", "-o", help="results dir (resumable); default runs_dir/eval-prefs/<testset>")] = None,
    ) -> None:
        """Recovery, junk, R_format and Acc_jud / Acc_gen of preference descriptions, per source, with 95% CIs."""
        import json

        from tqdm import tqdm

        from alignment.engines import build_engine
        from alignment.signals import read_testset
        from app.cli import settings_from
        from app.models import engine_for
        from training.pref_eval import (
            BASELINES,
            Source,
            evaluate_inference,
            has_comparison,
            summarize_rows,
            summary_table,
            write_summary,
        )
        from training.pref_rewards import DEFAULT_THRESHOLD, GoldScorer, run_sanity_check

        settings = settings_from(ctx)
        wanted = [m for m in _split(metrics) if m != "none"]
        if set(wanted) - {"jud", "gen"}:
            raise CdraError(f"--metrics takes jud, gen or none, not {metrics!r}")
        if gen_role not in ("policy", "preference", "prm", "judge", "teacher"):
            raise CdraError(f"unknown role {gen_role!r}")
        items = _per_form(read_testset(testset), per_form)[:limit] if limit else _per_form(read_testset(testset), per_form)
        chosen: list[Source] = []
        if methods is not None:  # `--methods null,golden,inferred`: the baselines, and the serving model as "inferred"
            sources = ",".join(m for m in _split(methods) if m != "inferred")
            model = (model or []) + (["inferred=serving"] if "inferred" in _split(methods) else [])
        for name in _split(sources):
            if name not in BASELINES:
                raise CdraError(f"--sources takes {', '.join(BASELINES)}; models go in --model NAME=WHAT")
            chosen.append(Source(name))
        for entry in model if model is not None else ["base=base", "serving=serving"]:
            name, _, what = entry.partition("=")
            if not name or not what:
                raise CdraError(f"--model {entry!r}: write NAME=WHAT, e.g. sft=preference-0001")
            spec = model_spec(settings, what, constrained)
            engine = build_engine(spec, settings.models_dir)
            chosen.append(Source(name, engine, f"{name} ({what}, {'constrained' if constrained else 'unconstrained'})"))
        compared = [i for i in items if has_comparison(i)]
        judge = engine_for(settings, "judge") if wanted and compared else None
        gen = engine_for(settings, gen_role) if "gen" in wanted and compared else None  # type: ignore[arg-type]
        extra: dict = {"testset": str(testset), "items": len(items), "with_comparison": len(compared)}
        if judge is not None and sanity:
            check = run_sanity_check(judge, [{"id": i.id, "post": i.post, "chosen": i.chosen, "rejected": i.rejected,
                                              "golden": i.golden} for i in compared if i.golden], seed)
            typer.echo(check.line())
            extra["sanity_check"] = {"passed": check.passed, "null": check.null, "golden": check.golden, "n": check.n}
        scorer = GoldScorer(threshold if threshold is not None else DEFAULT_THRESHOLD)
        out_dir = out or settings.runs_dir / "eval-prefs" / testset.stem
        bars: dict[str, tqdm] = {}

        def progress(name: str, total: int):
            bars[name] = tqdm(total=total, desc=f"eval prefs: {name}", unit="item")
            return bars[name].update

        from alignment.consensus import Agreement
        from alignment.preference_inference import InferenceConfig

        setup = {"constrained": constrained} | ({"votes": votes, "min_support": min_support} if votes else {})
        rows = evaluate_inference(items, chosen, scorer, judge, gen, wanted, out_dir=out_dir, seed=seed,
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, setup=setup,
                                  progress=progress, config=InferenceConfig(votes=votes, min_support=min_support),
                                  agreement=Agreement(similarity=scorer.similarity, threshold=DEFAULT_THRESHOLD))
        for bar in bars.values():
            bar.close()
        summary = summarize_rows(rows, chosen, seed=seed)
        write_summary(out_dir, summary, extra | {"threshold": scorer.threshold})
        typer.echo(f"{len(items)} items of {testset} ({len(compared)} with a comparison); 'states the gold' = same "
                   f"stance and cosine >= {scorer.threshold:.3f}; models decoded "
                   f"{'with' if constrained else 'without'} the format's grammar"
                   + (f", statements kept when >= {min_support} of {votes} sampled votes state them" if votes else ""))
        typer.echo(summary_table(summary))
        typer.echo(f"rows and summary in {out_dir}")
        if "sanity_check" in extra:
            typer.echo(json.dumps({"judge_sanity_check_passed": extra["sanity_check"]["passed"]}))
