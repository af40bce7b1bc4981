"""`cdra chat` (the Gradio app), `cdra ask` (one answer on stdout, with the user's memory, logged) and
`cdra bench chat` (answers, template echo, turn latency and decode speed over PrefEval prompts)."""

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
        max_new_tokens: Annotated[Optional[int], typer.Option(help="cap on the new tokens of the turn")] = None,
        reasoning_steps: Annotated[Optional[int], typer.Option(min=1, max=5, help="at most this many reasoning steps")] = None,
        step_tokens: Annotated[Optional[int], typer.Option(min=8, help="token budget of one reasoning step")] = None,
        answer_tokens: Annotated[Optional[int], typer.Option(min=16, help="token budget of the answer")] = None,
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
        from app.models import share_cpu_with_llamacpp
        from app.users import check_name

        settings = settings_from(ctx)
        budget = {"max_new_tokens": max_new_tokens, "reasoning_steps": reasoning_steps, "step_tokens": step_tokens,
                  "answer_tokens": answer_tokens}
        budget = {k: v for k, v in budget.items() if v}
        if budget:
            settings = settings.model_copy(update={"chat": settings.chat.model_copy(update=budget)})
        check_name(user)
        # a one-shot command cannot wait for background inference; explicit preferences are still stored
        share_cpu_with_llamacpp(settings)
        assistant = Assistant(settings, AssistantConfig(background_inference=False))
        result = assistant.answer(user, message, mode="ask")
        if show_preferences:
            for r in result.retrieved:
                typer.echo(f"[preference {r.score:.2f}] {r.text}")
        if show_reasoning:
            for i, step in enumerate(result.steps, 1):
                typer.echo(f"Step {i}: {step}")
        typer.echo(result.answer or "(the model wrote no answer: ask again)")

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
        from app.models import share_cpu_with_llamacpp
        from app.ui import launch

        settings = settings_from(ctx)
        share_cpu_with_llamacpp(settings)  # this process serves chats: torch keeps clear of llama.cpp's cores
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
        turns: Annotated[int, typer.Option(min=1, help="PrefEval prompts, one timed turn each (after a warm-up)")] = 30,
        records: Annotated[int, typer.Option(min=0, help="memory records of the benchmark user")] = 1000,
        data: Annotated[Optional[Path], typer.Option(
            help="PrefEval directory or JSONL with preference/query (default: shared/data/prefeval)")] = None,
        anchor: Annotated[bool, typer.Option("--anchor/--no-anchor",
                                             help="measure llama.cpp alone on the same GGUF")] = True,
    ) -> None:
        """Answer rate, template echo, time to the first answer token and full turn time over PrefEval prompts;
        serving decode speed against llama.cpp alone on the same GGUF."""
        from rich.console import Console

        from app.bench_chat import print_report, run_bench
        from app.cli import settings_from

        console = Console()
        result = run_bench(settings_from(ctx), turns=turns, records=records, source=data, anchor=anchor,
                           progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
        print_report(result)
