"""PrefEval (original layout) -> typed records -> the preference-inference test set of formats.md."""

from __future__ import annotations

import json

import pytest

from alignment.errors import CdraError, FormatError
from alignment.signals import read_testset
from training.prefeval import (
    ChoiceRecord,
    PersonaRecord,
    import_preference_testset,
    load_prefeval,
    prefeval_topics,
)


@pytest.fixture(scope="module")
def root(shared_dir):
    return shared_dir / "data" / "prefeval"


def test_loader_reads_all_three_forms(root):
    assert len(prefeval_topics(root)) == 12 and "travel_restaurant" in prefeval_topics(root)
    explicit = load_prefeval(root, "explicit", "travel_restaurant")
    choice = load_prefeval(root, "choice-based", "travel_restaurant")
    persona = load_prefeval(root, "persona", "travel_restaurant")
    assert len(explicit) == len(choice) == len(persona) == 56
    first = choice[0]
    assert isinstance(first, ChoiceRecord) and first.aligned_op in first.options and len(first.conflicting) == 3
    assert isinstance(persona[0], PersonaRecord) and persona[0].turns[0].user and persona[0].index == 0
    assert persona[0].preference == first.preference == explicit[0].preference
    with pytest.raises(CdraError, match="unknown PrefEval form"):
        load_prefeval(root, "video", "travel_restaurant")


def test_importer_writes_a_valid_reproducible_testset(root, tmp_path):
    out = tmp_path / "prefs.jsonl"
    n = import_preference_testset(root, out, topics=["shop_home", "lifestyle_fit"], limit_per_topic=3, seed=7)
    items = read_testset(out)
    assert n == len(items) == 6
    item = items[0]
    assert item.id == "prefeval/shop_home/0" and item.golden and item.post and item.chosen != item.rejected
    assert all(s.kind == "turn" for s in item.signals) and len(item.signals) >= 4  # the persona conversation
    record = load_prefeval(root, "choice", "shop_home")[0]
    assert item.chosen == record.aligned_op and item.rejected in record.conflicting and item.post == record.implicit_query
    again = tmp_path / "again.jsonl"
    import_preference_testset(root, again, topics=["shop_home", "lifestyle_fit"], limit_per_topic=3, seed=7)
    assert again.read_text() == out.read_text()


def test_choice_signals_are_the_conversation_in_which_the_user_picked(root, tmp_path):
    out = tmp_path / "choice.jsonl"
    import_preference_testset(root, out, topics=["travel_restaurant"], signals_from="choice", limit_per_topic=2)
    item = read_testset(out)[0]
    assert [s.kind for s in item.signals] == ["turn", "post"]
    assert "salad bar" in item.signals[1].text.lower()  # the user's selection


def test_malformed_benchmark_files_name_the_record(tmp_path):
    root = tmp_path / "prefeval"
    for sub in ("explicit_preference", "implicit_preference/choice-based", "implicit_preference/persona-driven"):
        (root / sub).mkdir(parents=True)
        (root / sub / "t.json").write_text("[]")
    path = root / "implicit_preference/choice-based/t.json"
    path.write_text(json.dumps([{"preference": "p", "question": "q", "implicit_query": "x", "options": "not a list",
                                 "conversation": {}, "aligned_op": "a"}]))
    with pytest.raises(FormatError, match=r"choice-based/t.json\[0\]: options"):
        load_prefeval(root, "choice", "t")
    path.write_text("[{")
    with pytest.raises(FormatError, match=r"t.json:1: not valid JSON"):
        load_prefeval(root, "choice", "t")
    out = tmp_path / "out.jsonl"
    with pytest.raises(FormatError):
        import_preference_testset(root, out)
    assert not out.exists()  # nothing half-written
