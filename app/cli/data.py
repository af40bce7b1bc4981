"""`cdra data scenarios|build|stats` and `cdra bench data`: DeepPref construction from the command line.

Thin wrappers: the work lives in training/scenarios.py, training/deeppref.py, training/data_card.py
and training/bench_data.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

data_app = typer.Typer(help="DeepPref data: scenarios, council trees with step critiques, data cards.",
                       no_args_is_help=True)

_ROLES = ("policy", "preference", "prm", "judge", "teacher")


def _split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _role(name: str) -> str:
    from alignment.errors import CdraError

    if name not in _ROLES:
        raise CdraError(f"unknown model role {name!r}: choose from {', '.join(_ROLES)}")
    return name


@data_app.command("scenarios")
def scenarios_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="scenario JSONL to write; existing scenarios in it are kept")],
    from_sessions: Annotated[Optional[Path], typer.Option(
        "--from-sessions", help="import from a session-log export (JSONL) instead of generating")] = None,
    domains: Annotated[Optional[str], typer.Option(help="comma-separated domains (default: the 20 built-in)")] = None,
    per_domain: Annotated[int, typer.Option(help="new scenarios to generate per domain")] = 3,
    dedup_threshold: Annotated[float, typer.Option(help="drop scenarios this cosine-similar to one kept")] = 0.9,
    domain: Annotated[str, typer.Option(help="domain given to imported session scenarios")] = "chat",
    seed: Annotated[Optional[int], typer.Option(help="sampling seed (default: settings.seed)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="budget of one generated scenario")] = 160,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Generate new (P, q) scenarios with the teacher, or import them from logged chat sessions."""
    from app.cli import settings_from
    from app.models import engine_for
    from training.scenarios import (
        DEFAULT_DOMAINS,
        deduplicate,
        generate_scenarios,
        import_session_log,
        load_embedder,
        read_scenarios,
        write_scenarios,
    )

    settings = settings_from(ctx)
    existing = read_scenarios(out) if out.is_file() else []
    embedder = load_embedder(settings.memory.embedding_model)
    if from_sessions is not None:
        imported = import_session_log(from_sessions, domain=domain)
        known = {s.id for s in existing}
        fresh = [s for s in imported.scenarios if s.id not in known]
        new, duplicates = deduplicate(fresh, embedder, dedup_threshold, existing=existing)
        typer.echo(f"imported {len(new)} scenarios from {from_sessions} ({imported.without_preferences} turns without "
                   f"stored preferences, {imported.repeated} repeated queries, {duplicates} near-duplicates skipped)")
    else:
        result = generate_scenarios(
            engine_for(settings, "teacher"), _split_list(domains) or list(DEFAULT_DOMAINS), per_domain,
            embedder=embedder, dedup_threshold=dedup_threshold, existing=existing,
            seed=settings.seed if seed is None else seed, max_new_tokens=max_new_tokens, progress=progress,
        )
        new = result.scenarios
        typer.echo(f"generated {len(new)} scenarios in {result.model_calls} batched calls ({result.unparseable} "
                   f"unparseable replies, {result.too_short} too short, {result.duplicates} near-duplicates dropped)")
    write_scenarios(out, [*existing, *new])
    typer.echo(f"{out}: {len(existing) + len(new)} scenarios")


@data_app.command("build")
def build_cmd(
    ctx: typer.Context,
    scenarios: Annotated[Path, typer.Option("--scenarios", help="scenario JSONL (or datasets directory)")],
    out: Annotated[Path, typer.Option("--out", help="build directory; rerun with the same options to resume")],
    tiny: Annotated[bool, typer.Option(help="small tree: 2 personas, depth 2, short replies (CPU)")] = False,
    limit: Annotated[Optional[int], typer.Option(help="only the first N scenarios")] = None,
    evaluator: Annotated[str, typer.Option(help="model role that writes the step critiques")] = "judge",
    personas: Annotated[Optional[str], typer.Option(help="comma-separated council personas")] = None,
    depth: Annotated[Optional[int], typer.Option(help="reasoning steps per path")] = None,
    breadth: Annotated[Optional[int], typer.Option(help="frontier nodes kept per level")] = None,
    branching: Annotated[Optional[int], typer.Option(help="thoughts per persona per node")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="prune thoughts with value V below this")] = None,
    validation_fraction: Annotated[Optional[float], typer.Option(help="share of scenarios for validation")] = None,
    seed: Annotated[Optional[int], typer.Option(help="build seed (default: settings.seed)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Grow council trees, critique every step, write D_Rea, D_RFT and a data card (resumable)."""
    from dataclasses import replace

    from app.cli import settings_from
    from app.models import engine_for
    from training.deeppref import BuildConfig, build_deeppref
    from training.scenarios import read_scenarios

    settings = settings_from(ctx)
    items = read_scenarios(scenarios)[:limit]
    seed = settings.seed if seed is None else seed
    config = BuildConfig.tiny(seed=seed) if tiny else BuildConfig(seed=seed)
    council = {k: v for k, v in {"depth": depth, "breadth": breadth, "branching": branching,
                                 "value_threshold": threshold}.items() if v is not None}
    if personas:
        council["personas"] = tuple(_split_list(personas) or ())
    config = replace(config, council=replace(config.council, **council))
    if validation_fraction is not None:
        config = replace(config, validation_fraction=validation_fraction)
    teacher = engine_for(settings, "teacher")
    judge = engine_for(settings, _role(evaluator))  # type: ignore[arg-type]
    typer.echo(f"building {len(items)} scenarios into {out} (teacher: {teacher.description}; evaluator "
               f"[{evaluator}]: {judge.description})")
    summary = build_deeppref(items, teacher, judge, out, config, progress=progress)
    typer.echo(f"{summary.computed} scenarios built, {summary.resumed} already finished; "
               f"{summary.rea_records} D_Rea paths -> {summary.rea_path}, {summary.rft_records} D_RFT -> "
               f"{summary.rft_path}; data card: {out / 'data_card.md'}")


@data_app.command("stats")
def stats_cmd(
    build_dir: Annotated[Path, typer.Argument(help="a build directory (or any directory with *rea*/*rft* JSONL)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the card as JSON")] = False,
) -> None:
    """Print the data card of a build: counts per domain, depth, scores, pruning, parse failures."""
    from rich.console import Console
    from rich.table import Table

    from training.data_card import compute_card_for_dir

    card = compute_card_for_dir(build_dir)
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    console = Console()
    overview = Table("measure", "value", title=f"DeepPref data card: {build_dir}")
    sc, rec = card["scenarios"], card["records"]
    overview.add_row("scenarios (total / with paths / failed)", f"{sc['total']} / {sc['with_paths']} / {sc['failed']}")
    overview.add_row("D_Rea paths / D_RFT records", f"{rec['rea']} / {rec['rft']}")
    overview.add_row("splits (D_Rea)", ", ".join(f"{k} {v}" for k, v in rec["splits"].items()) or "-")
    overview.add_row("mean depth", str(card["depth"]["mean"]))
    for name in ("steps", "answers", "path_totals"):
        s = card["scores"][name]
        overview.add_row(f"scores: {name} (mean ± std)", "-" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
    if "tree" in card:
        t, a = card["tree"], card["annotation"]
        overview.add_row("nodes proposed / pruning rate", f"{t['nodes_proposed']} / {t['pruning_rate']}")
        overview.add_row("pruned by reason", ", ".join(f"{k} {v}" for k, v in t["nodes_pruned"].items()))
        overview.add_row("unreadable values / critiques", f"{t['value_parse_failures']} / {a['parse_failures']}")
        overview.add_row("paths dropped (unreadable score)", str(a["dropped_paths"]))
        overview.add_row("read leniently (unconstrained teacher / evaluator)",
                         f"{t.get('repaired', 0)} / {a.get('repaired', 0)}")
        overview.add_row("model calls per tree (teacher / evaluator)",
                         f"{t['teacher_calls_per_tree']} / {a['evaluator_calls_per_tree']}")
    console.print(overview)
    domains = Table("domain", "scenarios", "paths", "RFT", "mean Σr", title="Per domain")
    for domain, row in card["per_domain"].items():
        domains.add_row(domain, str(row["scenarios"]), str(row["paths"]), str(row["rft"]),
                        str(row.get("mean_total_score", "-")))
    console.print(domains)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("data")
    def bench_data_cmd(
        ctx: typer.Context,
        scenarios: Annotated[Optional[Path], typer.Option(help="scenario JSONL (default: the seed scenarios)")] = None,
        count: Annotated[int, typer.Option(help="scenarios (trees) per mode")] = 2,
        depth: Annotated[int, typer.Option(help="tree depth")] = 2,
        personas: Annotated[str, typer.Option(help="comma-separated council personas")] = "Psychologist,Pragmatist",
        thought_tokens: Annotated[int, typer.Option(help="most tokens of one thought (the format's bound)")] = 40,
        answer_tokens: Annotated[int, typer.Option(help="budget of one final answer")] = 64,
        seed: Annotated[int, typer.Option(help="build seed")] = 0,
    ) -> None:
        """Council trees on the teacher: nodes per second and model calls per tree, batched vs one call per node."""
        from rich.console import Console
        from rich.table import Table

        from app.cli import settings_from
        from app.models import engine_for
        from training.bench_data import bench_council
        from training.council import CouncilConfig
        from training.scenarios import SEED_SCENARIOS, read_scenarios

        settings = settings_from(ctx)
        items = read_scenarios(scenarios or SEED_SCENARIOS)[:count]
        config = CouncilConfig(personas=tuple(_split_list(personas) or ()), depth=depth, breadth=2,
                               step_tokens=thought_tokens, value_samples=2,
                               answer_max_new_tokens=answer_tokens)
        engine = engine_for(settings, "teacher")
        rows, ratio = bench_council(engine, items, config, seed=seed)
        table = Table("mode", "trees", "nodes", "model calls / tree", "seconds", "CPU seconds", "nodes / s",
                      title=f"cdra bench data: council trees on {engine.description}")
        for r in rows:
            table.add_row(r["mode"], str(r["trees"]), str(r["nodes"]), f"{r['calls_per_tree']:.1f}",
                          f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['nodes_per_s']:.3f}")
        Console().print(table)
        typer.echo(f"batched / one call per node: {ratio:.2f}x nodes per second")
