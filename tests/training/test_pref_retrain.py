"""The retrain loop's preference stage: logged feedback, corrections and regenerate pairs become
preference-inference records; `cdra retrain --tiny` on the logged-sessions fixture trains and evaluates it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.pref_data import PrefRecord
from training.pref_retrain import log_records, statement_lines, user_signals

SESSIONS = Path(__file__).resolve().parents[1] / "fixtures" / "sessions.jsonl"


def _turn(tid: str, **fields) -> dict:
    return {"user_id": "u", "turn_id": tid, "time": f"2025-01-01T00:00:0{tid[-1]}+00:00", "query": f"q{tid}",
            "answer": f"answer {tid}", "feedback": None, "correction": None, "rating": None, **fields}


def test_logged_signals_thumbs_ratings_corrections_and_regenerate_pairs():
    turns = [_turn("t1", feedback="up"), _turn("t2"), _turn("t3", rating=2),
             _turn("t4", correction="I'd rather have vegetarian recipes."),
             _turn("t5", meta={"regenerated_from": "t2"}, feedback="up"),  # the regenerated answer was liked
             _turn("t6", meta={"regenerated_from": "t1"}, feedback="up")]  # both liked: no comparison
    signals = user_signals(turns)
    kinds = [(s.kind, s.id) for s in signals]
    assert ("turn", "log-t2") not in kinds  # no feedback, no correction: not a signal
    assert [s.feedback for s in signals if s.kind == "turn"] == ["up", "down", None, "up", "up"]
    assert next(s for s in signals if s.id == "log-t4").correction.startswith("I'd rather")
    pairs = [s for s in signals if s.kind == "comparison"]
    assert len(pairs) == 1 and pairs[0].chosen == "answer t5" and pairs[0].rejected == "answer t2"


def test_stored_statement_texts_become_lines():
    assert [(l.stance, l.subject) for l in statement_lines("Avoids cats (allergy)")] == [("avoids", "cats (allergy)")]
    assert statement_lines("Prefers calm, uncrowded places")[0].stance == "prefers"
    assert statement_lines("I strictly avoid spicy food.")[0].subject == "spicy food"


def test_log_records_from_the_fixture_are_split_by_user():
    turns = [json.loads(line) for line in SESSIONS.read_text().splitlines()]
    records = [PrefRecord.model_validate(r) for r in log_records(turns, lambda t: len(t.split()))]
    assert {r.topic for r in records} == {"user:alice", "user:bob"}
    assert {r.split for r in records} == {"train", "validation"}  # one user held out
    alice = next(r for r in records if r.topic == "user:alice")
    assert any(s["kind"] == "turn" and s.get("feedback") == "down" for s in alice.signals)
    assert {s.subject for s in alice.target.statements} >= {"calm, uncrowded places"}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tiny_retrain_trains_and_evaluates_the_preference_stage(tmp_path, model_cache):
    from test_retrain import run_cdra  # the cron-style subprocess helper

    from training.registry import ModelRegistry

    data = tmp_path / "data"
    result = run_cdra(["retrain", "--tiny", "--sessions", str(SESSIONS), "--stop-after", "preference"], data, model_cache)
    assert result.returncode == 6, result.stdout + result.stderr
    assert "stopped after preference" in result.stdout
    stage = json.loads((data / "retrain" / "state.json").read_text())["current"]["stages"]["preference"]
    assert stage["version"] == "preference-0001" and stage["train_records"] >= 1
    assert stage["candidate"]["records"] == stage["serving"]["records"] >= 1  # both judged on held-out users
    assert "preference: preference-0001 from" in result.stderr
    model = ModelRegistry(data / "registry").get("preference", "preference-0001")
    assert "val_score" in model.metrics and model.metrics["sft_steps"] >= 1
    serving = ModelRegistry(data / "registry").serving("preference")
    if stage["promoted"]:
        assert serving.version == "preference-0001" and stage["candidate"]["score"] > stage["serving"]["score"]
    else:
        assert serving is None and stage["candidate"]["score"] <= stage["serving"]["score"]
