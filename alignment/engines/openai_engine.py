"""Any OpenAI-compatible endpoint (vLLM, `cdra serve`, hosted APIs) as an Engine, on the official client.

Generation and one-token judge log-probs use chat completions, which every such server has. Scoring a
given text needs token-exact prompts: vLLM's ``/tokenize`` plus ``/v1/completions`` with
``echo=True, logprobs=1, max_tokens=0`` (vLLM and `cdra serve` both have them; hosted APIs do not,
and get a clear EngineError). Every call has a timeout; retries back off exponentially.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from alignment.engines.base import (
    Completion,
    Conversation,
    Engine,
    EngineError,
    PromptTooLongError,
    SamplingParams,
    Scored,
    check_conversation,
    check_formats,
)
from alignment.engines.spec import ModelSpec

T = TypeVar("T")
#: rows per /v1/completions scoring request
_SCORE_BATCH = 16
_TOP_LOGPROBS = 20


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class OpenAIEngine(Engine):
    def __init__(self, spec: ModelSpec, version: str | None = None) -> None:
        if not spec.base_url:
            raise EngineError("backend=openai needs `base_url`, e.g. http://127.0.0.1:8000/v1")
        import httpx
        from openai import OpenAI

        self.spec = spec
        self.constrained, self.format_retries = spec.constrained, spec.format_retries
        self.base_url = spec.base_url.rstrip("/")
        # local servers (vLLM, cdra serve) take any key; the client insists on having one
        api_key = os.environ.get(spec.api_key_env) or "EMPTY"
        self.client = OpenAI(base_url=self.base_url, api_key=api_key, timeout=spec.timeout_s,
                             max_retries=spec.max_retries)
        self._http = httpx.Client(timeout=spec.timeout_s, headers={"Authorization": f"Bearer {api_key}"})
        self._model = spec.model
        self._fixed_version = version
        self._prompt_cache: dict[str, list[int]] = {}
        self._cache_lock = threading.Lock()
        self.description = f"openai:{self.base_url} model={spec.model or '(first listed)'}"
        self.version = version or f"openai:{spec.model or '?'}@{self.base_url}"

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The served model name; without ``model`` in the spec, the endpoint's first listed model."""
        if self._model is None:
            listed = self._call(lambda: self.client.models.list().data)
            if not listed:
                raise EngineError(f"the endpoint {self.base_url} serves no models: set the role's `model`")
            self._model = listed[0].id
            self.description = f"openai:{self.base_url} model={self._model}"
            self.version = self._fixed_version or f"openai:{self._model}@{self.base_url}"
        return self._model

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call, turning every failure into a one-line EngineError that says what to check."""
        import openai

        try:
            return fn()
        except openai.APITimeoutError as exc:
            raise EngineError(f"the endpoint {self.base_url} did not answer within {self.spec.timeout_s:g}s "
                              f"({self.spec.max_retries} retries): check the server's load or raise timeout_s") from exc
        except openai.APIConnectionError as exc:
            cause = _one_line(exc.__cause__ or exc)
            raise EngineError(f"cannot reach the OpenAI-compatible endpoint {self.base_url} ({cause}): check that "
                              "the server is running and the role's base_url") from exc
        except openai.AuthenticationError as exc:
            raise EngineError(f"the endpoint {self.base_url} rejected the API key: set ${self.spec.api_key_env}") from exc
        except openai.NotFoundError as exc:
            raise EngineError(f"the endpoint {self.base_url} answered 404 ({_one_line(_message(exc))}): check the "
                              f"role's `model` ({self._model!r}) and base_url (it usually ends in /v1)") from exc
        except openai.BadRequestError as exc:
            message = _one_line(_message(exc))
            if "context" in message.lower() and ("length" in message.lower() or "window" in message.lower()):
                raise PromptTooLongError(f"{self.base_url}: {message}") from exc
            raise EngineError(f"the endpoint {self.base_url} refused the request: {message}") from exc
        except openai.APIStatusError as exc:
            raise EngineError(f"the endpoint {self.base_url} answered HTTP {exc.status_code}: "
                              f"{_one_line(_message(exc))}") from exc
        except openai.APIError as exc:  # e.g. an error event inside a stream
            raise EngineError(f"the endpoint {self.base_url} failed: {_one_line(_message(exc))}") from exc

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """Apply ``fn`` to every item with at most ``max_concurrency`` requests in flight, keeping order."""
        if len(items) <= 1 or self.spec.max_concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.spec.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- declared formats: the endpoint enforces what it can; everything is validated (engines/base.check_formats)
    exact_formats = False

    def can_enforce(self, fmt) -> bool:
        mode = self.spec.structured_outputs
        return mode == "vllm" or (mode == "json_schema" and fmt.json_schema is not None)

    def _format_request(self, fmt) -> dict[str, Any]:
        if not self.enforces(fmt):
            return {}
        if self.spec.structured_outputs == "vllm":
            return {"extra_body": {"structured_outputs": {"grammar": fmt.lark}}}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": fmt.name, "schema": fmt.json_schema, "strict": True}}}

    def _sampling(self, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_tokens": params.budget, "temperature": max(0.0, params.temperature),
                                  "top_p": params.top_p}
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.format is not None:
            kwargs.update(self._format_request(params.format))
        return kwargs

    # -- generation ------------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        for c in conversations:
            check_conversation(c)
        model = self.model
        convs = list(conversations)
        results = self._map(lambda conv: self._chat(model, conv, params), convs)

        def again(i: int, j: int, attempt: int) -> Completion:
            seed = None if params.seed is None else params.seed + 1000 * attempt + j
            return self._chat(model, convs[i], params.but(n=1, seed=seed))[0]

        return check_formats(self, results, params, regenerate=again)

    def _chat(self, model: str, conversation: Conversation, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        # some servers (llama.cpp's, hosted ones for some models) return fewer than n choices: ask again
        while len(out) < params.n:
            want = params.n - len(out)
            resp = self._call(lambda want=want: self.client.chat.completions.create(
                model=model, messages=list(conversation), n=want, **self._sampling(params)))
            if not resp.choices:
                raise EngineError(f"the endpoint {self.base_url} returned no choices")
            usage = resp.usage
            per_choice = (usage.completion_tokens // len(resp.choices)) if usage else 0
            for choice in sorted(resp.choices, key=lambda c: c.index)[:want]:
                out.append(Completion(
                    text=choice.message.content or "",
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=per_choice,
                ))
        return out

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        check_conversation(conversation)
        model = self.model
        chunks = self._call(lambda: self.client.chat.completions.create(
            model=model, messages=list(conversation), n=1, stream=True, **self._sampling(params)))
        iterator = iter(chunks)
        while True:
            chunk = self._call(lambda: next(iterator, None))
            if chunk is None:
                return
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    yield choice.delta.content

    # -- log-probabilities -----------------------------------------------------------------------
    def choice_logprobs(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        """Log-probability of each option as the reply's first token, from one ``max_tokens=1`` call with
        ``top_logprobs=20``. Spellings that differ only in surrounding spaces (" A", "A") are pooled. An
        option absent from the top 20 gets the smallest listed log-prob: an upper bound on its own."""
        check_conversation(conversation)
        model = self.model
        resp = self._call(lambda: self.client.chat.completions.create(
            model=model, messages=list(conversation), max_tokens=1, temperature=0.0,
            logprobs=True, top_logprobs=_TOP_LOGPROBS))
        content = resp.choices[0].logprobs.content if resp.choices and resp.choices[0].logprobs else None
        if not content:
            raise EngineError(f"the endpoint {self.base_url} returned no log-probabilities: it must support "
                              "`logprobs` and `top_logprobs` on chat completions")
        return option_logprobs([(t.token, t.logprob) for t in content[0].top_logprobs], options)

    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        if len(conversations) != len(continuations):
            raise ValueError("score() needs one continuation per conversation")
        for c in conversations:
            check_conversation(c)
        model = self.model
        prompts = self._map(lambda conv: self._prompt_ids(model, conv), list(conversations))
        conts = self._map(lambda text: self._tokenize(model, {"prompt": text, "add_special_tokens": False}),
                          list(continuations))
        rows = [(p, c) for p, c in zip(prompts, conts)]
        batches = [rows[i : i + _SCORE_BATCH] for i in range(0, len(rows), _SCORE_BATCH)]
        return [s for batch in self._map(lambda b: self._score_batch(model, b), batches) for s in batch]

    def _score_batch(self, model: str, rows: list[tuple[list[int], list[int]]]) -> list[Scored]:
        try:
            resp = self._call(lambda: self.client.completions.create(
                model=model, prompt=[p + c for p, c in rows], max_tokens=0, echo=True, logprobs=1, temperature=0.0))
        except PromptTooLongError:
            raise
        except EngineError as exc:
            raise EngineError(f"{exc}; scoring needs /v1/completions with echo=true, logprobs and max_tokens=0 "
                              "(vLLM or `cdra serve`)") from exc
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(rows):
            raise EngineError(f"the endpoint {self.base_url} returned {len(choices)} choices for {len(rows)} prompts")
        out = []
        for (p, c), choice in zip(rows, choices):
            lps = choice.logprobs.token_logprobs if choice.logprobs else None
            if not lps or len(lps) < len(p) + len(c):
                raise EngineError(f"the endpoint {self.base_url} did not echo the prompt's log-probabilities "
                                  "(needs echo=true with logprobs on /v1/completions, as vLLM and `cdra serve` do)")
            token_lp = [float(x) for x in lps[len(p) : len(p) + len(c)]]
            out.append(Scored(logprob=sum(token_lp), token_logprobs=token_lp))
        return out

    def _prompt_ids(self, model: str, conversation: Conversation) -> list[int]:
        key = json.dumps(list(conversation), sort_keys=True)
        with self._cache_lock:
            if key in self._prompt_cache:
                return self._prompt_cache[key]
        ids = self._tokenize(model, {"messages": list(conversation), "add_generation_prompt": True,
                                     "add_special_tokens": False})
        with self._cache_lock:
            if len(self._prompt_cache) > 1024:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids
        return ids

    def _tokenize(self, model: str, body: dict) -> list[int]:
        """vLLM's /tokenize lives at the server root; `cdra serve` also answers under /v1."""
        import httpx

        root = self.base_url.removesuffix("/v1")
        last = ""
        for url in dict.fromkeys((f"{root}/tokenize", f"{self.base_url}/tokenize")):
            try:
                resp = self._with_retries(lambda url=url: self._http.post(url, json={"model": model, **body}))
            except httpx.TimeoutException as exc:
                raise EngineError(f"the endpoint {self.base_url} did not answer /tokenize within "
                                  f"{self.spec.timeout_s:g}s") from exc
            except httpx.TransportError as exc:
                raise EngineError(f"cannot reach the OpenAI-compatible endpoint {self.base_url} "
                                  f"({_one_line(exc)}): check that the server is running and the role's base_url") from exc
            if resp.status_code == 200:
                tokens = resp.json().get("tokens")
                if isinstance(tokens, list):
                    return [int(t) for t in tokens]
            last = f"HTTP {resp.status_code}"
            if resp.status_code not in (404, 405):
                last += f": {_one_line(resp.text[:300])}"
                break
        raise EngineError(f"{self.base_url} cannot score text: its /tokenize endpoint failed ({last}); scoring needs "
                          "a vLLM-style server (vLLM or `cdra serve`), hosted APIs only support choice_logprobs")

    def _with_retries(self, fn: Callable[[], T]) -> T:
        import httpx
        from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = retry(
            retry=retry_if_exception_type(httpx.TransportError),
            stop=stop_after_attempt(self.spec.max_retries + 1),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        )
        return retrying(fn)()

    def close(self) -> None:
        self.client.close()
        self._http.close()


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(exc, "message", exc))


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def option_logprobs(top: Sequence[tuple[str, float]], options: Sequence[str]) -> list[float]:
    """Each option's log-prob from a top-k list of (token, logprob) for one position.

    Tokens equal up to surrounding whitespace are pooled (log-sum-exp). An option that is not listed
    uses the listed token that is the longest prefix of it, else the smallest listed log-prob.
    """
    if not top:
        raise EngineError("no top log-probabilities to read the options from")
    pooled: dict[str, float] = {}
    for token, lp in top:
        key = token.strip()
        pooled[key] = lp if key not in pooled else _logaddexp(pooled[key], lp)
    floor = min(lp for _, lp in top)
    out = []
    for option in options:
        want = option.strip()
        if want in pooled:
            out.append(pooled[want])
            continue
        prefixes = [(len(k), v) for k, v in pooled.items() if k and want.startswith(k)]
        out.append(max(prefixes)[1] if prefixes else floor)
    return out
