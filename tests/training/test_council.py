"""The council's Tree of Thoughts: reading thoughts and values in their declared formats (strict where the engine
enforces them, lenient and counted where it does not) on hand-made replies, pruning on hand-made nodes, and a
real but unconstrained teacher whose value replies are unreadable. Whole trees grown by the real (constrained)
model are checked on the build of tests/training/test_deeppref_build.py; each format on each CPU engine in
tests/training/test_deeppref_formats.py."""

from __future__ import annotations

import pytest

from alignment.engines.base import Engine
from alignment.errors import CdraError
from alignment.formats import council_thought, council_value
from alignment.steps import format_response, parse_response
from training.council import (
    CouncilConfig,
    ThoughtNode,
    _Council,
    clean_answer,
    clean_thought,
    grow_tree,
    read_output,
)
from training.scenarios import Scenario

SCENARIO = Scenario(
    id="seed-travel-1", domain="travel",
    preference="I love being outdoors and want new experiences, but I have severe allergies to animal dander and "
               "feathers, and crowds make me anxious.",
    query="Recommend some outdoor experiences.",
)


class _Reader(Engine):
    """Only the format-reading side of an engine: ``enforcing`` says whether its decoding was constrained."""

    def __init__(self, enforcing: bool) -> None:
        self.enforcing = enforcing

    def can_enforce(self, fmt) -> bool:
        return self.enforcing

    def generate(self, conversations, params):  # pragma: no cover - never called
        raise NotImplementedError

    def score(self, conversations, continuations):  # pragma: no cover - never called
        raise NotImplementedError


CONSTRAINED, UNCONSTRAINED = _Reader(True), _Reader(False)


# -- reading thoughts and values (pure) ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("The user fears crowds.", "The user fears crowds."),
        ("Avoid farms and zoos,   since dander triggers allergies.", "Avoid farms and zoos, since dander triggers allergies."),
        ("The user wants calm places. They also like novelty and", "The user wants calm places."),  # hit the bound
        ("The user wants calm places and novelty and", "The user wants calm places and novelty and"),  # no sentence
        ('"Quiet alpine lakes suit them."', "Quiet alpine lakes suit them."),
        ("ok then", ""),
    ],
)
def test_clean_thought(step, expected):
    assert clean_thought(step) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 2: The user fears crowds.", "The user fears crowds."),
        ("Step 2: The user fears crowds.\nStep 3: Something else.", None),  # one step, one line
        ("**Step 2:** Avoid farms.", None),
        ("Step 1: The user fears crowds.", None),  # the label names the level
        ("The user fears crowds.", None),
        ("Step 2: ", None),
    ],
)
def test_thought_reader_is_strict(text, expected):
    reading = read_output(CONSTRAINED, council_thought(2, 32), text)
    assert (reading.value if reading else None) == expected
    assert reading is None or not reading.repaired


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VALUE: 0.7", 0.7), ("VALUE: 1", 1.0), ("VALUE: 0", 0.0), ("VALUE: 1.00", 1.0), ("VALUE: 0.05", 0.05),
        ("VALUE: 1.25", None), ("VALUE: 7", None), ("VALUE: 7/10", None), ("VALUE: 80%", None), ("0.6", None),
        ("value = .25", None), ("**Value:** 0.9", None), ("VALUE: -0.1", None), ("VALUE: 0.4 VALUE: 0.9", None),
        ("VALUE: high", None), ("This step is great", None), ("", None), ("VALUE: 0.123", None),
    ],
)
def test_value_reader_is_strict_and_never_rescales(text, expected):
    reading = read_output(CONSTRAINED, council_value(), text)
    assert (reading.value if reading else None) == expected


def test_unconstrained_teacher_is_read_leniently_and_marked_repaired():
    reading = read_output(UNCONSTRAINED, council_value(), "  value:0.7 ")
    assert reading.value == 0.7 and reading.repaired
    assert read_output(CONSTRAINED, council_value(), "  value:0.7 ") is None  # a constrained engine cannot write it
    assert not read_output(UNCONSTRAINED, council_value(), "VALUE: 0.7").repaired
    assert read_output(UNCONSTRAINED, council_value(), "VALUE: 7/10") is None  # spacing and case only
    thought = read_output(UNCONSTRAINED, council_thought(1, 32), "step 1:Avoid farms and zoos.")
    assert thought.value == "Avoid farms and zoos." and thought.repaired


def test_clean_answer_keeps_the_response_format_parseable():
    steps = ["Avoid animals.", "Prefer quiet places."]
    tricky = "Answer: Try these:\nStep 1: a sunrise hike\nAnswer: kayaking on a calm lake"
    answer = clean_answer(tricky, steps)
    parsed = parse_response(format_response(steps, answer))
    assert parsed.steps == steps and parsed.answer == answer and parsed.well_formed
    assert clean_answer("Here is a list:\n- hiking\n- kayaking", steps) == "Here is a list:\n- hiking\n- kayaking"
    assert clean_answer("Final answer:   ", steps) == ""


def test_config_rejects_what_cannot_work():
    with pytest.raises(CdraError, match="unknown council persona"):
        CouncilConfig(personas=("Astrologer",))
    with pytest.raises(CdraError, match="depth must be between 1 and 5"):
        CouncilConfig(depth=6)
    with pytest.raises(CdraError, match="greedy samples would be identical"):
        CouncilConfig(branching=2, thought_temperature=0.0)
    with pytest.raises(CdraError, match="value_threshold"):
        CouncilConfig(value_threshold=1.5)


def test_prune_applies_threshold_then_beam_and_counts_reasons():
    council = _Council(engine=None, scenario=SCENARIO, config=CouncilConfig(breadth=2, value_threshold=0.4), seed=0)

    def node(i, value, pruned=None):
        return ThoughtNode(f"r.{i}", "r", 1, "Pragmatist", f"thought {i} here", value=value, pruned=pruned)

    children = [node(0, 0.5), node(1, 0.2), node(2, 0.9), node(3, None, "unparseable_value"), node(4, 0.5),
                node(5, None, "duplicate")]
    kept = council.prune(children)
    assert [n.id for n in kept] == ["r.2", "r.0"]  # best first; ties keep proposal order
    assert [n.pruned for n in children] == [None, "threshold", None, "unparseable_value", "beam", "duplicate"]
    assert council.stats.pruned == {"threshold": 1, "unparseable_value": 1, "beam": 1, "duplicate": 1, "empty": 0,
                                    "unparseable_thought": 0}


# -- a real teacher that writes garbage values (whole trees: tests/training/test_deeppref_build.py) --------
class Unconstrained(Engine):
    """The real model as with its role's ``constrained = false`` (what `ModelSpec(constrained=False)` gives, without
    loading a second copy), for the formats in ``only`` (all when empty): those outputs are not held to their
    format, and only ``max_new_tokens`` bounds them."""

    def __init__(self, inner: Engine, only=()) -> None:
        self.inner, self.version, self.description, self.only = inner, inner.version, inner.description, only

    def can_enforce(self, fmt) -> bool:
        return bool(self.only) and fmt not in self.only

    def generate(self, conversations, params):
        return self.inner.generate(conversations, params if self.enforces(params.format) else params.but(format=None))

    def score(self, conversations, continuations):
        return self.inner.score(conversations, continuations)


@pytest.mark.slow
def test_garbage_values_prune_everything_and_are_counted(default_engine):
    """A teacher whose value replies are unconstrained and cut to one token never yields a readable VALUE: nothing
    breaks, every (constrained, readable) thought is pruned as unreadable, and every failed reply is counted."""
    config = CouncilConfig(personas=("Pragmatist", "Psychologist"), depth=1, step_tokens=12, value_samples=2,
                           value_max_new_tokens=1, value_retries=1)
    tree = grow_tree(Unconstrained(default_engine, only=(council_value(),)), SCENARIO, config, seed=0)
    proposed = [n for n in tree.nodes.values() if n.parent is not None]
    valued = [n for n in proposed if n.pruned not in ("empty", "unparseable_thought")]
    assert valued and tree.stats.thought_parse_failures == 0  # thoughts were constrained
    assert tree.paths == []
    assert all(n.pruned == "unparseable_value" for n in valued)
    assert tree.stats.value_parse_failures == 2 * len(valued) * 2  # 2 samples, then 2 more in the sampled retry
    assert tree.stats.value_retries == len(valued)
    assert tree.stats.thought_parse_failures == sum(n.pruned == "unparseable_thought" for n in proposed)
