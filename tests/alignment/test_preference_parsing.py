"""Pure logic of preference inference: reading <think>/<answer> output and merging descriptions."""

from alignment.preference_inference import parse_inference_output, parse_statement_line
from alignment.preferences import (
    PreferenceDescription,
    PreferenceStatement,
    is_suppressed,
    merge_descriptions,
    wins,
)

IDS = ["sig-a", "sig-b", "sig-c"]


def test_structured_line_with_confidence_and_cited_evidence():
    s = parse_statement_line("- prefers | style | concise answers | confidence 0.7 | evidence e2, e3", IDS)
    assert (s.stance, s.dimension, s.subject, s.confidence) == ("prefers", "style", "concise answers", 0.7)
    assert s.text == "Prefers concise answers" and s.evidence == ["sig-b", "sig-c"] and s.origin == "inferred"


def test_loose_lines_a_small_model_writes():
    assert parse_statement_line("Avoids: technical jargon (confidence: 80%)", IDS).confidence == 0.8
    line = parse_statement_line("2) avoided | pets, cats", IDS)
    assert (line.stance, line.subject, line.dimension, line.evidence) == ("avoids", "pets, cats", "general", IDS)
    assert parse_statement_line("**Prefers** | diet | vegetarian food | 0.9", IDS).confidence == 0.9
    for junk in ("The user seems nice.", "<answer>", "- prefers | dimension | what the user prefers", ""):
        assert parse_statement_line(junk, IDS) is None


def test_strict_format_has_r_format_one():
    text = "<think>Chose short replies twice.</think>\n<answer>\n- prefers | style | short replies | confidence 0.8\n</answer>"
    parsed = parse_inference_output(text, IDS)
    assert parsed.r_format == 1.0 and parsed.reasoning == "Chose short replies twice."
    assert [s.subject for s in parsed.statements] == ["short replies"] and not parsed.problems


def test_lenient_reading_keeps_statements_but_not_the_format_reward():
    unclosed = "<think>They hate cats<answer>- avoids | health | cats | confidence 0.9"
    parsed = parse_inference_output(unclosed, IDS)
    assert parsed.r_format == 0.0 and parsed.reasoning == "They hate cats"
    assert [s.subject for s in parsed.statements] == ["cats"]
    assert "missing <think>…</think>" in parsed.problems and "missing <answer>…</answer>" in parsed.problems
    bare = parse_inference_output("Here is the profile:\n- prefers | tone | warm replies\n", IDS)
    assert bare.r_format == 0.0 and bare.statements[0].subject == "warm replies"


def test_tags_without_statements_or_text_without_any_are_unusable():
    empty_answer = parse_inference_output("<think>hmm</think><answer>The user is a person.</answer>", IDS)
    assert empty_answer.statements == [] and empty_answer.r_format == 0.0
    rambling = parse_inference_output("To determine the user's preference I would need more context.", IDS)
    assert rambling.statements == [] and "no preference statement could be read" in rambling.problems


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
