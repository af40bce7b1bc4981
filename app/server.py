"""The OpenAI-compatible HTTP API (`cdra serve`): chat completions, raw completions, models, tokenize.

Served model names: ``cdra-policy`` (the assistant's policy; personalized by ``responder`` when a
request names a ``user``) and each role name for that role's engine. Every error is OpenAI-shaped
JSON ``{"error": {"message", "type", "param", "code"}}`` so any OpenAI client reports it cleanly;
every input is range-checked, so a client's mistake is a 4xx, never a 500.

Identity: a per-user API key (``cdra users key create NAME``) binds a request to its user, and the
``user`` field may name only that user (an ``--admin`` key may name anyone). The shared
``serve.api_key`` opens the models, never a user's memory. With no key configured the API serves
loopback only and personalizes nothing (docs/SECURITY.md).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from alignment.engines import (
    Completion,
    EmptyPromptError,
    Engine,
    EngineError,
    Message,
    PromptTooLongError,
    SamplingParams,
)
from alignment.engines.tokens import TokenEngine, TokenLogprob, reply_logprobs
from alignment.errors import CdraError
from app.settings import ROLES, ServeSettings, Settings
from app.users import UserError, UserStore, check_name

log = logging.getLogger(__name__)

POLICY_MODEL = "cdra-policy"
MAX_N = 16
MAX_TOP_LOGPROBS = 20
#: torch and numpy seed generators take 64-bit values
MAX_SEED = 2**63 - 1


# -- the personalization hook -----------------------------------------------------------------------
@dataclass(frozen=True)
class ResponderRequest:
    """One personalized answer to write. ``user`` is the OpenAI ``user`` field: it selects the memory."""

    user: str
    messages: list[Message]
    params: SamplingParams


#: yields the answer's text deltas; called once per requested choice (``n``)
Responder = Callable[[ResponderRequest], Iterable[str]]


def served_models() -> list[str]:
    return [POLICY_MODEL, *ROLES]


# -- errors -----------------------------------------------------------------------------------------
class APIError(Exception):
    """An error the client caused or must know about, rendered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_for(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, EmptyPromptError):
        return APIError(400, str(exc), code="empty_prompt", param="messages")
    if isinstance(exc, EngineError):
        return APIError(503, str(exc), type_="server_error", code="engine_unavailable")
    if isinstance(exc, CdraError):
        return APIError(400, str(exc))
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error")


# -- request bodies ---------------------------------------------------------------------------------
class _Body(BaseModel):
    #: unknown OpenAI fields (presence_penalty, tools, ...) are accepted and ignored, like vLLM does
    model_config = ConfigDict(extra="allow")


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessageIn(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatRequest(_Body):
    model: str = POLICY_MODEL
    messages: list[ChatMessageIn]
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    user: str | None = None


class CompletionRequest(_Body):
    model: str = POLICY_MODEL
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool = False
    add_special_tokens: bool = True
    user: str | None = None


class TokenizeRequest(_Body):
    model: str = POLICY_MODEL
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: str = POLICY_MODEL
    tokens: list[int]


# -- conversions ------------------------------------------------------------------------------------
_ROLE_ALIASES = {"developer": "system"}


def to_conversation(messages: Sequence[ChatMessageIn]) -> list[Message]:
    """OpenAI messages -> engine messages; text parts are joined, anything else is refused."""
    if not messages:
        raise APIError(400, "`messages` is empty: send at least one message", param="messages")
    out: list[Message] = []
    for i, m in enumerate(messages):
        role = _ROLE_ALIASES.get(m.role, m.role)
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role {m.role!r} is not supported: use system, user or assistant",
                           param=f"messages[{i}].role")
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            text = "".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        out.append({"role": role, "content": text})
    return out


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)


def _token_json(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs_json(entries: Sequence[TokenLogprob]) -> dict:
    """Per-token log-probs in the chat API's ``choices[i].logprobs`` shape."""
    content = []
    for e in entries:
        item = _token_json(e.token, e.logprob if e.logprob is not None else 0.0)
        item["top_logprobs"] = [_token_json(t, lp) for t, lp in e.top]
        content.append(item)
    return {"content": content}


def completion_logprobs_json(entries: Sequence[TokenLogprob], start_offset: int) -> dict:
    """Per-token log-probs in the legacy completions shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = start_offset
    for e in entries:
        tokens.append(e.token)
        lps.append(e.logprob)
        offsets.append(offset)
        offset += len(e.token)
        if e.logprob is None:
            tops.append(None)
        else:
            top = dict(e.top)
            top.setdefault(e.token, e.logprob)
            tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


# -- who is calling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    """An API request's identity: a user's key (``user`` set), the shared key, or nobody (no key configured)."""

    kind: Literal["user-key", "shared-key", "anonymous"]
    user: str | None = None
    admin: bool = False


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_configured(serve: ServeSettings, users: UserStore) -> bool:
    return bool(serve.api_key) or users.has_keys()


def check_exposure(serve: ServeSettings, users: UserStore) -> None:
    """Without any API key the API is open to whoever can connect: refuse to listen beyond loopback."""
    if not is_loopback(serve.host) and not keys_configured(serve, users):
        raise CdraError(
            f"no API key is configured, so `cdra serve` only listens on 127.0.0.1, not {serve.host}: create "
            "per-user keys with `cdra users key create NAME` (or set serve.api_key) to serve other machines"
        )


class Gatekeeper:
    """Authenticates requests (Bearer keys, re-read from the user store on every request, so a revoked
    key is refused at once) and decides which user's memory a request may use."""

    def __init__(self, serve: ServeSettings, users: UserStore) -> None:
        self.shared_key = serve.api_key
        self.users = users

    def caller(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        try:
            if not (self.shared_key or self.users.has_keys()):
                return Caller("anonymous")  # loopback only; OpenAI clients send some key ("EMPTY") anyway
            if not header:
                raise APIError(401, "missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
            if scheme.lower() == "bearer" and token:
                if self.shared_key and secrets.compare_digest(token.encode(), self.shared_key.encode()):
                    return Caller("shared-key")
                found = self.users.authenticate_key(token)
                if found is not None:
                    return Caller("user-key", found.user, found.admin)
        except UserError as exc:  # the user store itself is broken: the operator's to fix
            log.error("cannot check API keys: %s", exc)
            raise APIError(503, "the server cannot check API keys right now", type_="server_error",
                           code="auth_unavailable") from None
        raise APIError(401, "invalid API key: send `Authorization: Bearer <key>` with a key from "
                            "`cdra users key create NAME`", code="invalid_api_key")

    def personal_user(self, caller: Caller, requested: str) -> str:
        """The user whose memory a request naming ``user`` reads and writes, or a 401/403 refusal."""
        try:
            name = check_name(requested)
        except UserError as exc:
            raise APIError(400, f"`user`: {exc}", param="user", code="invalid_user") from None
        if caller.kind == "anonymous":
            raise APIError(401, "personalized answers (`user`) need that user's API key: create one with "
                                f"`cdra users key create {name}` and send it as `Authorization: Bearer <key>`",
                           code="invalid_api_key", param="user")
        if caller.kind == "shared-key":
            raise APIError(403, "the shared serve.api_key is not bound to a user, so it cannot use anyone's memory: "
                                f"send {name}'s own key (`cdra users key create {name}`)",
                           type_="permission_error", code="user_not_allowed", param="user")
        if name != caller.user and not caller.admin:
            raise APIError(403, f"this API key belongs to {caller.user!r}: it may not act as {name!r}",
                           type_="permission_error", code="user_not_allowed", param="user")
        return name


# -- engines by served name -------------------------------------------------------------------------
class EngineResolver:
    """Served model name -> engine. Without explicit engines, roles resolve on every request
    (``app.models.engine_for``), so a newly promoted policy is served without a restart."""

    def __init__(self, settings: Settings, engines: dict[str, Engine] | None) -> None:
        self.settings = settings
        self.engines = dict(engines) if engines is not None else None

    def names(self) -> list[str]:
        return list(self.engines) if self.engines is not None else served_models()

    def get(self, name: str) -> Engine:
        if name not in self.names():
            raise APIError(404, f"the model {name!r} does not exist: use one of {', '.join(self.names())}",
                           code="model_not_found", param="model")
        if self.engines is not None:
            return self.engines[name]
        from app.models import engine_for

        return engine_for(self.settings, "policy" if name == POLICY_MODEL else name)  # type: ignore[arg-type]


# -- the app ----------------------------------------------------------------------------------------
def create_app(settings: Settings, engines: dict[str, Engine] | None = None,
               responder: Responder | None = None, users: UserStore | None = None) -> FastAPI:
    """The API. ``engines`` pins served names to loaded engines (tests, embedding); ``responder``
    personalizes ``cdra-policy`` answers for requests that carry a ``user`` (with that user's key);
    ``users`` holds the API keys (default ``<data_dir>/users.json``)."""
    app = FastAPI(title="cdra OpenAI-compatible API", version="1")
    resolver = EngineResolver(settings, engines)
    gate = Gatekeeper(settings.serve, users or UserStore.for_data_dir(settings.data_dir))
    chat_defaults = settings.chat

    def authorize(request: Request) -> Caller:
        return gate.caller(request)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(CdraError)
    async def _cdra_error(_: Request, exc: CdraError) -> JSONResponse:
        err = _error_for(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        err = APIError(400, f"{loc or 'body'}: {first.get('msg')}", param=loc or None)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # a bug: logged here, one line there
        log.exception("unexpected error while serving a request")
        return JSONResponse(_error_for(exc).body(), status_code=500)

    def params_for(req: ChatRequest | CompletionRequest, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=chat_defaults.temperature if req.temperature is None else req.temperature,
            top_p=chat_defaults.top_p if req.top_p is None else req.top_p,
            n=req.n,
            seed=req.seed,
            stop=_stops(req.stop),
        )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def list_models() -> dict:
        created = int(time.time())
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "cdra"} for name in resolver.names()
        ]}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest, caller: Caller = Depends(authorize)):  # noqa: B008 (FastAPI's idiom)
        personal = responder is not None and bool(req.user) and req.model == POLICY_MODEL
        user = gate.personal_user(caller, req.user) if personal else None  # before anything reads memory
        conversation = to_conversation(req.messages)
        engine = resolver.get(req.model)
        max_new = req.max_completion_tokens or req.max_tokens or chat_defaults.max_new_tokens
        _check_new_tokens(engine, max_new, "max_tokens")
        params = params_for(req, max_new)
        want_logprobs = req.logprobs or bool(req.top_logprobs)
        if want_logprobs and personal:
            raise APIError(400, "log-probabilities are not available for personalized answers: "
                                "leave out `user` or `logprobs`", param="logprobs")
        if want_logprobs and not isinstance(engine, TokenEngine):
            raise APIError(400, f"the model {req.model!r} cannot report log-probabilities", param="logprobs")
        if want_logprobs and req.stream:
            raise APIError(400, "`logprobs` with `stream` is not supported: ask without streaming", param="logprobs")
        call = _Call(engine, conversation, params, req.model, user, responder)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(call.sse(include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        completions = call.complete()
        choices = []
        for i, c in enumerate(completions):
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": c.text},
                                      "finish_reason": c.finish_reason, "logprobs": None}
            if want_logprobs:
                ids = c.token_ids if c.token_ids is not None and not params.stop else engine.encode(c.text)
                entries = reply_logprobs(engine, conversation, ids, top_k=req.top_logprobs or 0)
                choice["logprobs"] = chat_logprobs_json(entries)
            choices.append(choice)
        return {
            "id": call.id, "object": "chat.completion", "created": call.created, "model": req.model,
            "system_fingerprint": engine.version, "choices": choices,
            "usage": _usage(call.prompt_tokens(), sum(c.completion_tokens for c in completions)),
        }

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    def completions(req: CompletionRequest) -> dict:
        engine = _token_engine(resolver.get(req.model), req.model)
        if req.stream:
            raise APIError(400, "streaming raw completions is not supported: use /v1/chat/completions",
                           param="stream")
        _check_new_tokens(engine, req.max_tokens, "max_tokens")
        prompts = _prompts(engine, req)
        for _, ids in prompts:
            _check_token_ids(engine, ids, "prompt")
        params = params_for(req, req.max_tokens)
        for text, ids in prompts:
            if not ids:
                raise APIError(400, "the prompt is empty: send some text", param="prompt")
            window = engine.context_window
            if window is not None and len(ids) + req.max_tokens > window:
                raise APIError(400, f"the prompt has {len(ids)} tokens; with max_tokens={req.max_tokens} it exceeds "
                                    f"the model's context window of {window}: shorten the prompt",
                               code="context_length_exceeded", param="prompt")
        if req.max_tokens > 0:
            generated = engine.complete_ids([ids for _, ids in prompts], params)
        else:
            generated = [[Completion("", "length", len(ids), 0, []) for _ in range(req.n)] for _, ids in prompts]
        rows: list[list[int]] = []
        for (_, ids), comps in zip(prompts, generated):
            rows.extend(list(ids) + list(c.token_ids or []) for c in comps)
        entries = engine.sequence_logprobs(rows, top_k=req.logprobs) if req.logprobs is not None else None
        choices, k = [], 0
        n_prompt = n_completion = 0
        for (text, ids), comps in zip(prompts, generated):
            n_prompt += len(ids)
            prompt_text = text if text is not None else engine.decode(ids)
            for c in comps:
                n_completion += c.completion_tokens
                choice: dict[str, Any] = {"index": k, "text": (prompt_text if req.echo else "") + c.text,
                                          "finish_reason": c.finish_reason, "logprobs": None}
                if entries is not None:
                    seq = entries[k] if req.echo else entries[k][len(ids):]
                    choice["logprobs"] = completion_logprobs_json(seq, 0 if req.echo else len(prompt_text))
                choices.append(choice)
                k += 1
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": req.model, "system_fingerprint": engine.version, "choices": choices,
                "usage": _usage(n_prompt, n_completion)}

    @app.post("/tokenize", dependencies=[Depends(authorize)])
    @app.post("/v1/tokenize", dependencies=[Depends(authorize)], include_in_schema=False)
    def tokenize(req: TokenizeRequest) -> dict:
        """vLLM's /tokenize: what OpenAIEngine.score uses to build exact token prompts."""
        engine = _token_engine(resolver.get(req.model), req.model)
        if req.messages is not None:
            if not req.add_generation_prompt:
                raise APIError(400, "only add_generation_prompt=true is supported", param="add_generation_prompt")
            ids = engine.prompt_ids(to_conversation(req.messages))
        elif req.prompt is not None:
            ids = engine.encode(req.prompt, add_special_tokens=bool(req.add_special_tokens
                                                                     if req.add_special_tokens is not None else True))
        else:
            raise APIError(400, "send `prompt` or `messages`", param="prompt")
        out: dict[str, Any] = {"count": len(ids), "max_model_len": engine.context_window, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = [engine.decode([t]) for t in ids]
        return out

    @app.post("/detokenize", dependencies=[Depends(authorize)])
    @app.post("/v1/detokenize", dependencies=[Depends(authorize)], include_in_schema=False)
    def detokenize(req: DetokenizeRequest) -> dict:
        engine = _token_engine(resolver.get(req.model), req.model)
        _check_token_ids(engine, req.tokens, "tokens")
        return {"prompt": engine.decode(req.tokens)}

    return app


def _token_engine(engine: Engine, name: str) -> TokenEngine:
    if not isinstance(engine, TokenEngine):
        raise APIError(400, f"the model {name!r} serves chat only (its engine has no local tokenizer): "
                            "use /v1/chat/completions", param="model")
    return engine


def vocab_size(engine: Engine) -> int | None:
    """How many token ids the engine's model knows (None when it cannot tell)."""
    llm = getattr(engine, "llm", None)
    if llm is not None and callable(getattr(llm, "n_vocab", None)):  # llama.cpp
        return int(llm.n_vocab())
    sizes = []
    model = getattr(engine, "model", None)
    if model is not None and callable(getattr(model, "get_input_embeddings", None)):
        sizes.append(int(model.get_input_embeddings().num_embeddings))
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None:
        try:
            sizes.append(len(tokenizer))
        except TypeError:
            pass
    return min(sizes) if sizes else None


def _check_token_ids(engine: Engine, ids: Sequence[int], param: str) -> None:
    size = vocab_size(engine)
    bad = next((t for t in ids if t < 0 or (size is not None and t >= size)), None)
    if bad is not None:
        limit = f"0 to {size - 1}" if size is not None else "non-negative"
        raise APIError(400, f"`{param}` holds the token id {bad}, which the model does not have: ids are {limit}",
                       param=param, code="invalid_token_id")


def _check_new_tokens(engine: Engine, max_new: int, param: str) -> None:
    window = engine.context_window
    if window is not None and max_new >= window:
        raise APIError(400, f"{param}={max_new} leaves no room for the prompt in the model's context window of "
                            f"{window} tokens: ask for fewer", param=param, code="context_length_exceeded")


def _prompts(engine: TokenEngine, req: CompletionRequest) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) for each prompt in the request's four accepted shapes."""
    p = req.prompt
    if isinstance(p, str):
        p = [p]
    if p and all(isinstance(x, int) for x in p):
        return [(None, list(p))]  # type: ignore[arg-type]
    if not p:
        raise APIError(400, "`prompt` is empty", param="prompt")
    out: list[tuple[str | None, list[int]]] = []
    for x in p:
        if isinstance(x, str):
            out.append((x, engine.encode(x, add_special_tokens=req.add_special_tokens)))
        else:
            out.append((None, list(x)))
    return out


class _Call:
    """One chat request's generation, from the engine or from the personalization hook."""

    def __init__(self, engine: Engine, conversation: list[Message], params: SamplingParams, model: str,
                 user: str | None, responder: Responder | None) -> None:
        self.engine, self.conversation, self.params, self.model = engine, conversation, params, model
        self.user, self.responder = user, responder
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def prompt_tokens(self) -> int:
        try:
            return self.engine.count_tokens(self.conversation)
        except CdraError:
            return 0

    def _count(self, text: str) -> int:
        if isinstance(self.engine, TokenEngine):
            return len(self.engine.encode(text))
        return max(1, len(text) // 4) if text else 0

    def _finish(self, text: str) -> str:
        return "length" if self._count(text) >= self.params.max_new_tokens else "stop"

    def _personal(self) -> Iterator[str]:
        assert self.responder is not None and self.user is not None
        request = ResponderRequest(self.user, list(self.conversation),
                                   SamplingParams(**{**self.params.__dict__, "n": 1}))
        return iter(self.responder(request))

    def complete(self) -> list[Completion]:
        if self.user is None:
            return self.engine.generate([self.conversation], self.params)[0]
        out = []
        for _ in range(self.params.n):
            text = "".join(self._personal())
            out.append(Completion(text, self._finish(text), self.prompt_tokens(), self._count(text)))
        return out

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": self.engine.version, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def sse(self, include_usage: bool) -> Iterator[str]:
        """Server-sent events. The first text delta is computed before the response starts, so a
        prompt that is too long or empty still gets a proper HTTP 400 rather than a broken stream."""
        if self.params.n == 1:
            deltas = self._personal() if self.user is not None else iter(self.engine.stream(self.conversation, self.params))
            first = next(deltas, "")
            streams = [(first, deltas)]
        else:
            streams = [(c.text, iter(())) for c in self.complete()]
        return self._events(streams, include_usage)

    def _events(self, streams: list[tuple[str, Iterator[str]]], include_usage: bool) -> Iterator[str]:
        completion_tokens = 0
        try:
            for index, (first, rest) in enumerate(streams):
                yield _sse(self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]))
                text = ""
                for delta in _chain(first, rest):
                    if delta:
                        text += delta
                        yield _sse(self._chunk([{"index": index, "delta": {"content": delta},
                                                 "logprobs": None, "finish_reason": None}]))
                completion_tokens += self._count(text)
                yield _sse(self._chunk([{"index": index, "delta": {}, "logprobs": None,
                                         "finish_reason": self._finish(text)}]))
            if include_usage:
                yield _sse(self._chunk([], _usage(self.prompt_tokens(), completion_tokens)))
        except Exception as exc:  # noqa: BLE001  (the status line is sent already: report in-band, as OpenAI does)
            yield _sse(_error_for(exc).body())
        yield _sse("[DONE]")


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest

