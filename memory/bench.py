"""`cdra bench memory`: write throughput, query latency (p50/p95) and recall@10 of chroma's HNSW index
against exact brute-force cosine on the same embeddings, at several record counts for one user.

Embedding every record of a 100k store with MiniLM on a CPU takes far longer than the store itself, so
records beyond a pool of really embedded texts get vectors mixed from two pool vectors (normalized, with
a little noise): the same kind of neighbourhood structure, and chroma and the exact search see the very
same vectors. ``embed_all=True`` embeds every record instead.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memory.config import MemoryConfig
from memory.embeddings import Embedder
from memory.vector_store import VectorMemory


@dataclass
class MemoryBenchRow:
    size: int
    write_per_s: float
    query_p50_ms: float
    query_p95_ms: float
    exact_p50_ms: float
    recall_at_10: float
    retrieve_p50_ms: float
    disk_mb: float


@dataclass
class MemoryBenchInfo:
    embedder: str
    pool: int
    embed_per_s: float
    queries: int
    synthetic_beyond_pool: bool


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def record_vectors(pool: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """n unit vectors: the pool first, then normalized mixtures of two pool vectors with a little noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, pool.shape[1]), dtype=np.float32)
    sources: list[tuple[int, int]] = []
    take = min(n, len(pool))
    out[:take] = pool[:take]
    sources += [(i, i) for i in range(take)]
    if n > take:
        extra = n - take
        i = rng.integers(0, len(pool), extra)
        j = rng.integers(0, len(pool), extra)
        a = rng.uniform(0.5, 0.9, (extra, 1)).astype(np.float32)
        mixed = a * pool[i] + (1 - a) * pool[j] + rng.normal(0, 0.02, (extra, pool.shape[1])).astype(np.float32)
        out[take:] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
        sources += list(zip(i.tolist(), j.tolist()))
    return out, sources


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def bench_memory(
    sizes: Sequence[int],
    texts: Sequence[str],
    embedder: Embedder,
    queries: int = 50,
    k: int = 10,
    pool_size: int = 2000,
    embed_all: bool = False,
    seed: int = 0,
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[MemoryBenchRow], MemoryBenchInfo]:
    """One row per size: a fresh embedded store, one user, ``size`` turn records written in batches."""
    say = progress or (lambda _msg: None)
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(texts) < queries + 10:
        raise ValueError(f"the benchmark needs at least {queries + 10} distinct texts, got {len(texts)}")
    query_texts, record_texts = texts[:queries], texts[queries:]
    largest = max(sizes)
    pool_n = min(len(record_texts), largest if embed_all else pool_size)
    say(f"embedding {pool_n} record texts and {queries} queries with {embedder.name}")
    started = time.perf_counter()
    pool = embedder.embed(record_texts[:pool_n])
    embed_per_s = pool_n / max(1e-9, time.perf_counter() - started)
    query_vectors = embedder.embed(query_texts)
    if embed_all and largest > pool_n:
        raise ValueError(f"--embed-all needs {largest} distinct texts, got {len(record_texts)}")
    vectors, sources = record_vectors(pool, largest, seed)
    documents = [record_texts[i] if i == j else f"{record_texts[i]} / {record_texts[j]}" for i, j in sources]
    root = Path(tempfile.mkdtemp(prefix="cdra-bench-memory-", dir=work_dir))
    rows = []
    try:
        for size in sizes:
            rows.append(_bench_size(size, vectors[:size], documents[:size], query_vectors, query_texts, embedder,
                                    root / f"n{size}", k, say))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    info = MemoryBenchInfo(embedder.name, pool_n, embed_per_s, queries, largest > pool_n)
    return rows, info


def _bench_size(size: int, vectors: np.ndarray, documents: Sequence[str], query_vectors: np.ndarray,
                query_texts: Sequence[str], embedder: Embedder, path: Path, k: int,
                say: Callable[[str], None]) -> MemoryBenchRow:
    store = VectorMemory(MemoryConfig(), path, embedder=embedder)
    user = store.for_user("bench-user")
    say(f"n={size}: writing")
    turns = [{"session_id": "bench", "turn_id": str(i), "user": documents[i], "assistant": ""} for i in range(size)]
    batch = 2000
    started = time.perf_counter()
    for start in range(0, size, batch):
        user.add_turns(turns[start: start + batch], vectors[start: start + batch])
    write_s = time.perf_counter() - started
    ids = [f"turn-bench-{i}" for i in range(size)]
    say(f"n={size}: querying")
    latencies, exact_latencies, recalls = [], [], []
    for q in query_vectors:
        t0 = time.perf_counter()
        found = user.search_vectors(q, k, kind="turn")
        latencies.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        sims = vectors @ q
        top = np.argpartition(-sims, min(k, size - 1))[:k]
        exact = {ids[i] for i in top[np.argsort(-sims[top])]}
        exact_latencies.append((time.perf_counter() - t0) * 1000)
        recalls.append(len(exact & {i for i, _ in found}) / min(k, size))
    retrieve_ms = []
    for text in list(query_texts)[:20]:
        t0 = time.perf_counter()
        user.retrieve(text)
        retrieve_ms.append((time.perf_counter() - t0) * 1000)
    return MemoryBenchRow(size=size, write_per_s=size / max(1e-9, write_s),
                          query_p50_ms=statistics.median(latencies), query_p95_ms=_percentile(latencies, 0.95),
                          exact_p50_ms=statistics.median(exact_latencies), recall_at_10=statistics.fmean(recalls),
                          retrieve_p50_ms=statistics.median(retrieve_ms), disk_mb=_dir_mb(path))


def format_table(rows: Iterable[MemoryBenchRow], info: MemoryBenchInfo) -> str:
    lines = [f"embeddings: {info.embedder}, {info.embed_per_s:.0f} texts/s on this machine; "
             f"{info.pool} embedded texts" + (", larger stores mix pool vectors" if info.synthetic_beyond_pool else "")
             + f"; {info.queries} queries, k=10",
             "| records | write rec/s | chroma query p50 ms | p95 ms | exact cosine p50 ms | chroma/exact p50 | "
             "recall@10 | retrieve() p50 ms | disk MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.query_p50_ms / r.exact_p50_ms if r.exact_p50_ms > 0 else float("nan")
        lines.append(f"| {r.size:,} | {r.write_per_s:,.0f} | {r.query_p50_ms:.2f} | {r.query_p95_ms:.2f} | "
                     f"{r.exact_p50_ms:.2f} | {ratio:.2f}x | {r.recall_at_10:.3f} | {r.retrieve_p50_ms:.1f} | "
                     f"{r.disk_mb:.1f} |")
    return "\n".join(lines)
