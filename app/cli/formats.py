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
        out: Annotated[Path | None, typer.Option(help="also write the rows as JSON here")] = None,
    ) -> None:
        """Every output type: parse rate unconstrained vs constrained, decode ms/token with vs without constraint."""
        from rich.console import Console

        from alignment.engines import ModelSpec, build_engine
        from alignment.errors import CdraError
        from app.bench_formats import bench_engine, format_cases, format_table
        from app.cli import settings_from

        settings = settings_from(ctx)
        cases = format_cases(n)
        if only:
            unknown = set(only.split(",")) - set(cases)
            if unknown:
                raise CdraError(f"unknown formats {sorted(unknown)}: choose from {', '.join(cases)}")
            cases = {k: v for k, v in cases.items() if k in only.split(",")}
        console = Console(stderr=True)
        rows = []
        for name in engines.split(","):
            backend = {"transformers": "default", "llamacpp": "llamacpp"}.get(name.strip())
            if backend is None:
                raise CdraError(f"unknown engine {name!r}: use transformers or llamacpp")
            engine = build_engine(ModelSpec(backend=backend), settings.models_dir)
            with console.status("") as status:
                rows += bench_engine(name.strip(), engine, cases, timing, seed, progress=status.update)
        typer.echo(format_table(rows))
        if out is not None:
            out.write_text(json.dumps([r.__dict__ for r in rows], indent=1), encoding="utf-8")
