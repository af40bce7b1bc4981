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


@pytest.fixture
def cdra_main(monkeypatch, tmp_path, model_cache, capsys):
    """`cdra ARGS` through ``app.cli.main`` (the one that prints `error: …` and exits 2) in this process:
    returns (exit code, stdout, stderr). The data dir is ``tmp_path / "data"``."""
    import sys

    from app import cli

    cli._register()
    monkeypatch.setattr(cli, "_register", lambda: None)  # once per process, as in a real run
    for key in [k for k in os.environ if k.startswith("CDRA_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CDRA_MODEL_CACHE_DIR", str(model_cache))

    umask = os.umask(0o022)  # main() makes files private (umask 077): give the test process its own back
    os.umask(umask)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["cdra", "--data-dir", str(tmp_path / "data"), *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            os.umask(umask)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
