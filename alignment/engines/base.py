"""The one interface every model role uses: batched chat generation and log-prob scoring.

An engine knows chat messages, sampling parameters and token counts. It knows nothing about
preferences, steps or rewards; those live in the modules that call it.
"""

from __future__ import annotations

import abc
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypedDict

from alignment.errors import CdraError

if TYPE_CHECKING:
    from alignment.formats.base import OutputFormat

log = logging.getLogger(__name__)


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
    """How to decode. ``temperature == 0`` means greedy.

    ``format`` declares the output (alignment/formats): engines that enforce formats constrain decoding to its
    grammar; the others generate freely and their output is validated (``Completion.format_error``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    format: OutputFormat | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def budget(self) -> int:
        """New tokens allowed: at least the format's longest output, so a constrained output always finishes."""
        if self.format is None:
            return self.max_new_tokens
        return max(self.max_new_tokens, self.format.max_tokens)

    def but(self, **changes) -> SamplingParams:
        return replace(self, **changes)


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] | None = None
    #: set when ``SamplingParams.format`` was asked for and the text is not in it (even leniently)
    format_error: str | None = None
    #: the text was in the format only for the relaxed reader (an unconstrained endpoint's output)
    format_repaired: bool = False
    #: the format's typed reading of ``text`` (``None`` without a format, or when ``format_error`` is set)
    parsed: object = None


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


@dataclass
class SamplingClock:
    """Time an engine spends choosing each token after the forward pass (sampling, and the grammar mask when
    constrained). The forward pass is the same in both modes, so what a constraint costs per token is the
    difference of this clock between the modes: exact where wall time per token varies by several percent
    from run to run and with the length of what was decoded (``cdra bench formats`` reads it)."""

    seconds: float = 0.0
    tokens: int = 0

    def add(self, seconds: float, tokens: int = 1) -> None:
        self.seconds += seconds
        self.tokens += tokens

    def since(self, start: tuple[float, int]) -> tuple[float, int]:
        """(seconds, tokens) added since ``start`` (a ``reading``)."""
        return self.seconds - start[0], self.tokens - start[1]

    @property
    def reading(self) -> tuple[float, int]:
        return self.seconds, self.tokens


class Engine(abc.ABC):
    """A chat model that can generate and score. Implementations: transformers, vLLM, OpenAI-compatible."""

    #: what serves this engine, for `cdra models` and the session log, e.g. "transformers:/path@adapter"
    description: str = "engine"
    #: a stable version string logged with every answer (registry version, path hash, or endpoint model)
    version: str = "unknown"
    #: max prompt + completion tokens; ``None`` when unknown (endpoints)
    context_window: int | None = None
    #: the role's ``constrained`` setting: enforce ``SamplingParams.format`` while decoding where possible
    constrained: bool = True
    #: bounded re-generations of an output that is not in its format (engines that cannot enforce formats)
    format_retries: int = 2
    #: per-token sampling time, on engines that run their own decoding loop (None elsewhere)
    sampling_clock: SamplingClock | None = None

    def can_enforce(self, fmt: OutputFormat) -> bool:
        """Whether this backend can constrain decoding to ``fmt`` (local engines: always)."""
        return False

    def enforces(self, fmt: OutputFormat | None) -> bool:
        """Whether outputs in ``fmt`` come out constrained (grammar or endpoint-side structured outputs)."""
        return fmt is not None and self.constrained and self.can_enforce(fmt)

    #: whether an enforced format comes out byte for byte as the grammar writes it (our own decoding loops);
    #: endpoints enforcing a JSON schema may space their JSON differently
    exact_formats: bool = True

    def read_format(self, fmt: OutputFormat, text: str):
        """``fmt``'s reading of an output of this engine: strict where decoding was constrained by our own
        grammar, lenient (and marked ``repaired``) otherwise. Raises ``FormatParseError``."""
        return fmt.read(text, lenient=not (self.enforces(fmt) and self.exact_formats))

    @property
    def format_stats(self) -> Counter:
        """Counts of format checks: checked, repaired, retried, failed (see ``check_formats``)."""
        stats = self.__dict__.get("_format_stats")
        if stats is None:
            stats = self.__dict__["_format_stats"] = Counter()
        return stats

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


def check_formats(
    engine: Engine,
    completions: list[list[Completion]],
    params: SamplingParams,
    regenerate: Callable[[int, int, int], Completion] | None = None,
) -> list[list[Completion]]:
    """Validate outputs against ``params.format`` (strictly when the engine enforced it, else leniently).

    ``regenerate(prompt_index, sample_index, attempt)`` re-draws one output that is not in its format, at most
    ``engine.format_retries`` times (engines that cannot enforce formats). What stays broken keeps its
    ``format_error`` for the caller; every check, repair, retry and failure is counted in ``engine.format_stats``.
    """
    fmt = params.format
    if fmt is None:
        return completions
    from alignment.formats.base import FormatParseError

    stats = engine.format_stats
    for i, samples in enumerate(completions):
        for j, completion in enumerate(samples):
            attempt = 0
            while True:
                stats["checked"] += 1
                try:
                    reading = engine.read_format(fmt, completion.text)
                    completion.format_error, completion.format_repaired = None, reading.repaired
                    completion.parsed = reading.value
                    stats["repaired"] += int(reading.repaired)
                    break
                except FormatParseError as exc:
                    completion.format_error = exc.problem
                if regenerate is None or attempt >= engine.format_retries:
                    stats["failed"] += 1
                    # a local model decoding freely on purpose (R_format measurements) fails quietly
                    level = logging.WARNING if regenerate is not None or engine.enforces(fmt) else logging.DEBUG
                    log.log(level, "%s: output not in the %s format after %d retries: %s", engine.description,
                            fmt.name, attempt, completion.format_error)
                    break
                attempt += 1
                stats["retried"] += 1
                completion = samples[j] = regenerate(i, j, attempt)
    return completions
