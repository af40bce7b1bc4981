"""`cdra models`: which model serves each role, from where, and the registered versions."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(ctx: typer.Context) -> None:
        """Show which model serves each role (policy, preference, prm, judge, teacher) and from where."""
        from app.cli import settings_from
        from app.models import describe_roles
        from training.registry import ModelRegistry

        settings = settings_from(ctx)
        table = Table("role", "backend", "version", "source", title="Serving")
        for row in describe_roles(settings):
            table.add_row(row["role"], row["backend"], row["version"], row["source"])
        console = Console()
        console.print(table)
        registry = ModelRegistry(settings.registry_dir)
        serving = registry.serving_map()
        versions = Table("role", "version", "parent", "created", "metrics", "serving", title="Registered versions")
        for role in ("policy", "prm", "preference"):
            for m in registry.versions(role):
                metrics = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.metrics.items())
                versions.add_row(role, m.version, m.parent or "-", m.created[:19], metrics, "*" if serving.get(role) == m.version else "")
        if versions.row_count:
            console.print(versions)
