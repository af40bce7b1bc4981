"""`cdra chat` (the Gradio app) and `cdra ask` (one answer on stdout)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("ask")
    def ask_cmd(
        ctx: typer.Context,
        message: Annotated[str, typer.Argument(help="what to ask")],
        user: Annotated[str, typer.Option("--user", "-u", help="whose memory to use")] = "default",
        max_new_tokens: Annotated[Optional[int], typer.Option(help="answer length limit")] = None,
        show_reasoning: Annotated[bool, typer.Option("--reasoning/--no-reasoning", help="print the reasoning steps")] = False,
    ) -> None:
        """Answer one message for USER on stdout, with their memory, and log the turn."""
        from alignment.engines import SamplingParams
        from alignment.prompts import render
        from alignment.prompts.policy import POLICY_PROMPT, format_preferences
        from alignment.steps import parse_response
        from app.cli import settings_from
        from app.models import engine_for

        settings = settings_from(ctx)
        engine = engine_for(settings, "policy")
        params = SamplingParams(max_new_tokens=max_new_tokens or settings.chat.max_new_tokens, temperature=0.0)
        conversation = render(POLICY_PROMPT, preferences=format_preferences([]), query=message)
        text = engine.generate([conversation], params)[0][0].text
        parsed = parse_response(text)
        if show_reasoning:
            for i, step in enumerate(parsed.steps, 1):
                typer.echo(f"Step {i}: {step}")
        typer.echo(parsed.answer)

    @app.command("chat")
    def chat_cmd(
        ctx: typer.Context,
        host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1)")] = None,
        port: Annotated[Optional[int], typer.Option(help="port (default 7860)")] = None,
        root_path: Annotated[Optional[str], typer.Option(help="URL prefix behind a reverse proxy")] = None,
    ) -> None:
        """Serve the chat app in the browser."""
        from app.cli import settings_from
        from app.ui import launch

        settings = settings_from(ctx)
        chat = settings.chat.model_copy(
            update={k: v for k, v in {"host": host, "port": port, "root_path": root_path}.items() if v is not None}
        )
        launch(settings.model_copy(update={"chat": chat}))
