"""`cdra data scenarios|build|stats` and `cdra bench data` through the real command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_deeppref"


@pytest.fixture(scope="module")
def cli():
    from app.cli import _register, app

    if not any(g.name == "data" for g in app.registered_groups):
        _register()
    return app


@pytest.fixture
def cdra(cli, settings, monkeypatch, model_cache):
    """Run `cdra ...` in-process on a fresh data dir that shares the converted model cache."""
    monkeypatch.setenv("CDRA_MODEL_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line each

    def run(*args: str):
        result = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), *args])
        return result

    return run


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real entry point (error printing and exit codes included)."""
    from app.cli import main

    monkeypatch.setattr(sys, "argv", ["cdra", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_stats_prints_the_card_of_the_committed_sample(cdra):
    from training.data_card import compute_card_for_dir

    result = cdra("data", "stats", str(SAMPLE))
    assert result.exit_code == 0, result.output
    card = compute_card_for_dir(SAMPLE)
    assert f"{card['records']['rea']} / {card['records']['rft']}" in result.output
    assert "pruning rate" in result.output and "Per domain" in result.output
    as_json = cdra("data", "stats", str(SAMPLE), "--json")
    assert json.loads(as_json.output) == card


def test_stats_on_a_directory_without_records_is_a_clear_error(monkeypatch, capsys, tmp_path):
    code, err = _main(monkeypatch, capsys, "data", "stats", str(tmp_path))
    assert code == 2 and f"error: no *rea*.jsonl in {tmp_path}" in err


def test_build_reports_a_malformed_scenario_file_with_its_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "scenarios.jsonl"
    good = {"id": "a", "domain": "travel", "preference": "I hate crowds but love cities.", "query": "Plan a trip."}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "domain": "travel"}) + "\n")
    code, err = _main(monkeypatch, capsys, "--data-dir", str(tmp_path / "d"), "data", "build", "--scenarios", str(bad),
                      "--out", str(tmp_path / "out"), "--tiny")
    assert code == 2
    assert f"error: {bad}:2: missing required key(s) preference, query" in err
    assert not (tmp_path / "out").exists()


def test_scenarios_import_from_a_session_log_merges_without_duplicates(cdra, tmp_path):
    log = tmp_path / "sessions.jsonl"
    turns = [
        {"user_id": "alice", "session_id": "s1", "turn_id": "t1", "query": "What should I cook tonight?",
         "user_preferences": ["Vegetarian", "Hates washing up"]},
        {"user_id": "alice", "session_id": "s1", "turn_id": "t2", "query": "Any ideas for the weekend?",
         "user_preferences": []},
        {"user_id": "bob", "session_id": "s2", "turn_id": "t3", "query": "How do I save for a house?",
         "user_preferences": ["Panics about losses", "Saving for a deposit in 3 years"]},
    ]
    log.write_text("".join(json.dumps(t) + "\n" for t in turns))
    out = tmp_path / "scenarios.jsonl"
    first = cdra("data", "scenarios", "--from-sessions", str(log), "--out", str(out), "--domain", "chat-log")
    assert first.exit_code == 0, first.output
    assert "imported 2 scenarios" in first.output and "1 turns without stored preferences" in first.output
    from training.scenarios import read_scenarios

    items = read_scenarios(out)
    assert [s.query for s in items] == ["What should I cook tonight?", "How do I save for a house?"]
    assert {s.domain for s in items} == {"chat-log"}
    again = cdra("data", "scenarios", "--from-sessions", str(log), "--out", str(out))
    assert "imported 0 scenarios" in again.output and len(read_scenarios(out)) == 2


@pytest.mark.slow
def test_bench_data_prints_batched_and_per_node_rows_with_a_ratio(cdra):
    result = cdra("bench", "data", "--count", "1", "--depth", "1", "--thought-tokens", "12", "--answer-tokens", "12")
    assert result.exit_code == 0, result.output
    assert "batched (one call per level)" in result.output and "one call per node" in result.output
    assert "batched / one call per node:" in result.output and "x nodes per second" in result.output
