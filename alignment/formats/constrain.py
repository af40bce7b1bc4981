"""Constrained decoding with llguidance: one grammar matcher per generated sequence, fed each sampled token,
giving the mask of tokens the format allows next. Engines call it from their own decoding loops (a
transformers logits processor, llama.cpp's custom-sampler hook); vLLM and endpoints enforce formats themselves.

Once the grammar is complete (or cannot continue) the only allowed token is end-of-sequence, so a
constrained sequence always ends where its format does.
"""

from __future__ import annotations

import threading
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


class SequenceConstraint:
    """The grammar state of one sequence being decoded."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any) -> None:
        self.bridge = bridge
        self.format = fmt
        self.matcher = bridge.matcher(fmt)
        self.error: str | None = None
        self._words = np.empty((bridge.vocab_size + 31) // 32, dtype=np.int32)
        self._only_eos = np.zeros(bridge.vocab_size, dtype=bool)
        self._only_eos[bridge.eos] = True

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()

    def advance(self, tokens: Sequence[int]) -> None:
        """Feed the tokens sampled since the last mask (end-of-sequence included is fine)."""
        for token in tokens:
            if self.finished:
                return
            if not self.matcher.consume_token(int(token)):
                self.error = self.matcher.get_error() or f"token {token} is not allowed here"

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens allowed next; only end-of-sequence once finished."""
        if self.finished:
            return self._only_eos
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        bits = np.unpackbits(self._words.view(np.uint8), count=self.bridge.vocab_size, bitorder="little")
        return bits.view(bool)


def mask_numpy(scores: np.ndarray, allowed: np.ndarray) -> None:
    """Disallowed tokens get -inf, in place (``scores`` may be a strided view, as llama.cpp's is)."""
    width = min(scores.shape[-1], allowed.shape[-1])
    np.copyto(scores[..., :width], -np.inf, where=np.logical_not(allowed[:width]))
    if scores.shape[-1] > width:
        scores[..., width:] = -np.inf


class HFGrammarProcessor:
    """A transformers ``LogitsProcessor``: rows are the batch's sequences (prompts × samples, in order)."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any, rows: int) -> None:
        self.constraints = [SequenceConstraint(bridge, fmt) for _ in range(rows)]
        self._start: int | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self._start is None:
            self._start = input_ids.shape[1]
        elif input_ids.shape[1] > self._start:
            last = input_ids[:, -1].tolist()
            for constraint, token in zip(self.constraints, last):
                constraint.advance([token])
        masks = np.stack([c.allowed() for c in self.constraints])
        allowed = torch.from_numpy(masks).to(scores.device)
        width = min(scores.shape[1], allowed.shape[1])
        scores[:, :width] = scores[:, :width].masked_fill(~allowed[:, :width], float("-inf"))
        if scores.shape[1] > width:
            scores[:, width:] = float("-inf")
        return scores

    @property
    def errors(self) -> list[str]:
        return [c.error for c in self.constraints if c.error]


class LlamaCppGrammarProcessor:
    """A llama-cpp-python logits processor for one sequence: ``input_ids`` is everything evaluated so far."""

    def __init__(self, bridge: TokenizerBridge, fmt: Any) -> None:
        self.constraint = SequenceConstraint(bridge, fmt)
        self._seen: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._seen is None:
            self._seen = len(input_ids)
        elif len(input_ids) > self._seen:
            self.constraint.advance(input_ids[self._seen:].tolist())
            self._seen = len(input_ids)
        mask_numpy(scores, self.constraint.allowed())
        return scores
