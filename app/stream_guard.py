"""Stream ownership for the Gradio app: a session's queue, event stream and state are reachable only by the
signed-in user whose browser tab started it.

Gradio keys a tab's events, its SSE stream (``/gradio_api/queue/data?session_hash=…``) and its server-side
state by a ``session_hash`` the browser makes up, and checks only that *someone* is signed in. This ASGI
middleware binds each session hash to the user of the first signed-in request that uses it, and answers
403 to any later request naming that hash on behalf of another user (or of nobody). The hash is read
where Gradio reads it: the path (``/heartbeat/{hash}``, ``/stream/{hash}/…``), the query string, or the
JSON body (``/queue/join``, ``/cancel``, ``/run``, ``/api``, ``/call``, ``/component_server``). The user is
found exactly as Gradio finds it for ``gr.Request.username``: its ``access-token`` cookie.
Wire it with ``demo.launch(app_kwargs={"middleware": [stream_guard()]})``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

API_PREFIX = "/gradio_api/"
#: routes whose second path segment is a session hash
_PATH_HASH_ROUTES = ("heartbeat", "stream")
#: a JSON body larger than this is refused rather than read into memory (Gradio's uploads are multipart)
MAX_JSON_BODY = 16 * 1024 * 1024


class StreamGuard:
    """ASGI middleware: ``session_hash`` -> the user who first used it; other users get 403."""

    def __init__(self, app: ASGIApp, max_sessions: int = 100_000) -> None:
        self.app = app
        self.max_sessions = max_sessions
        self.owners: OrderedDict[str, str | None] = OrderedDict()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if API_PREFIX not in path:
            await self.app(scope, receive, send)
            return
        hashes = set(_path_hashes(path.split(API_PREFIX, 1)[1]))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        hashes.update(h for h in query.get("session_hash", []) if h)
        if scope.get("method") == "POST" and _is_json(scope):
            body, too_big = await _read_body(receive, MAX_JSON_BODY)
            if too_big:
                await _refuse(send, 413, "the request body is too large")
                return
            hashes.update(_body_hashes(body))
            receive = _replay(body, receive)
        if hashes:
            user, signed_in = await _user(scope)
            for session_hash in hashes:
                if not self._allowed(session_hash, user, signed_in):
                    self.refused += 1
                    log.warning("refused %s for session %s…: it belongs to another user", path, session_hash[:4])
                    await _refuse(send, 403, "this session belongs to another user: reload the page to start your own")
                    return
        await self.app(scope, receive, send)

    def _allowed(self, session_hash: str, user: str | None, signed_in: bool) -> bool:
        if session_hash in self.owners:
            self.owners.move_to_end(session_hash)
            return self.owners[session_hash] == user
        if signed_in:  # only a signed-in request claims a session; anonymous ones never bind anything
            self.owners[session_hash] = user
            while len(self.owners) > self.max_sessions:
                self.owners.popitem(last=False)  # the oldest binding: a long-closed tab
        return True


def stream_guard(max_sessions: int = 100_000) -> Middleware:
    """The middleware entry for ``demo.launch(app_kwargs={"middleware": [...]})``."""
    return Middleware(StreamGuard, max_sessions=max_sessions)


def _path_hashes(rest: str) -> list[str]:
    parts = rest.split("/")
    if parts[0] == "heartbeat" and len(parts) >= 2 and parts[1]:
        return [parts[1]]
    if parts[0] == "stream" and len(parts) >= 4 and parts[1]:  # /stream/{hash}/{run}/{component}/…
        return [parts[1]]
    return []


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return b"json" in value.lower()
    return False


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later messages: the client disconnecting

    return replay


def _body_hashes(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON: Gradio answers it with its own 4xx
        return []
    value = data.get("session_hash") if isinstance(data, dict) else None
    return [value] if isinstance(value, str) and value else []


async def _user(scope: Scope) -> tuple[str | None, bool]:
    """(user name, signed in?) as Gradio's ``get_current_user`` sees this request."""
    app: Any = scope.get("app")
    if app is None or not hasattr(app, "tokens"):
        return None, False
    request = Request(scope)
    if getattr(app, "auth_dependency", None) is not None:
        user = app.auth_dependency(request)
        if inspect.isawaitable(user):
            user = await user
        return user, user is not None
    if getattr(app, "auth", None) is None:
        return None, True  # no sign-in at all (chat.auth = false, loopback only): one user, ``local``
    cookie_id = getattr(app, "cookie_id", "")
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    user = app.tokens.get(token)
    return user, user is not None


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
