"""`cdra`: the command line. Each subcommand group lives in its own module and stays thin."""

from __future__ import annotations

import os
import sys

# Nothing in this product may reach a model hub or send analytics.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep instead of spinning while they wait: on a CPU shared with other processes
# spinning made torch 3-9x slower (measured with `cdra bench generate`); must precede `import torch`
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

from alignment.errors import CdraError  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402

app = typer.Typer(
    name="cdra",
    help="A personalized assistant that infers what you really want and reasons defensively.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML settings file")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="where models, memory, logs live")] = None,
) -> None:
    ctx.obj = {"config": config, "data_dir": data_dir}


def settings_from(ctx: typer.Context, **overrides: object) -> Settings:
    """The settings for this invocation: TOML < env < the root flags < the subcommand's flags."""
    root = ctx.find_root().obj or {}
    return load_settings(root.get("config"), data_dir=root.get("data_dir"), **overrides)


def _register() -> None:
    from app.cli import bench, chat, data, eval as eval_cmd, models, prefs, serve, train, users

    for module in (chat, models, serve, prefs, users, data, train, eval_cmd, bench):
        module.register(app)


def main() -> None:
    os.umask(0o077)  # what cdra writes (memory, logs, exports, retrain runs) is its owner's only: docs/SECURITY.md
    _register()
    try:
        app()
    except CdraError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
