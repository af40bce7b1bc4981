"""Which engine serves each role: settings + the model registry -> loaded engines.

``backend=auto`` (the default) serves the registry's promoted version for the role if there is
one, else the packaged default model. The app calls ``engine_for`` on every turn; a newly promoted
version is picked up on the next turn, without a restart.
"""

from __future__ import annotations

import threading

from alignment.engines import Engine, ModelSpec, build_engine
from alignment.engines.factory import evict
from app.settings import ROLES, Role, Settings
from training.registry import ModelRegistry


def resolve_spec(settings: Settings, role: Role) -> tuple[ModelSpec, str | None]:
    """The concrete spec (never ``auto``) and the registry version it comes from, if any."""
    spec = settings.role(role)
    if spec.backend != "auto":
        return spec, None
    serving = ModelRegistry(settings.registry_dir).serving(role)
    if serving is None:  # nothing promoted yet: the configured base model (`path`), else the packaged default
        return spec.model_copy(update={"backend": "transformers" if spec.path else "default"}), None
    if serving.weights_dir is not None:
        return spec.model_copy(update={"backend": "transformers", "path": str(serving.weights_dir)}), serving.version
    base = {"backend": "default"} if serving.base == "default" else {"backend": "transformers", "path": serving.base}
    adapter = str(serving.adapter_dir) if serving.adapter_dir else None
    return spec.model_copy(update={**base, "adapter": adapter}), serving.version


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
