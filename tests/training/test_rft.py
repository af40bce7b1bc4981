"""RFT: the policy's own prompt for (P, q), the best path as completion, a real short SFT run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignment.errors import FormatError
from alignment.prompts import render
from alignment.prompts.policy import POLICY_PROMPT, format_preferences
from alignment.steps import format_response, parse_response
from training.rft import policy_prompt, preference_lines, read_rft, rft_examples, train_rft

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "deeppref" / "rft.jsonl"


def test_policy_prompt_is_what_the_app_sends():
    statements = ["Allergic to cats (avoid animal settings)", "Prefers calm places"]
    preference = "\n".join(f"- {s}" for s in statements)  # how the scenario importer writes P
    assert preference_lines(preference) == statements
    assert policy_prompt(preference, " Outdoor ideas? ") == render(
        POLICY_PROMPT, preferences=format_preferences(statements), query="Outdoor ideas?")


def test_examples_use_the_best_path_response():
    records = read_rft(FIXTURE)
    examples = rft_examples(records[:2])
    assert examples[0]["completion"] == [{"role": "assistant", "content": records[0]["response"]}]
    assert parse_response(records[0]["response"]).well_formed
    rebuilt = rft_examples([{k: v for k, v in records[0].items() if k != "response"}])
    assert rebuilt[0]["completion"][0]["content"] == format_response(records[0]["steps"], records[0]["answer"])


def test_missing_response_field_is_a_format_error(tmp_path):
    bad = tmp_path / "rft.jsonl"
    bad.write_text(json.dumps({"preference": "P", "query": "q"}) + "\n")
    with pytest.raises(FormatError, match=r"rft.jsonl:1: missing required key\(s\) response"):
        read_rft(bad)


@pytest.mark.slow
def test_short_real_rft_run_serves_from_the_adapter(tmp_path, model_cache):
    from alignment.engines import ModelSpec, SamplingParams, build_engine
    from alignment.engines.default_model import ensure_default_model
    from training.prm_trainer import SFTStageConfig
    from training.registry import TrainingStart

    records = read_rft(FIXTURE)
    data = tmp_path / "rft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [records[0], records[-1]]))  # one train, one validation
    start = TrainingStart("default", ensure_default_model(model_cache))
    result = train_rft(data, start, tmp_path / "rft",
                       SFTStageConfig(lora_r=4, max_steps=2, batch_size=1, max_length=512, learning_rate=1e-3))
    assert result.metrics["steps"] == 2 and result.metrics["eval_examples"] == 1
    # held-out loss of the best path falls after two steps on another scenario's best path
    assert result.metrics["eval_loss_after"] < result.metrics["eval_loss_before"]
    assert math.isfinite(result.metrics["train_loss"])
    engine = build_engine(ModelSpec(backend="default", adapter=str(result.artifact_dir)), model_cache, cache=False)
    out = engine.generate([policy_prompt(records[-1]["preference"], records[-1]["query"])], SamplingParams(max_new_tokens=8))
    assert out[0][0].completion_tokens > 0
