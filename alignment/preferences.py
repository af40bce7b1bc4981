"""Preference statements and descriptions: the typed form of AlignXplore's description d, and the
rules that merge a new description into a stored one (newer, better-evidenced wins; a statement the
user edited or deleted is never brought back by inference)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

Stance = Literal["prefers", "avoids"]
Origin = Literal["explicit", "inferred", "user_edit"]

#: dimensions the prompts suggest; any other short word is accepted as well
DIMENSIONS = ("expertise", "informativeness", "style", "privacy", "risk", "health", "diet", "values",
              "interests", "tone", "format", "budget", "lifestyle")
#: how much an origin can override: the user's own edit beats what they said, which beats a guess
_ORIGIN_RANK = {"inferred": 0, "explicit": 1, "user_edit": 2}
_STANCE_WORD = {"prefers": "Prefers", "avoids": "Avoids"}
_STOPWORDS = frozenset("a an the to of for and or in on with my me i any all some be being is are".split())


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def normalize(text: str) -> str:
    """Lower-case words without punctuation or filler: the key statements are compared by."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(w for w in words if w not in _STOPWORDS)


def subject_similarity(a: str, b: str) -> float:
    """Jaccard overlap of the normalized words of two subjects (1.0 = the same subject)."""
    wa, wb = set(normalize(a).split()), set(normalize(b).split())
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / len(wa | wb)


def statement_id(stance: str, subject: str, dimension: str) -> str:
    """A stable id from what a statement says, so the same statement found twice keeps one id."""
    digest = hashlib.sha1(f"{normalize(subject)}|{dimension.lower()}|{stance}".encode()).hexdigest()[:12]
    return f"pref-{digest}"


class PreferenceStatement(BaseModel):
    """One thing the user prefers or avoids, with where it came from and how sure we are."""

    id: str = ""
    text: str = Field(..., min_length=1, description='a readable sentence, e.g. "Avoids animals (allergy)"')
    stance: Stance
    dimension: str = "general"
    subject: str = Field("", description="what the stance is about, e.g. 'concise answers'")
    evidence: list[str] = Field(default_factory=list, description="signal ids / turn ids")
    confidence: float = Field(0.5, ge=0.0, le=1.0)
    origin: Origin = "inferred"
    created: str = Field(default_factory=now_iso)
    updated: str = ""
    version: int = Field(1, ge=1)

    @field_validator("dimension")
    @classmethod
    def _dimension(cls, value: str) -> str:
        value = re.sub(r"\s+", "_", value.strip().lower())[:40]
        return value or "general"

    @model_validator(mode="after")
    def _fill(self) -> "PreferenceStatement":
        self.text = self.text.strip()
        if not self.subject:
            self.subject = re.sub(r"^(prefers|avoids)\s+", "", self.text, flags=re.I).strip() or self.text
        if not self.id:
            self.id = statement_id(self.stance, self.subject, self.dimension)
        if not self.updated:
            self.updated = self.created
        return self

    @classmethod
    def make(cls, stance: Stance, subject: str, dimension: str = "general", **fields: object) -> "PreferenceStatement":
        """A statement whose readable text is built from stance + subject ("Avoids animals")."""
        subject = subject.strip().rstrip(".")
        text = fields.pop("text", None) or f"{_STANCE_WORD[stance]} {subject}"
        return cls(text=str(text), stance=stance, subject=subject, dimension=dimension, **fields)  # type: ignore[arg-type]

    @property
    def explicit(self) -> bool:
        """Stated by the user (in chat or by editing), as opposed to inferred from behaviour."""
        return self.origin != "inferred"

    def as_line(self) -> str:
        """The structured one-line form the inference prompt asks the model for (and reads back)."""
        return f"- {self.stance} | {self.dimension} | {self.subject} | confidence {self.confidence:.2f}"


class PreferenceDescription(BaseModel):
    """AlignXplore's description d: a list of statements, plus the reasoning r that produced it."""

    statements: list[PreferenceStatement] = Field(default_factory=list)
    reasoning: str = ""

    def as_lines(self) -> list[str]:
        return [s.as_line() for s in self.statements]

    def as_text(self) -> str:
        """Readable text for a judge or a policy prompt: one sentence per statement."""
        return "\n".join(f"- {s.text}" for s in self.statements) if self.statements else "(no preferences known)"

    def capped(self, max_statements: int) -> "PreferenceDescription":
        """The strongest statements (explicit first, then by confidence, then recency): a bounded d_prev."""
        ranked = sorted(self.statements, key=lambda s: (_ORIGIN_RANK[s.origin], s.confidence, s.updated), reverse=True)
        return PreferenceDescription(statements=ranked[:max_statements], reasoning=self.reasoning)


# -- merging ---------------------------------------------------------------------------------------

def same_subject(a: PreferenceStatement, b: PreferenceStatement, threshold: float = 0.8) -> bool:
    return a.id == b.id or subject_similarity(a.subject, b.subject) >= threshold


def is_suppressed(statement: PreferenceStatement, suppressed: Iterable[str], threshold: float = 0.8) -> bool:
    """Does the statement restate something the user deleted or edited away?"""
    keys = (statement.text, statement.subject)
    return any(subject_similarity(k, s) >= threshold for s in suppressed for k in keys)


def wins(new: PreferenceStatement, old: PreferenceStatement) -> bool:
    """Conflict rule: does ``new`` replace ``old`` (same subject, opposite stance)?

    The user's own word outranks inference (user_edit > explicit > inferred); within the same origin
    the newer statement wins unless the older one is clearly better evidenced (more evidence *and*
    a confidence higher by more than 0.2).
    """
    rank_new, rank_old = _ORIGIN_RANK[new.origin], _ORIGIN_RANK[old.origin]
    if rank_new != rank_old:
        return rank_new > rank_old
    better_evidenced_old = len(old.evidence) > len(new.evidence) and old.confidence > new.confidence + 0.2
    if new.updated != old.updated:
        return new.updated > old.updated and not better_evidenced_old
    return not better_evidenced_old


def reinforce(old: PreferenceStatement, new: PreferenceStatement, when: str | None = None) -> PreferenceStatement:
    """The same statement seen again: union of evidence, confidence raised a little, next version."""
    evidence = list(dict.fromkeys([*old.evidence, *new.evidence]))
    confidence = min(1.0, max(old.confidence, new.confidence) + 0.05 * (len(evidence) > len(old.evidence)))
    origin = old.origin if _ORIGIN_RANK[old.origin] >= _ORIGIN_RANK[new.origin] else new.origin
    return old.model_copy(update={"evidence": evidence, "confidence": round(confidence, 3), "origin": origin,
                                  "updated": when or now_iso(), "version": old.version + 1})


def replace(old: PreferenceStatement, new: PreferenceStatement, when: str | None = None) -> PreferenceStatement:
    """``new`` wins a conflict: it takes over ``old``'s id and history (version + 1)."""
    return new.model_copy(update={"id": old.id, "created": old.created, "updated": when or now_iso(),
                                  "version": old.version + 1})


def merge_statement(
    existing: list[PreferenceStatement], new: PreferenceStatement, when: str | None = None
) -> tuple[list[PreferenceStatement], PreferenceStatement | None]:
    """Fold one new statement into a list; returns the list and the stored statement (None if it lost)."""
    for i, old in enumerate(existing):
        if not same_subject(old, new):
            continue
        if old.stance == new.stance:
            merged = reinforce(old, new, when)
        elif wins(new, old):
            merged = replace(old, new, when)
        else:
            return existing, None
        return [*existing[:i], merged, *existing[i + 1:]], merged
    return [*existing, new], new


def merge_descriptions(
    previous: PreferenceDescription | None,
    new: Iterable[PreferenceStatement],
    suppressed: Iterable[str] = (),
    when: str | None = None,
) -> PreferenceDescription:
    """d_prev + newly inferred statements -> d_new.

    Statements the model left out are kept (a small model forgets; it does not decide); a conflicting
    statement replaces an old one only if it wins (``wins``); inferred statements matching a
    suppressed text are dropped so a user's deletion stays deleted.
    """
    suppressed = list(suppressed)
    statements = list(previous.statements) if previous else []
    for statement in new:
        if statement.origin == "inferred" and is_suppressed(statement, suppressed):
            continue
        statements, _ = merge_statement(statements, statement, when)
    return PreferenceDescription(statements=statements, reasoning=previous.reasoning if previous else "")
