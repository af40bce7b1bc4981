"""`cdra chat` (the Gradio app), `cdra ask` (one answer on stdout, with the user's memory, logged) and
`cdra bench chat` (per-turn latency split and the memory overhead against a bare generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ask")
    def ask_cmd(
        ctx: typer.Context,
        message: Annotated[str, typer.Argument(help="what to ask")],
        user: Annotated[
            str, typer.Option("--user", "-u", help="whose memory to use (and log the turn under)")
        ] = "local",
        max_new_tokens: Annotated[Optional[int], typer.Option(help="answer length limit")] = None,
        show_reasoning: Annotated[
            bool, typer.Option("--reasoning/--no-reasoning", help="print the reasoning steps")
        ] = False,
        show_preferences: Annotated[
            bool, typer.Option("--preferences/--no-preferences", help="print the preferences used")
        ] = False,
    ) -> None:
        """Answer one message for USER on stdout, with their memory, and log the turn (mode "ask")."""
        from app.assistant import Assistant, AssistantConfig
        from app.cli import settings_from
        from app.users import check_name

        settings = settings_from(ctx)
        if max_new_tokens:
            settings = settings.model_copy(
                update={"chat": settings.chat.model_copy(update={"max_new_tokens": max_new_tokens})}
            )
        check_name(user)
        # a one-shot command cannot wait for background inference; explicit preferences are still stored
        assistant = Assistant(settings, AssistantConfig(background_inference=False))
        result = assistant.answer(user, message, mode="ask")
        if show_preferences:
            for r in result.retrieved:
                typer.echo(f"[preference {r.score:.2f}] {r.text}")
        if show_reasoning:
            for i, step in enumerate(result.steps, 1):
                typer.echo(f"Step {i}: {step}")
        typer.echo(
            result.answer
            if result.answer
            else "(the answer was cut off at the length limit: raise --max-new-tokens)"
        )

    @app.command("chat")
    def chat_cmd(
        ctx: typer.Context,
        host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1)")] = None,
        port: Annotated[Optional[int], typer.Option(help="port (default 7860)")] = None,
        root_path: Annotated[Optional[str], typer.Option(help="URL prefix behind a reverse proxy")] = None,
        personas: Annotated[
            Optional[Path], typer.Option(help="ALOE persona JSONL for the evaluation tab")
        ] = None,
    ) -> None:
        """Serve the chat app in the browser (sign-in required; the first start creates an account)."""
        from app.cli import settings_from
        from app.ui import launch

        settings = settings_from(ctx)
        chat = settings.chat.model_copy(
            update={
                k: v for k, v in {"host": host, "port": port, "root_path": root_path}.items() if v is not None
            }
        )
        launch(settings.model_copy(update={"chat": chat}), personas_file=personas)


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("chat")
    def bench_chat_cmd(
        ctx: typer.Context,
        turns: Annotated[int, typer.Option(min=1, help="timed turns (after one warm-up)")] = 5,
        records: Annotated[int, typer.Option(min=0, help="memory records of the benchmark user")] = 1000,
        max_new_tokens: Annotated[int, typer.Option(min=1, help="answer length per turn")] = 64,
    ) -> None:
        """Time to first token and total time per turn, split into retrieval, prompt, generation, logging."""
        from app.bench_chat import print_report, run_bench
        from app.cli import settings_from

        print_report(
            run_bench(settings_from(ctx), turns=turns, records=records, max_new_tokens=max_new_tokens)
        )
