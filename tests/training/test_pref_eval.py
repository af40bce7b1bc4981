"""`cdra eval prefs`: recovery, junk, R_format and Acc_jud per description source, resumable, with the judge's
sanity check first; the baselines' rows on strings."""

from __future__ import annotations

import json

import pytest

from alignment.signals import PreferenceTestItem
from training.pref_data import build_prefeval_records
from training.pref_eval import Source, baseline_row, statement_row, summarize_rows, summary_table
from training.pref_rewards import GoldScorer


def _item(**extra) -> PreferenceTestItem:
    return PreferenceTestItem.model_validate({
        "id": "i1", "golden": "I strictly avoid spicy food because of a sensitive stomach.",
        "signals": [{"kind": "turn", "user": "I'm allergic to cats. Also, I strictly avoid spicy food."}], **extra})


def test_baseline_rows_and_the_summary():
    scorer = GoldScorer()
    item = _item()
    golden = baseline_row(item, "golden", scorer)
    assert golden["recovery"] == 1.0 and golden["junk"] == 0
    explicit = baseline_row(item, "explicit", scorer)  # finds the gold and one statement that is not it
    assert explicit["recovery"] == 1.0 and explicit["junk"] == 1 and explicit["n_statements"] == 2
    null = baseline_row(item, "null", scorer)
    assert null["recovery"] == 0.0 and null["n_statements"] == 0
    signals = baseline_row(item, "signals", scorer)
    assert signals["recovery"] is None  # raw signals are no statements
    wrong = statement_row(item, "m", [("prefers", "spicy food")], 1.0, scorer)  # the opposite stance
    assert wrong["recovery"] == 0.0 and wrong["junk"] == 1 and wrong["reward"] == 0.0
    rows = [golden, explicit, null, wrong]
    summary = summarize_rows(rows, [Source("golden"), Source("explicit"), Source("null"), Source("m", label="model")])
    by = {s["source"]: s for s in summary}
    assert by["explicit"]["junk"]["value"] == 50.0 and by["golden"]["recovery"]["value"] == 100.0
    assert by["null"]["junk"] is None and by["m"]["acc_jud"]["value"] is None
    table = summary_table(summary)
    assert "| Golden (persona) | 1 | 100.0 [100.0, 100.0] | 0.0 [0.0, 0.0] |" in table


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_eval_prefs_on_validation_topics(prefeval_root, cdra_main, tmp_path, write_pref_dataset):
    raw = build_prefeval_records(prefeval_root, lambda t: len(t.split()), validation_topics=("music",),
                                 stream_per_topic=1)
    write_pref_dataset(tmp_path / "d", raw)
    testset = tmp_path / "d" / "validation_testset.jsonl"
    out = tmp_path / "eval"
    args = ["eval", "prefs", "--testset", str(testset), "--per-form", "1", "--model", "base=base",
            "--max-new-tokens", "24", "--out", str(out)]
    code, stdout, err = cdra_main(*args)
    assert code == 0, err
    assert "judge sanity check on" in stdout  # before anything is judged with it
    assert "models decoded without the format's grammar" in stdout
    for label in ("Null (no description)", "E (raw signals)", "Golden (persona)", "base (base, unconstrained)"):
        assert label in stdout
    summary = json.loads((out / "summary.json").read_text())
    by = {s["source"]: s for s in summary["sources"]}
    assert by["golden"]["recovery"]["value"] == 100.0 and by["null"]["recovery"]["value"] == 0.0
    assert by["base"]["n"] == summary["items"] and by["base"]["acc_jud"]["n"] == summary["with_comparison"] > 0
    assert summary["with_comparison"] < summary["items"]  # choice items have no separate comparison
    rows = (out / "rows.jsonl").read_text().splitlines()
    assert all("raw" in json.loads(r) for r in rows if json.loads(r)["source"] == "base")

    code, again, err = cdra_main(*args)  # resumed: nothing recomputed, the same table
    assert code == 0, err
    assert (out / "rows.jsonl").read_text().splitlines() == rows
    assert again.split("rows and summary")[0].splitlines()[-6:] == stdout.split("rows and summary")[0].splitlines()[-6:]

    code, _, err = cdra_main(*args[:-1], str(out), "--threshold", "0.9")
    assert code == 2 and "different setup" in err  # never mixes results of two setups
