"""`cdra bench memory` machinery on a small size: real chroma, real embeddings, recall against exact cosine."""

import numpy as np

from memory.bench import bench_memory, format_table, record_vectors


def test_mixed_vectors_are_unit_and_start_with_the_pool():
    pool = np.eye(4, dtype=np.float32)
    vectors, sources = record_vectors(pool, 10, seed=1)
    assert np.allclose(vectors[:4], pool) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert sources[:4] == [(0, 0), (1, 1), (2, 2), (3, 3)] and len(sources) == 10


def test_small_bench_finds_the_exact_neighbours(embedder, tmp_path):
    texts = [f"Sentence number {i} about {topic} and travel plans." for i, topic in
             enumerate(["hiking", "jazz", "cooking", "privacy", "budget", "allergies", "museums", "trains"] * 20)]
    rows, info = bench_memory([300], texts, embedder, queries=10, pool_size=60, work_dir=tmp_path)
    [row] = rows
    assert row.size == 300 and row.write_per_s > 0 and row.query_p95_ms >= row.query_p50_ms > 0
    assert row.recall_at_10 >= 0.9  # HNSW at this size is close to exact
    assert info.pool == 60 and info.synthetic_beyond_pool
    assert "| 300 |" in format_table(rows, info)
    assert list(tmp_path.iterdir()) == []  # the temporary stores are removed
