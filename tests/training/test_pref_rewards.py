"""The preference-training rewards and the recovery criterion, on strings and similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest

from alignment.errors import CdraError
from training.pref_rewards import (
    FORMAT_DIMENSIONS,
    Agreement,
    agreement,
    calibrate_threshold,
    gold_statements,
    r_agree,
    r_agree_soft,
    sanity_check,
    shares_content,
    statement_text,
    third_person,
)


def test_gold_sentences_become_statement_lines_in_the_format():
    lines = gold_statements("I strictly avoid restaurants that serve foods containing gluten due to a severe gluten intolerance.")
    assert [(l.stance, l.dimension, l.subject) for l in lines] == [
        ("avoids", "health", "restaurants that serve foods containing gluten (a severe gluten intolerance)")]
    two = gold_statements("I dislike high heels and prefer wearing flats or low-heeled shoes.", confidence=0.7)
    assert {(l.stance, l.subject.split()[0]) for l in two} == {("avoids", "high"), ("prefers", "wearing")}
    assert all(l.dimension in FORMAT_DIMENSIONS and l.confidence == 0.7 for l in two)
    mine = gold_statements("I dislike any form of artificial odors or fragrances in my home.")
    assert "their home" in mine[0].subject and "my" not in mine[0].subject.split()
    # a sentence the extractor cannot read still yields one line, without the first-person lead
    need = gold_statements("I need on-site childcare services to be considered when choosing my next job.")
    assert need[0].stance == "prefers" and need[0].subject.startswith("on-site childcare")
    allergic = gold_statements("Allergic to cats and dogs")
    assert allergic[0].stance == "avoids" and allergic[0].dimension == "health" and "(allergy)" in allergic[0].subject
    with pytest.raises(CdraError):
        gold_statements("  ")


def test_third_person_and_statement_text():
    assert third_person("for my home, I'm sure I've said") == "for their home, they're sure they've said"
    assert statement_text("avoids", "spicy food") == "Avoids spicy food"


def test_agreement_needs_the_same_stance_and_the_threshold():
    # produced: Avoids X (close), Prefers X (close but opposite), Avoids Y (far); gold: Avoids X
    sims = np.array([[0.9], [0.95], [0.3]])
    result = agreement(["avoids", "prefers", "avoids"], ["avoids"], sims, threshold=0.6)
    assert result.states == (True, False, False) and result.recovered == (True,)
    assert result.recall == 1.0 and result.precision == pytest.approx(1 / 3) and result.junk == 2
    assert r_agree(result) == pytest.approx(1 / 3)
    assert r_agree(result, r_format=0.0) == 0.0  # Eq. 6: times R_format
    empty = agreement([], ["avoids", "prefers"], np.zeros((0, 2)), 0.6)
    assert empty.recovered == (False, False) and r_agree(empty) == 0.0 and empty.junk == 0
    both = agreement(["avoids", "prefers"], ["avoids", "prefers"], np.array([[0.8, 0.1], [0.2, 0.7]]), 0.6)
    assert r_agree(both) == 1.0


def test_soft_reward_grades_near_misses():
    near = Agreement(states=(False,), recovered=(False,), best=(0.55,))
    far = Agreement(states=(False,), recovered=(False,), best=(0.1,))
    assert r_agree_soft(near) > r_agree_soft(far) > 0.0
    assert r_agree_soft(Agreement((), (False,), ())) == 0.0


def test_threshold_calibration_maximizes_youden_under_a_false_positive_cap():
    pos = [0.9, 0.8, 0.75, 0.7, 0.5]
    neg = [0.2, 0.3, 0.4, 0.45, 0.72]
    cal = calibrate_threshold(pos, neg, max_fpr=0.2)
    assert cal.threshold == 0.5 and cal.tpr == 1.0 and cal.fpr == 0.2  # J = 0.8 beats 0.7 (J = 0.6)
    strict = calibrate_threshold(pos, neg, max_fpr=0.0)
    assert strict.fpr == 0.0 and strict.threshold > 0.72
    with pytest.raises(CdraError):
        calibrate_threshold([], neg)


def test_lexical_labels_of_calibration_pairs():
    assert shares_content("gluten-free snacks (severe intolerance)", "foods containing gluten (severe gluten intolerance)")
    assert not shares_content("spicy food", "loud live music")
    assert shares_content("cats", "cats and dogs")


def test_judge_sanity_check_needs_non_overlapping_intervals():
    at_chance = sanity_check([1, 0] * 20, [0, 1, 0, 0] * 10, seed=1)
    assert not at_chance.passed and "FAILS" in at_chance.line()
    strong = sanity_check([1, 0] * 20, [1] * 38 + [0, 0], seed=1)
    assert strong.passed and strong.golden["low"] > strong.null["high"] and "passes" in strong.line()
