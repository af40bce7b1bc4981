"""Bridges to LangChain in both directions.

``LangChainEngine`` lets any LangChain chat model (a hosted judge, a teacher) serve as an Engine;
``EngineChatModel`` exposes any of our Engines as a LangChain ``BaseChatModel`` (invoke, batch, stream).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from alignment.engines.base import (
    Completion,
    Conversation,
    Engine,
    EngineError,
    Message,
    SamplingParams,
    Scored,
    check_conversation,
    check_formats,
)

_TO_LC = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
_FROM_LC = {"system": "system", "human": "user", "ai": "assistant"}


def _text(content: Any) -> str:
    """A message's text: plain strings, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def to_langchain(conversation: Conversation) -> list[BaseMessage]:
    return [_TO_LC[m["role"]](content=m["content"]) for m in conversation]


def from_langchain(messages: Sequence[BaseMessage]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        role = _FROM_LC.get(m.type)
        if role is None:
            raise EngineError(f"{m.type!r} messages are not supported: use system, human or ai messages")
        out.append({"role": role, "content": _text(m.content)})
    return out


class EngineChatModel(BaseChatModel):
    """Any Engine as a LangChain chat model. Sampling comes from the fields, overridable per call with
    ``max_tokens``/``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``n``, and ``stop``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Engine
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "cdra-engine"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"engine": self.engine.description, "version": self.engine.version,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p}

    def sampling(self, stop: list[str] | None = None, **kwargs: Any) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=int(kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            n=int(kwargs.get("n", 1)),
            seed=kwargs.get("seed", self.seed),
            stop=tuple(stop or ()),
            format=kwargs.get("format"),
        )

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        conversation = from_langchain(messages)
        completions = self.engine.generate([conversation], self.sampling(stop, **kwargs))[0]
        return ChatResult(generations=[ChatGeneration(message=self._message(c)) for c in completions])

    def _message(self, c: Completion) -> AIMessage:
        return AIMessage(
            content=c.text,
            response_metadata={"finish_reason": c.finish_reason, "model_name": self.engine.version},
            usage_metadata={"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens,
                            "total_tokens": c.prompt_tokens + c.completion_tokens},
        )

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        conversation = from_langchain(messages)
        params = self.sampling(stop, **{**kwargs, "n": 1})
        for delta in self.engine.stream(conversation, params):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk


class LangChainEngine(Engine):
    """Any LangChain chat model as an Engine, e.g. a hosted judge or teacher.

    ``pass_sampling`` sends our sampling parameters as call kwargs (``max_tokens``, ``temperature``,
    ``top_p``, ``seed``), which OpenAI-style chat models accept; turn it off for models that take
    them only at construction. Scoring needs an engine underneath: only an ``EngineChatModel`` has one.
    """

    def __init__(self, chat_model: BaseChatModel, max_concurrency: int = 4, pass_sampling: bool = True,
                 version: str | None = None) -> None:
        self.chat_model = chat_model
        self.max_concurrency = max_concurrency
        self.pass_sampling = pass_sampling
        name = getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None) or chat_model._llm_type
        self.description = f"langchain:{type(chat_model).__name__}({name})"
        self.version = version or f"langchain:{name}"

    # -- declared formats: an EngineChatModel underneath enforces them itself; other chat models get
    # ``with_structured_output`` for JSON outputs where they implement it; everything is validated.
    exact_formats = False

    def _inner(self) -> Engine | None:
        inner = getattr(self.chat_model, "engine", None)
        return inner if isinstance(inner, Engine) else None

    def can_enforce(self, fmt) -> bool:
        inner = self._inner()
        if inner is not None:
            return inner.enforces(fmt)
        return fmt.json_schema is not None and type(self.chat_model).with_structured_output is not BaseChatModel.with_structured_output

    def _structured(self, params: SamplingParams, seed: int | None):
        """A runnable returning the JSON text of a structured output, for chat models that implement it."""
        import json

        from langchain_core.runnables import RunnableLambda

        schema = {"title": params.format.name, **params.format.json_schema}
        model = self.chat_model.with_structured_output(schema, method="json_schema")
        bound = model if not self.pass_sampling else self._bind_sampling(self.chat_model, params, seed).with_structured_output(
            schema, method="json_schema")
        keys = list(params.format.json_schema["properties"])

        def to_text(obj: Any) -> AIMessage:
            obj = obj if isinstance(obj, dict) else getattr(obj, "model_dump", dict)()
            ordered = {k: obj[k] for k in keys if k in obj}
            return AIMessage(content=json.dumps(ordered, ensure_ascii=False))

        return bound | RunnableLambda(to_text)

    def _bind_sampling(self, model, params: SamplingParams, seed: int | None):
        kwargs: dict[str, Any] = {"max_tokens": params.budget, "temperature": params.temperature, "top_p": params.top_p}
        if seed is not None:
            kwargs["seed"] = seed
        return model.bind(**kwargs)

    def _runnable(self, params: SamplingParams, seed: int | None = None):
        if params.format is not None and self._inner() is None and self.enforces(params.format):
            return self._structured(params, seed)
        kwargs: dict[str, Any] = {}
        if params.format is not None and self._inner() is not None:
            kwargs["format"] = params.format
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if self.pass_sampling:
            kwargs.update(max_tokens=params.budget, temperature=params.temperature, top_p=params.top_p)
            if seed is not None:
                kwargs["seed"] = seed
        return self.chat_model.bind(**kwargs) if kwargs else self.chat_model

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        for c in conversations:
            check_conversation(c)
        inputs = [to_langchain(c) for c in conversations]
        results: list[list[Completion]] = [[] for _ in conversations]
        # one batch per sample: each gets its own seed, so n seeded samples are not n copies
        for j in range(params.n):
            seed = None if params.seed is None else params.seed + j
            try:
                messages = self._runnable(params, seed).batch(inputs, config={"max_concurrency": self.max_concurrency})
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"{self.description} failed: {' '.join(str(exc).split())[:300]}") from exc
            for i, m in enumerate(messages):
                results[i].append(_completion(m))

        def again(i: int, j: int, attempt: int) -> Completion:
            seed = None if params.seed is None else params.seed + 1000 * attempt + j
            try:
                return _completion(self._runnable(params, seed).invoke(inputs[i]))
            except Exception as exc:
                raise EngineError(f"{self.description} failed: {' '.join(str(exc).split())[:300]}") from exc

        return check_formats(self, results, params, regenerate=again)

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        check_conversation(conversation)
        try:
            for chunk in self._runnable(params, params.seed).stream(to_langchain(conversation)):
                text = _text(chunk.content)
                if text:
                    yield text
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{self.description} failed: {' '.join(str(exc).split())[:300]}") from exc

    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        inner = getattr(self.chat_model, "engine", None)
        if isinstance(inner, Engine):
            return inner.score(conversations, continuations)
        raise EngineError(f"{self.description} cannot score text (LangChain chat models do not return prompt "
                          "log-probabilities): use a local, vLLM or `cdra serve` engine for this role")

    def choice_logprobs(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        """From the engine underneath if there is one, else from the model's own ``logprobs``
        (OpenAI-style chat models put them in ``response_metadata``)."""
        inner = getattr(self.chat_model, "engine", None)
        if isinstance(inner, Engine):
            return inner.choice_logprobs(conversation, options)
        from alignment.engines.openai_engine import option_logprobs

        check_conversation(conversation)
        model = self.chat_model.bind(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
        try:
            message = model.invoke(to_langchain(conversation))
        except Exception as exc:
            raise EngineError(f"{self.description} failed: {' '.join(str(exc).split())[:300]}") from exc
        content = (message.response_metadata.get("logprobs") or {}).get("content") or []
        if not content or not content[0].get("top_logprobs"):
            raise EngineError(f"{self.description} returned no log-probabilities: use a model that supports "
                              "`logprobs`/`top_logprobs`, or a local engine")
        return option_logprobs([(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]], options)


def _completion(message: BaseMessage) -> Completion:
    meta = getattr(message, "response_metadata", {}) or {}
    usage = getattr(message, "usage_metadata", None) or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason") or "stop"
    return Completion(
        text=_text(message.content),
        finish_reason="length" if reason in ("length", "max_tokens") else "stop",
        prompt_tokens=int(usage.get("input_tokens", 0)),
        completion_tokens=int(usage.get("output_tokens", 0)),
    )
