"""What a user said reaches the answers it bears on, and nothing is merged away: a slice of `cdra bench recall`
(real chromadb, real MiniLM, PrefEval's own sentences), the issue's own example, and the false-merge probes."""

from __future__ import annotations

import json

import pytest

from alignment.explicit_extraction import extract_explicit
from memory.bench_recall import (
    DISTINCT_PROBES,
    SAME_PROBES,
    RecallItem,
    bench_recall,
    false_merge_check,
    pick_items,
)


@pytest.fixture(scope="module")
def records(shared_dir):
    root = shared_dir / "data/prefeval/explicit_preference"
    return [RecallItem(p.stem, r["preference"], r["question"])
            for p in sorted(root.glob("*.json")) for r in json.loads(p.read_text())]


@pytest.fixture
def cached_store(tmp_path, embedder):
    from memory.bench_recall import CachingEmbedder
    from memory.config import MemoryConfig
    from memory.vector_store import VectorMemory

    return VectorMemory(MemoryConfig(), tmp_path / "chroma", embedder=CachingEmbedder(embedder))


def test_recall_goal_on_a_slice_at_k50_within_the_default_budget(records, cached_store):
    """Two PrefEval items per topic (seeded), each user stating the target among 50 others from other topics."""
    items = pick_items(records, per_topic=2, seed=3)
    [row] = bench_recall(items, records, cached_store, ks=(50,), seed=3)
    assert row.items == 24 and row.extracted == 24
    assert row.recall >= 0.95, row.misses
    assert row.tokens_max <= cached_store.config.token_budget and row.stored_mean > 50


def test_vegetarian_and_long_answers_are_two_statements_and_the_diet_reaches_cooking(store, records):
    user = store.for_user("vera")
    others = [r.preference for r in records if r.topic in ("entertain_games", "shop_motors", "lifestyle_beauty")][:30]
    for n, text in enumerate(others):
        user.add_preferences(extract_explicit(text, f"said-{n}"))
    added = user.add_preferences(extract_explicit("I'm vegetarian and I hate long answers", "turn-veg"))
    stored = {s.id: s for s in user.list_preferences()}
    assert sorted((stored[i].text, stored[i].dimension) for i in added) == [
        ("Avoids long answers", "style"), ("Prefers vegetarian options", "diet")]
    veg = next(stored[i] for i in added if stored[i].dimension == "diet")
    assert veg.sources[0].quote == "I'm vegetarian and I hate long answers" and veg.sources[0].id == "turn-veg"
    got = user.retrieve("What should I cook for friends this weekend?")
    used = [s.statement.text for s in got.considered if s.used]
    assert "Prefers vegetarian options" in used and "Avoids long answers" in used  # style: every answer
    veg_rank = next(s.rank for s in got.considered if s.statement.text == "Prefers vegetarian options")
    assert veg_rank <= 3, [(s.statement.text, round(s.score, 2)) for s in got.considered[:5]]


def test_distinct_allergies_medications_places_people_never_merge(cached_store):
    rows, merged, pairs = false_merge_check(cached_store)
    assert {r.category: r.false_merges for r in rows} == {c: 0 for c in DISTINCT_PROBES}, [r.lost for r in rows]
    assert all(r.read == r.stated for r in rows), [r.unread for r in rows]
    assert (merged, pairs) == (len(SAME_PROBES), len(SAME_PROBES))  # restatements still become one statement


def test_a_merge_keeps_both_evidences_the_newer_words_and_its_history(store):
    user = store.for_user("mo")
    [first] = user.add_preferences(extract_explicit("I'm allergic to peanuts.", "turn-1"))
    assert user.add_preferences(extract_explicit("I have a severe peanut allergy.", "turn-2")) == [first]
    user.add_preferences(extract_explicit("I'm allergic to penicillin.", "turn-3"))
    user.add_preferences(extract_explicit("I'm allergic to amoxicillin.", "turn-4"))
    by_text = {s.text: s for s in user.list_preferences()}
    assert set(by_text) == {"Avoids peanut (allergy)", "Avoids penicillin (allergy)", "Avoids amoxicillin (allergy)"}
    peanut = by_text["Avoids peanut (allergy)"]
    assert peanut.evidence == ["turn-1", "turn-2"] and peanut.version == 2
    assert [e.quote for e in peanut.sources] == ["I'm allergic to peanuts.", "I have a severe peanut allergy."]
    assert [(h.action, h.previous, h.evidence) for h in peanut.history] == [
        ("created", "", ["turn-1"]), ("merged", "Avoids peanuts (allergy)", ["turn-2"])]
