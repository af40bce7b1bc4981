"""`cdra bench extraction`: how much of what users say about themselves the explicit extractor reads, on
PrefEval's own texts, and how often it reads a preference where there is none (questions, third person).

Coverage: explicit preference sentences read (and, for sentences with both a "dislike" and a "prefer"
clause, both stances read); persona conversations in which a statement read from the user's turns says
the conversation's hidden preference (MiniLM cosine to it >= ``match``). False positives: statements read
from PrefEval's questions and from the preference sentences rewritten in the third person.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignment.explicit_extraction import extract_explicit
from memory.embeddings import Embedder

_NEGATIVE = re.compile(r"\b(?:dislike|hate|avoid|can't stand|cannot stand|not a fan|aversion|refuse|don't|do not|never|"
                       r"not interested|steer clear|find \w+ (?:too|boring|tedious))\b", re.I)
_POSITIVE = re.compile(r"\b(?:prefer|love|enjoy|like|favou?r|rather|only|exclusively|fan of|passionate)\b", re.I)
_NEGATED = re.compile(r"(?:\bnot|n't|\bnever|\bno)\s+(?:\w+\s+){0,2}$|prefer\s+$", re.I)


def two_stances(sentence: str) -> bool:
    """A sentence with a dislike clause and a (not negated) preference clause: "I hate X and prefer Y"."""
    positive = [m for m in _POSITIVE.finditer(sentence) if not _NEGATED.search(sentence[: m.start()])
                and not re.match(r"(?:prefer|rather)\s+(?:not|to avoid)\b", sentence[m.start():], re.I)]
    return bool(_NEGATIVE.search(sentence)) and bool(positive)


_THIRD_PERSON = [(r"\bI'm\b", "she's"), (r"\bI am\b", "she is"), (r"\bI've\b", "she has"), (r"\bI'd\b", "she'd"),
                 (r"\bI'll\b", "she'll"), (r"\bI\b", "she"), (r"\bmyself\b", "herself"), (r"\bmy\b", "her"),
                 (r"\bme\b", "her"), (r"\bmine\b", "hers")]


def third_person(text: str) -> str:
    """A first-person preference reported about someone else ("Maria says she strictly avoids …")."""
    for pattern, repl in _THIRD_PERSON:
        text = re.sub(pattern, repl, text)
    return "Maria says " + text[0].lower() + text[1:] if text else text


@dataclass
class PersonaCase:
    preference: str
    user_turns: list[str]


@dataclass
class ExtractionReport:
    explicit_n: int
    explicit_read: int
    explicit_statements: float
    two_stance_n: int
    two_stance_both: int
    persona_n: int
    persona_found: int
    persona_statements: float
    choice_n: int
    choice_statements: float
    questions_n: int
    questions_fp: int
    third_n: int
    third_fp: int
    examples_fp: list[tuple[str, list[str]]]
    examples_persona_missed: list[str]


def measure_extraction(explicit: Sequence[str], persona: Sequence[PersonaCase], choice_selections: Sequence[str],
                       questions: Sequence[str], embedder: Embedder, match: float = 0.5) -> ExtractionReport:
    """Every text through ``extract_explicit``; persona matches judged by MiniLM cosine to the hidden preference."""
    read = [extract_explicit(s, "x") for s in explicit]
    two = [(s, r) for s, r in zip(explicit, read) if two_stances(s)]
    both = sum({st.stance for st in r} == {"prefers", "avoids"} for _, r in two)
    found, per_conv, missed = 0, [], []
    for case in persona:
        statements = [st for turn in case.user_turns for st in extract_explicit(turn, "x")]
        per_conv.append(len(statements))
        if statements:
            vectors = embedder.embed([case.preference] + [st.text for st in statements])
            if float(np.max(vectors[1:] @ vectors[0])) >= match:
                found += 1
                continue
        missed.append(case.preference)
    choice = [len(extract_explicit(t, "x")) for t in choice_selections]
    fps = [(q, [st.text for st in extract_explicit(q, "x")]) for q in questions]
    q_fp = [(q, t) for q, t in fps if t]
    thirds = [(third_person(s), [st.text for st in extract_explicit(third_person(s), "x")]) for s in explicit]
    t_fp = [(q, t) for q, t in thirds if t]
    return ExtractionReport(
        explicit_n=len(explicit), explicit_read=sum(bool(r) for r in read),
        explicit_statements=statistics.fmean(len(r) for r in read) if read else 0.0,
        two_stance_n=len(two), two_stance_both=both, persona_n=len(persona), persona_found=found,
        persona_statements=statistics.fmean(per_conv) if per_conv else 0.0, choice_n=len(choice),
        choice_statements=statistics.fmean(choice) if choice else 0.0, questions_n=len(questions),
        questions_fp=len(q_fp), third_n=len(thirds), third_fp=len(t_fp), examples_fp=(q_fp + t_fp)[:20],
        examples_persona_missed=missed[:20])


def format_extraction(r: ExtractionReport) -> str:
    def pct(a: int, b: int) -> str:
        return f"{a / b:.1%}" if b else "-"

    return "\n".join([
        "| measure | value |", "|---|---|",
        f"| explicit preference sentences read | {r.explicit_read}/{r.explicit_n} ({pct(r.explicit_read, r.explicit_n)}) |",
        f"| statements per explicit sentence | {r.explicit_statements:.2f} |",
        f"| sentences with a dislike and a preference clause: both stances read | "
        f"{r.two_stance_both}/{r.two_stance_n} ({pct(r.two_stance_both, r.two_stance_n)}) |",
        f"| persona conversations: hidden preference read from the user's turns | "
        f"{r.persona_found}/{r.persona_n} (**{pct(r.persona_found, r.persona_n)}**) |",
        f"| statements per persona conversation | {r.persona_statements:.2f} |",
        f"| statements per choice-based selection (\"X sounds good\") | {r.choice_statements:.2f} |",
        f"| false positives: questions with a statement | {r.questions_fp}/{r.questions_n} "
        f"(**{pct(r.questions_fp, r.questions_n)}**) |",
        f"| false positives: third-person rewrites with a statement | {r.third_fp}/{r.third_n} "
        f"(**{pct(r.third_fp, r.third_n)}**) |",
    ])
