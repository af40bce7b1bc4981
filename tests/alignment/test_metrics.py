"""The papers' metrics on hand-made verdicts: Eq. 4, Eq. 5 with PrefEval's error rules, unknown verdicts,
bootstrap CIs and the paired tests."""

from __future__ import annotations

import itertools
import math

import pytest

from alignment.metrics import (
    binom_two_sided, bootstrap_ci, decided, estimate, item_indicators, needs_hallucination_check, paired_test,
    pairwise_win_rate, prefeval_errors, summarize, turn_means, verdict_of,
)


def test_prefeval_error_rules_on_every_combination():
    for a, h, v, u in itertools.product((False, True), repeat=4):
        e = prefeval_errors(a, h, v, u)
        assert e["e_ur"] is (not u)
        assert e["e_puv"] is ((not a) and v and u)
        assert e["e_hp"] is (a and h and v and u)
        assert e["e_ir"] is (a and (not h) and v and u)
        # the four errors never overlap: a response has at most one of them
        assert sum(e.values()) <= 1


def test_acc_pf_is_one_minus_the_max_error_and_acc_da_the_max_of_three():
    clean = {"acknowledges": True, "hallucinates": False, "violates": False, "helpful": True,
             "deep_mining": False, "innovative_expansion": True, "thoughtfulness": False, "misleading": False}
    ind = item_indicators(clean)
    assert ind["acc_pf"] is True and ind["acc_da"] is True and ind["acc_mis"] is False
    violated = dict(clean, acknowledges=False, violates=True)
    assert item_indicators(violated)["e_puv"] is True and item_indicators(violated)["acc_pf"] is False
    unhelpful = dict(clean, helpful=False)
    assert item_indicators(unhelpful)["e_ur"] is True and item_indicators(unhelpful)["acc_pf"] is False
    shallow = dict(clean, innovative_expansion=False)
    assert item_indicators(shallow)["acc_da"] is False


def test_unknown_verdicts_count_only_when_they_cannot_change_the_result():
    assert decided(lambda a, b: a or b, True, None) is True
    assert decided(lambda a, b: a or b, False, None) is None
    # unhelpful decides Acc_PF = 0 whatever the unreadable checks say
    ind = item_indicators({"helpful": False, "acknowledges": None, "violates": None})
    assert ind["acc_pf"] is False and ind["e_ur"] is True
    # helpful but violation unknown: Acc_PF is unknown, not guessed
    assert item_indicators({"helpful": True, "acknowledges": False, "violates": None})["acc_pf"] is None
    # no violation: the hallucination check is irrelevant, so its absence decides nothing
    no_violation = {"helpful": True, "acknowledges": True, "violates": False}
    assert not needs_hallucination_check(True, False, True)
    assert item_indicators(no_violation)["acc_pf"] is True
    assert needs_hallucination_check(True, True, True) and needs_hallucination_check(None, True, True)


def test_estimate_ignores_unknown_items_and_reports_them():
    est = estimate([True, False, None, True])
    assert est.n == 3 and est.missing == 1
    assert math.isclose(est.value, 200 / 3)
    assert 0 <= est.low <= est.value <= est.high <= 100
    assert estimate([None, None]).value is None
    assert estimate([True, True]).format() == "100.0 [100.0, 100.0]"


def test_bootstrap_ci_is_deterministic_and_narrows_with_more_items():
    small = [1.0, 0.0] * 5
    large = [1.0, 0.0] * 200
    lo_s, hi_s = bootstrap_ci(small, seed=3)
    lo_l, hi_l = bootstrap_ci(large, seed=3)
    assert (lo_s, hi_s) == bootstrap_ci(small, seed=3)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert hi_l - lo_l < hi_s - lo_s
    # a 95% interval of a fair coin over 400 items is about ±4.9 points
    assert 0.43 < lo_l < 0.47 and 0.53 < hi_l < 0.57
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_summarize_gives_every_metric():
    rows = [item_indicators({"acknowledges": True, "hallucinates": False, "violates": False, "helpful": True,
                             "deep_mining": True, "innovative_expansion": False, "thoughtfulness": False,
                             "misleading": True})] * 4
    s = summarize(rows, n_boot=200)
    assert s["acc_pf"].value == 100.0 and s["m_dm"].value == 100.0 and s["m_ie"].value == 0.0
    assert s["acc_mis"].value == 100.0 and s["e_puv"].value == 0.0


def test_exact_binomial_matches_hand_computation():
    assert binom_two_sided(0, 0) == 1.0
    assert math.isclose(binom_two_sided(0, 5), 2 / 32)
    assert math.isclose(binom_two_sided(1, 6), 2 * 7 / 64)
    assert binom_two_sided(3, 6) == 1.0


def test_paired_test_detects_a_consistent_improvement_and_not_noise():
    a = [0] * 30 + [1] * 10
    b = [1] * 30 + [1] * 10  # B fixes 30 items and breaks none
    t = paired_test(a, b, n_boot=2000)
    assert t.n == 40 and t.b_only == 30 and t.a_only == 0
    assert math.isclose(t.diff, 75.0) and t.low > 0
    assert t.p_mcnemar < 1e-6 and t.p_bootstrap < 0.01
    assert verdict_of(t) == "B better"
    assert verdict_of(t, lower_is_better=True) == "A better"
    noisy = paired_test([1, 0] * 10, [0, 1] * 10, n_boot=2000)
    assert noisy.b_only == noisy.a_only == 10 and noisy.p_mcnemar == 1.0
    assert verdict_of(noisy) == "no significant difference"


def test_paired_test_uses_only_items_known_in_both():
    t = paired_test([1, None, 0, 1], [1, 1, None, 0], n_boot=500)
    assert t.n == 2 and t.a_only == 1 and t.b_only == 0
    with pytest.raises(ValueError):
        paired_test([None], [1])
    with pytest.raises(ValueError):
        paired_test([1, 0], [1])


def test_pairwise_win_rate_and_turn_means():
    rate, p = pairwise_win_rate(wins_b=9, wins_a=1, ties=5)
    assert rate == 0.9 and math.isclose(p, binom_two_sided(9, 10))
    assert turn_means([(1, 2), (1, 4), (2, 5), (11, 1)], turns=3) == [3.0, 5.0, None]
