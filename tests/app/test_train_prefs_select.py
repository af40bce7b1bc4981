"""Which records `cdra train prefs sft|grpo` trains on: round-robin over forms and topics, and ``--skip`` continues past
what an earlier ``--limit`` run used, never repeating it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from alignment.errors import CdraError
from app.cli.train_prefs import _select


def _records(forms: dict[str, int], topic: str = "t") -> list:
    return [SimpleNamespace(form=f, topic=topic, id=f"{f}-{i}") for f, n in forms.items() for i in range(n)]


def test_skip_continues_after_the_records_a_limited_run_used():
    train = _records({"explicit": 5, "implicit-choice": 5, "stream-add": 1})
    first, _ = _select(train, [], tiny=False, limit=4, val_records=0, tiny_train=4)
    rest, _ = _select(train, [], tiny=False, limit=4, val_records=0, tiny_train=4, skip=4)
    assert [r.id for r in first] == ["explicit-0", "implicit-choice-0", "stream-add-0", "explicit-1"]
    assert [r.id for r in rest] == ["implicit-choice-1", "explicit-2", "implicit-choice-2", "explicit-3"]
    everything, _ = _select(train, [], tiny=False, limit=None, val_records=0, tiny_train=4, skip=4)
    assert len(everything) == 7 and not {r.id for r in everything} & {r.id for r in first}


def test_skipping_past_the_end_is_an_error_that_says_so():
    with pytest.raises(CdraError, match="--skip 20 leaves none of the 3"):
        _select(_records({"explicit": 3}), [], tiny=False, limit=None, val_records=0, tiny_train=4, skip=20)


def test_a_short_run_sees_every_topic_of_every_form():
    # the data file lists one topic after another: a limit must not take the first topics only
    train = [*_records({"explicit": 3, "implicit-choice": 3}, "games"), *_records({"explicit": 3}, "music"),
             *_records({"explicit": 2, "implicit-choice": 1}, "fashion")]
    picked, _ = _select(train, [], tiny=False, limit=6, val_records=0, tiny_train=4)
    assert [(r.form, r.topic) for r in picked] == [
        ("explicit", "games"), ("implicit-choice", "games"), ("explicit", "music"), ("implicit-choice", "fashion"),
        ("explicit", "fashion"), ("implicit-choice", "games")]
