"""Which of a user's statements and past turns go into the prompt for one query.

Every statement is scored (cosine of the query to the statement and its quoted words, plus the everyday
situations both touch, memory/situations.py), ranked, and packed into the token budget: pinned
dimensions (health, privacy, answer style) first, then by relevance. The best ``min_statements`` are
always offered; beyond them a statement needs ``statement_floor``. No statement is dropped silently:
``Retrieval.considered`` says for each one its score and whether it went in or why not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from alignment.preferences import PreferenceStatement
from memory.config import MemoryConfig
from memory.embeddings import Embedder
from memory.situations import profiles


@dataclass
class Scored:
    """One statement's place in a retrieval: its score parts and what happened to it."""

    statement: PreferenceStatement
    score: float  # cosine + situation_weight * situation
    cosine: float
    situation: float  # how much the query and the statement share situations (0..1)
    pinned: bool
    rank: int = 0
    used: bool = False
    why: str = ""  # "pinned dimension", "top match", "relevant" | "below the floor", "over the token budget"

    def as_dict(self) -> dict:
        out = asdict(self)
        out["statement"] = {"id": self.statement.id, "text": self.statement.text, "stance": self.statement.stance,
                            "dimension": self.statement.dimension, "origin": self.statement.origin,
                            "confidence": self.statement.confidence, "applies_to": self.statement.applies_to}
        for key in ("score", "cosine", "situation"):
            out[key] = round(float(out[key]), 4)
        return out


@dataclass
class Retrieval:
    """What memory offers for one query: statements and past turns with their scores."""

    preferences: list[tuple[PreferenceStatement, float]] = field(default_factory=list)
    turns: list[tuple[dict, float]] = field(default_factory=list)
    tokens: int = 0
    considered: list[Scored] = field(default_factory=list)  # every statement scored, best first

    def preference_texts(self) -> list[str]:
        return [s.text for s, _ in self.preferences]

    def as_prompt_lines(self) -> list[str]:
        """Lines for the policy prompt: statements first (marked stated or inferred), then past turns."""
        return [preference_line(s) for s, _ in self.preferences] + [turn_line(t) for t, _ in self.turns]

    def left_out(self) -> list[Scored]:
        return [s for s in self.considered if not s.used]


#: an inferred statement below this confidence is marked as unsure in the prompt
UNSURE_BELOW = 0.6


def preference_line(statement: PreferenceStatement) -> str:
    """``Avoids meat (stated)``: where a statement came from, in two or three words (every prompt token is
    prefilled on every turn: the old "(inferred, confidence 0.7)" cost ~8 tokens a line)."""
    if statement.explicit:
        how = "stated"
    else:
        how = "inferred" if statement.confidence >= UNSURE_BELOW else "inferred, unsure"
    return f"{statement.text} ({how})"


def turn_line(turn: dict, max_chars: int = 300) -> str:
    def cut(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    return f"Earlier conversation: user said \"{cut(turn.get('user', ''))}\"; you replied \"{cut(turn.get('assistant', ''))}\""


def score_statements(query_vector: np.ndarray, statements: Sequence[PreferenceStatement], vectors: np.ndarray,
                     embedder: Embedder, config: MemoryConfig) -> list[Scored]:
    """Every statement scored for the query, best first (pinned dimensions ahead of the rest)."""
    if not statements:
        return []
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(statements), -1)
    cosines = vectors @ query_vector
    shared = profiles(vectors, embedder) @ profiles(query_vector, embedder)[0]
    pinned = set(config.pinned_dimensions)
    scored = [Scored(s, float(c + config.situation_weight * p), float(c), float(p), s.dimension in pinned)
              for s, c, p in zip(statements, cosines, shared)]
    scored.sort(key=lambda x: (x.pinned, x.score), reverse=True)
    for rank, item in enumerate(scored, 1):
        item.rank = rank
    return scored


def pack(scored: list[Scored], turns: Sequence[tuple[dict, float]], budget: int,
         count_tokens: Callable[[str], int], config: MemoryConfig) -> Retrieval:
    """Statements in rank order while they fit the budget (the best ``min_statements`` whatever their
    score, the rest if at least ``statement_floor``), then past turns by similarity in what is left."""
    out, used = Retrieval(considered=scored), 0
    offered = 0
    for item in scored:
        if not item.pinned and offered >= config.min_statements and item.score < config.statement_floor:
            item.why = f"below the floor ({item.score:.2f} < {config.statement_floor:.2f})"
            continue
        if not item.pinned:
            offered += 1
        cost = count_tokens(preference_line(item.statement))
        if used + cost > budget:
            item.why = f"over the token budget ({used} + {cost} > {budget})"
            continue
        used += cost
        item.used = True
        item.why = "pinned dimension" if item.pinned else ("top match" if offered <= config.min_statements
                                                           else "relevant")
        out.preferences.append((item.statement, item.score))
    for turn, score in sorted(turns, key=lambda t: t[1], reverse=True):
        cost = count_tokens(turn_line(turn))
        if used + cost <= budget:
            out.turns.append((turn, score))
            used += cost
    out.preferences.sort(key=lambda p: p[1], reverse=True)
    out.tokens = used
    return out
