"""PrefEval (Zhao et al., ICLR 2025) in its original layout -> typed records, and the importer that turns
them into the preference-inference test set of formats.md: (signals, post x, y_w, y_l, golden).

Each implicit record gives a test pair: the choice-based ``implicit_query`` with the option aligned with the
preference (y_w) against a conflicting option (y_l). The signals E come from the persona-driven record of
the same preference by default (the preference hidden in a multi-turn conversation: no leak of the pair),
or from the choice-based conversation in which the user picked an option (``signals_from="choice"``:
the user's pick is the aligned option itself, so it measures reading a choice, not generalizing from it).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ValidationError

from alignment.errors import CdraError, FormatError
from alignment.signals import PreferenceTestItem

#: form name -> directory under the benchmark root (names match training/prefeval_alignment.py)
FORMS: dict[str, str] = {
    "explicit": "explicit_preference",
    "implicit-choice": "implicit_preference/choice-based",
    "implicit-persona": "implicit_preference/persona-driven",
}
_ALIASES = {"choice": "implicit-choice", "choice-based": "implicit-choice", "persona": "implicit-persona",
            "persona-driven": "implicit-persona"}
SignalsFrom = Literal["persona", "choice", "both"]


class ExplicitRecord(BaseModel):
    topic: str
    index: int
    preference: str
    question: str
    explanation: str = ""


class ChoiceConversation(BaseModel):
    query: str
    assistant_options: str
    user_selection: str
    assistant_acknowledgment: str = ""


class ChoiceRecord(ExplicitRecord):
    implicit_query: str
    options: list[str]
    conversation: ChoiceConversation
    aligned_op: str

    @property
    def conflicting(self) -> list[str]:
        return [o for o in self.options if o.strip() != self.aligned_op.strip()]


class PersonaTurn(BaseModel):
    user: str
    assistant: str = ""


class PersonaRecord(ExplicitRecord):
    persona: str = ""
    turns: list[PersonaTurn]


PrefEvalRecord = Union[ExplicitRecord, ChoiceRecord, PersonaRecord]


def canonical_form(form: str) -> str:
    form = _ALIASES.get(form, form)
    if form not in FORMS:
        raise CdraError(f"unknown PrefEval form {form!r}: use {', '.join(FORMS)} (or choice, persona)")
    return form


def prefeval_topics(root: str | Path) -> list[str]:
    """Topics present in every form directory of the benchmark root, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CdraError(f"PrefEval root {root} does not exist: point it at PrefEval's benchmark_dataset/ directory")
    per_form = [{p.stem for p in (root / sub).glob("*.json")} for sub in FORMS.values()]
    topics = set.intersection(*per_form) if per_form else set()
    if not topics:
        raise CdraError(f"{root}: no TOPIC.json files in all of {', '.join(FORMS.values())}")
    return sorted(topics)


def _persona_turns(conversation: object, where: str) -> list[dict]:
    if not isinstance(conversation, dict) or not conversation:
        raise FormatError(f"{where}: `conversation` must be an object of numbered turns")
    try:
        keys = sorted(conversation, key=int)
    except ValueError:
        raise FormatError(f"{where}: persona conversation keys must be turn numbers") from None
    return [conversation[k] for k in keys]


def load_prefeval(root: str | Path, form: str, topic: str) -> list[PrefEvalRecord]:
    """The typed records of one (form, topic) file; a malformed record is a FormatError naming file[index]."""
    form = canonical_form(form)
    path = Path(root) / FORMS[form] / f"{topic}.json"
    if not path.is_file():
        raise FormatError(f"{path}: no such file (topic {topic!r}, form {form})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of records")
    model = {"explicit": ExplicitRecord, "implicit-choice": ChoiceRecord, "implicit-persona": PersonaRecord}[form]
    records: list[PrefEvalRecord] = []
    for i, raw in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(raw, dict):
            raise FormatError(f"{where}: expected an object")
        fields = {**raw, "topic": topic, "index": i}
        if form == "implicit-persona":
            fields["turns"] = _persona_turns(raw.get("conversation"), where)
        try:
            records.append(model.model_validate(fields))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise FormatError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return records


def _signals(choice: ChoiceRecord, persona: PersonaRecord | None, signals_from: SignalsFrom) -> list[dict]:
    base = f"prefeval-{choice.topic}-{choice.index}"
    out: list[dict] = []
    if signals_from in ("persona", "both") and persona is not None:
        out += [{"kind": "turn", "id": f"{base}-p{k}", "user": t.user, "assistant": t.assistant}
                for k, t in enumerate(persona.turns)]
    if signals_from in ("choice", "both"):
        conv = choice.conversation
        out += [{"kind": "turn", "id": f"{base}-c0", "user": conv.query, "assistant": conv.assistant_options},
                {"kind": "post", "id": f"{base}-c1", "text": conv.user_selection}]
    return out


def build_items(
    root: str | Path,
    topics: Sequence[str] | None = None,
    signals_from: SignalsFrom = "persona",
    limit_per_topic: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Test-set records (formats.md) from the implicit forms; ``y_l`` is one conflicting option per record,
    drawn with ``seed`` so the set is reproducible."""
    if signals_from not in ("persona", "choice", "both"):
        raise CdraError(f"signals_from must be persona, choice or both, not {signals_from!r}")
    items: list[dict] = []
    for topic in topics or prefeval_topics(root):
        choices = load_prefeval(root, "implicit-choice", topic)
        personas = load_prefeval(root, "implicit-persona", topic) if signals_from != "choice" else []
        by_key = {(p.preference, p.question): p for p in personas}
        taken = 0
        for choice in choices:
            assert isinstance(choice, ChoiceRecord)
            persona = by_key.get((choice.preference, choice.question))
            if (signals_from != "choice" and persona is None) or not choice.conflicting:
                continue
            rng = random.Random(f"{seed}/{topic}/{choice.index}")
            record = {"id": f"prefeval/{topic}/{choice.index}",
                      "signals": _signals(choice, persona, signals_from),  # type: ignore[arg-type]
                      "post": choice.implicit_query, "chosen": choice.aligned_op,
                      "rejected": rng.choice(choice.conflicting), "golden": choice.preference,
                      "topic": topic, "signals_from": signals_from}
            PreferenceTestItem.model_validate(record)  # the importer never writes what the reader rejects
            items.append(record)
            taken += 1
            if limit_per_topic is not None and taken >= limit_per_topic:
                break
    return items


def write_jsonl(records: Sequence[dict], out: str | Path) -> Path:
    """Write JSONL atomically (temporary file + rename): a crash never leaves half a test set."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a data file is readable like any other
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def import_preference_testset(
    root: str | Path,
    out: str | Path,
    topics: Sequence[str] | None = None,
    signals_from: SignalsFrom = "persona",
    limit_per_topic: int | None = None,
    seed: int = 0,
) -> int:
    """Build the preference-inference test set from a PrefEval root and write it to ``out``; returns the count."""
    items = build_items(root, topics, signals_from, limit_per_topic, seed)
    if not items:
        raise CdraError(f"{root}: no implicit PrefEval records to import")
    write_jsonl(items, out)
    return len(items)
