"""Balanced subsets (training/balanced.py), on plain lists."""

from training.balanced import grouped, round_robin


def test_round_robin_takes_one_of_each_group_per_round_up_to_k():
    groups = [["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]
    assert round_robin(groups) == ["a1", "b1", "c1", "a2", "c2", "a3"]
    assert round_robin(groups, 4) == ["a1", "b1", "c1", "a2"]
    assert round_robin([], 3) == [] and round_robin([[], ["x"]], 0) == []


def test_grouped_keeps_first_appearance_order():
    assert grouped(["b1", "a1", "b2", "c1", "a2"], lambda s: s[0]) == [["b1", "b2"], ["a1", "a2"], ["c1"]]
