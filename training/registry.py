"""Versioned model artifacts per role, and which version serves each role.

Layout under ``<data_dir>/registry``::

    <role>/<version>/manifest.json   # version, role, base, adapter|weights, parent, config, data, metrics, created
    <role>/<version>/...             # a PEFT adapter or full weights
    <role>/<version>/model.gguf      # the policy as llama.cpp serves it, written when it is first promoted
    serving.json                     # {"policy": "policy-0003", "prm": "prm-0001"}

Writes go through a temporary file and ``os.replace`` so a crash never leaves a half-promoted state;
a version directory without a manifest is an unfinished write and is invisible to readers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)
#: roles exported as GGUF when promoted (llama.cpp serves them on the CPU; see app/models.py)
GGUF_ROLES = ("policy",)

@dataclass
class RegisteredModel:
    role: str
    version: str
    path: Path  # the version's directory
    base: str = "default"  # "default" (packaged model) or a local model directory
    adapter: str | None = None  # relative to path, when the artifact is a PEFT adapter
    weights: str | None = None  # relative to path, when the artifact is a full model
    parent: str | None = None
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # what it was trained on: {name: fingerprint(path)}
    created: str = ""
    config: dict = field(default_factory=dict)  # the training configuration, for reproducing it
    gguf: str | None = None  # relative to path: the version as one GGUF file (training/export_gguf.py)
    gguf_error: str | None = None  # why the export failed (then transformers serves the version)

    @property
    def adapter_dir(self) -> Path | None:
        return self.path / self.adapter if self.adapter else None

    @property
    def weights_dir(self) -> Path | None:
        return self.path / self.weights if self.weights else None

    @property
    def gguf_path(self) -> Path | None:
        """The exported GGUF, if it was written and is still there."""
        path = self.path / self.gguf if self.gguf else None
        return path if path is not None and path.is_file() else None


def write_json_atomic(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def _serving_file(self) -> Path:
        return self.root / "serving.json"

    def versions(self, role: str) -> list[RegisteredModel]:
        role_dir = self.root / role
        if not role_dir.is_dir():
            return []
        found = [self._read(p) for p in sorted(role_dir.iterdir()) if (p / "manifest.json").is_file()]
        return sorted(found, key=lambda m: m.created)

    def get(self, role: str, version: str) -> RegisteredModel:
        path = self.root / role / version
        if not (path / "manifest.json").is_file():
            raise KeyError(f"no {role} version {version!r} in {self.root}")
        return self._read(path)

    def _read(self, path: Path) -> RegisteredModel:
        data = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        data["path"] = path
        return RegisteredModel(**{k: v for k, v in data.items() if k in RegisteredModel.__dataclass_fields__})

    def next_version(self, role: str) -> str:
        """One past the highest number used so far, counting unfinished directories too."""
        role_dir = self.root / role
        numbers = [0]
        if role_dir.is_dir():
            for p in role_dir.iterdir():
                m = _VERSION.fullmatch(p.name)
                if m and m.group(1) == role:
                    numbers.append(int(m.group(2)))
        return f"{role}-{max(numbers) + 1:04d}"

    def new_version_dir(self, role: str) -> tuple[str, Path]:
        """Reserve the next version's directory (created exclusively, so two writers never share one)."""
        while True:
            version = self.next_version(role)
            path = self.root / role / version
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return version, path

    def register(self, model: RegisteredModel) -> RegisteredModel:
        """Write the manifest of a version whose files are already in ``model.path``."""
        model.created = model.created or datetime.now(timezone.utc).isoformat()
        payload = asdict(model)
        payload["path"] = str(model.path)
        write_json_atomic(model.path / "manifest.json", payload)
        return model

    def serving_map(self) -> dict[str, str]:
        if not self._serving_file.is_file():
            return {}
        return json.loads(self._serving_file.read_text(encoding="utf-8"))

    def serving(self, role: str) -> RegisteredModel | None:
        version = self.serving_map().get(role)
        return self.get(role, version) if version else None

    def promote(self, role: str, version: str) -> None:
        self.promote_many({role: version})

    def promote_many(self, versions: dict[str, str]) -> None:
        """Serve several roles' versions at once (one atomic write: a PRM and the policy it trained).

        A policy version is first exported as GGUF (``export_gguf``), so llama.cpp serves it; a version that
        cannot be exported is still promoted and served by transformers (the reason is in its manifest)."""
        for role, version in versions.items():
            model = self.get(role, version)  # must exist
            if role in GGUF_ROLES:
                self.export_gguf(model)
        mapping = self.serving_map()
        mapping.update(versions)
        write_json_atomic(self._serving_file, mapping)

    def publish(self, role: str, artifact_dir: Path, *, is_adapter: bool, base: str = "default",
                parent: str | None = None, metrics: dict | None = None, data: dict | None = None,
                config: dict | None = None) -> RegisteredModel:
        """Make a trained artifact a new version: copy an adapter (small), move full weights (large).

        ``metrics`` go to the version's ``metrics.json`` as given and, flattened to scalars, into the
        manifest. The manifest is written last, so a crash leaves at most an invisible unfinished directory.
        """
        artifact_dir = Path(artifact_dir)
        marker = "adapter_config.json" if is_adapter else "config.json"
        if not (artifact_dir / marker).is_file():
            raise FileNotFoundError(f"{artifact_dir} holds no trained {'adapter' if is_adapter else 'model'} ({marker} missing)")
        version, path = self.new_version_dir(role)
        write_json_atomic(path / "metrics.json", metrics or {})
        name = "adapter" if is_adapter else "model"
        if is_adapter:
            shutil.copytree(artifact_dir, path / name)
        else:
            shutil.move(str(artifact_dir), str(path / name))
        return self.register(RegisteredModel(
            role=role, version=version, path=path, base=base, adapter=name if is_adapter else None,
            weights=None if is_adapter else name, parent=parent, metrics=flat_metrics(metrics or {}), data=data or {},
            config=config or {},
        ))

    def export_gguf(self, model: RegisteredModel, progress=lambda _m: None) -> RegisteredModel:
        """Write ``<version>/model.gguf`` (the adapter merged into the packaged GGUF, or the full weights) once;
        the manifest then names it. Failures are recorded, logged and not raised."""
        if model.gguf_path is not None:
            return model
        if model.base != "default" and model.weights_dir is None:
            model.gguf, model.gguf_error = None, f"no GGUF template for the base {model.base}"
            return self.register(model)
        from training.export_gguf import GGUF_NAME, export_gguf

        try:
            export_gguf(model.path / GGUF_NAME, adapter_dir=model.adapter_dir, weights_dir=model.weights_dir,
                        progress=progress)
            model.gguf, model.gguf_error = GGUF_NAME, None
        except Exception as exc:  # noqa: BLE001 - an export problem must not block a promotion
            log.warning("could not export %s %s as GGUF (transformers will serve it): %s", model.role,
                        model.version, exc)
            model.gguf, model.gguf_error = None, f"{type(exc).__name__}: {exc}"
        return self.register(model)

    def latest(self, role: str) -> RegisteredModel | None:
        found = self.versions(role)
        return found[-1] if found else None

    def serving_stamp(self) -> float:
        """Changes whenever a version is promoted: the app reloads the policy when it changes."""
        return self._serving_file.stat().st_mtime if self._serving_file.is_file() else 0.0


_VERSION = re.compile(r"(.+)-(\d{4,})")


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    """The scalar entries of a (nested) metrics dict, keys joined with "_": what `cdra models` shows;
    the full nested metrics go to the version's metrics.json."""
    out: dict = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, f"{name}_"))
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
    return out


def fingerprint(path: Path) -> dict:
    """What a version was trained on: the file (or datasets directory), its sha256 and record count."""
    path = Path(path)
    digest = hashlib.sha256()
    records = 0
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for line in fh:
                digest.update(line)
                if f.suffix == ".jsonl" and line.strip():
                    records += 1
    return {"path": str(path.resolve()), "sha256": digest.hexdigest(), "records": records}


@dataclass(frozen=True)
class TrainingStart:
    """Where a training stage starts: a transformers directory, optionally an adapter to continue."""

    base: str  # what the new version's manifest records as its base: "default" or a model directory
    model_dir: Path  # the concrete directory the weights load from
    adapter: Path | None = None  # a PEFT adapter to keep training (the serving version's)
    parent: str | None = None  # the registry version this one descends from


def training_start(registry: ModelRegistry, role: str, spec, models_dir: Path) -> TrainingStart:
    """Resolve a role's ModelSpec to trainable weights, continuing from its serving version.

    ``auto`` continues the serving version (its adapter on its base, or its full weights), else
    starts from the spec's ``path`` if set, else the packaged default; ``default``/``transformers``/``vllm`` start from the configured weights.
    Endpoints cannot be trained here.
    """
    from alignment.engines.default_model import ensure_default_model
    from alignment.errors import CdraError

    def default_dir() -> Path:
        return ensure_default_model(Path(models_dir))

    if spec.backend == "auto":
        serving = registry.serving(role)
        if serving is None and spec.path:  # nothing promoted yet: the configured base model
            return TrainingStart(spec.path, Path(spec.path), Path(spec.adapter) if spec.adapter else None)
        if serving is None:
            return TrainingStart("default", default_dir())
        if serving.weights_dir is not None:
            return TrainingStart(str(serving.weights_dir), serving.weights_dir, None, serving.version)
        model_dir = default_dir() if serving.base == "default" else Path(serving.base)
        return TrainingStart(serving.base, model_dir, serving.adapter_dir, serving.version)
    if spec.backend == "default":
        return TrainingStart("default", default_dir(), Path(spec.adapter) if spec.adapter else None)
    if spec.backend in ("transformers", "vllm"):
        if not spec.path:
            raise CdraError(f"the {role} role has backend={spec.backend} but no `path` to train from")
        return TrainingStart(spec.path, Path(spec.path), Path(spec.adapter) if spec.adapter else None)
    raise CdraError(
        f"the {role} role is served by an endpoint ({spec.backend}); training needs local weights: "
        f"set {role}.backend to auto, default or transformers"
    )
