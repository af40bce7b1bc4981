"""Versioned model artifacts per role, and which version serves each role.

Layout under ``<data_dir>/registry``::

    <role>/<version>/manifest.json   # version, role, base, adapter|weights, parent, metrics, data, created
    <role>/<version>/...             # a PEFT adapter or full weights
    serving.json                     # {"policy": "policy-0003", "prm": "prm-0001"}

Writes go through a temporary file and ``os.replace`` so a crash never leaves a half-promoted state.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path


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
    data: dict = field(default_factory=dict)
    created: str = ""

    @property
    def adapter_dir(self) -> Path | None:
        return self.path / self.adapter if self.adapter else None

    @property
    def weights_dir(self) -> Path | None:
        return self.path / self.weights if self.weights else None


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
        return f"{role}-{len(self.versions(role)) + 1:04d}"

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
        self.get(role, version)  # must exist
        mapping = self.serving_map()
        mapping[role] = version
        write_json_atomic(self._serving_file, mapping)

    def serving_stamp(self) -> float:
        """Changes whenever a version is promoted: the app reloads the policy when it changes."""
        return self._serving_file.stat().st_mtime if self._serving_file.is_file() else 0.0
