"""Local transformers engine (CPU or GPU), optionally with a PEFT adapter: generation and scoring.

Batched generation pads on the left so every row continues from its own last token; scoring
pads on the right and reads the log-softmax at the continuation's positions. One lock serializes
calls, so a Gradio app or HTTP server can share one loaded model across threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

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
from alignment.engines.tokens import TokenLogprob


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


class TransformersEngine(Engine):
    def __init__(
        self,
        model_dir: str | Path,
        adapter: str | Path | None = None,
        dtype: str = "float32",
        device: str = "auto",
        version: str | None = None,
        batch_size: int = 8,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EngineError(
                f"no model at {model_dir} (config.json missing): point the role's `path` at a local "
                "transformers model directory, or use backend=default for the packaged model"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=_dtype(dtype))
        except Exception as exc:
            raise EngineError(f"cannot load the model at {model_dir}: {exc}") from exc
        if adapter:
            from peft import PeftModel

            if not (Path(adapter) / "adapter_config.json").is_file():
                raise EngineError(f"no PEFT adapter at {adapter} (adapter_config.json missing)")
            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self.description = f"transformers:{model_dir}" + (f" + adapter {adapter}" if adapter else "")
        self.version = version or hashlib.sha1(self.description.encode()).hexdigest()[:10]
        self._lock = threading.Lock()
        self._bridge = None
        #: the grammar processor's own time (transformers' sampling is the same in both modes, so not timed)
        self.sampling_clock = SamplingClock()

    # -- constrained decoding (alignment/formats) -------------------------------------------------------
    def can_enforce(self, fmt) -> bool:
        return True

    def _grammar(self, params: SamplingParams, rows: int) -> dict:
        """The logits processor that keeps ``rows`` sequences in ``params.format``, when it is enforced."""
        if not self.enforces(params.format):
            return {}
        from alignment.formats.constrain import HFGrammarProcessor, TokenizerBridge

        if self._bridge is None:
            width = self.model.get_output_embeddings().weight.shape[0]
            self._bridge = TokenizerBridge.from_hf(self.tokenizer, width)
        return {"logits_processor": [HFGrammarProcessor(self._bridge, params.format, rows, self.sampling_clock)]}

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, conversation: Conversation) -> list[int]:
        check_conversation(conversation)
        messages, prefix = split_assistant_prefix(conversation)
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids) + (self.continuation_ids(prefix) if prefix else [])

    def count_tokens(self, conversation: Conversation) -> int:
        return len(self.prompt_ids(conversation))

    def _check_fits(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt + max_new_tokens > self.context_window:
            raise PromptTooLongError(
                f"the prompt has {n_prompt} tokens; with {max_new_tokens} new tokens it exceeds the "
                f"model's context window of {self.context_window}: shorten the message or the history"
            )

    # -- generation ------------------------------------------------------------------------------
    def _generate_kwargs(self, params: SamplingParams) -> dict:
        kwargs: dict = {
            "max_new_tokens": params.budget,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop and not self.enforces(params.format):
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[list[Completion]]:
        prompts = [self.prompt_ids(c) for c in conversations]
        return self.complete_ids(prompts, params)

    def _left_pad(self, prompts: list[list[int]]):
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        return input_ids, attention

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        input_ids, attention = self._left_pad(prompts)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            num_return_sequences=params.n,
            **self._generate_kwargs(params),
            **self._grammar(params, len(prompts) * params.n),
        )
        new_tokens = out[:, input_ids.shape[1] :].tolist()
        chunk: list[list[Completion]] = []
        for i, prompt in enumerate(prompts):
            samples = []
            for row in new_tokens[i * params.n : (i + 1) * params.n]:
                samples.append(self._completion(row, len(prompt), params))
            chunk.append(samples)
        return chunk

    def _completion(self, row: list[int], n_prompt: int, params: SamplingParams) -> Completion:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        finish = "length"
        ids: list[int] = []
        for tok in row:
            if tok == eos:
                finish = "stop"
                break
            if tok == pad and pad != eos:
                continue
            ids.append(tok)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in params.stop if not self.enforces(params.format) else ():
            cut = text.find(stop)
            if cut != -1:
                text, finish = text[:cut], "stop"
        return Completion(text=text, finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=len(ids), token_ids=ids)

    def stream(self, conversation: Conversation, params: SamplingParams) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        prompt = self.prompt_ids(conversation)
        self._check_fits(len(prompt), params.budget)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        input_ids, attention = self._left_pad([prompt])
        kwargs = {**self._generate_kwargs(params.but(n=1)), **self._grammar(params, 1)}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    self.model.generate(input_ids=input_ids, attention_mask=attention, streamer=streamer, **kwargs)
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        emitted = ""
        stops = params.stop if not self.enforces(params.format) else ()
        for delta in streamer:
            emitted += delta
            stop_at = min((emitted.find(s) for s in stops if s in emitted), default=-1)
            if stop_at != -1:
                yield delta[: max(0, len(delta) - (len(emitted) - stop_at))]
                break
            yield delta
        thread.join()
        if errors:
            raise EngineError(f"generation failed: {errors[0]}") from errors[0]

    # -- scoring ---------------------------------------------------------------------------------
    def continuation_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def score(self, conversations: Sequence[Conversation], continuations: Sequence[str]) -> list[Scored]:
        import torch

        if len(conversations) != len(continuations):
            raise ValueError("score() needs one continuation per conversation")
        pairs = [(self.prompt_ids(c), self.continuation_ids(t)) for c, t in zip(conversations, continuations)]
        for p, c in pairs:
            self._check_fits(len(p), len(c))
        scored: list[Scored] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(pairs), self.batch_size):
                scored.extend(self._score_chunk(pairs[start : start + self.batch_size]))
        return scored

    def _score_chunk(self, pairs: list[tuple[list[int], list[int]]]) -> list[Scored]:
        import torch

        rows = [p + c for p, c in pairs]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        out = []
        for i, (p, c) in enumerate(pairs):
            token_lp = picked[i, len(p) - 1 : len(p) - 1 + len(c)].tolist()
            out.append(Scored(logprob=float(sum(token_lp)), token_logprobs=token_lp))
        return out

    # -- token level (alignment.engines.tokens.TokenEngine: raw completions and log-probs for the server) --
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def complete_ids(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        import torch

        rows = [list(p) for p in prompts]
        for p in rows:
            if not p:
                raise EmptyPromptError("the prompt is empty: send some text")
            self._check_fits(len(p), params.budget)
        results: list[list[Completion]] = []
        rows_per_batch = max(1, self.batch_size // max(1, params.n))
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(rows), rows_per_batch):
                results.extend(self._generate_chunk(rows[start : start + rows_per_batch], params))
        return check_formats(self, results, params)

    def sequence_logprobs(
        self, rows: Sequence[Sequence[int]], top_k: int = 0, next_token: bool = False
    ) -> list[list[TokenLogprob]]:
        import torch

        rows = [list(r) for r in rows]
        for r in rows:
            self._check_fits(len(r), 0)
        out: list[list[TokenLogprob]] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                out.extend(self._sequence_chunk(rows[start : start + self.batch_size], top_k, next_token))
        return out

    def _sequence_chunk(self, rows: list[list[int]], top_k: int, next_token: bool) -> list[list[TokenLogprob]]:
        import torch

        results: list[list[TokenLogprob]] = [[] for _ in rows]
        live = [i for i, r in enumerate(rows) if r]
        if not live:
            return results
        width = max(len(rows[i]) for i in live)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in live], device=self.device)
        attention = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in live], device=self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        for b, i in enumerate(live):
            row = rows[i]
            # log-softmax row by row, so a long batch never holds B x T x vocab floats twice
            lp = torch.log_softmax(logits[b, : len(row)].float(), dim=-1)
            picked = lp[:-1].gather(-1, input_ids[b, 1 : len(row)].unsqueeze(-1)).squeeze(-1).tolist()
            tops = lp.topk(top_k, dim=-1) if top_k else None
            entries = [TokenLogprob(row[0], self._token_str(row[0]), None)]
            for pos in range(1, len(row)):
                entries.append(TokenLogprob(row[pos], self._token_str(row[pos]), picked[pos - 1], self._top(tops, pos - 1)))
            if next_token:
                best = int(lp[-1].argmax())
                entries.append(TokenLogprob(best, self._token_str(best), float(lp[-1, best]), self._top(tops, len(row) - 1)))
            results[i] = entries
        return results

    def _token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _top(self, tops, pos: int) -> list[tuple[str, float]]:
        if tops is None:
            return []
        return [(self._token_str(int(t)), float(v)) for v, t in zip(tops.values[pos].tolist(), tops.indices[pos].tolist())]

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
