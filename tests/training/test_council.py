"""The council's Tree of Thoughts: text clean-up and value parsing on hand-made replies, pruning on
hand-made nodes, and a real teacher whose value replies are unreadable. Whole trees grown by the real
model are checked on the build of tests/training/test_deeppref_build.py."""

from __future__ import annotations

import pytest

from alignment.errors import CdraError
from alignment.steps import format_response, parse_response
from training.council import (
    CouncilConfig,
    ThoughtNode,
    _Council,
    clean_answer,
    clean_thought,
    grow_tree,
    parse_value,
)
from training.scenarios import Scenario

SCENARIO = Scenario(
    id="seed-travel-1", domain="travel",
    preference="I love being outdoors and want new experiences, but I have severe allergies to animal dander and "
               "feathers, and crowds make me anxious.",
    query="Recommend some outdoor experiences.",
)


# -- pure functions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cut_off", "expected"),
    [
        ("Step 2: The user fears crowds.\nStep 3: Something else.", False, "The user fears crowds."),
        ("**Step 1:** Avoid farms and zoos,\nsince dander triggers allergies.", False,
         "Avoid farms and zoos, since dander triggers allergies."),
        ("The user wants calm places. They also like novelty and", True, "The user wants calm places."),
        ("Think about quiet trails first.\n\nAnswer: go hiking", False, "Think about quiet trails first."),
        ('"Quiet alpine lakes suit them."', False, "Quiet alpine lakes suit them."),
        ("Step 1: ok", False, ""),
        ("   ", False, ""),
    ],
)
def test_clean_thought(text, cut_off, expected):
    assert clean_thought(text, cut_off) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("VALUE: 0.7", 0.7), ("value = .25", 0.25), ("**Value:** 0.9\nbecause...", 0.9), ("VALUE: 7/10", 0.7),
        ("VALUE: 80%", 0.8), ("0.6", 0.6), ("VALUE: 1", 1.0), ("VALUE: 1.25", 1.0), ("VALUE: 7", 0.7),
        ("VALUE: 2.5", None), ("VALUE: 12", None), ("VALUE: 120%", None), ("VALUE: -0.1", None),
        ("VALUE: 0.4 VALUE: 0.9", 0.4), ("This step is great", None), ("", None), ("VALUE: high", None),
    ],
)
def test_parse_value(text, expected):
    assert parse_value(text) == expected


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
    assert council.stats.pruned == {"threshold": 1, "unparseable_value": 1, "beam": 1, "duplicate": 1, "empty": 0}


# -- a real teacher that writes garbage values (whole trees: tests/training/test_deeppref_build.py) --------
@pytest.mark.slow
def test_garbage_values_prune_everything_and_are_counted(default_engine):
    """A teacher whose value replies are cut to one token never yields a readable VALUE: nothing breaks,
    every thought is pruned as unreadable, and every failed reply is counted."""
    config = CouncilConfig(personas=("Pragmatist",), depth=1, thought_max_new_tokens=12, value_samples=2,
                           value_max_new_tokens=1, value_retries=1)
    tree = grow_tree(default_engine, SCENARIO, config, seed=0)
    live = [n for n in tree.nodes.values() if n.parent is not None and n.pruned != "empty"]
    assert tree.paths == []
    assert all(n.pruned == "unparseable_value" for n in live)
    assert tree.stats.value_parse_failures == 2 * len(live) * 2  # 2 samples, then 2 more in the sampled retry
    assert tree.stats.value_retries == len(live)
