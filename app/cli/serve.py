"""`cdra serve` (the OpenAI-compatible API under uvicorn) and `cdra bench generate` (decode speed)."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from alignment.errors import CdraError


def build_responder(settings):
    """The personalization hook for ``cdra-policy``: ``app.assistant.make_responder(settings)`` when the
    assistant module provides it, else ``None`` (answers come straight from the policy engine)."""
    try:
        from app import assistant
    except ModuleNotFoundError as exc:
        if exc.name != "app.assistant":
            raise
        return None
    factory = getattr(assistant, "make_responder", None)
    return factory(settings) if factory is not None else None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CdraError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another with --port") from exc


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        ctx: typer.Context,
        host: Annotated[str | None, typer.Option(help="bind address (default 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option(help="port (default 8000)")] = None,
    ) -> None:
        """Serve the OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models."""
        import uvicorn

        from app.cli import settings_from
        from app.models import engine_for
        from app.server import check_exposure, create_app, keys_configured, served_models
        from app.users import UserStore

        settings = settings_from(ctx)
        serve = settings.serve.model_copy(
            update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
        settings = settings.model_copy(update={"serve": serve})
        users = UserStore.for_data_dir(settings.data_dir)
        check_exposure(serve, users)  # no key, no listening beyond loopback
        _check_port_free(serve.host, serve.port)
        # load the policy before listening: a bad model path fails here, in one line, not on the first request
        policy = engine_for(settings, "policy")
        from app.models import share_cpu_with_llamacpp

        share_cpu_with_llamacpp(settings)  # torch keeps clear of llama.cpp's cores (issue 11)
        api = create_app(settings, responder=build_responder(settings), users=users)
        typer.echo(f"serving {policy.description} as {', '.join(served_models())}")
        typer.echo(f"OpenAI-compatible API on http://{serve.host}:{serve.port}/v1"
                   + (" (Bearer key required; `user` must be the key's own user)" if keys_configured(serve, users)
                      else " (no API key configured: loopback only, no personalized answers)"))
        uvicorn.run(api, host=serve.host, port=serve.port, log_level="warning", access_log=False)


def register_bench(bench_app: typer.Typer) -> None:
    @bench_app.command("generate")
    def bench_generate_cmd(
        ctx: typer.Context,
        new_tokens: Annotated[int, typer.Option(help="tokens to decode per prompt")] = 64,
        repeats: Annotated[int, typer.Option(help="timed runs per measurement (the median is shown)")] = 3,
        role: Annotated[str, typer.Option(help="which role's model to measure")] = "policy",
        llamacpp: Annotated[bool, typer.Option("--llamacpp/--no-llamacpp",
                                               help="compare with llama.cpp on the packaged GGUF")] = True,
        cold: Annotated[bool, typer.Option("--cold/--no-cold",
                                           help="also time a cold GGUF conversion into a temporary cache")] = False,
    ) -> None:
        """Load time, peak memory and decode tokens/s (batch 1 and 8), beside llama.cpp on the same GGUF."""
        from rich.console import Console

        from alignment.engines.bench import bench_generate, report_table
        from app.cli import settings_from
        from app.models import resolve_spec
        from app.settings import ROLES

        if role not in ROLES:
            raise CdraError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        settings = settings_from(ctx)
        spec, version = resolve_spec(settings, role)  # type: ignore[arg-type]
        console = Console()
        report = bench_generate(spec, settings.models_dir, version=version, new_tokens=new_tokens,
                                repeats=repeats, llamacpp=llamacpp, cold=cold,
                                progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))
        console.print(report_table(report))
