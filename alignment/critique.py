"""Step critiques: the ``Critique: c`` / ``SCORE: x`` judgment written by the DeepPref evaluator and Pers-GenPRM.

The format is declared once (``alignment.formats.step_judgment``: one critique line, then x in [-1, 1] with at
most two decimals); a constrained engine can only write it. ``parse_step_judgment`` is its strict reader and
``format_step_judgment`` writes exactly what the grammar produces (Pers-GenPRM's SFT target), so training targets
and constrained outputs agree. A judgment that cannot be read is an error the caller counts, never a silent 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignment.formats import FormatParseError, Reading, step_judgment

if TYPE_CHECKING:
    from alignment.engines.base import Engine
    from alignment.formats import OutputFormat

SCORE_MIN, SCORE_MAX = -1.0, 1.0
#: the critique's token bound where a caller names none (the stage configs carry their own)
DEFAULT_CRITIQUE_TOKENS = 96
#: a judgment that is not in the step-judgment format (the name kept from before formats were declared)
ScoreParseError = FormatParseError
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class StepJudgment:
    critique: str
    score: float


def parse_step_judgment(text: str, *, lenient: bool = False) -> StepJudgment:
    """The strict reader: exactly ``Critique: c`` then ``SCORE: x`` (x in [-1, 1]); raises ``ScoreParseError``.

    ``lenient`` is for an unconstrained model (any whitespace, any case of the labels); it never clamps an
    out-of-range score or guesses at a missing one. The critique's token bound does not change what reads.
    """
    return step_judgment(DEFAULT_CRITIQUE_TOKENS).read(text, lenient=lenient).value


def read_step_judgment(engine: Engine, fmt: OutputFormat, text: str) -> Reading[StepJudgment] | None:
    """``engine``'s output read as ``fmt`` (strictly where the engine enforced it, else leniently and marked
    ``repaired``), or ``None`` when it is not a judgment."""
    try:
        return engine.read_format(fmt, text)
    except FormatParseError:
        return None


def format_step_judgment(critique: str, score: float) -> str:
    """The training target of Pers-GenPRM: critique first, then the score it grounds (Eq. 2), byte for byte what
    the step-judgment grammar writes (one critique line, the score with two decimals, clipped to [-1, 1])."""
    line = " ".join(_CONTROL.sub(" ", critique).split())
    if not line:
        raise ValueError("a step judgment needs a critique")
    value = f"{min(max(float(score), SCORE_MIN), SCORE_MAX):.2f}"
    return f"Critique: {line}\nSCORE: {'0.00' if value == '-0.00' else value}"
