"""Step critiques: the text-then-score format written by the DeepPref evaluator and by Pers-GenPRM.

Each step's judgment is a critique c^j followed by a final ``SCORE: x`` line with x in [-1, 1]
(the authors' public setup). A score that cannot be read is an error the caller counts and logs,
never a silent 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alignment.errors import CdraError

SCORE_MIN, SCORE_MAX = -1.0, 1.0
_SCORE = re.compile(
    r"(?:^|\n)[ \t>*_#-]*score[ \t*_]*[:=][ \t*_]*\[?([+-]?(?:\d+(?:\.\d*)?|\.\d+))\]?(?:\s*/\s*1(?:\.0+)?)?",
    re.IGNORECASE,
)
_CRITIQUE_LABEL = re.compile(r"^[ \t*_#-]*critique[ \t*_]*[:=][ \t*_]*", re.IGNORECASE)


class ScoreParseError(CdraError, ValueError):
    """The judgment has no readable ``SCORE: x`` line in [-1, 1]."""


@dataclass(frozen=True)
class StepJudgment:
    critique: str
    score: float
    clamped: bool = False  # the reply overshot the scale (1 < |x| < 2) and was read as the nearest bound


def parse_step_judgment(text: str, clamp_overshoot: bool = False) -> StepJudgment:
    """Critique and score from one judgment; the last SCORE line wins (models restate it).

    ``clamp_overshoot`` reads a score just outside the scale (``SCORE: 1.25``, a small evaluator's
    "better than excellent") as the nearest bound and marks it ``clamped``, so the caller can count it;
    anything further out stays unreadable.
    """
    matches = list(_SCORE.finditer(text))
    if not matches:
        raise ScoreParseError(f"no 'SCORE: x' line in judgment: {text[-200:]!r}")
    last = matches[-1]
    value = float(last.group(1))
    clamped = False
    if not SCORE_MIN <= value <= SCORE_MAX:
        if not (clamp_overshoot and abs(value) < 2 * SCORE_MAX):
            raise ScoreParseError(f"score {value} outside [{SCORE_MIN}, {SCORE_MAX}]")
        value, clamped = min(max(value, SCORE_MIN), SCORE_MAX), True
    critique = _CRITIQUE_LABEL.sub("", text[: last.start()].strip()).strip()
    if not critique:
        raise ScoreParseError("the judgment has a score but no critique before it")
    return StepJudgment(critique=critique, score=value, clamped=clamped)


def format_step_judgment(critique: str, score: float) -> str:
    """The training target of Pers-GenPRM: critique first, then the score it grounds (Eq. 2)."""
    return f"Critique: {critique.strip()}\nSCORE: {score:.2f}"
