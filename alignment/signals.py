"""Behavioral signals (formats.md): typed models, and readers that validate a whole file before anyone
writes anything, raising FormatError with file:line for the first bad line.

Readers accept JSON Lines or a Hugging Face ``datasets`` directory (``save_to_disk``) of the same records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from alignment.errors import FormatError
from alignment.records import json_records


class _SignalBase(BaseModel):
    # unknown keys are kept (and ignored), as formats.md requires
    model_config = ConfigDict(extra="allow")

    id: str = ""
    time: str | None = None

    @model_validator(mode="after")
    def _stable_id(self) -> "_SignalBase":
        """Evidence refers to signals by id; a content hash keeps ids stable across files and runs."""
        if not self.id:
            payload = json.dumps(self.content(), sort_keys=True, ensure_ascii=False)
            self.id = "sig-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
        return self

    def content(self) -> dict[str, Any]:
        return self.model_dump(exclude={"id", "time"}, exclude_none=True)

    def texts(self) -> list[str]:
        """The user-authored or user-judged texts, for explicit extraction and embeddings."""
        return []


class ComparisonSignal(_SignalBase):
    kind: Literal["comparison"]
    post: str
    chosen: str
    rejected: str

    def texts(self) -> list[str]:
        return [self.post]  # the user's own post; the replies were written by others


class PostSignal(_SignalBase):
    kind: Literal["post"]
    text: str

    def texts(self) -> list[str]:
        return [self.text]


class TurnSignal(_SignalBase):
    kind: Literal["turn"]
    user: str
    assistant: str = ""
    feedback: Literal["up", "down"] | None = None
    correction: str | None = None

    def texts(self) -> list[str]:
        return [self.user] + ([self.correction] if self.correction else [])


class StatementSignal(_SignalBase):
    kind: Literal["statement"]
    text: str

    def texts(self) -> list[str]:
        return [self.text]


Signal = Annotated[Union[ComparisonSignal, PostSignal, TurnSignal, StatementSignal], Field(discriminator="kind")]
_SIGNAL = TypeAdapter(Signal)


class PreferenceTestItem(BaseModel):
    """One line of the preference-inference test set: signals E, a new post x, y_w > y_l, optional persona.

    ``post``/``chosen``/``rejected`` are optional together: an item with only a gold preference (``golden``)
    measures recovery, not Acc_jud / Acc_gen (docs/EVALUATION.md)."""

    model_config = ConfigDict(extra="allow")

    id: str
    signals: list[Signal]
    post: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    def texts(self) -> list[str]:
        return [self.post] if self.post else []  # the user's own post; the replies were written by others
    golden: str | None = None

    @model_validator(mode="after")
    def _comparison_or_golden(self) -> "PreferenceTestItem":
        given = [f for f in ("post", "chosen", "rejected") if getattr(self, f)]
        if given and len(given) < 3:
            missing = sorted({"post", "chosen", "rejected"} - set(given))
            raise ValueError(f"a comparison needs post, chosen and rejected (missing {', '.join(missing)})")
        if not given and not self.golden:
            raise ValueError("an item needs a comparison (post, chosen, rejected) or a golden preference")
        return self

    @property
    def has_comparison(self) -> bool:
        return bool(self.post and self.chosen and self.rejected)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    tags = ("comparison", "post", "turn", "statement")
    loc = list(first.get("loc", ()))
    # a discriminated union puts the tag into the path: ('signals', 0, 'turn', 'user') -> signals.0.user
    kept = [p for i, p in enumerate(loc) if not (p in tags and (i == 0 or isinstance(loc[i - 1], int)))]
    where = ".".join(str(p) for p in kept)
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        prefix = f"{where}: " if where else ""
        return f"{prefix}`kind` must be one of {', '.join(tags)}"
    message = first.get("msg", "invalid")
    return f"{where}: {message}" if where else message


def parse_signal(obj: Any, where: str = "signal") -> Signal:
    """One signal from a decoded JSON object; ``where`` (file:line) goes into the error message."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    try:
        return _SIGNAL.validate_python(obj)
    except ValidationError as exc:
        raise FormatError(f"{where}: {_describe(exc)}") from None


def read_signals(path: str | Path) -> list[Signal]:
    """Every signal of a file, validated; the first bad line raises FormatError and nothing is returned."""
    signals = [parse_signal(obj, where) for where, obj in json_records(Path(path))]
    if not signals:
        raise FormatError(f"{path}: no signals in the file")
    return signals


def read_testset(path: str | Path) -> list[PreferenceTestItem]:
    """The preference-inference test set (formats.md), validated line by line."""
    items = []
    for where, obj in json_records(Path(path)):
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            items.append(PreferenceTestItem.model_validate(obj))
        except ValidationError as exc:
            raise FormatError(f"{where}: {_describe(exc)}") from None
    if not items:
        raise FormatError(f"{path}: the test set is empty")
    return items


def signal_to_json(signal: Signal) -> dict[str, Any]:
    return signal.model_dump(exclude_none=True)
