"""Shared fixtures: offline environment, one converted default model per machine, per-test data dirs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep instead of spinning while they wait: on a CPU shared with other processes
# spinning made torch 3-9x slower (measured with `cdra bench generate`); must precede `import torch`
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: converted once per machine and reused by every test run (gitignored)
MODEL_CACHE = Path(os.environ.get("CDRA_TEST_MODEL_CACHE", REPO / ".cache" / "models"))
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    from alignment.engines.default_model import ensure_default_model

    ensure_default_model(MODEL_CACHE)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def default_engine(model_cache):
    """The real packaged SmolLM2-135M-Instruct, loaded once for the whole session."""
    from alignment.engines import ModelSpec, build_engine

    return build_engine(ModelSpec(backend="default"), model_cache)


@pytest.fixture
def settings(tmp_path, model_cache, monkeypatch):
    """Settings with a fresh data directory and the shared model cache."""
    from app.settings import load_settings

    for key in list(os.environ):
        if key.startswith("CDRA_") and key != "CDRA_TEST_MODEL_CACHE":
            monkeypatch.delenv(key)
    return load_settings(data_dir=tmp_path / "data", model_cache_dir=model_cache)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared/ not found beside the repository at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def unconstrained():
    """``with unconstrained(engine):`` decodes freely (the role setting ``constrained = false``), as training
    rollouts and R_format measurements do; the engine is constrained again afterwards."""
    from contextlib import contextmanager

    @contextmanager
    def free(engine):
        before = engine.constrained
        engine.constrained = False
        try:
            yield engine
        finally:
            engine.constrained = before

    return free
