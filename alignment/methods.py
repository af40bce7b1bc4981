"""The methods under test and the alignment test set they answer (formats.md "Alignment test set").

A method is a prompt style (zero-shot, few-shot, CoT, or the trained policy's defensive prompt) plus
the model that answers (packaged base, a registered policy version, or a configured model; resolved by
the app). Answers are generated in batches and cached per (model, rendered prompt, sampling), so a
re-run of a report costs nothing. Memory conditions: ``with`` gives the model the item's preference as
retrieved lines (or its history as the conversation), ``without`` gives neither.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alignment.engines.base import Engine, EngineError, Message, SamplingParams
from alignment.errors import CdraError, FormatError
from alignment.records import json_records
from alignment.judges import CallStats, EvalCache, digest
from alignment.prompts import render
from alignment.prompts.methods import METHOD_PROMPTS
from alignment.prompts.policy import format_preferences

Style = Literal["zero-shot", "few-shot", "cot", "policy"]
Condition = Literal["with", "without"]
CONDITIONS: tuple[str, ...] = ("with", "without")

#: method name -> prompt style; trained methods answer with the defensive policy prompt
METHOD_STYLES: dict[str, Style] = {
    "zero-shot": "zero-shot", "few-shot": "few-shot", "cot": "cot",
    "sft": "policy", "rft": "policy", "grpo-outcome": "policy", "grpo-process": "policy", "cdra": "policy",
    "policy": "policy",
}
#: prompt baselines answer with the base model unless told otherwise
PROMPT_BASELINES = ("zero-shot", "few-shot", "cot")
#: CDRA Table 3: (process supervision, critique supervision) of each reward paradigm
SUPERVISION: dict[str, tuple[bool, bool]] = {
    "sft": (False, False), "rft": (False, False), "grpo-outcome": (False, False),
    "grpo-process": (True, False), "cdra": (True, True),
}


class AlignmentItem(BaseModel):
    """One test item: preference P, query q, optional history in which P must be found, optional notes."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(..., min_length=1)
    domain: str = "general"
    preference: str = Field(..., min_length=1)
    query: str = Field(..., min_length=1)
    history: list[dict[str, str]] = Field(default_factory=list)
    notes: str | None = None

    @field_validator("history")
    @classmethod
    def _roles(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, m in enumerate(value):
            if m.get("role") not in ("user", "assistant", "system") or not isinstance(m.get("content"), str):
                raise ValueError(f"history[{i}] needs role user|assistant|system and a string content")
        return value

    @property
    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def read_alignment_testset(path: str | Path) -> list[AlignmentItem]:
    """Every item of a JSONL file or datasets directory; a bad line raises FormatError naming file:line."""
    items: list[AlignmentItem] = []
    seen: dict[str, str] = {}
    for where, obj in json_records(Path(path)):
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            item = AlignmentItem.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "record"
            raise FormatError(f"{where}: {loc}: {first['msg']}") from None
        if item.id in seen:
            raise FormatError(f"{where}: duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = where
        items.append(item)
    if not items:
        raise FormatError(f"{path}: the test set is empty")
    return items


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> Path:
    """Write JSON lines through a temporary file and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """``name`` labels the table row; ``style`` picks the prompt; ``source`` says which model answers:
    ``base`` (the packaged/configured base model), ``serving`` (the role's serving version), a registry
    version such as ``policy-0003``, or a local model/adapter directory."""

    name: str
    style: Style
    source: str | None = None

    @property
    def label(self) -> str:
        return self.name if not self.source or self.source == "base" else f"{self.name} ({self.source})"


def parse_methods(text: str) -> list[MethodSpec]:
    """``zero-shot,cot,cdra=policy-0003,sft=/models/sft`` -> specs. A trained method name that is not
    known may be given with an explicit ``:style`` suffix, e.g. ``mine:policy=policy-0007``."""
    specs: list[MethodSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, source = part.partition("=")
        name, _, style = name.strip().partition(":")
        style = style or METHOD_STYLES.get(name, "")
        if style not in METHOD_PROMPTS:
            raise CdraError(f"unknown method {name!r}: use one of {', '.join(METHOD_STYLES)} "
                            "(or NAME:STYLE=SOURCE with style zero-shot|few-shot|cot|policy)")
        specs.append(MethodSpec(name, style, source.strip() or None))  # type: ignore[arg-type]
    if not specs:
        raise CdraError("no methods given: e.g. --methods zero-shot,cot,cdra=policy-0003")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise CdraError(f"a method is listed twice: {', '.join(labels)}")
    return specs


@dataclass
class ItemContext:
    """What the model sees besides the query: retrieved preference lines and the conversation so far."""

    preferences: list[str] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)


def preference_lines(preference: str) -> list[str]:
    """P as the statement list the app shows the policy (the same split the RFT data uses)."""
    lines = [line.strip().lstrip("-*• ").strip() for line in preference.splitlines()]
    return [line for line in lines if line]


def prompt_context(item: AlignmentItem, condition: Condition) -> ItemContext:
    """``with``: an explicit item's preference as retrieved lines, an implicit item's history as the
    conversation (the preference must be found there); ``without``: the bare query."""
    if condition == "without":
        return ItemContext()
    if item.history:
        return ItemContext(history=[{"role": m["role"], "content": m["content"]} for m in item.history])  # type: ignore[misc]
    return ItemContext(preferences=preference_lines(item.preference))


def conversation(style: Style, context: ItemContext, query: str) -> list[Message]:
    """The rendered prompt of a method for one query."""
    return render(METHOD_PROMPTS[style], preferences=format_preferences(context.preferences),
                  history=[dict(m) for m in context.history],
                  query=query)


_ANSWER_LABEL = re.compile(r"^[ \t>*#-]*\**\s*(?:final\s+)?answer\s*\**\s*[:.-]\**[ \t]*", re.IGNORECASE | re.MULTILINE)


def visible_reply(text: str) -> str:
    """What the user would read: the text after the last ``Answer:`` label, else the whole response."""
    matches = list(_ANSWER_LABEL.finditer(text))
    last = matches[-1] if matches else None
    reply = text[last.end():].strip() if last else text.strip()
    return reply or text.strip()


# -- cached, batched generation --------------------------------------------------------------------


@dataclass
class Generation:
    text: str | None
    error: str | None = None
    cached: bool = False


def cached_generate(
    conversations: Sequence[Sequence[Message]],
    params: SamplingParams,
    *,
    model_key: str,
    engine: Callable[[], Engine],
    cache: EvalCache | None,
    stats: CallStats,
    metas: Sequence[dict] | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate one completion per conversation through the cache (key: model, prompt, sampling).

    ``engine`` is called only on a cache miss, so a fully cached run never loads a model. A prompt the
    engine rejects (too long for the context window) becomes that item's error; the rest go on.
    """
    metas = list(metas) if metas is not None else [{} for _ in conversations]
    sampling = {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "seed": params.seed, "stop": list(params.stop),
                **({"format": params.format.name} if params.format is not None else {})}
    keys = [digest({"model": model_key, "messages": list(c), "sampling": sampling}) for c in conversations]
    found = cache.get_many(keys) if cache is not None else {}
    out: list[Generation | None] = [None] * len(conversations)
    todo = []
    for i, key in enumerate(keys):
        if key in found:
            out[i] = Generation(found[key]["text"], cached=True)
            stats.cache_hits += 1
        else:
            todo.append(i)
    if progress and len(todo) < len(keys):
        progress(len(keys) - len(todo))
    todo.sort(key=lambda i: sum(len(m["content"]) for m in conversations[i]))  # less padding per batch
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        texts = _generate_isolated(engine(), [conversations[i] for i in chunk], params, stats)
        rows = []
        for i, text in zip(chunk, texts):
            if isinstance(text, EngineError):
                out[i] = Generation(None, error=str(text))
            else:
                out[i] = Generation(text)
                rows.append((keys[i], "generation", {"text": text}, {"model": model_key, **metas[i]}))
        if cache is not None and rows:
            cache.put_many(rows)
        if progress:
            progress(len(chunk))
    return out  # type: ignore[return-value]


def _generate_isolated(engine: Engine, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                       stats: CallStats) -> list[str | EngineError]:
    try:
        stats.generate_calls += 1
        result = engine.generate([list(c) for c in conversations], params)
        stats.generated += len(result)
        return [r[0].text for r in result]
    except EngineError as exc:
        if len(conversations) == 1:
            return [exc]
    texts: list[str | EngineError] = []
    for c in conversations:
        texts.extend(_generate_isolated(engine, [c], params, stats))
    return texts
