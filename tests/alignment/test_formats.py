"""The format declarations themselves, on strings: every grammar compiles, each reader accepts exactly what its
grammar writes, numbers stay in range, and a broken declaration fails when it is made, naming the format."""

from __future__ import annotations

import json
import re

import pytest

from alignment.critique import format_step_judgment
from alignment.formats import (
    FormatDeclarationError,
    FormatParseError,
    OutputFormat,
    council_thought,
    council_value,
    declared_formats,
    policy_response,
    preference_inference,
    preference_selection,
    scenario,
    step_judgment,
    verdict,
)
from alignment.formats.constrain import validate_grammar
from alignment.formats.grammar import Choice, Compiled, Lit, Text, decimal_regex, seq
from alignment.steps import format_response


def test_every_declared_format_compiles_and_has_a_finite_budget():
    formats = declared_formats()
    assert len(formats) >= 10
    for name, fmt in formats.items():
        assert validate_grammar(fmt.lark) == "", name
        assert 0 < fmt.max_tokens < 2000, name
        assert "[max_tokens=" in fmt.lark or "Text" not in repr(fmt.root), name  # free text is always bounded


@pytest.mark.parametrize("low,high,decimals,inside,outside", [
    (-1, 1, 2, ["-1", "-1.0", "-0.35", "0", "0.5", "1", "1.00"], ["-1.01", "1.5", "2", "-2", "0.123", "+1", ".5"]),
    (0, 1, 2, ["0", "0.05", "1.0"], ["-0.1", "1.01", "10"]),
    (1, 5, 0, ["1", "3", "5"], ["0", "6", "3.5", "10"]),
])
def test_decimal_regex_is_exactly_the_range(low, high, decimals, inside, outside):
    pattern = re.compile(decimal_regex(low, high, decimals))
    assert all(pattern.fullmatch(v) for v in inside)
    assert not any(pattern.fullmatch(v) for v in outside)


def test_policy_reader_takes_what_the_training_targets_write_and_nothing_longer():
    fmt = policy_response(max_steps=3)
    text = format_response(["The user is vegetarian.", "Meat would mislead them."], "Try a chickpea curry.\nEnjoy!")
    parsed = fmt.parse(text)
    assert parsed.steps == ["The user is vegetarian.", "Meat would mislead them."] and parsed.well_formed
    assert parsed.answer == "Try a chickpea curry.\nEnjoy!"
    too_many = format_response(["a", "b", "c", "d"], "x")
    with pytest.raises(FormatParseError, match="policy_response"):
        fmt.parse(too_many)
    for broken in ("Answer: no steps", "Step 1: only a step", "Step 2: wrong number\nAnswer: x", "Step 1: \nAnswer: x"):
        with pytest.raises(FormatParseError):
            fmt.parse(broken)


def test_step_judgment_targets_are_in_the_format_and_scores_out_of_range_are_not():
    fmt = step_judgment()
    for score in (-1.0, -0.35, 0.0, 0.5, 1.0):
        judged = fmt.parse(format_step_judgment("Names both constraints.", score))
        assert judged.score == score and judged.critique == "Names both constraints."
    for broken in ("Critique: ok\nSCORE: 1.5", "SCORE: 0.5", "Critique: ok\nScore: 0.5", "Critique: \nSCORE: 0"):
        with pytest.raises(FormatParseError):
            fmt.parse(broken)


def test_verdicts_are_json_the_grammar_writes_and_any_endpoint_json_when_lenient():
    yesno = verdict("yesno")
    exact = '{"rationale": "It suggests meat.", "verdict": "no"}'
    assert yesno.parse(exact).verdict is False and json.loads(exact)["verdict"] == "no"
    spaced = '```json\n{"rationale":"It suggests meat.",\n "verdict":"YES"}\n```'
    with pytest.raises(FormatParseError):
        yesno.parse(spaced)  # not what the grammar writes
    reading = yesno.read(spaced, lenient=True)
    assert reading.repaired and reading.value.verdict is True
    for junk in ('{"verdict": "yes"}', '{"rationale": "", "verdict": "yes"}', '{"rationale": "x", "verdict": "maybe"}',
                 '{"rationale": "x", "verdict": "yes"} trailing', "[1, 2]", "yes"):
        with pytest.raises(FormatParseError):
            yesno.read(junk, lenient=True)
    assert verdict("rating").read('{"rationale": "fine", "rating": 4}', lenient=True).value.verdict == 4
    with pytest.raises(FormatParseError):
        verdict("rating").read('{"rationale": "fine", "rating": 4.5}', lenient=True)
    assert verdict("pair").parse('{"rationale": "B is shorter.", "verdict": "B"}').verdict == "B"
    assert yesno.json_schema["required"] == ["rationale", "verdict"]


def test_council_and_scenario_readers():
    assert council_thought(2).parse("Step 2: Check the budget first.") == "Check the budget first."
    with pytest.raises(FormatParseError):
        council_thought(2).parse("Step 1: wrong step number")
    assert council_value().parse("VALUE: 0.75") == 0.75
    for broken in ("VALUE: 7/10", "VALUE: 1.2", "0.7"):
        with pytest.raises(FormatParseError):
            council_value().parse(broken)
    assert scenario().parse("PREFERENCE: I love quiet places.\nQUERY: Where should I go?") == (
        "I love quiet places.", "Where should I go?")
    assert preference_selection().parse('{"selection": "Response B"}') == "Response B"


def test_relaxed_reading_of_an_unconstrained_model_is_marked_repaired():
    fmt = step_judgment()
    reading = fmt.read("  critique:   good step\n\nscore: 0.8 ", lenient=True)
    assert reading.repaired and reading.value.score == 0.8
    assert not fmt.read("Critique: good step\nSCORE: 0.8").repaired


def test_an_invalid_declaration_fails_at_start_up_naming_the_format():
    with pytest.raises(FormatDeclarationError, match="broken_choice"):
        OutputFormat("broken_choice", seq(Lit("x"), Choice("c", ())), lambda c, t: c)
    with pytest.raises(FormatDeclarationError, match="broken_bound"):
        OutputFormat("broken_bound", seq(Text("t", -3)), lambda c, t: c)


def test_masking_a_strided_logits_view_sets_exactly_the_forbidden_tokens():
    """llama.cpp hands the hook a strided view (token data structs); logits wider than the mask lose the rest."""
    import numpy as np

    from alignment.formats.constrain import mask_numpy

    data = np.zeros(40, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
    data["logit"] = np.arange(40, dtype=np.single)
    forbidden = np.zeros(36, dtype=bool)
    forbidden[[0, 5, 35]] = True
    view = data["logit"]
    assert not view.flags["C_CONTIGUOUS"]
    mask_numpy(view, forbidden)
    masked = np.flatnonzero(np.isinf(data["logit"]))
    assert masked.tolist() == [0, 5, 35, 36, 37, 38, 39]
    assert data["logit"][1] == 1.0 and (data["id"] == 0).all()  # the other fields are untouched


def test_masking_leaves_only_the_allowed_tokens_when_they_are_few_or_many():
    import numpy as np

    from alignment.formats.constrain import mask_numpy

    rng = np.random.default_rng(0)
    for share in (0.0, 0.001, 0.05, 0.5, 1.0):
        logits = rng.normal(size=1000).astype(np.single)
        forbidden = rng.random(1000) >= share
        masked = logits.copy()
        mask_numpy(masked, forbidden)
        assert np.array_equal(np.isinf(masked), forbidden)
        assert np.array_equal(masked[~forbidden], logits[~forbidden])


def test_free_text_takes_the_space_that_opens_the_literal_after_it():
    """llguidance lexes free text greedily: " | confidence " after a subject could never start once the subject
    had taken the space, so the space belongs to the subject in the grammar and in the reader (which strips it)."""
    line = seq(Text("subject", 8, exclude="|"), " | confidence ", Choice("c", ("0.5",)))
    assert '"| confidence "' in line.lark(Compiled()) and '" | confidence "' not in line.lark(Compiled())
    for written in ("short answers | confidence 0.5", "short answers| confidence 0.5"):
        assert re.fullmatch(line.regex(), written)["subject"].strip() == "short answers"
    newline_kept = seq(Text("critique", 8), "\nSCORE: ")  # single-line text may not hold the newline: unchanged
    assert '"\\nSCORE: "' in newline_kept.lark(Compiled())
    fmt = preference_inference(("values",), max_statements=1, think_tokens=8, statement_tokens=6)
    read = fmt.parse("<think>e1 says so.</think>\n<answer>\n- avoids | values | heights | confidence 0.70\n</answer>")
    assert read.statements[0].subject == "heights"
