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
    ("I have a severe allergy to sulfa drugs.", ("avoids", "health", "sulfa drugs (allergy)")),
    ("I have a phobia of heights.", ("avoids", "risk", "heights (fear)")),
    ("I avoid dining at places without vegan options.", ("avoids", "diet", "dining at places without vegan options")),
])
def test_first_person_statements(text, expected):
    assert expected in _read(text)


@pytest.mark.parametrize("text, expected", [
    # several preferences in one message, each clause its own statement
    ("I'm vegetarian and I hate long answers", {("prefers", "diet", "vegetarian options"),
                                                ("avoids", "style", "long answers")}),
    ("I have a strong dislike for graphic tees and much prefer solid-colored tops.",
     {("avoids", "interests", "graphic tees"), ("prefers", "interests", "solid-colored tops")}),
    ("I prefer plant-based diets and do not eat any animal products.",
     {("prefers", "diet", "plant-based diets"), ("avoids", "diet", "eating any animal products")}),
    # style and format requests
    ("Keep it short.", {("prefers", "style", "short answers")}),
    ("Please answer in bullet points, and no fluff.", {("prefers", "style", "answers in bullet points"),
                                                        ("avoids", "style", "fluff")}),
    ("I'd like answers in plain English", {("prefers", "style", "answers in plain English")}),
    # negations
    ("I'm not really into sports.", {("avoids", "interests", "sports")}),
    ("I no longer eat meat", {("avoids", "diet", "eating meat")}),
    ("I'm not allowed to take ibuprofen.", {("avoids", "health", "taking ibuprofen")}),
    ("I have a severe allergy to penicillin.", {("avoids", "health", "penicillin (allergy)")}),
    ("My doctor told me to never take aspirin.", {("avoids", "health", "taking aspirin")}),
    # stated while asking something else
    ("As a vegan, what should I eat in Rome?", {("prefers", "diet", "vegan options")}),
    ("Since I'm allergic to nuts, which desserts can I order?", {("avoids", "health", "nuts (allergy)")}),
    ("As someone who only uses cruelty-free products, which brands are good?",
     {("prefers", "interests", "using only cruelty-free products")}),
])
def test_every_clause_style_negations_and_asides(text, expected):
    assert set(_read(text)) == expected


@pytest.mark.parametrize("text", [
    "I love that idea!",                          # a reaction to the conversation, not a preference
    "I appreciate all your advice.",
    "I'd love to visit Kyoto next spring.",       # a wish for now
    "Can you answer in detail how vaccines work?",
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
    assert [e.quote for e in first[0].sources] == ["I'm allergic to cats."]  # the user's words, quoted


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


def test_no_statements_from_prefeval_questions_or_the_same_preferences_told_about_someone_else(shared_dir):
    from memory.bench_extraction import third_person

    root = shared_dir / "data/prefeval"
    explicit = [r for p in sorted((root / "explicit_preference").glob("*.json")) for r in json.loads(p.read_text())]
    questions = [r["question"] for r in explicit]
    with_statements = [q for q in questions if extract_explicit(q, "x")]
    assert len(with_statements) / len(questions) <= 0.01, with_statements
    assert [t for r in explicit if extract_explicit(t := third_person(r["preference"]), "x")] == []


def test_a_statement_copied_from_the_prompts_example_is_not_the_users():
    from alignment.prompts.preference import EXAMPLE_SUBJECTS, INFER_SYSTEM, copies_the_example

    assert all(subject in INFER_SYSTEM for subject in EXAMPLE_SUBJECTS)  # the list is what the prompt shows
    said = '{"kind": "turn", "user": "I pick cafes with a gluten-free snack: severe gluten intolerance."}'
    assert copies_the_example("Avoids cats (allergy)", said)
    assert copies_the_example("Prefers short, direct answers *depends on the user", said)
    assert not copies_the_example("Avoids gluten", said)
    assert not copies_the_example("Avoids cats", '{"user": "My cats make me sneeze all day."}')  # the user said it
