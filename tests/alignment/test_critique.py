"""The step-judgment format shared by the DeepPref evaluator and Pers-GenPRM: its strict reader, the lenient
reading kept for unconstrained engines, and the training target text, on strings. That constrained decoding
accepts the training target token by token is checked in tests/training/test_deeppref_formats.py."""

from __future__ import annotations

import pytest

from alignment.critique import ScoreParseError, StepJudgment, format_step_judgment, parse_step_judgment
from alignment.formats import step_judgment


def test_format_writes_what_the_strict_reader_reads():
    text = format_step_judgment("  Names the allergy.  ", -0.333)
    assert text == "Critique: Names the allergy.\nSCORE: -0.33"
    assert parse_step_judgment(text) == StepJudgment("Names the allergy.", -0.33)
    # the grammar's score is one line, two decimals, in [-1, 1]: the target is written exactly that way
    assert format_step_judgment("Spot on.", 1.0).endswith("\nSCORE: 1.00")
    assert format_step_judgment("Harmful.", -1.7).endswith("\nSCORE: -1.00")  # clipped, as the grammar allows
    assert format_step_judgment("Neutral.", -0.001).endswith("\nSCORE: 0.00")
    assert format_step_judgment("First line.\nSecond\tline.\x07", 0.5) == "Critique: First line. Second line.\nSCORE: 0.50"
    with pytest.raises(ValueError, match="needs a critique"):
        format_step_judgment(" \n ", 0.5)


@pytest.mark.parametrize("score", [-1.0, -0.9, -0.5, -0.05, 0.0, 0.33, 0.5, 0.99, 1.0])
def test_every_target_score_matches_the_grammars_number(score):
    fmt = step_judgment(96)
    assert fmt.parse(format_step_judgment("A critique.", score)).score == pytest.approx(round(score, 2))


@pytest.mark.parametrize(
    "text",
    [
        "Critique: Spot on.\nSCORE: 1.25",  # beyond the scale: never clamped
        "Critique: Harmful.\nSCORE: -1.5",
        "Critique: Way off the scale.\nSCORE: 3",
        "Critique: Too precise.\nSCORE: 0.125",
        "SCORE: 0.2",  # no critique
        "Critique: \nSCORE: 0.2",
        "A critique that never scores.",
        "Critique: Good.\nSCORE: 0.2\nbut on reflection\nScore: 0.9",  # a restated score is not the format
        "**Critique:** Fine.\n**SCORE:** 0.5",
        "Critique: Fine.\nSCORE: 0.5 because it is fine",
        "",
    ],
)
def test_strict_reader_rejects_what_the_grammar_cannot_write(text):
    with pytest.raises(ScoreParseError):
        parse_step_judgment(text)
    with pytest.raises(ScoreParseError):
        parse_step_judgment(text, lenient=True)  # lenient reading changes spacing and case only


def test_lenient_reading_is_marked_repaired():
    text = "critique:   Names both constraints.\n\nscore:0.8"
    with pytest.raises(ScoreParseError):
        parse_step_judgment(text)
    assert parse_step_judgment(text, lenient=True) == StepJudgment("Names both constraints.", 0.8)
    reading = step_judgment(96).read(text, lenient=True)
    assert reading.repaired and reading.value.score == 0.8
    assert not step_judgment(96).read("Critique: ok.\nSCORE: -0.5", lenient=True).repaired
