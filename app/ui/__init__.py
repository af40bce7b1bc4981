"""The Gradio app (``cdra chat``): Chat, Memory and ALOE tabs, one module per tab. Every handler acts for
the signed-in ``gr.Request.username`` only; per-tab state is server-side ``gr.State``. Public names here."""

from app.ui.blocks import App
from app.ui.common import MODEL_EVENTS
from app.ui.launcher import PACKAGED_PERSONAS, build_app, is_loopback, launch, load_personas, prepare_auth
from app.ui.rendering import (
    CSS,
    reasoning_html,
    render_answer,
    render_retrieved,
    split_reasoning,
    status_line,
)

__all__ = [
    "CSS",
    "MODEL_EVENTS",
    "PACKAGED_PERSONAS",
    "App",
    "build_app",
    "is_loopback",
    "launch",
    "load_personas",
    "prepare_auth",
    "reasoning_html",
    "render_answer",
    "render_retrieved",
    "split_reasoning",
    "status_line",
]
