"""The session log: append-only turns, per-user isolation, export schema, retention, crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alignment.errors import CdraError
from memory.session_log import SessionLog, TurnRecord, parse_since

EXPORT_KEYS = {
    "user_id",
    "session_id",
    "turn_id",
    "time",
    "mode",
    "query",
    "history",
    "retrieved_preferences",
    "user_preferences",
    "reasoning_steps",
    "answer",
    "model_versions",
    "latency_ms",
    "feedback",
    "correction",
    "rating",
    "persona",
}


def _turn(user: str, session: str, query: str, **kw) -> TurnRecord:
    return TurnRecord(
        user_id=user,
        session_id=session,
        mode=kw.pop("mode", "chat"),
        query=query,
        answer=kw.pop("answer", f"answer to {query}"),
        reasoning_steps=["deep", "risk", "plan"],
        retrieved_preferences=["Avoids cats (allergy)"],
        model_versions={"policy": "v1"},
        latency_ms={"retrieval": 3.0, "generation": 120.0},
        **kw,
    )


@pytest.fixture
def log(tmp_path):
    store = SessionLog(tmp_path / "logs" / "sessions.sqlite3")
    yield store
    store.close()


def test_wal_mode_and_turn_order(log):
    assert log.journal_mode == "wal"
    sid = log.start_session("alice", "chat", {"ui": "test"})
    first = log.log_turn(_turn("alice", sid, "one"))
    second = log.log_turn(_turn("alice", sid, "two", history=[{"role": "user", "content": "one"}]))
    turns = log.turns(user_id="alice")
    assert [t["turn_id"] for t in turns] == [first, second]
    assert [t["index"] for t in turns] == [1, 2]
    assert turns[1]["history"] == [{"role": "user", "content": "one"}]
    assert turns[0]["reasoning_steps"] == ["deep", "risk", "plan"]
    assert log.session("alice", sid)["meta"] == {"ui": "test"}


def test_feedback_and_rating_are_events_latest_wins(log):
    sid = log.start_session("alice", "aloe", {})
    tid = log.log_turn(_turn("alice", sid, "q", mode="aloe"))
    log.set_feedback("alice", tid, "down", "I'd rather have a list")
    log.set_feedback("alice", tid, "up")
    log.set_rating("alice", tid, 2)
    log.set_rating("alice", tid, 4)
    t = log.turn("alice", tid)
    assert (t["feedback"], t["correction"], t["rating"]) == ("up", "I'd rather have a list", 4)
    for bad in (0, 6, 3.5, True, "4"):
        with pytest.raises(CdraError):
            log.set_rating("alice", tid, bad)  # type: ignore[arg-type]
    with pytest.raises(CdraError):
        log.set_feedback("alice", tid, "meh")


def test_one_user_cannot_touch_another_users_turns(log):
    sid = log.start_session("alice", "chat", {})
    tid = log.log_turn(_turn("alice", sid, "secret"))
    with pytest.raises(CdraError, match="no turn"):
        log.set_feedback("bob", tid, "down")
    with pytest.raises(CdraError, match="no turn"):
        log.set_rating("bob", tid, 1)
    with pytest.raises(CdraError, match="another user"):
        log.log_turn(_turn("bob", sid, "hijack"))
    with pytest.raises(CdraError):
        log.update_session("bob", sid, status="finished")
    assert log.turn("bob", tid) is None and log.session("bob", sid) is None
    assert log.turns(user_id="bob") == []
    assert log.turn("alice", tid)["feedback"] is None


def test_export_schema_since_and_failed_turns(log, tmp_path):
    sid = log.start_session("alice", "chat", {})
    old = _turn("alice", sid, "old", time="2020-01-01T00:00:00.000+00:00")
    log.log_turn(old)
    tid = log.log_turn(_turn("alice", sid, "new", persona={"id": "p1"}))
    log.log_turn(_turn("alice", sid, "broken", status="error", error="model failed", answer="partial"))
    log.set_feedback("alice", tid, "down", "shorter please")
    out = tmp_path / "export" / "turns.jsonl"
    n = log.export_jsonl(out, since="2024-01-01", user_preferences=lambda u: [f"{u} likes tea"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == len(lines) == 1
    line = lines[0]
    assert EXPORT_KEYS <= set(line)
    assert (line["query"], line["feedback"], line["correction"], line["rating"]) == (
        "new",
        "down",
        "shorter please",
        None,
    )
    assert line["user_preferences"] == ["alice likes tea"] and line["persona"] == {"id": "p1"}
    assert log.export_jsonl(out, include_failed=True) == 3
    with pytest.raises(CdraError, match="since"):
        parse_since("last tuesday")


def test_forget_user_and_prune(log):
    a = log.start_session("alice", "chat", {})
    b = log.start_session("bob", "chat", {})
    ta = log.log_turn(_turn("alice", a, "mine"))
    log.set_rating("alice", ta, 5)
    log.log_turn(_turn("bob", b, "his"))
    assert log.forget_user("alice") == 1
    assert log.turns(user_id="alice") == [] and log.sessions(user_id="alice") == []
    assert len(log.turns(user_id="bob")) == 1
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert log.prune(cutoff) == 1
    assert log.turns() == [] and log.sessions() == []


def test_concurrent_writers_and_a_killed_process_leave_a_consistent_log(log, tmp_path):
    sid = log.start_session("alice", "chat", {})

    def write(n: int) -> None:
        for i in range(10):
            log.log_turn(_turn("alice", sid, f"t{n}-{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    turns = log.turns(session_id=sid)
    assert sorted(t["index"] for t in turns) == list(range(1, 41))

    # another process writes one turn, then dies mid-transaction with a second one open
    script = f"""
import os
from memory.session_log import SessionLog, TurnRecord
log = SessionLog({str(log.path)!r})
log.log_turn(TurnRecord(user_id="carol", session_id="s-carol", mode="ask", query="committed", answer="yes"))
log._db.execute("BEGIN IMMEDIATE")
log._db.execute("INSERT INTO sessions(session_id, user_id, mode, started, updated) VALUES ('half', 'carol', 'ask', 't', 't')")
os._exit(1)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=str(Path(__file__).parents[2]))
    assert proc.returncode == 1
    reopened = SessionLog(log.path)
    carol = reopened.turns(user_id="carol")
    assert [t["query"] for t in carol] == ["committed"]
    assert [s["session_id"] for s in reopened.sessions(user_id="carol")] == ["s-carol"]
    assert reopened._query("PRAGMA integrity_check")[0][0] == "ok"
    reopened.close()


def test_the_log_and_its_wal_are_private(tmp_path):
    import stat

    log = SessionLog(tmp_path / "logs" / "sessions.sqlite3")
    log.log_turn(_turn("alice", "s1", "my secret"))
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    files = [tmp_path / "logs" / f"sessions.sqlite3{s}" for s in ("", "-wal", "-shm")]
    assert all(p.exists() for p in files)
    assert [mode(p) for p in files] == [0o600] * 3 and mode(tmp_path / "logs") == 0o700
    old = tmp_path / "old.sqlite3"  # a log written before files were private is fixed when opened
    old.touch(mode=0o644)
    SessionLog(old)
    assert mode(old) == 0o600


def test_a_turn_begun_before_its_user_was_forgotten_is_refused(log):
    from memory.tombstones import ForgottenError

    begun = datetime.now(UTC).isoformat(timespec="milliseconds")
    log.log_turn(_turn("alice", "s1", "before"))
    log.log_turn(_turn("bob", "s2", "bob stays"))
    assert log.forget_user("alice") == 1
    late = _turn("alice", "s1", "answer still streaming during the forget")
    late.started = begun
    with pytest.raises(ForgottenError, match="forgotten"):
        log.log_turn(late)
    assert log.turns(user_id="alice") == [] and log.sessions(user_id="alice") == []
    assert log.forgotten_at("alice") > begun and log.forgotten_at("alice__aloe__x") == log.forgotten_at("alice")
    assert log.forgotten_at("bob") is None
    log.log_turn(_turn("alice", "s3", "a new conversation after the forget"))  # new activity is welcome
    assert [t["query"] for t in log.turns(user_id="alice")] == ["a new conversation after the forget"]
    dump = log.path.read_bytes() + log.path.with_name(log.path.name + "-wal").read_bytes()
    assert b"before" not in dump and b"still streaming" not in dump
    import hashlib
    import sqlite3

    keys = sqlite3.connect(log.path).execute("SELECT user_key FROM forgotten").fetchall()
    assert keys == [(hashlib.sha256(b"alice").hexdigest(),)]  # a tombstone names a hash, not the person


def test_turns_say_whether_they_reached_memory(log, tmp_path):
    pending = _turn("alice", "s1", "logged, then the process died")
    pending.memory = "pending"
    turn_id = log.log_turn(pending)
    log.log_turn(_turn("alice", "s1", "a bench turn, never meant for memory"))
    assert [t["turn_id"] for t in log.pending_memory()] == [turn_id]
    log.set_memory("alice", turn_id, "stored")
    assert log.pending_memory() == [] and log.turn("alice", turn_id)["memory"] == "stored"
    with pytest.raises(CdraError, match="memory state"):
        log.set_memory("alice", turn_id, "maybe")
    # a log from before this column existed is migrated when opened
    import sqlite3

    old = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old)
    db.executescript(
        "CREATE TABLE turns (turn_id TEXT PRIMARY KEY, session_id TEXT, user_id TEXT, idx INTEGER, time TEXT,"
        " mode TEXT, query TEXT, history TEXT, retrieved TEXT, steps TEXT, answer TEXT, raw TEXT,"
        " model_versions TEXT, latency_ms TEXT, status TEXT, error TEXT, persona TEXT, meta TEXT);"
    )
    db.close()
    assert SessionLog(old).pending_memory() == []
