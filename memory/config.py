"""Vector-memory configuration (the `memory` field of the app's Settings): where chroma lives, which
embedding model, and the retrieval bounds (top-k, relevance cut-off, token budget)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MemoryConfig(BaseModel):
    """Vector memory: embedded chromadb under data_dir unless a chroma server is configured.

    Parameters that choose the store: ``chroma_host`` / ``chroma_port`` / ``chroma_ssl`` (a chroma
    server; unset = the embedded PersistentClient). The embeddings: ``embedding_model`` (a local
    sentence-transformers directory; unset = the packaged all-MiniLM-L6-v2), ``embedding_device``.
    Retrieval: ``top_k`` per kind, ``relevance_cutoff`` (cosine similarity), ``token_budget`` for the
    prompt lines, ``pinned_dimensions`` (statements always offered: allergies, privacy, answer style).
    """

    chroma_host: str | None = None
    chroma_port: int = 8000
    chroma_ssl: bool = False
    embedding_model: str | None = Field(None, description="local sentence-transformers dir; default: packaged all-MiniLM-L6-v2")
    embedding_device: str = "cpu"
    embedding_batch_size: int = Field(64, ge=1)
    top_k: int = Field(8, ge=1)
    relevance_cutoff: float = Field(0.35, description="minimum cosine similarity (MiniLM) for a record to be retrieved")
    token_budget: int = Field(512, ge=1, description="max tokens of retrieved memory put into a prompt")
    pinned_dimensions: tuple[str, ...] = Field(
        ("health", "privacy", "style"), description="dimensions retrieved for every query, whatever their similarity")
    duplicate_similarity: float = Field(
        0.9, description="a new statement this similar to a stored one is the same statement (merged, not added)")
    max_turn_chars: int = Field(4000, ge=100, description="longer turn texts are cut before they are stored")
