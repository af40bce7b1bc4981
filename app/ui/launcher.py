"""Building and serving the app (``cdra chat``): the ALOE personas it offers, sign-in (the first account on a
fresh install; single-user ``local`` only on loopback), the queue and ``demo.launch``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import gradio as gr

from alignment.errors import CdraError
from app.aloe import Persona, read_personas
from app.assistant import Assistant
from app.settings import Settings
from app.stream_guard import stream_guard
from app.ui.blocks import App
from app.ui.rendering import CSS
from app.users import UserStore, ensure_first_account

PACKAGED_PERSONAS = Path(__file__).resolve().parent.parent / "aloe_personas.jsonl"  # app/, package data


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_personas(settings: Settings, personas_file: str | Path | None = None) -> list[Persona]:
    """The operator's persona file (``--personas``), else ``<data_dir>/aloe_personas.jsonl``, else the packaged examples."""
    candidates = (
        [Path(personas_file)]
        if personas_file
        else [Path(settings.data_dir) / "aloe_personas.jsonl", PACKAGED_PERSONAS]
    )
    for path in candidates:
        if personas_file or path.exists():
            return read_personas(path)
    return []


def build_app(
    settings: Settings, assistant: Assistant | None = None, personas: list[Persona] | None = None
) -> gr.Blocks:
    assistant = assistant or Assistant(settings)
    personas = personas if personas is not None else load_personas(settings)
    return App(settings, assistant, personas).build()


def prepare_auth(settings: Settings):
    """The sign-in callback, creating the first account on a fresh install (printed once).

    With ``chat.auth = false`` there is no sign-in: the app serves the single user ``local`` and
    only on a loopback address, so nobody else can reach that memory.
    """
    chat = settings.chat
    if not chat.auth:
        if not is_loopback(chat.host):
            raise CdraError(
                f"sign-in is off (chat.auth = false) so the app only listens on 127.0.0.1, not {chat.host}: "
                "turn chat.auth on (and add users with `cdra users add`) to serve other machines"
            )
        return None
    store = UserStore.for_data_dir(settings.data_dir)
    created = ensure_first_account(store)
    if created:
        name, password = created
        print(
            f"First start: created the account {name!r} with password {password!r}. Sign in with it; "
            "`cdra users add NAME --password P` adds more, `--replace` changes a password.",
            flush=True,
        )
    return store.verify


def launch(settings: Settings, personas_file: str | Path | None = None, block: bool = True):
    """Serve the app (``cdra chat``): sign-in, queue, loopback by default; returns (blocks, local URL)."""
    auth = prepare_auth(settings)
    assistant = Assistant(settings)
    demo = build_app(settings, assistant, load_personas(settings, personas_file))
    demo.queue(default_concurrency_limit=8, max_size=64)
    chat = settings.chat
    _, url, _ = demo.launch(
        server_name=chat.host,
        server_port=chat.port,
        root_path=chat.root_path or None,
        auth=auth,
        auth_message="Sign in to your personal assistant." if auth else None,
        prevent_thread_lock=not block,
        show_error=True,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        quiet=False,
        css=CSS,
        max_file_size="2mb",
        app_kwargs={"middleware": [stream_guard()]},  # a session's streams answer only the user who started it
    )
    if not block:
        return demo, url
    assistant.close()
    return demo, url
