"""The step-judgment format shared by the DeepPref evaluator and Pers-GenPRM: pure string parsing."""

from __future__ import annotations

import pytest

from alignment.critique import ScoreParseError, format_step_judgment, parse_step_judgment


def test_format_and_parse_round_trip_and_last_score_wins():
    text = format_step_judgment("  Names the allergy.  ", -0.333)
    assert text == "Critique: Names the allergy.\nSCORE: -0.33"
    assert parse_step_judgment(text).score == -0.33
    restated = "Critique: Good. Earlier I said\nSCORE: 0.2\nbut on reflection\nScore: 0.9"
    assert parse_step_judgment(restated).score == 0.9


@pytest.mark.parametrize(
    ("text", "clamp", "expected"),
    [
        ("Critique: Names both constraints.\nSCORE: 0.8", True, ("Names both constraints.", 0.8, False)),
        ("Critique: Spot on.\nSCORE: 1.25", True, ("Spot on.", 1.0, True)),
        ("Critique: Harmful.\n**Score**: -1.5", True, ("Harmful.", -1.0, True)),
        ("Critique: Spot on.\nSCORE: 1.25", False, None),
        ("Critique: Way off the scale.\nSCORE: 3", True, None),
        ("SCORE: 1.2", True, None),  # no critique: unreadable, clamped or not
        ("A critique that never scores.", True, None),
    ],
)
def test_parse_clamps_only_small_overshoots(text, clamp, expected):
    if expected is None:
        with pytest.raises(ScoreParseError):
            parse_step_judgment(text, clamp)
        return
    judgment = parse_step_judgment(text, clamp)
    assert (judgment.critique, judgment.score, judgment.clamped) == expected
