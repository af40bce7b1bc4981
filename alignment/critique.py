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


def parse_step_judgment(text: str) -> StepJudgment:
    """Critique and score from one judgment; the last SCORE line wins (models restate it)."""
    matches = list(_SCORE.finditer(text))
    if not matches:
        raise ScoreParseError(f"no 'SCORE: x' line in judgment: {text[-200:]!r}")
    last = matches[-1]
    value = float(last.group(1))
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise ScoreParseError(f"score {value} outside [{SCORE_MIN}, {SCORE_MAX}]")
    critique = _CRITIQUE_LABEL.sub("", text[: last.start()].strip()).strip()
    if not critique:
        raise ScoreParseError("the judgment has a score but no critique before it")
    return StepJudgment(critique=critique, score=value)


def format_step_judgment(critique: str, score: float) -> str:
    """The training target of Pers-GenPRM: critique first, then the score it grounds (Eq. 2)."""
    return f"Critique: {critique.strip()}\nSCORE: {score:.2f}"
