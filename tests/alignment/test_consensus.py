"""Votes on inferred statements (alignment/consensus.py): pure logic on statements and similarity matrices."""

from __future__ import annotations

import numpy as np

from alignment.consensus import Agreement, key_overlap, supported
from alignment.preferences import PreferenceStatement


def _s(stance: str, subject: str) -> PreferenceStatement:
    return PreferenceStatement.make(stance, subject)  # type: ignore[arg-type]


def test_key_overlap_compares_subjects_without_the_stance_word():
    sims = key_overlap(["Avoids hiking in the mountains", "Prefers spicy food"], ["Prefers mountain hikes"])
    assert sims[0, 0] == 1.0  # "hiking in the mountains" = "mountain hikes" once stemmed; "Avoids"/"Prefers" ignored
    assert sims[1, 0] == 0.0


def test_a_statement_is_supported_by_each_vote_that_states_it_with_the_same_stance():
    first = [_s("avoids", "films with graphic violence"), _s("prefers", "long series")]
    votes = [[_s("avoids", "graphic violence in films")],
             [_s("prefers", "films with graphic violence")],  # the opposite stance never supports
             [_s("avoids", "violence films graphic"), _s("prefers", "long series")],
             []]
    assert supported(first, votes, Agreement(threshold=0.5)) == [2, 1]


def test_one_vote_counts_once_however_many_of_its_lines_agree():
    first = [_s("avoids", "crowds")]
    votes = [[_s("avoids", "crowds"), _s("avoids", "big crowds")]]
    assert supported(first, votes) == [1]


def test_the_similarity_is_injected_and_its_threshold_decides():
    first = [_s("avoids", "spicy food")]
    votes = [[_s("avoids", "chili")]]
    close = Agreement(similarity=lambda a, b: np.full((len(a), len(b)), 0.7), threshold=0.656)
    far = Agreement(similarity=lambda a, b: np.full((len(a), len(b)), 0.6), threshold=0.656)
    assert supported(first, votes, close) == [1] and supported(first, votes, far) == [0]
    assert supported([], votes, close) == [] and supported(first, [], close) == [0]
