"""Vector-memory configuration (the `memory` field of the app's Settings): where chroma lives, which
embedding model, and how retrieval ranks and packs statements and past turns into the token budget."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MemoryConfig(BaseModel):
    """Vector memory: embedded chromadb under data_dir unless a chroma server is configured.

    Parameters that choose the store: ``chroma_host`` / ``chroma_port`` / ``chroma_ssl`` (a chroma
    server; unset = the embedded PersistentClient). The embeddings: ``embedding_model`` (a local
    sentence-transformers directory; unset = the packaged all-MiniLM-L6-v2), ``embedding_device``.
    Retrieval (memory/retrieval.py): ``token_budget`` for all prompt lines; statements are ranked by
    relevance (cosine to the statement and its quote + ``situation_weight`` x the situations query and
    statement share) with ``pinned_dimensions`` first; the best ``min_statements`` are offered whatever
    their score, the rest need ``statement_floor``. Past turns: at most ``top_k``, cosine >=
    ``relevance_cutoff``, in what the statements leave of the budget. Statements are merged only when
    they say the same about the same subject (alignment.preferences.same_subject), never by cosine.
    """

    chroma_host: str | None = None
    chroma_port: int = 8000
    chroma_ssl: bool = False
    embedding_model: str | None = Field(None, description="local sentence-transformers dir; default: packaged all-MiniLM-L6-v2")
    embedding_device: str = "cpu"
    embedding_batch_size: int = Field(64, ge=1)
    top_k: int = Field(8, ge=1, description="past turns offered per query, at most")
    relevance_cutoff: float = Field(0.35, description="minimum cosine similarity (MiniLM) for a past turn to be offered")
    #: 256, not 512: every memory token is prefilled on every turn (~120 tokens/s on 2 cores); `cdra bench recall`
    #: at K = 50 reads the target 100 % at both budgets (all its statements: 95.0 % at both), 203 tokens mean
    token_budget: int = Field(256, ge=1, description="max tokens (MiniLM tokenizer) of retrieved memory put into a prompt")
    pinned_dimensions: tuple[str, ...] = Field(
        ("health", "privacy", "style"), description="dimensions offered first for every query, whatever their score")
    min_statements: int = Field(8, ge=0, description="the best-ranked statements offered whatever their score")
    statement_floor: float = Field(
        0.15, description="beyond min_statements, the least relevance a statement needs (a low bar: ranking decides)")
    situation_weight: float = Field(0.5, ge=0.0, description="weight of shared situations (memory/situations.py)")
    max_scan: int = Field(2000, ge=1, description="users with more statements are scored on the index's nearest this many")
    max_turn_chars: int = Field(4000, ge=100, description="longer turn texts are cut before they are stored")
