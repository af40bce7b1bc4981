"""Template echo: how much of a policy's reasoning repeats the prompt's own wording instead of reasoning.

A step *echoes* the prompt when it contains a run of ``n`` consecutive words (default 4, lowercased, letters
and digits only) that also occurs in the prompt's fixed text (``alignment.prompts.policy.template_text()``:
instructions and worked example), unless that run is also in the user's own words (message, preferences),
which a step may rightly quote. The echo rate is echoing steps / all steps. Pure functions of strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ECHO_NGRAM = 4
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def ngrams(text: str, n: int = ECHO_NGRAM) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def echoed_ngrams(step: str, template: str, user_texts: Iterable[str] = (), n: int = ECHO_NGRAM) -> set[tuple]:
    """The prompt's word n-grams that ``step`` repeats (those the user wrote themselves excluded)."""
    allowed: set[tuple[str, ...]] = set()
    for text in user_texts:
        allowed |= ngrams(text, n)
    return (ngrams(step, n) & ngrams(template, n)) - allowed


def is_echo(step: str, template: str, user_texts: Iterable[str] = (), n: int = ECHO_NGRAM) -> bool:
    return bool(echoed_ngrams(step, template, user_texts, n))


def echo_counts(
    turns: Sequence[tuple[Sequence[str], Sequence[str]]], template: str, n: int = ECHO_NGRAM
) -> tuple[int, int]:
    """(echoing steps, all steps) over turns given as (steps, the user's texts)."""
    echoing = total = 0
    for steps, user_texts in turns:
        for step in steps:
            total += 1
            echoing += is_echo(step, template, user_texts, n)
    return echoing, total
