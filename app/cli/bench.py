"""`cdra bench ...`: benchmarks that print side-by-side ratios. Each lives beside the code it measures;
the owning CLI module adds its command through ``register_bench(bench_app)``."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Speed and memory benchmarks, printed as tables with ratios.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    from app.cli import chat, data, eval as eval_cmd, formats, models, prefs, serve, train, train_bench

    for module in (serve, models, chat, prefs, data, train, eval_cmd, train_bench, formats):
        hook = getattr(module, "register_bench", None)
        if hook is not None:
            hook(bench_app)
    app.add_typer(bench_app, name="bench")
