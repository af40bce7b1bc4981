"""`cdra eval ...`: evaluation runs and reports. Subcommands come from the modules that own them:
``eval_prefs`` (Acc_jud / Acc_gen), ``eval_aloe`` (human ALOE sessions), ``eval_run`` (judge metrics,
baselines, compare)."""

from __future__ import annotations

import importlib

import typer

eval_app = typer.Typer(help="Evaluate like the papers: judge metrics, preference inference, ALOE.", no_args_is_help=True)

_OWNERS = ("app.cli.eval_prefs", "app.cli.eval_aloe", "app.cli.eval_run")


def register(app: typer.Typer) -> None:
    for name in _OWNERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register_eval(eval_app)
    app.add_typer(eval_app, name="eval")


def register_bench(bench_app: typer.Typer) -> None:
    for name in _OWNERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        hook = getattr(module, "register_bench", None)
        if hook is not None:
            hook(bench_app)
