"""Signal files (formats.md): every kind reads; every bad line is reported with file:line and nothing else."""

import json

import pytest

from alignment.errors import FormatError
from alignment.signals import read_signals, read_testset

GOOD = [
    {"kind": "comparison", "post": "Lunch ideas?", "chosen": "A salad bar.", "rejected": "A pasta place.", "time": "2025-01-01T10:00:00Z"},
    {"kind": "post", "text": "I walk to work every day.", "id": "p1", "mood": "kept and ignored"},
    {"kind": "turn", "user": "Explain GPUs", "assistant": "A GPU is…", "feedback": "down", "correction": "Shorter please"},
    {"kind": "turn", "user": "Thanks", "assistant": "", "feedback": None},
    {"kind": "statement", "text": "I'm allergic to cats."},
]


def _write(tmp_path, lines):
    path = tmp_path / "signals.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_every_kind_reads_with_stable_ids(tmp_path):
    signals = read_signals(_write(tmp_path, GOOD))
    assert [s.kind for s in signals] == ["comparison", "post", "turn", "turn", "statement"]
    assert signals[1].id == "p1" and signals[0].id.startswith("sig-")
    again = read_signals(_write(tmp_path, GOOD))
    assert [s.id for s in again] == [s.id for s in signals]  # content ids: the same signal keeps its id
    assert signals[2].feedback == "down" and signals[2].texts() == ["Explain GPUs", "Shorter please"]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "signals.jsonl:3: not valid JSON"),
    ({"kind": "comparison", "post": "x", "chosen": "y"}, "signals.jsonl:3: rejected: Field required"),
    ({"kind": "post", "text": 42}, "signals.jsonl:3: text: Input should be a valid string"),
    ({"kind": "turn", "user": "hi", "feedback": "meh"}, "signals.jsonl:3: feedback: Input should be 'up' or 'down'"),
    ({"kind": "video", "text": "x"}, "signals.jsonl:3: `kind` must be one of comparison, post, turn, statement"),
    ({"text": "no kind"}, "signals.jsonl:3: `kind` must be one of"),
    ([1, 2], "signals.jsonl:3: expected a JSON object, got list"),
])
def test_bad_lines_name_file_and_line(tmp_path, bad, message):
    with pytest.raises(FormatError) as info:
        read_signals(_write(tmp_path, [GOOD[0], GOOD[1], bad, GOOD[2]]))
    assert message in str(info.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FormatError, match="no signals"):
        read_signals(_write(tmp_path, [""]))
    with pytest.raises(FormatError, match="no such file"):
        read_signals(tmp_path / "absent.jsonl")


def test_datasets_directory_reads_like_jsonl(tmp_path):
    from datasets import Dataset

    rows = [{"kind": "post", "text": "I love hiking."}, {"kind": "statement", "text": "Don't share my location."}]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert [s.kind for s in read_signals(tmp_path / "ds")] == ["post", "statement"]


def test_testset_items_validate_their_signals(tmp_path):
    item = {"id": "t1", "signals": GOOD[:2], "post": "Dinner?", "chosen": "Salad", "rejected": "Steak", "golden": "Vegetarian"}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(item) + "\n" + json.dumps({**item, "signals": [{"kind": "post"}]}) + "\n")
    with pytest.raises(FormatError, match=r"test.jsonl:2: signals.0.text: Field required"):
        read_testset(path)
    path.write_text(json.dumps(item) + "\n")
    assert read_testset(path)[0].signals[0].kind == "comparison"
