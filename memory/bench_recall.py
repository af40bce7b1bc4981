"""`cdra bench recall`: does what a user said reach the prompt of a question it bears on? PrefEval items:
the user states the target preference among K others (other topics), then asks the item's question;
recall of the target at each K within the token budget, the prompt tokens, and a false-merge check.

Everything goes through the product's own path: ``extract_explicit`` on each message, ``add_preferences``,
then ``retrieve(question)`` with the store's configuration (the assistant's defaults).
"""

from __future__ import annotations

import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignment.explicit_extraction import extract_explicit
from memory.embeddings import get_embedder
from memory.vector_store import VectorMemory

TARGET = "said-target"


@dataclass(frozen=True)
class RecallItem:
    """One PrefEval explicit record: a preference and a question it bears on."""

    topic: str
    preference: str
    question: str


@dataclass
class RecallRow:
    k: int
    items: int
    extracted: int  # items whose target message yielded at least one statement
    hits: int  # at least one of the target's statements reached the prompt, in its own words
    hits_all: int  # every statement read from the target message reached the prompt
    tokens_mean: float
    tokens_max: int
    retrieved_mean: float
    stored_mean: float
    retrieve_ms_p50: float
    misses: list[tuple[str, str]] = field(default_factory=list)  # (preference, question)

    @property
    def recall(self) -> float:
        return self.hits / self.items if self.items else 0.0

    @property
    def recall_all(self) -> float:
        return self.hits_all / self.items if self.items else 0.0


def pick_items(records: Sequence[RecallItem], per_topic: int | None, seed: int = 0) -> list[RecallItem]:
    """Up to ``per_topic`` records of every topic (a seeded sample), in topic order."""
    by_topic: dict[str, list[RecallItem]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    rng = random.Random(seed)
    out: list[RecallItem] = []
    for topic in sorted(by_topic):
        group = list(by_topic[topic])
        if per_topic is not None and per_topic < len(group):
            group = rng.sample(group, per_topic)
        out += group
    return out


def _distractors(item: RecallItem, pool: Sequence[RecallItem], k: int, rng: random.Random) -> list[str]:
    others = list(dict.fromkeys(r.preference for r in pool if r.topic != item.topic))
    return rng.sample(others, min(k, len(others)))


def bench_recall(
    items: Sequence[RecallItem],
    pool: Sequence[RecallItem],
    store: VectorMemory,
    ks: Sequence[int] = (0, 15, 50),
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[RecallRow]:
    """One row per K: a fresh user per item states K distractors (other topics) and the target, in a
    seeded order, each as its own message; then the item's question is retrieved for."""
    say = progress or (lambda _m: None)
    rows = []
    for k in ks:
        say(f"K={k}: {len(items)} users")
        hits = hits_all = extracted = 0
        tokens, retrieved, stored, latencies, misses = [], [], [], [], []
        for n, item in enumerate(items):
            rng = random.Random(f"{seed}-{n}")  # the same distractors for an item at every K (a prefix)
            others = _distractors(item, pool, max(ks), rng)[:k]
            messages = [(f"said-{j}", text) for j, text in enumerate(others)]
            messages.insert(rng.randrange(len(messages) + 1), (TARGET, item.preference))
            user = store.for_user(f"recall-k{k}-{n}")
            statements = [s for turn, text in messages for s in extract_explicit(text, turn)]
            target_texts = {s.text for s in statements if s.evidence == [TARGET]}
            user.add_preferences(statements)
            stored.append(len(user.list_preferences()))
            started = time.perf_counter()
            got = user.retrieve(item.question)
            latencies.append((time.perf_counter() - started) * 1000)
            got_texts = {s.text for s, _ in got.preferences if TARGET in s.evidence}
            extracted += bool(target_texts)
            hit = bool(target_texts & got_texts)
            hits += hit
            hits_all += bool(target_texts) and target_texts <= got_texts
            if not hit:
                misses.append((item.preference, item.question))
            tokens.append(got.tokens)
            retrieved.append(len(got.preferences))
            if (n + 1) % 20 == 0:
                say(f"K={k}: {n + 1}/{len(items)}, recall so far {hits / (n + 1):.3f}")
        rows.append(RecallRow(k=k, items=len(items), extracted=extracted, hits=hits, hits_all=hits_all,
                              tokens_mean=statistics.fmean(tokens) if tokens else 0.0,
                              tokens_max=max(tokens, default=0),
                              retrieved_mean=statistics.fmean(retrieved) if retrieved else 0.0,
                              stored_mean=statistics.fmean(stored) if stored else 0.0,
                              retrieve_ms_p50=statistics.median(latencies) if latencies else 0.0, misses=misses))
    return rows


# -- false merges ------------------------------------------------------------------------------------------
#: things that are different and must stay separate statements when one user states them all, one per message
_PHRASINGS = {
    "allergies": ("I'm allergic to {}.", "I have a severe allergy to {}.", "I am very allergic to {}, so be careful.",
                  "I've got an allergy to {}."),
    "medications": ("I can't take {} because of my stomach.", "I'm not allowed to take {}.",
                    "My doctor told me to never take {}.", "I avoid {} since it gives me side effects."),
    "places": ("I don't like traveling to {}.", "I never want to go back to {}.", "I love visiting {}.",
               "I'd rather not stay in {} again."),
    "people": ("I prefer not to talk about my {}.", "Please don't mention my {}.", "I don't want advice about my {}.",
               "I avoid discussing my {}."),
}
_THINGS = {
    "allergies": ("penicillin", "amoxicillin", "sulfa drugs", "aspirin", "ibuprofen", "codeine", "latex", "peanuts",
                  "tree nuts", "almonds", "cashews", "shellfish", "shrimp", "crab", "eggs", "milk", "soy", "wheat",
                  "sesame", "mustard", "bee stings", "wasp stings", "cats", "dogs", "horses", "pollen", "dust mites",
                  "mold", "nickel", "kiwi"),
    "medications": ("ibuprofen", "naproxen", "aspirin", "diclofenac", "metformin", "prednisone", "codeine", "tramadol",
                    "warfarin", "clopidogrel", "lisinopril", "losartan"),
    "places": ("Paris", "Rome", "Berlin", "Vienna", "Prague", "Budapest", "Lisbon", "Madrid", "Barcelona", "New York",
               "New Jersey", "York"),
    "people": ("mother", "father", "sister", "brother", "ex-husband", "ex-wife", "boss", "manager", "son", "daughter"),
}
#: things that are different and must stay separate statements when one user states them all, one per message
#: (the phrasings rotate: the same thing said in different words must still be one thing)
DISTINCT_PROBES: dict[str, list[tuple[str, str]]] = {
    category: [(thing, _PHRASINGS[category][n % len(_PHRASINGS[category])].format(thing))
               for n, thing in enumerate(things)] for category, things in _THINGS.items()}
#: restatements that mean the same thing: they should become one statement with both evidences
SAME_PROBES: list[tuple[str, str]] = [
    ("I'm allergic to cats.", "I am allergic to cats!"),
    ("I'm allergic to peanuts.", "I have a peanut allergy."),
    ("I hate long answers.", "I dislike long answers."),
    ("I'm vegetarian.", "I am a vegetarian."),
    ("I prefer window seats.", "I really prefer window seats."),
    ("I can't stand horror movies.", "I hate horror movies."),
]


@dataclass
class MergeRow:
    category: str
    stated: int
    read: int  # the extractor found a statement in the message
    kept: int  # of those read, still readable as a statement of their own
    lost: list[str] = field(default_factory=list)  # read, then merged away
    unread: list[str] = field(default_factory=list)

    @property
    def false_merges(self) -> int:
        return self.read - self.kept


def false_merge_check(store: VectorMemory) -> tuple[list[MergeRow], int, int]:
    """Distinct probes per category (one user each), then same-meaning pairs: (rows, merged, pairs)."""
    rows = []
    for category, probes in DISTINCT_PROBES.items():
        user = store.for_user(f"merge-{category}")
        unread = []
        for n, (word, message) in enumerate(probes):
            found = extract_explicit(message, f"said-{n}")
            unread += [] if found else [word]
            user.add_preferences(found)
        texts = [s.text for s in user.list_preferences()]
        words = [word for word, _ in probes]
        lost = [word for word in words if word not in unread and not _kept(word, texts, words)]
        read = len(probes) - len(unread)
        rows.append(MergeRow(category, len(probes), read, read - len(lost), lost, unread))
    merged = 0
    for n, (first, second) in enumerate(SAME_PROBES):
        user = store.for_user(f"same-{n}")
        user.add_preferences(extract_explicit(first, "said-a"))
        user.add_preferences(extract_explicit(second, "said-b"))
        statements = user.list_preferences()
        merged += len(statements) == 1 and set(statements[0].evidence) >= {"said-a", "said-b"}
    return rows, merged, len(SAME_PROBES)


def _names(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word.lower())}(?![\w-])", text.lower()) is not None


def _kept(word: str, texts: Sequence[str], words: Sequence[str]) -> bool:
    """A statement of its own names ``word`` (one naming two of the things has merged them)."""
    rivals = [o for o in words if o != word and not _names(word, o)]  # "New York" names "York": no rival
    return any(_names(t, word) and not any(_names(t, o) for o in rivals) for t in texts)


# -- the whole run ------------------------------------------------------------------------------------------
class CachingEmbedder:
    """The real embedder, with each distinct text embedded once: the benchmark states the same PrefEval
    sentences for many users, and embedding (not the store) is what takes the time on a CPU."""

    def __init__(self, embedder) -> None:
        self.inner = embedder
        self.dim, self.name = embedder.dim, embedder.name
        self._vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self.inner.embed(missing)))
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, self.dim), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


#: retrieval settings compared at the largest K (``--ablation``): what each idea buys, and its prompt tokens
ABLATIONS: dict[str, dict[str, float]] = {
    "fixed cut-off: cosine >= 0.35": {"min_statements": 0, "statement_floor": 0.35, "situation_weight": 0.0},
    "best 8 by cosine, nothing else": {"min_statements": 8, "statement_floor": 9.0, "situation_weight": 0.0},
    "best 8 by cosine + situations, nothing else": {"min_statements": 8, "statement_floor": 9.0},
    "ranked by cosine, the whole budget": {"min_statements": 0, "statement_floor": -1.0, "situation_weight": 0.0},
    "default without situations": {"situation_weight": 0.0},
}


def run_recall_bench(
    records: Iterable[RecallItem],
    config,
    per_topic: int | None = 10,
    ks: Sequence[int] = (0, 15, 50),
    seed: int = 0,
    embedder=None,
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    ablation: bool = False,
) -> tuple[list[RecallRow], list[MergeRow], tuple[int, int], dict[str, RecallRow]]:
    """Recall rows, the merge check and (``ablation``) the ABLATIONS at the largest K, in temporary
    embedded stores removed afterwards (one user per item and K, never reused: nothing is forgotten on
    the way, as forget() compacts the whole file each time)."""
    pool = list(records)
    items = pick_items(pool, per_topic, seed)
    root = Path(tempfile.mkdtemp(prefix="cdra-bench-recall-", dir=work_dir))
    variants: dict[str, RecallRow] = {}
    try:
        cached = CachingEmbedder(embedder or get_embedder(config.embedding_model, config.embedding_device,
                                                          config.embedding_batch_size))
        config = config.model_copy(update={"chroma_host": None})
        store = VectorMemory(config, root / "chroma", embedder=cached)
        rows = bench_recall(items, pool, store, ks, seed, progress)
        merges, merged, pairs = false_merge_check(store)
        for n, (name, update) in enumerate(ABLATIONS.items() if ablation else ()):
            variant = VectorMemory(config.model_copy(update=update), root / f"variant-{n}", embedder=cached)
            [variants[name]] = bench_recall(items, pool, variant, (max(ks),), seed, progress)
        if ablation:
            variants["default (+ the best min_statements, then the floor)"] = rows[list(ks).index(max(ks))]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows, merges, (merged, pairs), variants


def format_ablation(variants: dict[str, RecallRow]) -> str:
    if not variants:
        return ""
    k = next(iter(variants.values())).k
    lines = [f"retrieval variants at K={k}", "| retrieval | recall | prompt tokens mean | max |", "|---|---|---|---|"]
    lines += [f"| {name} | {r.recall:.1%} | {r.tokens_mean:.0f} | {r.tokens_max} |" for name, r in variants.items()]
    return "\n".join(lines)


def format_recall(rows: Sequence[RecallRow], merges: Sequence[MergeRow], same: tuple[int, int], budget: int) -> str:
    lines = [f"recall of the stated target preference (token budget {budget} MiniLM tokens)",
             "| K others | items | target read | recall | all target statements | stored | retrieved | "
             "prompt tokens mean | max | retrieve p50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.k} | {r.items} | {r.extracted} | **{r.recall:.1%}** | {r.recall_all:.1%} | "
                     f"{r.stored_mean:.1f} | {r.retrieved_mean:.1f} | {r.tokens_mean:.0f} | {r.tokens_max} | "
                     f"{r.retrieve_ms_p50:.1f} |")
    lines += ["", "false merges (distinct things stated one per message by one user)",
              "| category | stated | read | kept separate | false merges | merged away | not read |",
              "|---|---|---|---|---|---|---|"]
    for m in merges:
        lines.append(f"| {m.category} | {m.stated} | {m.read} | {m.kept} | **{m.false_merges}** | "
                     f"{', '.join(m.lost) or '-'} | {', '.join(m.unread) or '-'} |")
    total = sum(m.false_merges for m in merges)
    lines.append(f"| total | {sum(m.stated for m in merges)} | {sum(m.read for m in merges)} | "
                 f"{sum(m.kept for m in merges)} | **{total}** | | |")
    lines.append(f"\nsame-meaning restatements merged into one statement with both evidences: {same[0]}/{same[1]}")
    return "\n".join(lines)
