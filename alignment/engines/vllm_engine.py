"""A local model served in-process by vLLM (GPU machines): batched generation, LoRA, prompt log-probs.

Prompts are built with the model's own chat template (the tokenizer's), so generation and scoring see
exactly the token ids the transformers engine would; vLLM is imported only when this engine is built.
Written against vLLM >= 0.12 (``LLM.generate`` with token prompts, ``SamplingParams``, ``LoRARequest``, and
``StructuredOutputsParams(grammar=…)`` on the llguidance ("guidance") backend for declared output formats).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

from alignment.engines.base import (
    Completion,
    Conversation,
    EmptyPromptError,
    Engine,
    EngineError,
    PromptTooLongError,
    SamplingParams,
    Scored,
    check_conversation,
    check_formats,
    split_assistant_prefix,
)
from alignment.engines.spec import ModelSpec
from alignment.engines.tokens import TokenLogprob

_INSTALL = "install it on a GPU machine with: pip install '.[vllm]'"
#: the largest LoRA rank the engine reserves memory for; our adapters are far smaller
_MAX_LORA_RANK = 64


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(f"backend=vllm needs the vllm package, which is not installed ({exc}): {_INSTALL}") from exc
    return vllm


class VLLMEngine(Engine):
    def __init__(self, spec: ModelSpec, version: str | None = None) -> None:
        if not spec.path or not (Path(spec.path) / "config.json").is_file():
            raise EngineError(f"no model at {spec.path} (config.json missing): backend=vllm needs `path`, "
                              "a local transformers model directory")
        if spec.adapter and not (Path(spec.adapter) / "adapter_config.json").is_file():
            raise EngineError(f"no PEFT adapter at {spec.adapter} (adapter_config.json missing)")
        vllm = _import_vllm()
        try:
            import torch

            if not torch.cuda.is_available():
                raise EngineError("backend=vllm needs a CUDA GPU and none is visible: use backend=transformers here")
        except ImportError as exc:
            raise EngineError(f"backend=vllm needs torch: {exc}") from exc
        kwargs: dict = {
            "model": str(spec.path),
            "dtype": "auto" if spec.dtype == "auto" else spec.dtype,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "seed": 0,
            # llguidance reads our formats' Lark grammars (with their [max_tokens=N] bounds) as they are
            "structured_outputs_config": {"backend": "guidance"},
        }
        if spec.adapter:
            kwargs.update(enable_lora=True, max_lora_rank=_MAX_LORA_RANK, max_loras=1)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # CUDA OOM, unsupported architecture, bad weights
            raise EngineError(f"vLLM could not load {spec.path}: {' '.join(str(exc).split())[:400]}") from exc
        self._vllm = vllm
        self.spec = spec
        self.tokenizer = self.llm.get_tokenizer()
        self._lora = None
        if spec.adapter:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(spec.adapter))
        self.context_window = int(self.llm.llm_engine.model_config.max_model_len)
        self.description = f"vllm:{spec.path}" + (f" + adapter {spec.adapter}" if spec.adapter else "")
        self.version = version or hashlib.sha1(self.description.encode()).hexdigest()[:10]
        self._lock = threading.Lock()

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, conversation: Conversation) -> list[int]:
        check_conversation(conversation)
        messages, prefix = split_assistant_prefix(conversation)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids) + (self.encode(prefix) if prefix else [])

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.prompt_ids(conversation))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _check_fits(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt + max_new_tokens > self.context_window:
            raise PromptTooLongError(
                f"the prompt has {n_prompt} tokens; with {max_new_tokens} new tokens it exceeds the "
                f"model's context window of {self.context_window}: shorten the message or the history"
            )

    # -- generation ------------------------------------------------------------------------------
    def can_enforce(self, fmt) -> bool:
        return True

    def _sampling(self, params: SamplingParams, **extra):
        if self.enforces(params.format):
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(grammar=params.format.lark)
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=max(0.0, params.temperature),
            top_p=params.top_p if not params.greedy else 1.0,
            max_tokens=params.budget,
            seed=params.seed,
            stop=(list(params.stop) or None) if not self.enforces(params.format) else None,
            **extra,
        )

    def _run(self, rows: list[list[int]], sampling) -> list:
        prompts = [{"prompt_token_ids": r} for r in rows]
        with self._lock:
            return self.llm.generate(prompts, sampling, use_tqdm=False, lora_request=self._lora)

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        return self.complete_ids([self.prompt_ids(c) for c in conversations], params)

    def complete_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        rows = [list(p) for p in prompts]
        for r in rows:
            if not r:
                raise EmptyPromptError("the prompt is empty: send some text")
            self._check_fits(len(r), params.budget)
        outputs = self._run(rows, self._sampling(params))
        results = []
        for row, out in zip(rows, outputs):
            results.append([
                Completion(
                    text=o.text,
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    prompt_tokens=len(row),
                    completion_tokens=len(o.token_ids),
                    token_ids=[t for t in o.token_ids if t != self.tokenizer.eos_token_id],
                )
                for o in out.outputs
            ])
        return check_formats(self, results, params)

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        if len(conversations) != len(continuations):
            raise ValueError("score() needs one continuation per conversation")
        pairs = [(self.prompt_ids(c), self.encode(t)) for c, t in zip(conversations, continuations)]
        entries = self.sequence_logprobs([p + c for p, c in pairs])
        out = []
        for (p, c), row in zip(pairs, entries):
            token_lp = [float(e.logprob) for e in row[len(p) : len(p) + len(c)] if e.logprob is not None]
            out.append(Scored(logprob=sum(token_lp), token_logprobs=token_lp))
        return out

    def sequence_logprobs(
        self, rows: Sequence[Sequence[int]], top_k: int = 0, next_token: bool = False
    ) -> list[list[TokenLogprob]]:
        """vLLM's ``prompt_logprobs`` gives each prompt token's log-prob (plus the top k); generating one
        greedy token with ``logprobs=k`` gives the position after the row."""
        rows = [list(r) for r in rows]
        for r in rows:
            self._check_fits(len(r), 1)
        sampling = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=max(top_k, 1),
                                             logprobs=max(top_k, 1))
        outputs = self._run([r for r in rows if r], sampling) if any(rows) else []
        results: list[list[TokenLogprob]] = []
        it = iter(outputs)
        for row in rows:
            if not row:
                results.append([])
                continue
            out = next(it)
            entries = [TokenLogprob(row[0], self._token_str(row[0]), None)]
            for pos in range(1, len(row)):
                entries.append(self._entry(row[pos], out.prompt_logprobs[pos], top_k))
            if next_token:
                gen = out.outputs[0]
                entries.append(self._entry(gen.token_ids[0], gen.logprobs[0], top_k))
            results.append(entries)
        return results

    def _entry(self, token_id: int, position: dict, top_k: int) -> TokenLogprob:
        ranked = sorted(position.items(), key=lambda kv: kv[1].logprob, reverse=True)[:top_k] if top_k else []
        return TokenLogprob(token_id, self._token_str(token_id), float(position[token_id].logprob),
                            [(self._token_str(t), float(lp.logprob)) for t, lp in ranked])

    def _token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def close(self) -> None:
        self.llm = None  # type: ignore[assignment]
