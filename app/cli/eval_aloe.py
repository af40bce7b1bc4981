"""`cdra eval aloe-report`: finished ALOE sessions from the session log -> Table 2 (Markdown, CSV, PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register_eval(eval_app: typer.Typer) -> None:
    @eval_app.command("aloe-report")
    def aloe_report_cmd(
        ctx: typer.Context,
        out: Annotated[
            Optional[Path],
            typer.Option("--out", "-o", help="output directory (default data_dir/reports/aloe)"),
        ] = None,
        include_unfinished: Annotated[
            bool, typer.Option("--include-unfinished", help="also paused/active sessions")
        ] = False,
        simulated: Annotated[
            Optional[Path], typer.Option("--simulated", help="JSONL of simulated AloeRating records to add")
        ] = None,
    ) -> None:
        """Mean alignment rating per turn k and on average, per policy version, like the paper's Table 2."""
        from app.aloe import ratings_from_log
        from app.aloe_report import write_aloe_report
        from app.assistant import open_log
        from app.cli import settings_from

        settings = settings_from(ctx)
        ratings = ratings_from_log(open_log(settings), include_unfinished=include_unfinished)
        if simulated is not None:
            ratings += _read_ratings(simulated)
        report = write_aloe_report(ratings, out or settings.data_dir / "reports" / "aloe")
        typer.echo(report.markdown, nl=False)
        typer.echo(f"wrote {report.markdown_path}, {report.csv_path}, {report.png_path}")


def _read_ratings(path: Path):
    """AloeRating records, one JSON object a line, with file:line in every error."""
    from alignment.errors import CdraError, FormatError
    from alignment.records import jsonl_objects  # bad bytes, nesting, numbers: FormatError file:line
    from app.aloe_report import AloeRating

    out = []
    for where, obj in jsonl_objects(path):
        try:
            out.append(
                AloeRating(
                    obj["session_id"],
                    obj["policy_version"],
                    obj["turn"],
                    obj["rating"],
                    obj.get("source", "simulated"),
                )
            )
        except KeyError as exc:
            raise FormatError(f"{where}: missing key {exc.args[0]!r}") from None
        except (CdraError, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: {exc}") from None
    return out
