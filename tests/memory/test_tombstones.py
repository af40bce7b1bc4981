"""Forgotten means forgotten in the vector memory: a late write for activity from before a forget (here, a
forget by another process) is refused; new activity after it is stored; the store's files are private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from alignment.explicit_extraction import extract_explicit
from memory.tombstones import ForgottenError

FORGET_ELSEWHERE = """
import sys
from memory.config import MemoryConfig
from memory.vector_store import VectorMemory
VectorMemory(MemoryConfig(), sys.argv[1]).for_user(sys.argv[2]).forget()
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def test_a_forget_in_another_process_refuses_late_writes(store):
    begun = _now()  # alice's activity (a turn, an inference run) starts ...
    late = store.for_user("alice", as_of=begun)
    aloe = store.for_user("alice__aloe__s1", as_of=begun)
    late.add_preferences(extract_explicit("I'm allergic to QUOKKAFUR.", "t1"))
    bob = store.for_user("bob")
    bob.add_preferences(extract_explicit("I love KESTRELBOB music.", "b1"))
    done = subprocess.run([sys.executable, "-c", FORGET_ELSEWHERE, str(store.persist_dir), "alice"],
                          capture_output=True, text=True, timeout=180, check=False,
                          env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    assert done.returncode == 0, done.stderr
    # ... and ends after `cdra prefs forget` ran elsewhere: every write of it is refused
    for write in (lambda: late.add_preferences(extract_explicit("I'm vegan.", "t2")),
                  lambda: late.add_turn("s", "t2", "ZEPHYRMARKER", "noted"),
                  lambda: late.record_inference({"failed": False}, raw="ZEPHYRMARKER"),
                  lambda: aloe.add_preferences(extract_explicit("I'm vegan.", "t3"))):
        with pytest.raises(ForgottenError, match="forgotten"):
            write()
    assert store.for_user("alice").count() == 0 and store.users() == ["bob"]
    # the user starting over after the forget is new activity: stored
    fresh = store.for_user("alice")
    fresh.add_preferences(extract_explicit("I love tea.", "t4"))
    assert [s.text for s in fresh.list_preferences()] == ["Prefers tea"]
    assert [s.text for s in bob.list_preferences()] == ["Prefers KESTRELBOB music"]


def test_the_store_is_private_to_its_owner(store):
    store.for_user("alice").add_turn("s", "t1", "my diary", "noted")
    root = store.persist_dir
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(root) == 0o700
    assert mode(root / "chroma.sqlite3") == 0o600 and mode(root / "cdra-forgotten.sqlite3") == 0o600
    segments = [p for p in root.iterdir() if p.is_dir()]
    assert segments and all(mode(p) == 0o700 for p in segments)
    assert all(mode(f) == 0o600 for p in segments for f in p.iterdir())
