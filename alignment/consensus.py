"""Self-consistency for preference inference: sampled outputs vote on the statements of the first (greedy)
output, and a statement is stored only when at least ``min_support`` of the votes state it too (the same stance
and a similar subject).

Why: a small inferrer's mistakes differ from sample to sample, while what the signals really support recurs. A
wrong stored preference costs the user (it steers every later answer); a missed one costs one more turn of
evidence. So an unsupported statement is dropped rather than stored ("defensive" inference). The votes only
remove: a statement is always worded as the first output wrote it (votes alone, without the greedy output,
recovered less on held-out data: docs/BENCHMARKS.md).

Similarity is injected (``Similarity``): the app passes the memory's sentence embeddings with the threshold
calibrated for "states the same preference"; without one, the stemmed word overlap of the subjects is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from alignment.preferences import PreferenceStatement, subject_key

#: texts a, texts b -> matrix of similarities in [0, 1] (``a[i]`` against ``b[j]``)
Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def key_overlap(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Jaccard overlap of the stemmed content words (``subject_key``) of each pair of texts, the stance word
    ("Prefers", "Avoids") left out: stances are compared on their own."""
    def key(text: str) -> frozenset[str]:
        return subject_key(re.sub(r"^(?:prefers|avoids)\s+", "", text.strip(), flags=re.IGNORECASE))

    keys_a, keys_b = [key(t) for t in a], [key(t) for t in b]
    out = np.zeros((len(a), len(b)))
    for i, ka in enumerate(keys_a):
        for j, kb in enumerate(keys_b):
            if ka and kb:
                out[i, j] = len(ka & kb) / len(ka | kb)
    return out


@dataclass(frozen=True)
class Agreement:
    """When two statements of different samples say the same thing: ``similarity`` of their readable texts
    ("Avoids spicy food") reaches ``threshold``; stances must be equal ("prefers X" never supports "avoids X")."""

    similarity: Similarity = key_overlap
    threshold: float = 0.5

    def matrix(self, a: Sequence[PreferenceStatement], b: Sequence[PreferenceStatement]) -> np.ndarray:
        """``same[i, j]``: statement ``a[i]`` says what ``b[j]`` says."""
        if not a or not b:
            return np.zeros((len(a), len(b)), dtype=bool)
        sims = np.asarray(self.similarity([s.text for s in a], [s.text for s in b]), dtype=float)
        stances = np.array([[x.stance == y.stance for y in b] for x in a], dtype=bool)
        return stances & (sims >= self.threshold)


def supported(statements: Sequence[PreferenceStatement], votes: Sequence[Sequence[PreferenceStatement]],
              agreement: Agreement = Agreement()) -> list[int]:
    """For each statement of the first output, how many of the sampled ``votes`` state it too (0 to len(votes))."""
    counts = [0] * len(statements)
    for vote in votes:
        same = agreement.matrix(list(statements), list(vote))
        for i in range(len(statements)):
            counts[i] += bool(same[i].any()) if same.size else 0
    return counts
