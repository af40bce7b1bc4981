"""Preference-inference training data: PrefEval records -> (E, d_prev) -> (r, d) targets, split by topic, with
streaming examples, the data card, the test-set items, and errors that name the file and record."""

from __future__ import annotations

import json

import pytest

from alignment.errors import FormatError
from alignment.preference_inference import InferenceConfig, inference_format
from alignment.signals import read_testset
from training.pref_build import calibration_pairs, data_card, write_dataset
from training.pref_data import PrefRecord, build_prefeval_records, read_pref_records, sft_examples
from training.pref_rewards import GoldScorer


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def records(prefeval_root):
    root = prefeval_root
    return build_prefeval_records(root, words, GoldScorer(), validation_topics=("music",), stream_per_topic=2)


def test_records_are_split_by_topic_and_their_targets_are_in_the_declared_format(records):
    parsed = [PrefRecord.model_validate(r) for r in records]
    assert {r.topic for r in parsed if r.split == "validation"} == {"music"}
    assert {r.topic for r in parsed if r.split == "train"} == {"food"}
    assert {r.form for r in parsed} == {"explicit", "implicit-choice", "implicit-persona", "stream-keep", "stream-add"}
    fmt = inference_format(InferenceConfig())
    for r in parsed:
        value = fmt.parse(r.completion())  # strict: R_format 1 for every target
        assert [s.subject for s in value.statements] == [s.subject for s in r.target.statements]


def test_chains_cite_the_signal_that_states_the_preference(records):
    persona = next(PrefRecord.model_validate(r) for r in records if r["form"] == "implicit-persona")
    assert persona.evidence == ["e2"]  # the turn that mentions it, not the chit-chat around it
    # it quotes the sentence of that turn that states it
    assert persona.target.reasoning.startswith('[e2] The user mentions: "By the way, i ')
    assert persona.target.statements[0].subject in persona.target.reasoning
    choice = next(PrefRecord.model_validate(r) for r in records
                  if r["form"] == "implicit-choice" and "spicy" in r["golds"][0])
    assert choice.comparison is None  # the signals are the pair and the user's words at the choice
    assert [s["kind"] for s in choice.signals] == ["comparison", "post"]
    assert choice.signals[1]["text"] == "I'll go with option 1. The other options are way too spicy for my stomach."
    assert "the user chose" in choice.target.reasoning and choice.evidence == ["e1", "e2"]
    assert '[e2] They say: "The other options are way too spicy for my stomach".' in choice.target.reasoning
    added = [PrefRecord.model_validate(r) for r in records if r["form"] == "stream-add"]
    assert any(r.signals[0]["kind"] == "comparison" and len(r.signals) == 1 for r in added)  # bare, as the app logs
    explicit = next(PrefRecord.model_validate(r) for r in records if r["form"] == "explicit")
    assert explicit.comparison is not None and explicit.comparison.chosen  # a pair for R_jud


def test_streaming_records_keep_and_add_to_d_prev(records):
    keep = next(PrefRecord.model_validate(r) for r in records if r["form"] == "stream-keep")
    assert keep.previous and [s.subject for s in keep.target.statements] == [p.subject for p in keep.previous]
    assert len(keep.signals) == 1  # only the turns after the evidence are new
    add = next(PrefRecord.model_validate(r) for r in records if r["form"] == "stream-add")
    subjects = [s.subject for s in add.target.statements]
    assert add.previous and subjects[-len(add.previous):] == [p.subject for p in add.previous]
    assert "still holds and is kept" in add.target.reasoning
    prompt = sft_examples([add])[0]["prompt"]
    assert "Current description (from earlier behavior)" in prompt[-1]["content"]  # the UPDATE prompt
    assert add.previous[0].subject in prompt[-1]["content"]


def test_dataset_dir_card_and_testset(records, tmp_path):
    parsed = [PrefRecord.model_validate(r) for r in records]
    card = data_card(parsed, words, InferenceConfig(), GoldScorer(), {"source": "fake", "command": "cdra train prefs data"})
    assert card["targets_r_format"] == 1.0 and card["targets_over_token_bounds"] == 0
    assert card["counts"]["validation"]["total"] == sum(r.split == "validation" for r in parsed)
    counts = write_dataset(tmp_path, records, card)
    assert counts["train"] + counts["validation"] == len(records)
    assert "never appear in training" in (tmp_path / "data_card.md").read_text()
    items = read_testset(tmp_path / "validation_testset.jsonl")  # the test-set reader takes both kinds of item
    assert any(i.has_comparison for i in items) and any(not i.has_comparison for i in items)
    assert all(i.golden for i in items)
    assert len(read_pref_records(tmp_path / "train.jsonl")) == counts["train"]
    pos, _ = calibration_pairs(parsed)
    assert pos and all(a.split()[0] == b.split()[0] for a, b in pos)  # same stance word


def test_a_bad_record_names_its_file_and_line(records, tmp_path):
    path = tmp_path / "train.jsonl"
    bad = dict(records[0], target={"reasoning": "x", "statements": [{"stance": "likes", "dimension": "style",
                                                                     "subject": "x", "confidence": 0.5}]})
    path.write_text(json.dumps(records[0]) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"train\.jsonl:2: target\.statements\.0\.stance"):
        read_pref_records(path)
    path.write_text(json.dumps(records[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"train\.jsonl:2"):
        read_pref_records(path)
    broken = dict(records[0], signals=[{"kind": "shout", "text": "x"}])
    path.write_text(json.dumps(broken) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"train\.jsonl:1: .*kind"):
        read_pref_records(path)


def test_prefeval_errors_name_file_and_record(tmp_path, make_prefeval):
    root = make_prefeval(tmp_path)
    path = root / "explicit_preference" / "food.json"
    data = json.loads(path.read_text())
    data[1] = {"question": "no preference here"}
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"food\.json\[1\]: preference"):
        build_prefeval_records(root, words, GoldScorer(), validation_topics=("music",))


def test_test_items_need_a_whole_comparison_or_a_golden(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": "a", "signals": [], "post": "x", "chosen": "y"}) + "\n")
    with pytest.raises(FormatError, match="t.jsonl:1: .*missing rejected"):
        read_testset(path)
    path.write_text(json.dumps({"id": "a", "signals": []}) + "\n")
    with pytest.raises(FormatError, match="golden"):
        read_testset(path)
