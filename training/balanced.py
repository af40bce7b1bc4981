"""Balanced subsets: take items round-robin over groups, so that a short run sees every group (every user of a
retrain, every form and topic of the preference data) instead of the first groups of a file in full."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def round_robin(groups: Iterable[Sequence[T]], k: int | None = None) -> list[T]:
    """At most ``k`` items (all with None): the first of every group, then the second of every group, …"""
    queues = [list(g) for g in groups]
    limit = sum(map(len, queues)) if k is None else k
    out: list[T] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:limit]


def grouped(items: Iterable[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    """``items`` split by ``key``, groups in order of first appearance, items in their order."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())
