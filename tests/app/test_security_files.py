"""Malformed files never give a traceback: every reader of user-supplied files raises FormatError naming
file:line, and the CLI prints one `error: file:line: …` line and exits 2 (issue 14, R1)."""

from __future__ import annotations

import json
import re
import traceback

import pytest

from alignment.errors import FormatError

#: one valid first line per reader, so that the damage is always on line 2
GOOD_LINES = {
    "signals": {"kind": "statement", "text": "I love tea."},
    "prefs-testset": {"id": "t1", "signals": [{"kind": "post", "text": "hi"}], "post": "p", "chosen": "a",
                      "rejected": "b"},
    "alignment-testset": {"id": "a1", "preference": "Avoids cats", "query": "A pet?"},
    "personas": {"id": "p1", "profile": "A runner."},
    "scenarios": {"id": "s1", "domain": "d", "preference": "Avoids cats", "query": "A pet?"},
    "session-export": {"user_id": "u", "session_id": "s", "turn_id": "t", "query": "q", "user_preferences": []},
    "deeppref-records": {"id": "r1"},
    "retrain-turns": {"turn_id": "t", "time": "2026-01-01T00:00:00+00:00"},
    "aloe-ratings": {"session_id": "s", "policy_version": "v", "turn": 1, "rating": 3},
    "memory-export": {"format": "cdra-memory"},
}

#: (name, bytes of line 2): the byte streams a careless or hostile user can hand the CLI
CORPUS: list[tuple[str, bytes]] = [
    ("invalid-utf8", b'{"kind": "post", "text": "caf\xe9 \xff"}'),
    ("random-bytes", bytes(range(256)) * 4),
    ("deep-list", b"[" * 100_000 + b"]" * 100_000),
    ("deep-object", b'{"a":' * 200 + b"1" + b"}" * 200),
    ("nan", b'{"kind": "post", "text": NaN}'),
    ("huge-int", b'{"kind": "post", "text": ' + b"9" * 5000 + b"}"),
    ("truncated", b'{"kind": "post", "te'),
    ("not-object", b"[1, 2, 3]"),
    ("nul-bytes", b"\x00\x00\x00"),
]


def _file(reader: str, bad: bytes) -> bytes:
    return json.dumps(GOOD_LINES[reader]).encode() + b"\n" + bad + b"\n"


def _readers():
    """Every reader a CLI command hands a user's file to (name -> callable(path))."""
    from alignment.aloe_sim import read_personas
    from alignment.methods import read_alignment_testset
    from alignment.records import load_json_file
    from alignment.signals import read_signals, read_testset
    from app.cli.eval_aloe import _read_ratings
    from training.prm_trainer import read_records
    from training.retrain import new_turns
    from training.scenarios import import_session_log, read_scenarios

    return {
        "signals": read_signals,
        "prefs-testset": read_testset,
        "alignment-testset": read_alignment_testset,
        "personas": read_personas,
        "scenarios": read_scenarios,
        "session-export": import_session_log,
        "deeppref-records": read_records,
        "retrain-turns": lambda p: new_turns(p, None),
        "aloe-ratings": _read_ratings,
        "memory-export": load_json_file,
    }


def test_every_reader_reports_file_and_line_for_every_malformed_stream(tmp_path):
    """The corpus x readers: counts what was not a FormatError naming the file (and line 2 for line-files)."""
    failures = []
    for reader_name, read in _readers().items():
        for case, data in CORPUS:
            path = tmp_path / f"{reader_name}-{case}.jsonl"
            path.write_bytes(_file(reader_name, data))
            try:
                read(path)
            except FormatError as exc:
                line = r":\d+" if reader_name == "memory-export" else ":2"
                if not re.search(re.escape(str(path)) + line + r": ", str(exc)):
                    failures.append(f"{reader_name}/{case}: no file:line in {exc}")
            except Exception:  # noqa: BLE001 - this is what the test counts
                failures.append(f"{reader_name}/{case}: {traceback.format_exc(limit=1).splitlines()[-1]}")
            else:
                failures.append(f"{reader_name}/{case}: accepted")
    assert failures == [], f"{len(failures)} of {len(CORPUS) * len(_readers())} runs: " + "\n".join(failures)


def test_a_memory_export_with_wrong_types_is_refused_before_anything_is_written(tmp_path):
    from memory.config import MemoryConfig
    from memory.vector_store import VectorMemory

    memory = VectorMemory(MemoryConfig(), tmp_path / "chroma").for_user("dave")
    for turns in ([{"user": {"nested": "object"}}], [{"user": "hi", "assistant": ["list"]}], "not a list", [7]):
        with pytest.raises(FormatError, match="turns"):
            memory.import_({"format": "cdra-memory", "turns": turns})
    assert memory.count() == 0


def test_the_cli_prints_one_error_line_and_exits_2(cdra_main, tmp_path):
    outcomes = []
    for case, data in CORPUS:
        signals, export = tmp_path / f"{case}.jsonl", tmp_path / f"{case}.json"
        signals.write_bytes(_file("signals", data))
        export.write_bytes(_file("memory-export", data))
        for path, command in ((signals, ["prefs", "infer", "--user", "dave", "--signals", str(signals)]),
                              (export, ["prefs", "import", "--user", "dave", str(export)])):
            code, _, err = cdra_main(*command)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            ok = code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {path}:") and "Traceback" not in err
            outcomes.append((command[1], case, ok, code, err.strip()[:200]))
    bad = [o for o in outcomes if not o[2]]
    assert bad == [], bad
    code, out, _ = cdra_main("prefs", "show", "--user", "dave")
    assert code == 0 and "(no preferences stored)" in out  # nothing was imported or inferred along the way
