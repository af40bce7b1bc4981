"""Token-level access for engines that hold a tokenizer: raw-text completion and per-token log-probs.

The chat-level ``Engine`` is all the product needs; the OpenAI-compatible server's ``/v1/completions``,
``/tokenize`` and ``logprobs`` options need token ids, which only local engines (transformers,
vLLM, llama.cpp) can give. ``isinstance(engine, TokenEngine)`` tells the server which can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from alignment.engines.base import Completion, Conversation, SamplingParams


@dataclass
class TokenLogprob:
    """One token of a sequence with its log-probability given everything before it."""

    token_id: int
    token: str
    #: ``None`` for a sequence's first token: nothing before it predicts it
    logprob: float | None
    #: the ``top_k`` most likely tokens at this position, most likely first
    top: list[tuple[str, float]] = field(default_factory=list)


@runtime_checkable
class TokenEngine(Protocol):
    """What an engine implements to serve raw completions and log-probs over HTTP."""

    context_window: int | None

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The chat template applied to ``conversation``, ending with the assistant's turn prefix."""
        ...

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def sequence_logprobs(
        self, rows: Sequence[Sequence[int]], top_k: int = 0, next_token: bool = False
    ) -> list[list[TokenLogprob]]:
        """Per-token log-probs of each row; ``next_token`` appends the position after the row
        (its ``token`` is the most likely next token), which is what a one-token judge reads."""
        ...

    def complete_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        """Like ``Engine.generate`` but from raw token ids (no chat template)."""
        ...


def reply_logprobs(
    engine: TokenEngine, conversation: Conversation, reply_ids: Sequence[int], top_k: int = 0
) -> list[TokenLogprob]:
    """Log-probs of an assistant reply's tokens after ``conversation``.

    An empty reply (the model stopped at once) reports the position where the reply would start,
    so a judge asking for one token with ``top_logprobs`` always sees the distribution.
    """
    prompt = engine.prompt_ids(conversation)
    row = list(prompt) + list(reply_ids)
    entries = engine.sequence_logprobs([row], top_k=top_k, next_token=not reply_ids)[0]
    return entries[len(prompt) :]
