"""Memory fixtures: one real embedder per session, a fresh embedded chroma store per test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2 on the CPU, loaded once."""
    from memory.embeddings import get_embedder

    return get_embedder()


@pytest.fixture
def store(tmp_path, embedder):
    from memory.config import MemoryConfig
    from memory.vector_store import VectorMemory

    return VectorMemory(MemoryConfig(), tmp_path / "chroma", embedder=embedder)
