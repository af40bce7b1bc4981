"""The Gradio app (issue 14, S2/R4): a session's queue stream is readable only by the signed-in user who
started it (the real Gradio 6 server with the stream guard, two users over HTTP), and no handler shows the
browser an exception, whatever its inputs."""

from __future__ import annotations

import inspect
import json
import socket
import uuid
import warnings

import gradio as gr
import httpx
import pytest

from app.assistant import Assistant, AssistantConfig
from app.stream_guard import stream_guard
from app.ui.handler_guard import UNEXPECTED

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def echo_app():
    """A real Gradio server (sign-in, queue, the stream guard) with one streaming event."""

    def spell(text: str, request: gr.Request):
        for i in range(1, len(text) + 1):
            yield f"{request.username}: {text[:i]}"

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(spell, [box], [out], api_visibility="private")
    demo.queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=list(PASSWORDS.items()), ssr_mode=False, app_kwargs={"middleware": [stream_guard()]})
    yield f"http://127.0.0.1:{port}", demo
    demo.close()


def _signed_in(url: str, user: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    r = client.post("/login", data={"username": user, "password": PASSWORDS[user]})
    assert r.status_code == 200, r.text
    return client


def _events(client: httpx.Client, session_hash: str) -> tuple[int, list[dict]]:
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, []
        out = []
        for line in r.iter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
                if out[-1].get("msg") == "process_completed":
                    break
        return 200, out


def _status(client: httpx.Client, method: str, path: str) -> int:
    """The status of a request whose body may be an endless stream (a heartbeat)."""
    with client.stream(method, path) as r:
        return r.status_code


def test_another_user_cannot_read_or_use_a_session(echo_app):
    url, demo = echo_app
    fn_index = next(iter(demo.fns))
    alice, bob = _signed_in(url, "alice"), _signed_in(url, "bob")
    anonymous = httpx.Client(base_url=url, timeout=30)
    session = uuid.uuid4().hex[:11]
    join = {"data": ["secret allergy"], "fn_index": fn_index, "session_hash": session, "event_data": None,
            "trigger_id": None}
    assert alice.post("/gradio_api/queue/join", json=join).status_code == 200
    refused = {
        "bob reads the stream": _events(bob, session)[0],
        "nobody reads the stream": _events(anonymous, session)[0],
        "bob joins the session": bob.post("/gradio_api/queue/join", json=join).status_code,
        "bob's heartbeat on it": _status(bob, "GET", f"/gradio_api/heartbeat/{session}"),
        "bob cancels in it": bob.post("/gradio_api/cancel", json={"session_hash": session, "fn_index": fn_index,
                                                                  "event_id": "x"}).status_code,
    }
    assert all(status in (401, 403) for status in refused.values()), refused
    status, events = _events(alice, session)  # the owner still gets her whole stream
    assert status == 200 and events[-1]["msg"] == "process_completed"
    assert events[-1]["output"]["data"] == ["alice: secret allergy"]
    own = uuid.uuid4().hex[:11]  # and bob's own sessions work
    assert bob.post("/gradio_api/queue/join", json={**join, "session_hash": own}).status_code == 200
    assert _events(bob, own)[1][-1]["output"]["data"] == ["bob: secret allergy"]


class _Request:
    """What Gradio hands a handler as ``gr.Request`` for a signed-in user."""

    username = "alice"
    session_hash = "s"


def test_no_handler_shows_an_exception_whatever_its_inputs(settings):
    """Every event of the real app, called with None (then junk text) for each input: only readable gr.Errors."""
    from app.ui import build_app

    assistant = Assistant(settings, AssistantConfig(background_inference=False))
    demo = build_app(settings, assistant, personas=[])
    leaked = []
    #: None for everything, then text where the browser sends values (gr.State stays server-side: None)
    passes = [lambda p: None, lambda p: None if p.name == "state" else "\x00" * 20]
    calls = [(fn, fill) for fn in demo.fns.values() if fn.fn is not None for fill in passes]
    for block_fn, fill in calls:
        params = inspect.signature(block_fn.fn).parameters.values()
        args = [_Request() if p.name == "request" else fill(p) for p in params]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gr.Warning outside a request is a Python warning
                out = block_fn.fn(*args)
                if inspect.isgenerator(out):
                    for _ in zip(range(50), out):
                        pass
        except gr.Error as exc:
            if exc.message == UNEXPECTED:
                leaked.append(f"{block_fn.name}: a bug behind a generic message")
        except Exception as exc:  # noqa: BLE001 - what the test counts
            leaked.append(f"{block_fn.name}: {type(exc).__name__}: {exc}")
    assistant.close()
    assert leaked == [], leaked
