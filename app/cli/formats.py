"""`cdra bench formats`: parse rate and per-token cost of every declared output format, free vs constrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("formats")
    def bench_formats(
        ctx: typer.Context,
        n: Annotated[int, typer.Option("--n", help="real inputs per format from data/dev")] = 20,
        timing: Annotated[int, typer.Option(help="inputs per format decoded one by one for ms/token")] = 3,
        engines: Annotated[str, typer.Option(help="comma-separated: transformers, llamacpp")] = "transformers,llamacpp",
        only: Annotated[str, typer.Option("--formats", help="comma-separated subset (default: all)")] = "",
        seed: Annotated[int, typer.Option(help="sampling seed (T = 0.7)")] = 0,
        out: Annotated[Path | None, typer.Option(
            help="write the rows as JSON here, after each format (atomically); a rerun resumes from them")] = None,
    ) -> None:
        """Every output type: parse rate unconstrained vs constrained, decode ms/token with vs without constraint.

        Long (minutes per format and engine on 2 cores): a progress bar shows each output decoded; with --out an
        interrupted run keeps every finished format and the same command picks up where it stopped."""
        from rich.console import Console

        from alignment.engines import ModelSpec, build_engine
        from alignment.errors import CdraError
        from app.bench_formats import bench_engine, format_cases, format_table, load_rows
        from app.cli import settings_from
        from training.registry import write_json_atomic

        settings = settings_from(ctx)
        cases = format_cases(n)
        if only:
            unknown = set(only.split(",")) - set(cases)
            if unknown:
                raise CdraError(f"unknown formats {sorted(unknown)}: choose from {', '.join(cases)}")
            cases = {k: v for k, v in cases.items() if k in only.split(",")}
        console = Console(stderr=True)
        saved = load_rows(out) if out is not None else []
        if saved:
            console.print(f"resuming: {len(saved)} rows already in {out}")
        rows: list = []
        measured: list = []  # this run's rows, saved with the resumed ones after each format

        def save(row) -> None:
            measured.append(row)
            if out is not None:
                fresh = {(r.engine, r.format) for r in measured}
                write_json_atomic(out, [r.__dict__ for r in saved if (r.engine, r.format) not in fresh]
                                  + [r.__dict__ for r in measured])

        for name in engines.split(","):
            backend = {"transformers": "default", "llamacpp": "llamacpp"}.get(name.strip())
            if backend is None:
                raise CdraError(f"unknown engine {name!r}: use transformers or llamacpp")
            if all((name.strip(), label) in {(r.engine, r.format) for r in saved} for label in cases):
                rows += [r for r in saved if r.engine == name.strip() and r.format in cases]
                continue
            engine = build_engine(ModelSpec(backend=backend), settings.models_dir)
            rows += bench_engine(name.strip(), engine, cases, timing, seed, done=saved, on_row=save)
        typer.echo(format_table(rows))
