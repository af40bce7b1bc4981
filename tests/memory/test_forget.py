"""forget(): after it, nothing of the user is retrievable and their data is gone from disk (embedded store),
or from the server (chroma server through HttpClient)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from alignment.explicit_extraction import extract_explicit

REOPEN = """
import sys, chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
for col in client.list_collections():
    print(col.name, col.count())
"""


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_forget_removes_the_user_from_disk_and_keeps_others(store, tmp_path):
    alice, bob = store.for_user("alice"), store.for_user("bob")
    alice.add_preferences(extract_explicit("I'm allergic to QUOKKAFUR.", "a-1"))
    alice.add_turn("s", "a-2", "Tell me about ZEPHYRMARKER gardens", "They are lovely.")
    alice.record_inference({"failed": True}, raw="raw ZEPHYRMARKER output")
    bulk = [{"session_id": "bulk", "turn_id": str(i), "user": f"ZEPHYRMARKER note {i}", "assistant": ""}
            for i in range(1200)]  # enough to flush chroma's log into the HNSW files on disk
    vectors = np.random.default_rng(0).normal(size=(1200, store.embedder.dim)).astype(np.float32)
    alice.add_turns(bulk, vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    bob.add_preferences(extract_explicit("I love KESTRELBOB music.", "b-1"))
    root = store.persist_dir
    assert _files_containing(root, b"ZEPHYRMARKER") and _files_containing(root, b"QUOKKAFUR")
    segment_dirs_before = {p.name for p in root.iterdir() if p.is_dir()}

    alice.forget()

    assert alice.list_preferences() == [] and alice.turns() == [] and alice.inferences() == []
    assert alice.retrieve("QUOKKAFUR ZEPHYRMARKER").as_prompt_lines() == []
    assert store.users() == ["bob"]
    assert _files_containing(root, b"ZEPHYRMARKER") == [] and _files_containing(root, b"QUOKKAFUR") == []
    assert len({p.name for p in root.iterdir() if p.is_dir()}) < len(segment_dirs_before)
    # a fresh process reading the directory sees bob only
    seen = subprocess.run([sys.executable, "-c", REOPEN, str(root)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == [bob.name, "1"]
    assert [s.text for s in bob.list_preferences()] == ["Prefers KESTRELBOB music"]
    alice.forget()  # forgetting twice is fine
    alice.add_preferences(extract_explicit("I love tea.", "a-3"))  # and the user can start over
    assert [s.text for s in alice.list_preferences()] == ["Prefers tea"]


@pytest.fixture
def chroma_server(tmp_path):
    """A real `chroma run` server on a free port, stopped after the test."""
    binary = Path(sys.executable).parent / "chroma"
    if not binary.exists():
        pytest.fail(f"the chroma CLI is missing at {binary}: reinstall chromadb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(binary), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the chroma server did not start within 60 s")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_http_client_mode_isolates_and_forgets(chroma_server, embedder, tmp_path):
    from memory.config import MemoryConfig
    from memory.vector_store import VectorMemory

    store = VectorMemory(MemoryConfig(chroma_host="127.0.0.1", chroma_port=chroma_server), tmp_path / "unused",
                         embedder=embedder)
    alice, bob = store.for_user("alice"), store.for_user("bob")
    alice.add_preferences(extract_explicit("Don't share my location.", "a-1"))
    bob.add_preferences(extract_explicit("I love jazz.", "b-1"))
    assert [s.text for s, _ in alice.retrieve("where am I?").preferences] == ["Avoids sharing my location"]
    assert [s.text for s in bob.list_preferences()] == ["Prefers jazz"]
    assert "Avoids sharing my location" not in bob.retrieve("share my location", token_budget=10_000).preference_texts()
    alice.forget()
    assert alice.list_preferences() == [] and store.users() == ["bob"]
    assert not (tmp_path / "unused").exists()  # nothing was written locally in server mode
