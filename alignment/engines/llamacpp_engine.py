"""A GGUF model through llama.cpp (llama-cpp-python) on the CPU: generation, streaming, scoring.

The default path is the packaged SmolLM2 GGUF itself, so no conversion is needed. Prompts use the
GGUF's own chat template and give the same token ids as the transformers tokenizer; scoring keeps
every position's logits (``logits_all``), generation only the last one's (a prompt's prefill then skips the
output layer for all but its last token). Threads follow the machine per call (engines/cpu_threads.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from alignment.engines.base import (
    Completion,
    Conversation,
    EmptyPromptError,
    Engine,
    EngineError,
    PromptTooLongError,
    SamplingClock,
    SamplingParams,
    Scored,
    check_conversation,
    check_formats,
    split_assistant_prefix,
)
from alignment.engines.cpu_threads import pick_threads, usable_cores
from alignment.engines.spec import ModelSpec
from alignment.engines.tokens import TokenLogprob

#: the context we allocate; the logits buffer is n_ctx x vocab floats of virtual memory, touched lazily
DEFAULT_N_CTX = 4096
#: sampling knobs llama.cpp turns on by default that our SamplingParams do not have
_PLAIN = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}
#: while streaming, the thread count is revisited every this many tokens
_RETHREAD_EVERY = 16
#: prompt tokens evaluated per batch: 128 prefilled a 450-token prompt at 145-158 tokens/s on 2 cores, the
#: default 512 at 122-127 (smaller matrices stay in cache); decoding is the same
PREFILL_BATCH = 128


class LlamaCppEngine(Engine):
    def __init__(self, spec: ModelSpec, version: str | None = None, n_ctx: int = DEFAULT_N_CTX,
                 threads: int | None = None) -> None:
        """``threads``: a fixed thread count; ``None`` picks one per call from the machine's load."""
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise EngineError(f"backend=llamacpp needs llama-cpp-python ({exc}): run scripts/setup.sh") from exc
        default_version = None
        if spec.path:
            path = Path(spec.path)
        else:
            from alignment.engines.default_model import DEFAULT_MODEL_NAME, packaged_gguf_path

            path = packaged_gguf_path()
            default_version = f"default:{DEFAULT_MODEL_NAME}"  # the same weights the transformers default serves
        if not path.is_file() or path.suffix != ".gguf":
            raise EngineError(f"no GGUF file at {path}: backend=llamacpp needs `path` to a .gguf file "
                              "(or none, for the packaged default)")
        if spec.adapter:
            raise EngineError("backend=llamacpp does not load PEFT adapters: merge the adapter and convert to GGUF, "
                              "or use backend=transformers")
        self.fixed_threads = threads
        self._threads = threads or usable_cores()
        self.sampling_clock = SamplingClock()
        try:
            self.llm = _clocked_llama(llama_cpp.Llama, self.sampling_clock)(model_path=str(path), n_ctx=n_ctx, n_threads=self._threads,
                                       n_threads_batch=self._threads, n_batch=PREFILL_BATCH,
                                       n_ubatch=PREFILL_BATCH, logits_all=True, verbose=False)
        except Exception as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}") from exc
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise EngineError(f"{path} has no chat template in its metadata: use a chat model's GGUF")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=self._special(self.llm.token_eos()),
                                              bos_token=self._special(self.llm.token_bos()))
        self.context_window = self.llm.n_ctx()
        self.description = f"llamacpp:{path}"
        self.version = version or default_version or hashlib.sha1(self.description.encode()).hexdigest()[:10]
        self._lock = threading.Lock()
        self._bridge = None
        # the grammar's view of the vocabulary takes seconds to build: begin now, while the caller prepares a prompt
        self._bridge_thread = threading.Thread(target=self._build_bridge, name="llguidance-vocab", daemon=True)
        self._bridge_thread.start()
        if not self.fixed_threads:
            pick_threads()  # starts the load monitor, so the first call already knows the machine

    # -- constrained decoding (alignment/formats): llguidance through llama-cpp-python's logits_processor hook.
    # Not llama.cpp's own GBNF sampler: it costs ~10 ms a token here and aborts the process on a bad grammar.
    def can_enforce(self, fmt) -> bool:
        return True

    def _grammar(self, params: SamplingParams) -> dict:
        if not self.enforces(params.format):
            return {}
        import llama_cpp

        from alignment.formats.constrain import LlamaCppGrammarProcessor, TokenizerBridge

        self._bridge_thread.join()
        if self._bridge is None:
            self._bridge = TokenizerBridge.from_llamacpp(self.llm)
        return {"logits_processor": llama_cpp.LogitsProcessorList([LlamaCppGrammarProcessor(self._bridge, params.format)]),
                "stop": None}

    # -- threads and logits ------------------------------------------------------------------------
    def _set_threads(self) -> int:
        """Decode with as many threads as the machine has free now (or the fixed count)."""
        threads = self.fixed_threads or pick_threads()
        if threads != self._threads:
            self.llm._ctx.set_n_threads(threads, threads)
            self._threads = threads
        return threads

    def _generating(self) -> None:
        """Logits of the last position only: a prompt's prefill skips the output layer for all others."""
        self.llm._logits_all = False
        self._set_threads()

    def _scoring(self) -> None:
        self.llm._logits_all = True
        self._set_threads()

    def _build_bridge(self) -> None:
        from alignment.formats.constrain import TokenizerBridge

        try:
            self._bridge = TokenizerBridge.from_llamacpp(self.llm)
        except Exception:  # noqa: BLE001 - _grammar builds it again and reports the error where it is needed
            self._bridge = None

    def _special(self, token_id: int) -> str:
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    # -- tokens ----------------------------------------------------------------------------------
    def prompt_ids(self, conversation: Conversation) -> list[int]:
        check_conversation(conversation)
        messages, prefix = split_assistant_prefix(conversation)
        prompt = self._formatter(messages=[dict(m) for m in messages]).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) + (self.encode(prefix) if prefix else [])

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.prompt_ids(conversation))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def _check_fits(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt + max_new_tokens > self.context_window:
            raise PromptTooLongError(
                f"the prompt has {n_prompt} tokens; with {max_new_tokens} new tokens it exceeds the "
                f"context window of {self.context_window}: shorten the message or the history"
            )

    # -- generation ------------------------------------------------------------------------------
    def _kwargs(self, params: SamplingParams, sample: int) -> dict:
        kwargs = {"max_tokens": params.budget, "temperature": max(0.0, params.temperature),
                  "top_p": params.top_p, "stop": list(params.stop) or None, **_PLAIN}
        if params.seed is not None:
            kwargs["seed"] = params.seed + sample  # n seeded samples are n different draws
        return {**kwargs, **self._grammar(params)}

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        return self.complete_ids([self.prompt_ids(c) for c in conversations], params)

    def complete_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        rows = [list(p) for p in prompts]
        for r in rows:
            if not r:
                raise EmptyPromptError("the prompt is empty: send some text")
            self._check_fits(len(r), params.budget)
        results = []
        with self._lock:
            self._generating()
            for row in rows:
                samples = []
                for j in range(params.n):
                    out = self.llm.create_completion(prompt=row, **self._kwargs(params, j))
                    choice, usage = out["choices"][0], out["usage"]
                    text = choice["text"]
                    samples.append(Completion(text=text, finish_reason="length" if choice["finish_reason"] == "length"
                                              else "stop", prompt_tokens=usage["prompt_tokens"],
                                              completion_tokens=usage["completion_tokens"], token_ids=self.encode(text)))
                results.append(samples)
        return check_formats(self, results, params)

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        row = self.prompt_ids(conversation)
        self._check_fits(len(row), params.budget)
        with self._lock:
            self._generating()
            for i, chunk in enumerate(self.llm.create_completion(prompt=row, stream=True, **self._kwargs(params, 0))):
                text = chunk["choices"][0]["text"]
                if i and i % _RETHREAD_EVERY == 0 and not self.fixed_threads:
                    self._set_threads()  # another process started (or stopped) meanwhile
                if text:
                    yield text

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        if len(conversations) != len(continuations):
            raise ValueError("score() needs one continuation per conversation")
        pairs = [(self.prompt_ids(c), self.encode(t)) for c, t in zip(conversations, continuations)]
        out = []
        for (p, c), entries in zip(pairs, self.sequence_logprobs([p + c for p, c in pairs])):
            token_lp = [float(e.logprob) for e in entries[len(p) : len(p) + len(c)] if e.logprob is not None]
            out.append(Scored(logprob=sum(token_lp), token_logprobs=token_lp))
        return out

    def sequence_logprobs(
        self, rows: Sequence[Sequence[int]], top_k: int = 0, next_token: bool = False
    ) -> list[list[TokenLogprob]]:
        results = []
        with self._lock:
            self._scoring()
            for row in (list(r) for r in rows):
                self._check_fits(len(row), 0)
                results.append(self._row_logprobs(row, top_k, next_token) if row else [])
        return results

    def _row_logprobs(self, row: list[int], top_k: int, next_token: bool) -> list[TokenLogprob]:
        self.llm.reset()
        self.llm.eval(row)
        logits = np.asarray(self.llm.scores[: len(row)], dtype=np.float64)
        logprobs = logits - _logsumexp(logits)
        entries = [TokenLogprob(row[0], self.decode([row[0]]), None)]
        for pos in range(1, len(row)):
            lp = logprobs[pos - 1]
            entries.append(TokenLogprob(row[pos], self.decode([row[pos]]), float(lp[row[pos]]), self._top(lp, top_k)))
        if next_token:
            lp = logprobs[-1]
            best = int(lp.argmax())
            entries.append(TokenLogprob(best, self.decode([best]), float(lp[best]), self._top(lp, top_k)))
        self.llm.reset()  # the next completion must not reuse this row as a cached prefix blindly
        return entries

    def _top(self, lp: np.ndarray, k: int) -> list[tuple[str, float]]:
        if not k:
            return []
        idx = np.argpartition(-lp, k)[:k]
        idx = idx[np.argsort(-lp[idx])]
        return [(self.decode([int(i)]), float(lp[i])) for i in idx]

    def close(self) -> None:
        self.llm.close()


def _clocked_llama(llama_class: type, clock: SamplingClock) -> type:
    """``llama_class`` whose ``sample`` (the sampler chain, with the grammar hook when constrained) adds its
    time to ``clock``: the one step of a token that differs between free and constrained decoding."""

    class ClockedLlama(llama_class):  # type: ignore[misc, valid-type]
        def sample(self, *args, **kwargs):
            began = time.perf_counter()
            token = super().sample(*args, **kwargs)
            clock.add(time.perf_counter() - began)
            return token

    return ClockedLlama


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
