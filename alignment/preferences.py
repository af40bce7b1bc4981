"""Preference statements and descriptions: the typed form of AlignXplore's description d, and the
rules that merge a new description into a stored one (the same statement = the same subject, never
"similar wording"; newer, better-evidenced wins; every merge is kept in the statement's history; a
statement the user edited or deleted is never brought back by inference)."""

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
#: words that do not change what a subject is about ("really spicy food" = "spicy food")
_FILLERS = _STOPWORDS | frozenset("really very strongly strictly always usually generally kind kinds type types sort "
                                  "sorts form forms stuff things thing just quite so too".split())
#: how many quoted evidences and history entries a statement keeps (the evidence ids are all kept)
MAX_SOURCES = 20
MAX_HISTORY = 30


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


def _stem(word: str) -> str:
    """A light, deterministic stemmer for plurals and -ing/-ed ("movies" = "movie", "hiking" = "hike")."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "i"
    elif len(word) > 4 and (word.endswith(("ches", "shes")) or word.endswith("es") and word[-3] in "sxz"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith(("ing", "ed")):
        word = word[:-3] if word.endswith("ing") else word[:-2]
        if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "ls":
            word = word[:-1]  # "swimming" -> "swim"
    if len(word) > 3 and word.endswith("y"):
        word = word[:-1] + "i"
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def subject_key(subject: str) -> frozenset[str]:
    """What a subject is about, as a set of stemmed content words: equal keys = the same subject.

    "mountain hiking" = "hiking in the mountains", "peanut (allergy)" = "peanuts (allergy)"; but
    "penicillin (allergy)" != "amoxicillin (allergy)", however close their embeddings are.
    """
    return frozenset(_stem(w) for w in re.findall(r"[a-z0-9]+", subject.lower()) if w not in _FILLERS)


def statement_id(stance: str, subject: str, dimension: str) -> str:
    """A stable id from what a statement says, so the same statement found twice keeps one id."""
    digest = hashlib.sha1(f"{normalize(subject)}|{dimension.lower()}|{stance}".encode()).hexdigest()[:12]
    return f"pref-{digest}"


class Evidence(BaseModel):
    """Why a statement is believed: the user's own words (or the signal's text) and when.

    Explicit statements quote the sentence they were read from; inferred ones name their signals
    (with the signal's text where known) and carry the inference's reasoning.
    """

    id: str = Field(..., description="the turn / signal id")
    quote: str = Field("", description="the user's words, or the signal's text (cut to 300 characters)")
    time: str = ""
    origin: str = Field("", description="explicit | inferred | user_edit")
    reasoning: str = Field("", description="inferred: the reasoning that led from the signals to the statement")

    @field_validator("quote", "reasoning")
    @classmethod
    def _cut(cls, value: str) -> str:
        value = " ".join(value.split())
        return value if len(value) <= 300 else value[:299] + "…"


class HistoryEntry(BaseModel):
    """One change of a statement: created, reinforced (seen again), merged (reworded), replaced, edited."""

    time: str
    action: Literal["created", "reinforced", "merged", "replaced", "edited"]
    text: str = Field(..., description="the statement's text after the change")
    previous: str = Field("", description="the text before, when it changed")
    evidence: list[str] = Field(default_factory=list, description="the evidence ids that came with the change")
    origin: str = ""


class PreferenceStatement(BaseModel):
    """One thing the user prefers or avoids, with where it came from and how sure we are.

    ``sources`` (quoted evidence), ``history`` and ``applies_to`` (situations the statement bears on,
    written when it is stored) are optional: statements stored before they existed read as empty.
    """

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
    sources: list[Evidence] = Field(default_factory=list, description="quoted evidence, newest last")
    history: list[HistoryEntry] = Field(default_factory=list, description="every change, oldest first")
    applies_to: list[str] = Field(default_factory=list, description="situations it bears on (memory/situations.py)")

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

def same_subject(a: PreferenceStatement, b: PreferenceStatement) -> bool:
    """The same thing is talked about (the stance may differ): same id, or the same subject key."""
    if a.id == b.id:
        return True
    key = subject_key(a.subject)
    return bool(key) and key == subject_key(b.subject)


#: a subject that names no preference: "no value", "no preference", "none", "n/a", "nothing mentioned"
_NO_SUBJECT = re.compile(
    r"^(?:no|none|nothing|n/?a|unknown|unclear)(?:\s+(?:\w+\s+)?(?:values?|preferences?|information|info|signals?"
    r"|content|data|mentioned|stated|given))?[.!]?$", re.IGNORECASE)


def states_nothing(subject: str) -> bool:
    """Whether a subject is a placeholder ("no value", "no preference") rather than something the user prefers."""
    return bool(_NO_SUBJECT.match(subject.strip()))


#: a subject that negates its own stance: "prefers | avoiding crowds" says "avoids | crowds"
_NEGATED_SUBJECT = re.compile(
    r"^(?:avoiding|to avoid|not having|not to|not|no longer|never|staying away from|steering clear of)\s+(?=\S)",
    re.IGNORECASE)


def plain_stance(stance: str, subject: str) -> tuple[str, str]:
    """``(stance, subject)`` with the negation moved into the stance: "prefers | avoiding films with violence" is
    "avoids | films with violence". Without it the memory holds two subjects for one preference, and the
    conflict rule ("avoids X" against "prefers X") never sees that they meet."""
    found = _NEGATED_SUBJECT.match(subject.strip())
    if stance == "prefers" and found:
        return "avoids", subject.strip()[found.end():]
    return stance, subject


def coherent(statements: Iterable[PreferenceStatement]) -> list[PreferenceStatement]:
    """One output's statements as a description can hold them: placeholders dropped, and of statements on the
    same subject only the first (a model that writes "avoids X" and then "prefers X" has said nothing more by
    the second; the first is the one it chose when nothing was written yet)."""
    kept: list[PreferenceStatement] = []
    for statement in statements:
        if states_nothing(statement.subject) or any(same_subject(statement, k) for k in kept):
            continue
        kept.append(statement)
    return kept


def same_statement(a: PreferenceStatement, b: PreferenceStatement) -> bool:
    """The same statement: the same subject *and* the same stance (never "similar embeddings")."""
    return a.stance == b.stance and same_subject(a, b)


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


def _joined_sources(*lists: list[Evidence]) -> list[Evidence]:
    """Both evidences of a merge, oldest first; the same words from the same turn once."""
    seen: dict[tuple[str, str, str], Evidence] = {}
    for source in (x for sources in lists for x in sources):
        seen.setdefault((source.id, source.quote, source.reasoning), source)
    return list(seen.values())[-MAX_SOURCES:]


def _history(statement: PreferenceStatement) -> list[HistoryEntry]:
    """The statement's history; a statement stored before histories existed starts with its creation."""
    if statement.history:
        return list(statement.history)
    return [HistoryEntry(time=statement.created, action="created", text=statement.text,
                         evidence=list(statement.evidence), origin=statement.origin)]


def reinforce(old: PreferenceStatement, new: PreferenceStatement, when: str | None = None) -> PreferenceStatement:
    """The same statement seen again: both evidences kept, the newer wording (unless it is a guess and
    the stored one is the user's), confidence raised a little, next version, the change in the history."""
    when = when or now_iso()
    evidence = list(dict.fromkeys([*old.evidence, *new.evidence]))
    confidence = min(1.0, max(old.confidence, new.confidence) + 0.05 * (len(evidence) > len(old.evidence)))
    new_ranks = _ORIGIN_RANK[new.origin] >= _ORIGIN_RANK[old.origin]
    origin = new.origin if new_ranks else old.origin
    text, subject = (new.text, new.subject) if new_ranks else (old.text, old.subject)
    entry = HistoryEntry(time=when, action="merged" if text != old.text else "reinforced", text=text,
                         previous=old.text if text != old.text else "",
                         evidence=[e for e in new.evidence if e not in old.evidence], origin=new.origin)
    return old.model_copy(update={
        "text": text, "subject": subject, "evidence": evidence, "confidence": round(confidence, 3), "origin": origin,
        "updated": when, "version": old.version + 1, "sources": _joined_sources(old.sources, new.sources),
        "history": [*_history(old), entry][-MAX_HISTORY:], "applies_to": new.applies_to or old.applies_to})


def replace(old: PreferenceStatement, new: PreferenceStatement, when: str | None = None) -> PreferenceStatement:
    """``new`` wins a conflict: it takes over ``old``'s id and history (version + 1); the old text and
    its evidence stay readable in the history."""
    when = when or now_iso()
    entry = HistoryEntry(time=when, action="replaced", text=new.text, previous=old.text,
                         evidence=list(new.evidence), origin=new.origin)
    return new.model_copy(update={"id": old.id, "created": old.created, "updated": when,
                                  "version": old.version + 1, "history": [*_history(old), entry][-MAX_HISTORY:]})


def edited(old: PreferenceStatement, new: PreferenceStatement, when: str | None = None) -> PreferenceStatement:
    """``new`` is the user's correction of ``old`` (origin ``user_edit``): it keeps ``old``'s id, evidence
    and history, and the edit is recorded (quoted, like anything else the user said)."""
    when = when or now_iso()
    entry = HistoryEntry(time=when, action="edited", text=new.text, previous=old.text if new.text != old.text else "",
                         evidence=["user-edit"], origin="user_edit")
    source = Evidence(id="user-edit", quote=new.text, time=when, origin="user_edit")
    return new.model_copy(update={"id": old.id, "created": old.created, "updated": when, "version": old.version + 1,
                                  "origin": "user_edit", "evidence": list(old.evidence),
                                  "sources": [s for s in old.sources if s.id != "user-edit"][-(MAX_SOURCES - 1):]
                                  + [source],
                                  "history": [*_history(old), entry][-MAX_HISTORY:]})


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


def with_inference_sources(statements: Iterable[PreferenceStatement], signals: Iterable[object],
                           reasoning: str = "") -> list[PreferenceStatement]:
    """Inferred statements with readable evidence: each cited signal's text (the user's words) and the
    reasoning that led to them (a signal is anything with ``id``, ``texts()`` and ``time``)."""
    by_id = {getattr(s, "id", ""): s for s in signals}
    out = []
    for statement in statements:
        sources = []
        for evidence_id in statement.evidence:
            signal = by_id.get(evidence_id)
            if signal is not None:
                text = " / ".join(t for t in signal.texts() if t)  # type: ignore[attr-defined]
                sources.append(Evidence(id=evidence_id, quote=text, time=getattr(signal, "time", None) or "",
                                        origin="inferred"))
        if reasoning:
            sources.append(Evidence(id="reasoning", reasoning=reasoning, time=statement.created, origin="inferred"))
        out.append(statement.model_copy(update={"sources": _joined_sources(statement.sources, sources)}))
    return out
