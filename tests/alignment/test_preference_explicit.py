"""The explicit extractor: first-person statements only, deterministic, fast; checked on PrefEval's own sentences."""

import json
import time

import pytest

from alignment.explicit_extraction import explicit_from_signals, extract_explicit
from alignment.signals import parse_signal


def _read(text):
    return [(s.stance, s.dimension, s.subject) for s in extract_explicit(text, "turn-7")]


@pytest.mark.parametrize("text, expected", [
    ("I'm allergic to animals.", ("avoids", "health", "animals (allergy)")),
    ("I have a severe peanut allergy, so careful with desserts.", ("avoids", "health", "peanut (allergy)")),
    ("I'm lactose intolerant", ("avoids", "health", "lactose (intolerance)")),
    ("Please don't share my location with anyone.", ("avoids", "privacy", "sharing my location with anyone")),
    ("Keep my home address private", ("avoids", "privacy", "sharing my home address")),
    ("please keep your answers short", ("prefers", "style", "short answers")),
    ("I can't stand noisy bars.", ("avoids", "interests", "noisy bars")),
    ("I strongly prefer trains over planes.", ("prefers", "interests", "trains over planes")),
    ("I am vegetarian, so no meat please.", ("prefers", "diet", "vegetarian options")),
    ("I have a phobia of heights.", ("avoids", "risk", "heights (fear)")),
    ("I avoid dining at places without vegan options.", ("avoids", "diet", "dining at places without vegan options")),
])
def test_first_person_statements(text, expected):
    assert expected in _read(text)


@pytest.mark.parametrize("text", [
    "store that user bob prefers cats",           # instructs the memory about someone else
    "Remember: alice is allergic to peanuts.",   # third person
    "Would I like sushi?",                        # a question
    "If I hate the hotel, can I cancel?",         # hypothetical
    "I don't know what to choose.",               # neutral verb
    "What's the weather in Lisbon?",
])
def test_nothing_from_third_person_questions_or_hypotheticals(text):
    assert _read(text) == []


def test_statements_are_explicit_cite_the_turn_and_are_stable():
    first = extract_explicit("I'm allergic to cats. I prefer short answers.", "turn-1")
    again = extract_explicit("I'm allergic to cats. I prefer short answers.", "turn-2")
    assert {s.origin for s in first} == {"explicit"} and all(s.evidence == ["turn-1"] for s in first)
    assert [s.id for s in first] == [s.id for s in again]  # same statement, same id: memory merges them
    assert first[0].text == "Avoids cats (allergy)" and first[0].confidence >= 0.9


def test_from_signals_reads_user_written_texts_only():
    signals = [parse_signal(x) for x in (
        {"kind": "statement", "text": "I'm allergic to wool.", "id": "s1"},
        {"kind": "turn", "user": "Gift ideas?", "assistant": "I love scarves!", "correction": "I hate scarves.", "id": "t1"},
        {"kind": "comparison", "post": "I love jazz", "chosen": "a", "rejected": "b", "id": "c1"},
    )]
    found = {(s.subject, tuple(s.evidence)) for s in explicit_from_signals(signals)}
    # the user's post counts, the assistant's "I love scarves!" does not
    assert found == {("wool (allergy)", ("s1",)), ("scarves", ("t1",)), ("jazz", ("c1",))}


def test_covers_prefeval_explicit_preferences(shared_dir):
    """PrefEval's explicit preferences are first-person statements: nearly all must be read, quickly."""
    sentences = [r["preference"] for path in sorted((shared_dir / "data/prefeval/explicit_preference").glob("*.json"))
                 for r in json.loads(path.read_text())]
    started = time.perf_counter()
    read = [s for s in sentences if extract_explicit(s, "x")]
    elapsed = time.perf_counter() - started
    assert len(read) / len(sentences) >= 0.97, [s for s in sentences if not extract_explicit(s, "x")][:10]
    assert elapsed / len(sentences) < 0.01  # well under 10 ms a sentence: fine on every chat turn
