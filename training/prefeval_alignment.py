"""PrefEval (Zhao et al., ICLR 2025) in its original layout -> the alignment test set of formats.md.

Reads ``explicit_preference/TOPIC.json``, ``implicit_preference/choice-based/TOPIC.json`` and
``implicit_preference/persona-driven/TOPIC.json`` for any topic present (the full benchmark has 20).
Explicit items carry the preference only (the model is given it as memory); implicit items carry the
conversation in which the preference is revealed as ``history``, with the gold preference kept for the judge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignment.errors import CdraError, FormatError
from alignment.methods import AlignmentItem

#: form name -> directory under the benchmark root
FORMS: dict[str, str] = {
    "explicit": "explicit_preference",
    "implicit-choice": "implicit_preference/choice-based",
    "implicit-persona": "implicit_preference/persona-driven",
}
_REQUIRED = ("preference", "question")


def list_topics(root: str | Path) -> list[str]:
    """Topics present in any form directory of the benchmark root, sorted."""
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


def load_records(root: str | Path, form: str, topic: str) -> list[dict[str, Any]]:
    """The raw records of one (form, topic) file, checked for the keys every form has."""
    if form not in FORMS:
        raise CdraError(f"unknown PrefEval form {form!r}: use {', '.join(FORMS)}")
    path = _check_root(root) / FORMS[form] / f"{topic}.json"
    if not path.is_file():
        raise FormatError(f"{path}: no such file (topic {topic!r} is missing for form {form})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise FormatError(f"{path}[{i}]: expected an object, got {type(record).__name__}")
        for key in _REQUIRED:
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise FormatError(f"{path}[{i}]: missing {key!r}")
    return data


def _choice_history(record: dict, where: str) -> list[dict[str, str]]:
    conv = record.get("conversation")
    keys = ("query", "assistant_options", "user_selection", "assistant_acknowledgment")
    if not isinstance(conv, dict) or any(not isinstance(conv.get(k), str) for k in keys):
        raise FormatError(f"{where}: choice-based record needs conversation.{{{', '.join(keys)}}}")
    return [
        {"role": "user", "content": conv["query"]},
        {"role": "assistant", "content": conv["assistant_options"]},
        {"role": "user", "content": conv["user_selection"]},
        {"role": "assistant", "content": conv["assistant_acknowledgment"]},
    ]


def _persona_history(record: dict, where: str) -> list[dict[str, str]]:
    conv = record.get("conversation")
    if not isinstance(conv, dict) or not conv:
        raise FormatError(f"{where}: persona-driven record needs a conversation {{\"0\": {{user, assistant}}, ...}}")
    try:
        order = sorted(conv, key=int)
    except ValueError:
        raise FormatError(f"{where}: conversation turns must be numbered \"0\", \"1\", ...") from None
    history: list[dict[str, str]] = []
    for key in order:
        turn = conv[key]
        if not isinstance(turn, dict) or not isinstance(turn.get("user"), str):
            raise FormatError(f"{where}: conversation[{key}] needs a user message")
        history.append({"role": "user", "content": turn["user"]})
        if isinstance(turn.get("assistant"), str) and turn["assistant"].strip():
            history.append({"role": "assistant", "content": turn["assistant"]})
    return history


def to_item(record: dict, form: str, topic: str, index: int, where: str = "") -> AlignmentItem:
    """One PrefEval record as an alignment test item (formats.md), with its origin kept as extra keys."""
    where = where or f"{FORMS[form]}/{topic}.json[{index}]"
    history: list[dict[str, str]] = []
    extras: dict[str, Any] = {"source": "prefeval", "form": form, "topic": topic, "index": index}
    if form == "implicit-choice":
        history = _choice_history(record, where)
        if isinstance(record.get("aligned_op"), str):
            extras["aligned_option"] = record["aligned_op"]
    elif form == "implicit-persona":
        history = _persona_history(record, where)
        if isinstance(record.get("persona"), str):
            extras["persona"] = record["persona"]
    return AlignmentItem(
        id=f"prefeval/{form}/{topic}/{index}", domain=topic, preference=record["preference"].strip(),
        query=record["question"].strip(), history=history, notes=(record.get("explanation") or None), **extras,
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
    for form in forms:
        if form not in FORMS:
            raise CdraError(f"unknown PrefEval form {form!r}: use {', '.join(FORMS)}")
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
            records = load_records(root, form, topic)
            items = [to_item(r, form, topic, i) for i, r in enumerate(records)]
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
