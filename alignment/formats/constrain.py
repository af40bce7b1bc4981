"""Constrained decoding with llguidance: one grammar matcher per generated sequence, fed each sampled token,
giving the mask of tokens the format allows next. Engines call it from their own decoding loops (a
transformers logits processor, llama.cpp's custom-sampler hook); vLLM and endpoints enforce formats themselves.

Once the grammar is complete (or cannot continue) the only allowed token is end-of-sequence, so a
constrained sequence always ends where its format does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

_validate_lock = threading.Lock()


def validate_grammar(lark: str) -> str:
    """'' when the grammar compiles, else llguidance's message (checked before any model sees it: an invalid
    grammar must never reach a decoding loop)."""
    import llguidance

    with _validate_lock:
        return llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark))


class TokenizerBridge:
    """An engine's vocabulary as llguidance sees it, plus compiled grammars (one per format, copied per sequence)."""

    def __init__(self, lltokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = lltokenizer
        self.vocab_size = vocab_size  # the logits' width (may exceed the tokenizer's vocabulary)
        self.eos = lltokenizer.eos_token
        self._compiled: dict[Any, Any] = {}  # format -> compiled matcher at its start state
        self._start_masks: dict[Any, np.ndarray] = {}  # format -> the tokens forbidden at its start state
        self._lock = threading.Lock()

    @classmethod
    def from_hf(cls, hf_tokenizer: Any, vocab_size: int) -> TokenizerBridge:
        import llguidance.hf

        return cls(llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size), vocab_size)

    @classmethod
    def from_llamacpp(cls, llm: Any) -> TokenizerBridge:
        import llguidance.llamacpp

        vocab_size = llm.n_vocab()
        return cls(llguidance.llamacpp.lltokenizer_from_vocab(llm._model.vocab, n_vocab=vocab_size), vocab_size)

    def matcher(self, fmt: Any) -> Any:
        """A fresh matcher for ``fmt`` at its start state."""
        import llguidance

        with self._lock:
            proto = self._compiled.get(fmt)
            if proto is None:
                proto = llguidance.LLMatcher(self.tokenizer, llguidance.LLMatcher.grammar_from_lark(fmt.lark),
                                             log_level=0)
                if proto.is_error():
                    raise ValueError(f"the {fmt.name} grammar does not compile: {proto.get_error()}")
                self._compiled[fmt] = proto
            return proto.deep_copy()

    def start_forbidden(self, fmt: Any) -> np.ndarray:
        """The tokens ``fmt`` forbids first (read-only): the same for every sequence, so computed once (the
        first mask of a sequence is its dearest, and a verdict has only ~10 tokens to spread it over)."""
        mask = self._start_masks.get(fmt)
        if mask is None:
            words = np.empty((self.vocab_size + 31) // 32, dtype=np.int32)
            mask = _forbidden_tokens(self.matcher(fmt), words, self.vocab_size).copy()
            mask.flags.writeable = False
            self._start_masks[fmt] = mask
        return mask


def _forbidden_tokens(matcher: Any, words: np.ndarray, vocab_size: int) -> np.ndarray:
    """Boolean mask of the tokens ``matcher`` does not allow next, a view of ``words`` (reused per step). The
    bitmask is inverted before unpacking: 1/32 of the work of negating the unpacked mask."""
    matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
    np.invert(words, out=words)
    return np.unpackbits(words.view(np.uint8), count=vocab_size, bitorder="little").view(bool)


class SequenceConstraint:
    """The grammar state of one sequence being decoded."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any) -> None:
        self.bridge = bridge
        self.format = fmt
        self.matcher = bridge.matcher(fmt)
        self.error: str | None = None
        self._at_start = True
        self._words = np.empty((bridge.vocab_size + 31) // 32, dtype=np.int32)
        self._all_but_eos = np.ones(bridge.vocab_size, dtype=bool)
        self._all_but_eos[bridge.eos] = False

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()

    def advance(self, tokens: Sequence[int]) -> None:
        """Feed the tokens sampled since the last mask (end-of-sequence included is fine)."""
        for token in tokens:
            if self.finished:
                return
            self._at_start = False
            if not self.matcher.consume_token(int(token)):
                self.error = self.matcher.get_error() or f"token {token} is not allowed here"

    def forbidden(self) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens *not* allowed next; all but end-of-sequence once
        finished; at the start, the bridge's shared mask for this format."""
        if self.finished:
            return self._all_but_eos
        if self._at_start:
            return self.bridge.start_forbidden(self.format)
        return _forbidden_tokens(self.matcher, self._words, self.bridge.vocab_size)


def mask_numpy(scores: np.ndarray, forbidden: np.ndarray) -> None:
    """Forbidden tokens get -inf, in place (``scores`` may be a strided view, as llama.cpp's is). Where the
    grammar allows only a few tokens (a structural position) the row is filled and those few put back: a third
    of the time of a masked copy over the whole vocabulary, which stays the way for free-text positions."""
    width = min(scores.shape[-1], forbidden.shape[-1])
    head, mask = scores[..., :width], forbidden[:width]
    allowed = width - int(np.count_nonzero(mask))
    if scores.ndim == 1 and allowed < width // 16:
        keep = np.flatnonzero(~mask) if allowed else np.empty(0, dtype=np.intp)
        values = head[keep]
        head.fill(-np.inf)
        head[keep] = values
    else:
        np.copyto(head, -np.inf, where=mask)
    if scores.shape[-1] > width:
        scores[..., width:] = -np.inf


class HFGrammarProcessor:
    """A transformers ``LogitsProcessor``: rows are the batch's sequences (prompts × samples, in order).
    Its own time goes to ``clock`` (transformers' sampling is the same with or without it)."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any, rows: int, clock: Any = None) -> None:
        bridge.start_forbidden(fmt)
        self.constraints = [SequenceConstraint(bridge, fmt) for _ in range(rows)]
        self._start: int | None = None
        self._clock = clock

    def __call__(self, input_ids, scores):
        import torch

        began = time.perf_counter()
        if self._start is None:
            self._start = input_ids.shape[1]
        elif input_ids.shape[1] > self._start:
            last = input_ids[:, -1].tolist()
            for constraint, token in zip(self.constraints, last):
                constraint.advance([token])
        forbidden = torch.from_numpy(np.stack([c.forbidden() for c in self.constraints])).to(scores.device)
        width = min(scores.shape[1], forbidden.shape[1])
        scores[:, :width] = scores[:, :width].masked_fill(forbidden[:, :width], float("-inf"))
        if scores.shape[1] > width:
            scores[:, width:] = float("-inf")
        if self._clock is not None:
            self._clock.add(time.perf_counter() - began, len(self.constraints))
        return scores

    @property
    def errors(self) -> list[str]:
        return [c.error for c in self.constraints if c.error]


class LlamaCppGrammarProcessor:
    """A llama-cpp-python logits processor for one sequence: ``input_ids`` is everything evaluated so far."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any) -> None:
        bridge.start_forbidden(fmt)
        self.constraint = SequenceConstraint(bridge, fmt)
        self._seen: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._seen is None:
            self._seen = len(input_ids)
        elif len(input_ids) > self._seen:
            self.constraint.advance(input_ids[self._seen:].tolist())
            self._seen = len(input_ids)
        mask_numpy(scores, self.constraint.forbidden())
        return scores
