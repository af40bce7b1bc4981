"""Acc_jud / Acc_gen (AlignXplore Eq. 6, 5): the rewards on hand-made scores, then a real judge on a PrefEval slice."""

from __future__ import annotations

import json

import pytest

from alignment.errors import CdraError
from alignment.preference_metrics import (
    JudgeOutcome,
    PrefEvalConfig,
    a_is_chosen,
    evaluate_preferences,
    gen_margin,
    r_gen,
    r_jud,
    summarize,
)
from alignment.signals import read_testset


def test_judge_reward_reads_the_label_of_y_w_in_either_order():
    assert r_jud(JudgeOutcome(logp_a=-0.1, logp_b=-2.0, w_is_a=True)) == 1.0
    assert r_jud(JudgeOutcome(logp_a=-0.1, logp_b=-2.0, w_is_a=False)) == 0.0
    assert r_jud(JudgeOutcome(logp_a=-3.0, logp_b=-0.5, w_is_a=False)) == 1.0
    assert r_jud(JudgeOutcome(logp_a=-0.1, logp_b=-2.0, w_is_a=True), r_format=0.0) == 0.0  # times R_format
    assert r_jud(JudgeOutcome(-1.0, -1.0, True)) == 0.0  # a tie is not a win
    outcome = JudgeOutcome(logp_a=-0.6931, logp_b=-0.6931 - 1.0986, w_is_a=True)
    assert outcome.p_w == pytest.approx(0.75, abs=1e-3)


def test_gen_reward_compares_the_shift_the_description_causes():
    # d raises log p(y_w) by 2 and log p(y_l) by 0.5: a margin of 1.5
    assert gen_margin(w_with=-10.0, w_without=-12.0, l_with=-9.5, l_without=-10.0) == pytest.approx(1.5)
    assert r_gen(1.5) == 1.0 and r_gen(-0.1) == 0.0 and r_gen(1.5, r_format=0.0) == 0.0


def test_ab_order_is_random_per_item_but_reproducible():
    orders = [a_is_chosen(f"item-{i}", seed=0) for i in range(400)]
    assert 150 < sum(orders) < 250
    assert orders == [a_is_chosen(f"item-{i}", seed=0) for i in range(400)]
    assert orders != [a_is_chosen(f"item-{i}", seed=1) for i in range(400)]


def test_summary_means_and_format_rate():
    rows = [
        {"item": "a", "method": "inferred", "r_format": 1.0, "failed": False,
         "jud": {"reward": 1.0, "p_w": 0.8, "prefers_w": True}, "gen": {"reward": 1.0, "margin": 0.3}},
        {"item": "b", "method": "inferred", "r_format": 0.0, "failed": False,
         "jud": {"reward": 0.0, "p_w": 0.7, "prefers_w": True}, "gen": {"reward": 0.0, "margin": 0.2}},
        {"item": "c", "method": "inferred", "r_format": 0.0, "failed": True,
         "jud": {"reward": 0.0, "p_w": None, "prefers_w": None}, "gen": {"reward": 0.0, "margin": None}},
    ]
    [s] = summarize(rows, ["inferred", "null"])
    assert (s.n, s.acc_jud, s.acc_gen, s.failed) == (3, pytest.approx(1 / 3), pytest.approx(1 / 3), 1)
    assert s.format_rate == pytest.approx(1 / 3) and s.acc_jud_ignoring_format == pytest.approx(2 / 3)
    assert s.mean_p_w == pytest.approx(0.75)


@pytest.fixture(scope="module")
def slice_path(shared_dir, tmp_path_factory):
    """Two PrefEval items through the real importer (choice-form signals: short prompts for a CPU)."""
    from training.prefeval import import_preference_testset

    out = tmp_path_factory.mktemp("prefs") / "slice.jsonl"
    import_preference_testset(shared_dir / "data/prefeval", out, topics=["travel_restaurant", "shop_fashion"],
                              signals_from="choice", limit_per_topic=1)
    return out


@pytest.mark.slow
def test_baselines_on_a_real_judge_resume_and_refuse_a_changed_setup(default_engine, slice_path, tmp_path):
    items = read_testset(slice_path)
    config = PrefEvalConfig(methods=("null", "signals", "golden"), metrics=("jud", "gen"), seed=3)
    report = evaluate_preferences(items, default_engine, config=config, out_dir=tmp_path / "run")
    assert len(report.rows) == 6 and [s.method for s in report.summaries] == ["null", "signals", "golden"]
    for row in report.rows:
        assert 0.0 <= row["jud"]["p_w"] <= 1.0 and row["jud"]["reward"] in (0.0, 1.0)
        assert row["jud"]["w_is_a"] == a_is_chosen(row["item"], 3) and row["gen"]["margin"] is not None
        assert row["r_format"] == 1.0  # baselines have no format to break
    assert "| Null (no description) | 2 |" in report.table()
    saved = (tmp_path / "run" / "rows.jsonl").read_text().splitlines()
    assert len(saved) == 6 and json.loads((tmp_path / "run" / "summary.json").read_text())[0]["method"] == "null"
    def nothing_left(work):
        assert list(work) == []  # resumed: every row was read back from rows.jsonl
        return work

    again = evaluate_preferences(items, default_engine, config=config, out_dir=tmp_path / "run", progress=nothing_left)
    assert again.rows == report.rows
    with pytest.raises(CdraError, match="different setup"):
        evaluate_preferences(items, default_engine, config=PrefEvalConfig(methods=("null",), seed=4),
                             out_dir=tmp_path / "run")


@pytest.mark.slow
def test_inferred_description_counts_a_failed_inference_as_zero(default_engine, slice_path, unconstrained):
    from alignment.preference_inference import InferenceConfig, PreferenceInferrer

    items = read_testset(slice_path)[:1]
    # decoded freely with 2 tokens the output cannot be in the format (under the grammar it always is)
    inferrer = PreferenceInferrer(default_engine, InferenceConfig(max_new_tokens=2, max_retries=0))
    with unconstrained(default_engine):
        report = evaluate_preferences(items, default_engine, inferrer=inferrer,
                                      config=PrefEvalConfig(methods=("inferred",), metrics=("jud",)))
    [row] = report.rows
    assert row["failed"] and row["jud"]["reward"] == 0.0 and row["error"]
    assert report.summaries[0].failed == 1 and report.summaries[0].acc_jud == 0.0
