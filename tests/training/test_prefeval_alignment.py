"""The PrefEval importer on the benchmark files in their original layout (every topic present, all three
forms), on a topic it has never seen, and on broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alignment.errors import CdraError, FormatError
from alignment.methods import read_alignment_testset, write_jsonl_atomic
from training.prefeval import FORMS, load_prefeval
from training.prefeval_alignment import import_prefeval, item_record, list_topics


@pytest.fixture(scope="module")
def prefeval_root(shared_dir):
    root = shared_dir / "data" / "prefeval"
    if not (root / "explicit_preference").is_dir():
        pytest.fail(f"PrefEval files missing under {root}")
    return root


def test_every_record_of_every_topic_and_form_imports(prefeval_root):
    topics = list_topics(prefeval_root)
    assert len(topics) >= 12
    items = import_prefeval(prefeval_root)
    expected = sum(len(load_prefeval(prefeval_root, f, t)) for f in FORMS for t in topics)
    assert len(items) == expected
    assert len({it.id for it in items}) == len(items)
    by_form = {f: [it for it in items if it.extras["form"] == f] for f in FORMS}
    assert all(by_form.values())
    for it in by_form["explicit"]:
        assert it.history == [] and it.preference and it.query and it.notes
    for it in by_form["implicit-choice"]:
        assert [m["role"] for m in it.history] == ["user", "assistant", "user", "assistant"]
        assert it.extras["aligned_option"]
    for it in by_form["implicit-persona"]:
        roles = [m["role"] for m in it.history]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:]))
        assert it.extras["persona"]
    # the first items of the interleaved list already span every form
    assert {it.extras["form"] for it in items[:3]} == set(FORMS)


def test_sampling_is_seeded_and_filters_long_histories(prefeval_root):
    kwargs = dict(forms=["explicit", "implicit-persona"], topics=["travel_restaurant", "shop_motors"],
                  per_topic=3, max_history_chars=4000)
    a = import_prefeval(prefeval_root, seed=1, **kwargs)
    assert [it.id for it in a] == [it.id for it in import_prefeval(prefeval_root, seed=1, **kwargs)]
    assert [it.id for it in a] != [it.id for it in import_prefeval(prefeval_root, seed=2, **kwargs)]
    assert len(a) == 12
    assert all(sum(len(m["content"]) for m in it.history) <= 4000 for it in a)


def test_dev_set_is_what_the_importer_writes(prefeval_root, tmp_path):
    items = import_prefeval(prefeval_root, per_topic={"explicit": 2, "implicit-choice": 1, "implicit-persona": 1},
                            seed=0, max_history_chars=4500)
    path = write_jsonl_atomic(tmp_path / "dev.jsonl", (item_record(it) for it in items))
    dev = Path(__file__).resolve().parents[2] / "data" / "dev" / "alignment_dev.jsonl"
    assert path.read_text(encoding="utf-8") == dev.read_text(encoding="utf-8")
    back = read_alignment_testset(dev)
    assert 30 <= len(back) <= 60 and len({it.domain for it in back}) >= 10


def test_test_set_reads_as_a_datasets_directory(prefeval_root, tmp_path):
    from datasets import Dataset

    items = import_prefeval(prefeval_root, topics=["shop_home"], per_topic=2, seed=0)
    records = [item_record(it) for it in items]
    for r in records:
        r.setdefault("history", [])
    Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    back = read_alignment_testset(tmp_path / "ds")
    assert [it.id for it in back] == [it.id for it in items]
    assert [it.history for it in back] == [it.history for it in items]


def test_a_topic_outside_the_dev_subset_imports(prefeval_root, tmp_path):
    """The full benchmark has 20 topics; the importer must not know their names."""
    root = tmp_path / "benchmark_dataset"
    for sub in FORMS.values():
        (root / sub).mkdir(parents=True)
        records = json.loads((prefeval_root / sub / "travel_restaurant.json").read_text())[:3]
        (root / sub / "travel_hotel.json").write_text(json.dumps(records))
    items = import_prefeval(root)
    assert list_topics(root) == ["travel_hotel"]
    assert len(items) == 9 and {it.domain for it in items} == {"travel_hotel"}


def test_bad_input_fails_with_file_and_record(prefeval_root, tmp_path):
    with pytest.raises(CdraError, match="does not exist"):
        import_prefeval(tmp_path / "nowhere")
    with pytest.raises(CdraError, match="topics not in"):
        import_prefeval(prefeval_root, topics=["no_such_topic"])
    with pytest.raises(CdraError, match="unknown PrefEval form"):
        import_prefeval(prefeval_root, forms=["implicit"])
    root = tmp_path / "bench"
    shutil.copytree(prefeval_root / "explicit_preference", root / "explicit_preference")
    bad = root / "explicit_preference" / "shop_home.json"
    records = json.loads(bad.read_text())
    del records[3]["question"]
    bad.write_text(json.dumps(records))
    with pytest.raises(FormatError, match=r"shop_home\.json\[3\]: question"):
        import_prefeval(root, forms=["explicit"])
    bad.write_text('[{"preference": "x",\n "question": }]')
    with pytest.raises(FormatError, match=r"shop_home\.json:2: not valid JSON"):
        import_prefeval(root, forms=["explicit"], topics=["shop_home"])


def test_alignment_testset_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "preference": "p", "query": "q"}\n{"id": "b", "preference": "p"}\n')
    with pytest.raises(FormatError, match=r"t\.jsonl:2: query"):
        read_alignment_testset(path)
    path.write_text('{"id": "a", "preference": "p", "query": "q", "history": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(FormatError, match=r"t\.jsonl:1: history"):
        read_alignment_testset(path)
    path.write_text('{"id": "a", "preference": "p", "query": "q", "extra": 1}\n{"id": "a", "preference": "p", "query": "q"}\n')
    with pytest.raises(FormatError, match="duplicate id"):
        read_alignment_testset(path)
