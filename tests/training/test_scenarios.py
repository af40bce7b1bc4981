"""Scenario files, atomic writes, embedding de-duplication, the session-log importer and generation."""

from __future__ import annotations

import json
import os

import pytest

from alignment.errors import CdraError, FormatError
from training import scenarios as sc
from training.scenarios import (
    DEFAULT_DOMAINS,
    SEED_SCENARIOS,
    Scenario,
    deduplicate,
    derive_seed,
    import_session_log,
    parse_scenario_reply,
    read_scenarios,
    write_jsonl_atomic,
    write_scenarios,
)

GOOD = {"id": "s1", "domain": "travel", "preference": "I love hiking but I am allergic to horses.", "query": "Plan a trip."}


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- reading -------------------------------------------------------------------------------------
def test_read_keeps_unknown_keys_and_skips_blank_lines(tmp_path):
    path = _write(tmp_path / "s.jsonl", [json.dumps({**GOOD, "notes": "keep me"}), "", json.dumps({**GOOD, "id": "s2"})])
    items = read_scenarios(path)
    assert [s.id for s in items] == ["s1", "s2"]
    assert items[0].model_dump()["notes"] == "keep me"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"s\.jsonl:2: not valid JSON"),
        ('["a", "list"]', r"s\.jsonl:2: expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "query"} | {"id": "x"}), r"s\.jsonl:2: missing required key\(s\) query"),
        (json.dumps({**GOOD, "id": "x", "preference": "   "}), r"s\.jsonl:2: preference: .*empty"),
        (json.dumps(GOOD), r"s\.jsonl:2: duplicate id 's1' \(first at .*s\.jsonl:1\)"),
    ],
)
def test_malformed_scenario_lines_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "s.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(FormatError, match=message):
        read_scenarios(path)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(CdraError, match="does not exist"):
        read_scenarios(tmp_path / "nope.jsonl")
    with pytest.raises(FormatError, match="no scenarios"):
        read_scenarios(_write(tmp_path / "empty.jsonl", [""]))


def test_reads_a_datasets_directory_too(tmp_path):
    import datasets

    datasets.Dataset.from_list([GOOD, {**GOOD, "id": "s2"}]).save_to_disk(str(tmp_path / "ds"))
    assert [s.id for s in read_scenarios(tmp_path / "ds")] == ["s1", "s2"]


def test_seed_scenarios_cover_the_twenty_domains_three_each():
    items = read_scenarios(SEED_SCENARIOS)
    assert len(items) == 60
    assert sorted({s.domain for s in items}) == sorted(DEFAULT_DOMAINS)
    assert all(sum(s.domain == d for s in items) == 3 for d in DEFAULT_DOMAINS)


# -- atomic writes -----------------------------------------------------------------------------------
def test_disk_full_during_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out.jsonl"
    write_jsonl_atomic(path, [{"n": 1}, {"n": 2}])
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, chunk):
            self.writes += 1
            if self.writes > 1:  # the first line lands, the second hits a full disk
                raise OSError(28, "No space left on device")
            return self.fh.write(chunk)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(sc.os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(CdraError, match="No space left on device.*previous out.jsonl .*unchanged"):
        write_jsonl_atomic(path, [{"n": 3}, {"n": 4}, {"n": 5}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind


def test_write_scenarios_round_trips(tmp_path):
    items = [Scenario(**GOOD), Scenario(**{**GOOD, "id": "s2", "source": {"kind": "x"}})]
    write_scenarios(tmp_path / "s.jsonl", items)
    assert read_scenarios(tmp_path / "s.jsonl") == items
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "s.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert len({derive_seed(0, "a", i) for i in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**31


# -- reading generated scenarios (the declared ``scenario`` format) ------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PREFERENCE: I like quiet places but my kids love noise.\nQUERY: Plan our Sunday.",
         ("I like quiet places but my kids love noise.", "Plan our Sunday.")),
        ('PREFERENCE: I save hard yet want to travel more often with friends.\nQUERY: "Where to go?"',
         ("I save hard yet want to travel more often with friends.", "Where to go?")),
        # what the old reader guessed at is not the format: markdown labels, wrapped lines, a second scenario
        ("**Preference:** I save hard yet want to travel more often\nwith friends.\n\n**Query**: \"Where to go?\"", None),
        ("PREFERENCE: a b c d e\nQUERY: first one\nPREFERENCE: f g h i j\nQUERY: second", None),
        ("Here is a scenario about travel.", None),
        ("PREFERENCE: I like quiet places but my kids love noise.", None),
        ("PREFERENCE: too short\nQUERY: Plan it.", None),  # in the format, but not a scenario
    ],
)
def test_parse_scenario_reply_is_strict(text, expected):
    assert parse_scenario_reply(text) == expected


def test_parse_scenario_reply_leniently_for_an_unconstrained_teacher():
    text = "preference:   I like quiet places but my kids love noise.\n\nquery:Plan our Sunday. "
    assert parse_scenario_reply(text) is None
    assert parse_scenario_reply(text, lenient=True) == ("I like quiet places but my kids love noise.", "Plan our Sunday.")
    assert parse_scenario_reply("**Preference:** I like quiet places but my kids love noise.\nQUERY: Plan it.",
                                lenient=True) is None


# -- embeddings --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder():
    return sc.load_embedder()


def test_deduplicate_drops_paraphrases_keeps_distinct(embedder):
    base = Scenario(id="a", domain="travel", preference="I am allergic to animal dander and I dislike crowds.",
                    query="Recommend some outdoor experiences.")
    paraphrase = Scenario(id="b", domain="travel", preference="I'm allergic to animal dander and I don't like crowds.",
                          query="Recommend outdoor experiences.")
    other = Scenario(id="c", domain="personal finance", preference="I panic when my savings drop, but I want growth.",
                     query="Where should I invest?")
    kept, dropped = deduplicate([paraphrase, other], embedder, 0.9, existing=[base])
    assert [s.id for s in kept] == ["c"] and dropped == 1
    kept, dropped = deduplicate([base, paraphrase, other], embedder, 0.9)
    assert [s.id for s in kept] == ["a", "c"] and dropped == 1


# -- session-log import -----------------------------------------------------------------------------------
def _turn(**kw):
    row = {"user_id": "alice", "session_id": "s1", "turn_id": "t1", "time": "2025-01-01T10:00:00Z", "mode": "chat",
           "query": "What should I do this weekend?", "history": [], "retrieved_preferences": [],
           "user_preferences": ["Avoids animals (allergy)", "Prefers quiet places"], "reasoning_steps": [],
           "answer": "...", "model_versions": {"policy": "default"}, "latency_ms": {}, "feedback": None,
           "correction": None, "rating": None, "persona": None}
    row.update(kw)
    return json.dumps(row)


def test_import_session_log_builds_scenarios_from_stored_preferences(tmp_path):
    path = _write(tmp_path / "log.jsonl", [
        _turn(),
        _turn(turn_id="t2", user_preferences=[]),  # nothing stored yet: no P
        _turn(turn_id="t3", query="what should i do   this weekend?"),  # the same question again
        _turn(user_id="bob", turn_id="t4", query="Help me budget.", user_preferences=["Hates spreadsheets"]),
    ])
    result = import_session_log(path, domain="chat")
    assert (result.without_preferences, result.repeated) == (1, 1)
    assert [s.query for s in result.scenarios] == ["what should i do   this weekend?", "Help me budget."]
    first = result.scenarios[0]
    assert first.preference == "- Avoids animals (allergy)\n- Prefers quiet places"
    assert first.model_dump()["source"]["turn_id"] == "t3" and first.domain == "chat"
    assert first.id.startswith("log-") and "alice" not in first.id


def test_import_session_log_reports_bad_lines(tmp_path):
    path = _write(tmp_path / "log.jsonl", [_turn(), json.dumps({"user_id": "x", "query": "q"})])
    with pytest.raises(FormatError, match=r"log\.jsonl:2: missing required key\(s\) session_id, turn_id, user_preferences"):
        import_session_log(path)
    path = _write(tmp_path / "log2.jsonl", [_turn(user_preferences="not a list")])
    with pytest.raises(FormatError, match=r"log2\.jsonl:1: user_preferences must be a list"):
        import_session_log(path)


# -- generation with the real teacher ---------------------------------------------------------------------
@pytest.mark.slow
def test_generate_scenarios_with_the_default_model(default_engine, embedder):
    result = sc.generate_scenarios(default_engine, ["parenting"], 2, embedder=embedder, seed=1, max_new_tokens=64,
                                   max_rounds=1)
    assert result.model_calls == 1
    # constrained decoding: every reply is in the format; only too-short or repeated scenarios are dropped
    assert result.unparseable == 0 and result.repaired == 0
    assert len(result.scenarios) + result.too_short + result.duplicates == 2  # every sample accounted for
    for s in result.scenarios:
        assert s.domain == "parenting" and s.id.startswith("parenting-")
        assert parse_scenario_reply(f"PREFERENCE: {s.preference}\nQUERY: {s.query}") == (s.preference, s.query)
