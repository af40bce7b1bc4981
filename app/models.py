"""Which engine serves each role: settings + the model registry -> loaded engines.

``backend=auto`` (the default) serves the registry's promoted version for the role if there is
one, else the packaged default model. The policy is served by llama.cpp on the CPU when llama-cpp-python
is installed: the packaged GGUF itself, or a promoted version's exported GGUF (training/export_gguf.py);
transformers serves everything else (and is the fallback); vLLM is the GPU path (``backend=vllm``). The app
calls ``engine_for`` on every turn; a newly promoted version is picked up on the next turn, without a restart.
"""

from __future__ import annotations

import importlib.util
import threading

from alignment.engines import Engine, ModelSpec, build_engine
from alignment.engines.factory import evict
from app.settings import ROLES, Role, Settings
from training.registry import ModelRegistry, RegisteredModel

#: roles llama.cpp serves on the CPU when it is installed; the others score, judge and train on transformers
LLAMACPP_ROLES = ("policy",)


#: the version name of an adapter shipped with the package, served while nothing is promoted for its role
PACKAGED_VERSION = "packaged"


def packaged_adapter_for(role: str):
    """The adapter the package ships for ``role`` on the packaged model (only ``preference`` has one), or None."""
    if role in LLAMACPP_ROLES:
        return None
    from alignment.adapters import packaged_adapter

    return packaged_adapter(role)


def llamacpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_spec(settings: Settings, role: Role) -> tuple[ModelSpec, str | None]:
    """The concrete spec (never ``auto``) and the registry version it comes from, if any."""
    spec = settings.role(role)
    if spec.backend != "auto":
        return spec, None
    fast = role in LLAMACPP_ROLES and llamacpp_available()
    serving = ModelRegistry(settings.registry_dir).serving(role)
    if serving is None:  # nothing promoted yet: the configured base model (`path`), else the packaged default
        if spec.path:
            return spec.model_copy(update={"backend": "transformers"}), None
        shipped = packaged_adapter_for(role)
        if shipped is not None:  # the preference role's LoRA shipped as package data (alignment/adapters)
            return spec.model_copy(update={"backend": "default", "adapter": str(shipped)}), PACKAGED_VERSION
        return spec.model_copy(update={"backend": "llamacpp" if fast else "default", "adapter": None}), None
    return registered_spec(serving, spec, fast), serving.version


def registered_spec(model: RegisteredModel, spec: ModelSpec | None = None, llamacpp: bool | None = None) -> ModelSpec:
    """The spec that serves a registered version: its GGUF through llama.cpp where it has one (and
    ``llamacpp``, default: when installed), else its weights or adapter through transformers."""
    spec = spec or ModelSpec()
    serving = model
    if (llamacpp_available() if llamacpp is None else llamacpp) and model.gguf_path is not None:
        return spec.model_copy(update={"backend": "llamacpp", "path": str(model.gguf_path), "adapter": None})
    if serving.weights_dir is not None:
        return spec.model_copy(update={"backend": "transformers", "path": str(serving.weights_dir)})
    base = {"backend": "default"} if serving.base == "default" else {"backend": "transformers", "path": serving.base}
    adapter = str(serving.adapter_dir) if serving.adapter_dir else None
    return spec.model_copy(update={**base, "adapter": adapter})


def share_cpu_with_llamacpp(settings: Settings) -> int | None:
    """In a process that serves the policy by llama.cpp, torch (the embedder, background inference) keeps to half
    the cores, so the two never contend for all of them (measured in docs/BENCHMARKS.md); returns torch's threads."""
    if resolve_spec(settings, "policy")[0].backend != "llamacpp":
        return None
    import torch

    from alignment.engines.cpu_threads import usable_cores

    threads = max(1, usable_cores() // 2)
    torch.set_num_threads(threads)
    return threads


def engine_for(settings: Settings, role: Role) -> Engine:
    """The engine serving ``role`` now. Resolved on every call: a version promoted by `cdra retrain`
    (another process) is a new spec, hence a new engine, on the next call; the replaced registry
    version's engine is evicted from the cache unless another role still resolves to it."""
    spec, version = resolve_spec(settings, role)
    engine = build_engine(spec, settings.models_dir, version=version)
    _evict_replaced(settings, role, spec, version)
    return engine


_resolved: dict[tuple[str, str], tuple[ModelSpec, str | None]] = {}
_resolved_lock = threading.Lock()


def _evict_replaced(settings: Settings, role: Role, spec: ModelSpec, version: str | None) -> None:
    key = (str(settings.models_dir), role)
    with _resolved_lock:
        old = _resolved.get(key)
        _resolved[key] = (spec, version)
        if old is None or old[1] is None or old[0] == spec:  # the packaged default is never evicted
            return
        if any(s == old[0] and k[0] == key[0] for k, (s, _) in _resolved.items()):
            return
    evict(old[0], settings.models_dir)


def describe_roles(settings: Settings) -> list[dict[str, str]]:
    """One row per role for `cdra models`, without loading any model."""
    rows = []
    for role in ROLES:
        spec, version = resolve_spec(settings, role)  # type: ignore[arg-type]
        where = {
            "default": f"packaged SmolLM2-135M-Instruct (cache {settings.models_dir})",
            "transformers": f"{spec.path}" + (f" + adapter {spec.adapter}" if spec.adapter else ""),
            "vllm": f"vLLM {spec.path}",
            "openai": f"{spec.base_url} model={spec.model}",
            "llamacpp": f"llama.cpp {spec.path or 'packaged SmolLM2-135M-Instruct GGUF'}",
        }[spec.backend]
        if spec.backend == "default" and spec.adapter:
            where += f" + adapter {spec.adapter}"
        rows.append({"role": role, "backend": spec.backend, "version": version or "-", "source": where})
    return rows


def preference_inferrer(settings: Settings, **config: object):
    """The inferrer the product stores from (app background inference, `cdra prefs infer`): the serving
    `preference` engine, ``settings.inference`` (votes, and the memory's embeddings deciding when two statements
    say the same) and the call's own ``InferenceConfig`` fields."""
    from alignment.consensus import Agreement
    from alignment.preference_inference import InferenceConfig, PreferenceInferrer

    inference = settings.inference
    cfg = InferenceConfig(votes=inference.votes, min_support=inference.min_support, **config)  # type: ignore[arg-type]
    agreement = None
    if cfg.votes:
        from memory.embeddings import get_embedder

        memory = settings.memory
        embedder = get_embedder(memory.embedding_model, memory.embedding_device, memory.embedding_batch_size)
        agreement = Agreement(similarity=embedder.similarity, threshold=inference.agreement)
    return PreferenceInferrer(engine_for(settings, "preference"), cfg, agreement)
