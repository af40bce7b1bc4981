"""The `cdra` command line as a user runs it: real subprocesses, real model, clean one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from app.settings import ROLES


def cdra_command() -> list[str]:
    script = Path(sys.executable).parent / "cdra"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'cdra'; from app.cli import main; main()"]


def run_cdra(args: list[str], data_dir: Path, model_cache: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CDRA_")}
    full_env.update(CDRA_DATA_DIR=str(data_dir), CDRA_MODEL_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1",
                    TRANSFORMERS_OFFLINE="1", COLUMNS="200", **env)
    return subprocess.run([*cdra_command(), *args], env=full_env, capture_output=True, text=True, timeout=300,
                          check=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ask_prints_an_answer(tmp_path, model_cache):
    result = run_cdra(["ask", "--user", "alice", "I'm vegetarian. What should I cook for friends this weekend?",
                       "--step-tokens", "16", "--answer-tokens", "32"], tmp_path / "data", model_cache)
    assert result.returncode == 0, result.stderr
    answer = result.stdout.strip()
    assert answer and "no answer" not in answer and not answer.startswith("Step")  # the answer, never a notice


def test_models_lists_the_five_roles(tmp_path, model_cache):
    result = run_cdra(["models"], tmp_path / "data", model_cache)
    assert result.returncode == 0, result.stderr
    for role in ROLES:
        assert role in result.stdout


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under a click-style group (typer may vendor click, so groups are duck-typed)."""
    paths = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        paths.append(path)
        if hasattr(command, "commands"):
            paths.extend(_command_paths(command, path))
    return paths


def test_every_subcommand_has_help():
    from app.cli import _register, app

    if not app.registered_commands:  # register once per process, as main() does
        _register()
    group = typer.main.get_command(app)
    paths = _command_paths(group)
    assert ("serve",) in paths and ("bench", "generate") in paths
    runner = CliRunner()
    for path in [(), *paths]:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"cdra {' '.join(path)} --help: {result.output}"
        assert "Usage" in result.output


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"CDRA_POLICY__BACKEND": "transformers", "CDRA_POLICY__PATH": "/nonexistent"}, "no model at /nonexistent"),
        ({"CDRA_POLICY__BACKEND": "openai", "CDRA_POLICY__MODEL": "m", "CDRA_POLICY__MAX_RETRIES": "0",
          "CDRA_POLICY__BASE_URL": "http://127.0.0.1:{port}/v1"}, "cannot reach"),
    ],
    ids=["missing-model-path", "unreachable-endpoint"],
)
def test_misconfigured_policy_fails_with_one_line(tmp_path, model_cache, env, expected):
    env = {k: v.format(port=closed_port()) for k, v in env.items()}
    result = run_cdra(["ask", "hello", "--max-new-tokens", "4"], tmp_path / "data", model_cache, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0]
