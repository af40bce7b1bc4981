"""`cdra retrain`: promotion decision, log positions, lock, cron exit codes, and the whole loop on the
real default model from logged sessions to a promoted policy that `cdra ask` serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.errors import FormatError
from training.retrain import ExitCode, RetrainLocked, decide_promotion, new_turns, retrain_lock

SESSIONS = Path(__file__).resolve().parents[1] / "fixtures" / "sessions.jsonl"


def run_cdra(args: list[str], data_dir: Path, model_cache: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    """`cdra` as cron runs it: a fresh process; the exit code is the contract."""
    script = Path(sys.executable).parent / "cdra"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", "from app.cli import main; main()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRA_")}
    env.update(CDRA_DATA_DIR=str(data_dir), CDRA_MODEL_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", COLUMNS="200")
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("candidate,serving,mode,margin,promote", [
    (0.5, 0.2, "if-better", 0.0, True),
    (0.2, 0.2, "if-better", 0.0, False),  # a tie is not better
    (0.25, 0.2, "if-better", 0.1, False),  # must beat by the margin
    (None, 0.2, "if-better", 0.0, False),  # an unscored candidate never wins
    (0.5, None, "if-better", 0.0, False),  # nothing to compare against
    (float("nan"), 0.1, "if-better", 0.0, False),
    (-0.9, 0.9, "always", 0.0, True),
    (None, None, "always", 0.0, True),
])
def test_promotion_decision(candidate, serving, mode, margin, promote):
    decision = decide_promotion(candidate, serving, mode, margin)
    assert decision.promote is promote and decision.reason


def test_new_turns_advance_a_position(tmp_path):
    turns, pos = new_turns(SESSIONS, None)
    assert len(turns) == 6 and pos["time"].startswith("2025-01-12T08:30") and pos["turn_ids"] == ["t006"]
    assert [t["turn_id"] for t in turns][:2] == ["t001", "t002"]  # time order
    assert new_turns(SESSIONS, pos) == ([], pos)
    grown = tmp_path / "s.jsonl"
    lines = SESSIONS.read_text().splitlines()
    extra = {**json.loads(lines[-1]), "turn_id": "t007", "time": "2025-01-12T08:30:00Z"}  # same instant, written with Z
    grown.write_text("\n".join(lines + [json.dumps(extra)]) + "\n")
    fresh, pos2 = new_turns(grown, pos)
    assert [t["turn_id"] for t in fresh] == ["t007"] and pos2["turn_ids"] == ["t006", "t007"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({"turn_id": "x"}) + "\n")
    with pytest.raises(FormatError, match=r"bad.jsonl:2: missing required key\(s\) time"):
        new_turns(bad, None)


def test_lock_refuses_a_second_run(tmp_path):
    with retrain_lock(tmp_path), pytest.raises(RetrainLocked, match=f"pid {os.getpid()}") as info, retrain_lock(tmp_path):
        pass
    assert info.value.exit_code == ExitCode.LOCKED == 5
    with retrain_lock(tmp_path):  # released with the first holder
        pass


def test_cron_exit_codes(tmp_path, model_cache):
    data = tmp_path / "data"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cdra(["retrain", "--sessions", str(empty)], data, model_cache)
    assert result.returncode == 4, result.stderr
    assert "no new logged turns" in result.stdout

    no_prefs = tmp_path / "noprefs.jsonl"
    no_prefs.write_text("".join(json.dumps({**json.loads(line), "user_preferences": []}) + "\n"
                                for line in SESSIONS.read_text().splitlines()))
    result = run_cdra(["retrain", "--sessions", str(no_prefs), "--stop-after", "collect"], data, model_cache)
    assert result.returncode == 6 and "stopped after collect" in result.stdout, result.stderr
    result = run_cdra(["retrain", "--sessions", str(no_prefs), "--fresh"], data, model_cache)  # abandon, start again
    assert "abandoning unfinished run" in result.stderr and "6 new turns" in result.stderr
    assert result.returncode == 4 and "carry no user preferences" in result.stdout, result.stderr
    result = run_cdra(["retrain", "--sessions", str(no_prefs)], data, model_cache)  # those turns are processed now
    assert result.returncode == 4 and "no new logged turns" in result.stdout

    runs = set((data / "retrain" / "runs").iterdir())
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n")
    result = run_cdra(["retrain", "--sessions", str(broken)], data, model_cache)
    assert result.returncode == 2 and "broken.jsonl:1: not valid JSON" in result.stderr
    assert set((data / "retrain" / "runs").iterdir()) == runs  # a failed collect leaves no run behind

    with retrain_lock(data / "retrain"):
        result = run_cdra(["retrain", "--sessions", str(SESSIONS)], data, model_cache)
    assert result.returncode == 5 and "another retrain is running" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~3 min on an idle 2-core machine; a shared, loaded one takes many times that
def test_tiny_retrain_promotes_a_policy_that_ask_serves(tmp_path, model_cache, settings):
    """Logged sessions of two users -> ... -> a promoted policy; interrupted after RFT and resumed."""
    from app.assistant import policy_engine
    from memory.session_log import SessionLog, default_log_path
    from training.registry import ModelRegistry

    data = settings.data_dir
    args = ["retrain", "--tiny", "--max-steps", "1", "--sessions", str(SESSIONS), "--promote", "always"]
    first = run_cdra([*args, "--stop-after", "rft"], data, model_cache)
    assert first.returncode == 6, first.stdout + first.stderr
    state = json.loads((data / "retrain" / "state.json").read_text())
    assert list(state["current"]["stages"]) == ["collect", "preference", "scenarios", "deeppref", "prm", "rft"]

    second = run_cdra(args, data, model_cache)
    assert second.returncode == 0, second.stdout + second.stderr
    for stage in ("preference", "scenarios", "deeppref", "prm", "rft"):
        assert f"{stage}: done earlier, skipped" in second.stderr
    assert "mean PRM reward on validation: candidate policy-0001" in second.stdout

    registry = ModelRegistry(settings.registry_dir)
    policy, prm = registry.serving("policy"), registry.serving("prm")
    assert policy.version == "policy-0001" and prm.version == "prm-0001"
    assert policy.metrics["prm_version"] == "prm-0001" and "val_reward" in policy.metrics
    assert "rft_train_loss" in policy.metrics and "cdpa_steps" in policy.metrics  # flat, for `cdra models`
    details = json.loads((policy.path / "metrics.json").read_text())
    assert set(details["evaluation"]) >= {"candidate", "serving", "val_reward", "serving_reward"}
    assert set(policy.data) == {"sessions", "scenarios", "rea", "rft"} and policy.data["rea"]["records"] > 0
    assert json.loads((data / "retrain" / "state.json").read_text())["current"] is None

    models = run_cdra(["models"], data, model_cache)
    assert models.returncode == 0
    assert any("policy-0001" in line and "*" in line for line in models.stdout.splitlines())  # marked serving

    engine = policy_engine(settings)  # what `cdra ask` resolves
    # the promoted version was exported as GGUF and llama.cpp serves it (issue 11)
    assert policy.gguf_path is not None and policy.gguf_path.stat().st_size > 0
    assert engine.version == "policy-0001" and engine.description == f"llamacpp:{policy.gguf_path}"

    ask = run_cdra(["ask", "--user", "alice", "Any ideas for a quiet evening?", "--max-new-tokens", "8"], data, model_cache)
    assert ask.returncode == 0, ask.stderr
    logged = SessionLog(default_log_path(settings.logs_dir)).turns(user_id="alice")
    assert logged[-1]["model_versions"]["policy"] == "policy-0001"

    again = run_cdra(["retrain", "--tiny", "--sessions", str(SESSIONS)], data, model_cache)
    assert again.returncode == 4, again.stdout + again.stderr  # idempotent: those sessions are done


def _cuda_and_vllm() -> str | None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU: the CDPA stage launched by accelerate with vLLM rollouts (docs/GPU.md)"
    if importlib.util.find_spec("vllm") is None:
        return "needs vLLM (pip install -e '.[vllm]') for trl's use_vllm rollouts"
    return None


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_retrain_with_accelerate_and_vllm(tmp_path, model_cache):
    reason = _cuda_and_vllm()
    if reason:
        pytest.skip(reason)
    config = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "single_gpu.yaml"
    result = run_cdra(["retrain", "--tiny", "--max-steps", "1", "--vllm", "--accelerate-config", str(config),
                       "--sessions", str(SESSIONS), "--promote", "always"], tmp_path / "data", model_cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accelerate.commands.launch" in result.stderr and "policy-0001" in result.stdout
