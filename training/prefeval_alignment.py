"""PrefEval (Zhao et al., ICLR 2025) in its original layout -> the alignment test set of formats.md.

Reads ``explicit_preference/``, ``implicit_preference/choice-based/`` and ``implicit_preference/persona-driven/``
TOPIC.json files (through training/prefeval.py's ``load_prefeval``) for any topic present (the full benchmark has 20).
Explicit items carry the preference only (the model is given it as memory); implicit items carry the
conversation in which the preference is revealed as ``history``, with the gold preference kept for the judge.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignment.errors import CdraError
from alignment.methods import AlignmentItem
from training.prefeval import FORMS, ChoiceRecord, PersonaRecord, PrefEvalRecord, canonical_form, load_prefeval


def list_topics(root: str | Path) -> list[str]:
    """Topics present in any form directory of the benchmark root, sorted (a topic may lack a form)."""
    root = _check_root(root)
    topics = {p.stem for sub in FORMS.values() if (root / sub).is_dir() for p in (root / sub).glob("*.json")}
    if not topics:
        raise CdraError(f"{root}: no TOPIC.json files under {', '.join(FORMS.values())}: is this PrefEval's "
                        "benchmark_dataset/ directory?")
    return sorted(topics)


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CdraError(f"PrefEval root {root} does not exist: point --root at the benchmark_dataset/ directory "
                        "(with explicit_preference/ and implicit_preference/)")
    return root


def to_item(record: PrefEvalRecord, form: str) -> AlignmentItem:
    """One PrefEval record (training/prefeval.py's typed form) as an alignment test item, origin kept as extras."""
    history: list[dict[str, str]] = []
    extras: dict[str, Any] = {"source": "prefeval", "form": form, "topic": record.topic, "index": record.index}
    if isinstance(record, ChoiceRecord):
        c = record.conversation
        history = [{"role": "user", "content": c.query}, {"role": "assistant", "content": c.assistant_options},
                   {"role": "user", "content": c.user_selection}]
        if c.assistant_acknowledgment.strip():
            history.append({"role": "assistant", "content": c.assistant_acknowledgment})
        extras["aligned_option"] = record.aligned_op
    elif isinstance(record, PersonaRecord):
        for turn in record.turns:
            history.append({"role": "user", "content": turn.user})
            if turn.assistant.strip():
                history.append({"role": "assistant", "content": turn.assistant})
        if record.persona:
            extras["persona"] = record.persona
    return AlignmentItem(
        id=f"prefeval/{form}/{record.topic}/{record.index}", domain=record.topic, preference=record.preference.strip(),
        query=record.question.strip(), history=history, notes=record.explanation.strip() or None, **extras,
    )


def import_prefeval(
    root: str | Path,
    forms: Sequence[str] = tuple(FORMS),
    topics: Sequence[str] | None = None,
    per_topic: dict[str, int] | int | None = None,
    seed: int = 0,
    max_history_chars: int | None = None,
) -> list[AlignmentItem]:
    """Items for the given forms and topics (all topics by default).

    ``per_topic`` samples that many records per (form, topic) with ``seed`` (an int for every form, or
    a dict per form); ``max_history_chars`` keeps only implicit items whose conversation is at most that
    long (small models and CPUs). Items come interleaved - topic by topic, form by form - so the first
    N of the list already cover many topics and every form.
    """
    forms = [canonical_form(f) for f in forms]
    available = list_topics(root)
    chosen = list(topics) if topics else available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise CdraError(f"topics not in {root}: {', '.join(unknown)}; available: {', '.join(available)}")
    rng = random.Random(seed)
    buckets: list[list[AlignmentItem]] = []
    for topic in chosen:
        for form in forms:
            if not (Path(root) / FORMS[form] / f"{topic}.json").is_file():
                continue
            items = [to_item(r, form) for r in load_prefeval(root, form, topic)]
            if max_history_chars is not None:
                items = [it for it in items if sum(len(m["content"]) for m in it.history) <= max_history_chars]
            k = per_topic.get(form) if isinstance(per_topic, dict) else per_topic
            if k is not None and k < len(items):
                items = sorted(rng.sample(items, k), key=lambda it: it.extras["index"])
            buckets.append(items)
    return list(_interleave(buckets))


def _interleave(buckets: Iterable[list[AlignmentItem]]) -> Iterable[AlignmentItem]:
    buckets = [list(b) for b in buckets]
    depth = max((len(b) for b in buckets), default=0)
    for i in range(depth):
        for bucket in buckets:
            if i < len(bucket):
                yield bucket[i]


def item_record(item: AlignmentItem) -> dict[str, Any]:
    """The JSONL record of an item: the formats.md keys first, then the extras."""
    record = item.model_dump(exclude_none=True)
    if not record.get("history"):
        record.pop("history", None)
    return record
