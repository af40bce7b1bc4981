"""App test fixtures: `cdra` through its real entry point in this process."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture
def cdra_main(monkeypatch, tmp_path, model_cache, capsys):
    """`cdra ARGS` through ``app.cli.main`` (the one that prints `error: …` and exits 2) in this process:
    returns (exit code, stdout, stderr). The data dir is ``tmp_path / "data"``."""
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
