"""Pure logic of preference inference: reading <think>/<answer> output and merging descriptions."""

from alignment.formats import FormatParseError, StatementLine, render_inference
from alignment.preference_inference import InferenceConfig, inference_format, read_inference
from alignment.preferences import (
    PreferenceDescription,
    PreferenceStatement,
    is_suppressed,
    merge_descriptions,
    wins,
)

IDS = ["sig-a", "sig-b", "sig-c"]
FMT = inference_format(InferenceConfig())


def test_the_declared_format_is_read_strictly_with_r_format_one():
    text = ("<think>Chose short replies twice.</think>\n<answer>\n- prefers | style | short replies | confidence 0.8\n"
            "- avoids | health | cats (allergy) | confidence 0.95\n</answer>")
    parsed = read_inference(FMT, text, IDS)
    assert parsed.r_format == 1.0 and parsed.reasoning == "Chose short replies twice." and not parsed.problems
    assert [(s.stance, s.dimension, s.subject, s.confidence) for s in parsed.statements] == [
        ("prefers", "style", "short replies", 0.8), ("avoids", "health", "cats (allergy)", 0.95)]
    first = parsed.statements[0]
    assert first.text == "Prefers short replies" and first.evidence == IDS and first.origin == "inferred"


def test_the_sft_target_renderer_writes_exactly_what_the_grammar_reads():
    lines = [StatementLine("prefers", "style", "short | direct  answers", 0.8), StatementLine("avoids", "risk", "x", 1.0)]
    text = render_inference("They chose <b>short</b> replies.", lines)
    assert FMT.pattern.fullmatch(text)
    assert [s.subject for s in read_inference(FMT, text, IDS).statements] == ["short / direct answers", "x"]


def test_an_unconstrained_model_gets_the_relaxed_reader_and_r_format_zero():
    loose = "<THINK> They hate cats </THINK>\n\n<answer>\n-  avoids |  health | cats | confidence 0.9\n</answer>"
    assert read_inference(FMT, loose, IDS).statements == []  # strict: not the declared format
    parsed = read_inference(FMT, loose, IDS, lenient=True)
    assert parsed.r_format == 0.0 and parsed.problems == ["repaired"]
    assert [s.subject for s in parsed.statements] == ["cats"]


def test_what_no_reader_can_vouch_for_is_not_guessed_at():
    for junk in ("<think>They hate cats<answer>- avoids | health | cats | confidence 0.9",  # unclosed tags
                 "Here is the profile:\n- prefers | tone | warm replies\n",  # no tags
                 "<think>hmm</think><answer>The user is a person.</answer>",  # no statement line
                 "<think>x</think>\n<answer>\n- prefers | mood | y | confidence 0.5\n</answer>",  # undeclared dimension
                 "<think>x</think>\n<answer>\n- prefers | style | y | confidence 1.5\n</answer>",  # out of range
                 "To determine the user's preference I would need more context."):
        parsed = read_inference(FMT, junk, IDS, lenient=True)
        assert parsed.statements == [] and parsed.r_format == 0.0 and parsed.problems
    try:
        FMT.parse("nothing")
    except FormatParseError as exc:
        assert FMT.name in str(exc)
    else:
        raise AssertionError("the strict reader accepted junk")


def _s(stance, subject, origin="inferred", updated="2025-01-01T00:00:00+00:00", evidence=("e1",), confidence=0.6):
    return PreferenceStatement.make(stance, subject, dimension="style", origin=origin, created=updated,
                                    evidence=list(evidence), confidence=confidence)


def test_newer_statement_wins_unless_the_older_is_clearly_better_evidenced():
    old = _s("prefers", "long answers", updated="2025-01-01T00:00:00+00:00")
    newer = _s("avoids", "long answers", updated="2025-02-01T00:00:00+00:00")
    assert wins(newer, old) and not wins(old, newer)
    strong_old = _s("prefers", "long answers", evidence=("e1", "e2", "e3"), confidence=0.95)
    assert not wins(newer, strong_old)


def test_users_word_outranks_inference():
    said = _s("avoids", "cats", origin="explicit", updated="2025-01-01T00:00:00+00:00")
    guessed = _s("prefers", "cats", origin="inferred", updated="2026-01-01T00:00:00+00:00", confidence=0.99)
    assert not wins(guessed, said)
    edited = _s("prefers", "cats", origin="user_edit", updated="2024-01-01T00:00:00+00:00")
    assert wins(edited, said)


def test_merge_reinforces_replaces_keeps_and_never_resurrects_suppressed():
    previous = PreferenceDescription(statements=[
        _s("prefers", "short answers", updated="2025-01-01T00:00:00+00:00"),
        _s("prefers", "emoji in replies", updated="2025-01-01T00:00:00+00:00"),
        _s("avoids", "formal tone", updated="2025-01-01T00:00:00+00:00"),
    ])
    new = [
        _s("prefers", "short answers", updated="2025-03-01T00:00:00+00:00", evidence=("e9",)),
        _s("avoids", "emoji in replies", updated="2025-03-01T00:00:00+00:00"),
        _s("prefers", "cat pictures", updated="2025-03-01T00:00:00+00:00"),
    ]
    merged = merge_descriptions(previous, new, suppressed=["Prefers cat pictures"])
    by_subject = {s.subject: s for s in merged.statements}
    assert set(by_subject) == {"short answers", "emoji in replies", "formal tone"}  # omitted one kept, suppressed one not added
    assert by_subject["short answers"].evidence == ["e1", "e9"] and by_subject["short answers"].version == 2
    assert by_subject["emoji in replies"].stance == "avoids"
    assert by_subject["emoji in replies"].id == previous.statements[1].id  # replaced in place, history kept


def test_suppression_matches_rewordings_and_caps_keep_the_strongest():
    assert is_suppressed(_s("prefers", "cat pictures!"), ["Prefers Cat Pictures"])
    assert not is_suppressed(_s("prefers", "dog pictures"), ["Prefers cat pictures"])
    many = PreferenceDescription(statements=[_s("prefers", f"topic {i}", confidence=i / 100) for i in range(50)]
                                 + [_s("avoids", "cats", origin="explicit", confidence=0.1)])
    capped = many.capped(5)
    assert len(capped.statements) == 5 and capped.statements[0].subject == "cats"
    assert [s.subject for s in capped.statements[1:]] == ["topic 49", "topic 48", "topic 47", "topic 46"]


def test_one_output_keeps_only_coherent_statements():
    """The shipped 135M adapter writes "avoids X" then "prefers X", or "avoids | no value": neither is stored."""
    from alignment.preferences import PreferenceStatement, coherent, states_nothing

    made = [PreferenceStatement.make(stance, subject) for stance, subject in (
        ("avoids", "light-hearted movies"), ("prefers", "light-hearted movies"), ("avoids", "no value"),
        ("prefers", "no preference"), ("prefers", "science fiction"), ("avoids", "nothing mentioned"),
        ("prefers", "no-nonsense answers"), ("avoids", "no spicy food"))]
    assert [s.text for s in coherent(made)] == [
        "Avoids light-hearted movies", "Prefers science fiction", "Prefers no-nonsense answers", "Avoids no spicy food"]
    assert states_nothing("None.") and states_nothing("n/a") and not states_nothing("nonfiction")


def test_a_negated_subject_is_stored_under_the_stance_it_states():
    """The adapter writes "prefers | avoiding films with graphic violence": memory stores "Avoids films with
    graphic violence", so it meets "prefers | films with graphic violence" as a conflict, not a second subject."""
    from alignment.formats import StatementLine
    from alignment.preference_inference import to_statements
    from alignment.preferences import plain_stance

    lines = [StatementLine("prefers", "values", "avoiding films with graphic violence", 0.9),
             StatementLine("prefers", "style", "not being asked follow-up questions", 0.7),
             StatementLine("prefers", "values", "nonfiction and notebooks", 0.6)]
    assert [s.text for s in to_statements(lines, ["e1"])] == [
        "Avoids films with graphic violence", "Avoids being asked follow-up questions", "Prefers nonfiction and notebooks"]
    assert plain_stance("prefers", "to avoid crowds") == ("avoids", "crowds")
    assert plain_stance("prefers", "not-so-spicy food") == ("prefers", "not-so-spicy food")
    assert plain_stance("avoids", "not enough detail") == ("avoids", "not enough detail")  # left as written
