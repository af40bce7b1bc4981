"""A registered policy version as a GGUF file, so llama.cpp serves a retrained policy as fast as the packaged one.

The packaged GGUF is the template: its metadata, tokenizer and chat template are copied, and its tensors are
replaced where the version changed them. A LoRA adapter is merged in the GGUF's own tensor order
(W + scale·B·A, with llama.cpp's q/k row permutation): untouched tensors are copied byte for byte (still Q4_1),
changed ones are written F16: a trained LoRA's update is far below Q8_0's step (tests/training/test_export_gguf.py
saw Q8_0 erase it), F16 keeps it. Full weights (a full fine-tune of the same architecture) are all written F16
(norms F32). Written to a temporary file and renamed: atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alignment.errors import CdraError

GGUF_NAME = "model.gguf"
_LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


class ExportError(CdraError):
    """The version cannot be written as GGUF (another architecture, an adapter kind llama.cpp cannot merge)."""


def export_gguf(
    out_path: Path,
    *,
    adapter_dir: Path | None = None,
    weights_dir: Path | None = None,
    template: Path | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Path:
    """Write ``template`` (default: the packaged GGUF) with ``adapter_dir`` merged in, or with the tensors of a
    transformers ``weights_dir`` of the same architecture, to ``out_path``. Raises ``ExportError``."""
    import gguf

    if template is None:
        from alignment.engines.default_model import packaged_gguf_path

        template = packaged_gguf_path()
    reader = gguf.GGUFReader(str(template))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ExportError(f"GGUF export knows the llama architecture, not {arch!r} ({template})")
    heads = int(_field(reader, "llama.attention.head_count"))
    kv_heads = int(_field(reader, "llama.attention.head_count_kv"))
    blocks = int(_field(reader, "llama.block_count"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)

    if adapter_dir is not None:
        progress(f"merging the LoRA adapter {adapter_dir} ...")
        new = _lora_tensors(Path(adapter_dir), reader, names, heads, kv_heads)
    elif weights_dir is not None:
        progress(f"reading the full weights in {weights_dir} ...")
        new = _full_tensors(Path(weights_dir), reader, names, heads, kv_heads)
    else:
        new = {}
    progress(f"writing {out_path} ({len(new)} of {len(reader.tensors)} tensors changed) ...")
    _write(reader, new, Path(out_path), full=weights_dir is not None)
    return Path(out_path)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise ExportError(f"the GGUF template has no {key}")
    return field.contents()


def permute_qk(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF q/k rows -> llama.cpp's rotary layout (what llama.cpp's convert_hf_to_gguf does; transformers undoes it)."""
    out = weights.shape[0]
    return weights.reshape(heads, 2, out // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _gguf_name(names, hf_module: str) -> str:
    name = names.get_name(hf_module)
    if name is None:
        raise ExportError(f"no GGUF tensor for {hf_module}")
    return name


def _permute_for(hf_module: str, delta: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    if hf_module.endswith("q_proj"):
        return permute_qk(delta, heads)
    if hf_module.endswith("k_proj"):
        return permute_qk(delta, kv_heads)
    return delta


def _lora_tensors(adapter_dir: Path, reader, names, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    """GGUF tensor name -> merged float32 weights (numpy order: out x in) for every module the adapter changes."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("fan_in_fan_out"):
        raise ExportError("only plain LoRA adapters can be merged into a GGUF (not DoRA, not fan-in-fan-out)")
    if config.get("modules_to_save"):
        raise ExportError("the adapter saves whole modules (modules_to_save): not mergeable into the GGUF")
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    scale = alpha / (np.sqrt(r) if config.get("use_rslora") else r)
    files = [adapter_dir / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise ExportError(f"{adapter_dir} has no adapter_model.safetensors")
    state = load_file(str(files[0]))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix("base_model.model.")
                pairs.setdefault(module, {})[part] = value.astype(np.float32)
                break
        else:
            raise ExportError(f"the adapter holds {key}, which is not a LoRA factor")
    by_name = {t.name: t for t in reader.tensors}
    merged: dict[str, np.ndarray] = {}
    for module, ab in pairs.items():
        if module.rsplit(".", 1)[-1] not in _LORA_TARGETS or set(ab) != {"lora_A", "lora_B"}:
            raise ExportError(f"cannot merge the adapter's {module}")
        name = _gguf_name(names, module) + ".weight"
        tensor = by_name.get(name)
        if tensor is None:
            raise ExportError(f"the GGUF template has no {name}")
        base = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        delta = scale * (ab["lora_B"] @ ab["lora_A"])
        delta = _permute_for(module, delta, heads, kv_heads)
        if delta.shape != base.shape:
            raise ExportError(f"{module}: adapter shape {delta.shape} does not fit {name} {base.shape}")
        merged[name] = base + delta
    return merged


def _full_tensors(weights_dir: Path, reader, names, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(weights_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{weights_dir} has no .safetensors weights")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update(load_file(str(f)))
    wanted = {t.name: t for t in reader.tensors}
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        module, _, suffix = key.rpartition(".")
        if key == "lm_head.weight" and "output.weight" not in wanted:
            continue  # tied to the embeddings
        name = _gguf_name(names, module) + f".{suffix}"
        if name not in wanted:
            raise ExportError(f"{key} has no place in the GGUF template (another architecture?)")
        data = _permute_for(module, value.astype(np.float32), heads, kv_heads)
        expected = tuple(reversed([int(d) for d in wanted[name].shape]))
        if data.shape != expected:
            raise ExportError(f"{key}: shape {data.shape} does not fit {name} {expected}")
        out[name] = data
    missing = set(wanted) - set(out)
    if missing:
        raise ExportError(f"the weights lack {sorted(missing)[:3]}")
    return out


def _write(reader, new: dict[str, np.ndarray], out_path: Path, full: bool) -> None:
    import gguf

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name == gguf.Keys.General.FILE_TYPE and full:
                value = int(gguf.LlamaFileType.MOSTLY_F16)
            writer.add_key_value(field.name, value, vtype, sub_type=sub)
        for tensor in reader.tensors:
            data = new.get(tensor.name)
            if data is None:  # unchanged: the template's bytes as they are
                writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
            elif data.ndim == 1 or tensor.tensor_type == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(tensor.name, data.astype(np.float32))
            else:
                writer.add_tensor(tensor.name, data.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except OSError as exc:
        raise CdraError(f"could not write {out_path}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
