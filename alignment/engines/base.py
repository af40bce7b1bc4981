"""The one interface every model role uses: batched chat generation and log-prob scoring.

An engine knows chat messages, sampling parameters and token counts. It knows nothing about
preferences, steps or rewards; those live in the modules that call it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from alignment.errors import CdraError


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant"
    content: str


Conversation = Sequence[Message]


class EngineError(CdraError, RuntimeError):
    """A model could not be loaded or reached, or refused the request. The message says what to do."""


class PromptTooLongError(EngineError):
    """The prompt does not fit the model's context window."""


class EmptyPromptError(EngineError):
    """A conversation with no non-empty message."""


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] | None = None


@dataclass
class Scored:
    """Log-probability of a given continuation after a chat prompt (the assistant's turn)."""

    logprob: float  # sum over continuation tokens
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.num_tokens)


class Engine(abc.ABC):
    """A chat model that can generate and score. Implementations: transformers, vLLM, OpenAI-compatible."""

    #: what serves this engine, for `cdra models` and the session log, e.g. "transformers:/path@adapter"
    description: str = "engine"
    #: a stable version string logged with every answer (registry version, path hash, or endpoint model)
    version: str = "unknown"
    #: max prompt + completion tokens; ``None`` when unknown (endpoints)
    context_window: int | None = None

    @abc.abstractmethod
    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        """One list of ``params.n`` completions per conversation, in order."""

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        """Text deltas of one completion as they are decoded. Default: the whole answer at once."""
        yield self.generate([conversation], params)[0][0].text

    @abc.abstractmethod
    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        """log p(continuation | conversation + assistant prefix) for each pair."""

    def choice_logprobs(self, conversation: Conversation, options: Sequence[str]) -> list[float]:
        """Log-probability of each option as the assistant's reply (e.g. "A" vs "B" for a judge)."""
        return [s.logprob for s in self.score([conversation] * len(options), list(options))]

    def count_tokens(self, conversation: Conversation) -> int:
        """Prompt tokens of a conversation; endpoints estimate (4 characters a token)."""
        return sum(len(m["content"]) for m in conversation) // 4 + 4 * len(conversation)

    def close(self) -> None:
        """Release the model's memory or connections."""


def split_assistant_prefix(conversation: Conversation) -> tuple[list[Message], str]:
    """A conversation ending in an assistant message asks the model to *continue* that message.

    Returns the conversation up to the open assistant turn and the prefix to continue from (or "").
    This is how the policy is started on "Step 1:" so even a small model writes its reasoning steps.
    """
    messages = list(conversation)
    if len(messages) > 1 and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, ""


def check_conversation(conversation: Conversation) -> None:
    """Reject what no model can answer, before spending time on it."""
    if not conversation or not any(m.get("content", "").strip() for m in conversation):
        raise EmptyPromptError("the prompt is empty: write a message first")
    for m in conversation:
        if m.get("role") not in ("system", "user", "assistant"):
            raise EngineError(f"unknown message role {m.get('role')!r}: use system, user or assistant")
