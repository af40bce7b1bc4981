"""The papers' metrics as pure functions: per-item indicators from judge verdicts, percentages with
bootstrap 95% confidence intervals, and paired tests (paired bootstrap, exact McNemar / sign test).

Verdicts are three-valued: True, False, or None when the judge's verdict could not be read. A formula
whose value is decided whatever the unknown verdicts are still counts (``any([True, None])`` is True);
otherwise the item is missing for that metric and is reported as such, never silently dropped.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

Tri = bool | None

#: Table 1 columns (CDRA §3.1), in the paper's order; Acc_Mis is the one where lower is better
TABLE1_METRICS = ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie")
ERROR_METRICS = ("e_puv", "e_hp", "e_ir", "e_ur")
ALL_METRICS = TABLE1_METRICS + ERROR_METRICS
LOWER_IS_BETTER = frozenset({"acc_mis", *ERROR_METRICS})
METRIC_LABELS = {
    "acc_pf": "Acc_PF ↑", "acc_da": "Acc_DA ↑", "acc_mis": "Acc_Mis ↓", "m_th": "m_th ↑", "m_dm": "m_dm ↑",
    "m_ie": "m_ie ↑", "e_puv": "e_puv ↓", "e_hp": "e_hp ↓", "e_ir": "e_ir ↓", "e_ur": "e_ur ↓",
}


def decided(formula: Callable[..., bool], *values: Tri) -> Tri:
    """Evaluate a boolean formula under unknowns: its value if every completion agrees, else None."""
    unknown = [i for i, v in enumerate(values) if v is None]
    outcomes = set()
    for fill in itertools.product((False, True), repeat=len(unknown)):
        filled = list(values)
        for i, v in zip(unknown, fill):
            filled[i] = v
        outcomes.add(bool(formula(*filled)))
        if len(outcomes) > 1:
            return None
    return outcomes.pop()


def prefeval_errors(acknowledges: Tri, hallucinates: Tri, violates: Tri, helpful: Tri) -> dict[str, Tri]:
    """PrefEval's four error types from its four yes/no checks (A, H, V, U)."""
    return {
        "e_ur": decided(lambda u: not u, helpful),
        "e_puv": decided(lambda a, v, u: (not a) and v and u, acknowledges, violates, helpful),
        "e_hp": decided(lambda a, h, v, u: a and h and v and u, acknowledges, hallucinates, violates, helpful),
        "e_ir": decided(lambda a, h, v, u: a and (not h) and v and u, acknowledges, hallucinates, violates, helpful),
    }


def needs_hallucination_check(acknowledges: Tri, violates: Tri, helpful: Tri) -> bool:
    """H only matters when A ∧ V ∧ U may hold: otherwise e_hp and e_ir are both 0 whatever H says."""
    return decided(lambda a, v, u: a and v and u, acknowledges, violates, helpful) is not False


def item_indicators(verdicts: Mapping[str, Tri]) -> dict[str, Tri]:
    """All Table 1 indicators of one response from its rubric verdicts (missing rubrics are unknown).

    Acc_PF (Eq. 5) = 1 − max of the four errors; Acc_DA (Eq. 4) = max(I(m_dm), I(m_ie), I(m_th)).
    """
    v = {k: verdicts.get(k) for k in ("acknowledges", "hallucinates", "violates", "helpful", "deep_mining",
                                        "innovative_expansion", "thoughtfulness", "misleading")}
    errors = prefeval_errors(v["acknowledges"], v["hallucinates"], v["violates"], v["helpful"])
    out: dict[str, Tri] = dict(errors)
    out["acc_pf"] = decided(lambda *e: not any(e), *errors.values())
    out["m_dm"], out["m_ie"], out["m_th"] = v["deep_mining"], v["innovative_expansion"], v["thoughtfulness"]
    out["acc_da"] = decided(lambda a, b, c: a or b or c, out["m_dm"], out["m_ie"], out["m_th"])
    out["acc_mis"] = v["misleading"]
    return out


@dataclass(frozen=True)
class Estimate:
    """A percentage over the items where the indicator is known, with its bootstrap 95% CI."""

    value: float | None  # percent, None when no item is known
    low: float | None
    high: float | None
    n: int  # items that count
    missing: int  # items whose indicator is unknown (unreadable verdicts)

    def format(self, digits: int = 1) -> str:
        if self.value is None:
            return "–"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "missing": self.missing}


def _known(values: Iterable[float | bool | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted data (numpy's default), q in [0, 1]."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (resampling items with replacement)."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if len(set(values)) == 1:
        return float(values[0]), float(values[0])
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
    alpha = (1 - level) / 2
    return _percentile(means, alpha), _percentile(means, 1 - alpha)


def estimate(values: Sequence[Tri | float], n_boot: int = 2000, seed: int = 0, scale: float = 100.0) -> Estimate:
    """Mean of the known values ×scale (percent for indicators) with its bootstrap CI."""
    known = _known(values)
    missing = len(values) - len(known)
    if not known:
        return Estimate(None, None, None, 0, missing)
    lo, hi = bootstrap_ci(known, n_boot=n_boot, seed=seed)
    mean = sum(known) / len(known)
    return Estimate(mean * scale, lo * scale, hi * scale, len(known), missing)


def summarize(indicators: Sequence[Mapping[str, Tri]], metrics: Sequence[str] = ALL_METRICS,
              n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """One Estimate per metric over a method's items."""
    return {m: estimate([ind.get(m) for ind in indicators], n_boot=n_boot, seed=seed) for m in metrics}


# -- paired comparisons ---------------------------------------------------------------------------


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for k successes in n trials at p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedTest:
    """B − A on the items both know: mean difference (×scale), its bootstrap CI, and p-values."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_bootstrap: float
    b_only: int  # items where B is 1 and A is 0 (discordant pairs, McNemar's b)
    a_only: int
    p_mcnemar: float  # exact McNemar / sign test on the discordant pairs


def paired_test(a: Sequence[Tri | float], b: Sequence[Tri | float], n_boot: int = 5000, seed: int = 0,
                scale: float = 100.0, level: float = 0.95) -> PairedTest:
    """Does B differ from A on the same items? Paired bootstrap of the mean difference + exact sign test."""
    if len(a) != len(b):
        raise ValueError("paired_test needs the same items in the same order for A and B")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        raise ValueError("no item has a known value in both A and B")
    n = len(pairs)
    diffs = [y - x for x, y in pairs]
    mean_diff = sum(diffs) / n
    rng = random.Random(seed)
    boots = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(n_boot))
    alpha = (1 - level) / 2
    if len(set(diffs)) == 1:
        lo = hi = mean_diff
        p_boot = 1.0 if mean_diff == 0 else 0.0
    else:
        lo, hi = _percentile(boots, alpha), _percentile(boots, 1 - alpha)
        below = sum(1 for d in boots if d <= 0) / n_boot
        above = sum(1 for d in boots if d >= 0) / n_boot
        p_boot = min(1.0, 2 * min(below, above))
    b_only = sum(1 for d in diffs if d > 0)
    a_only = sum(1 for d in diffs if d < 0)
    return PairedTest(
        n=n, mean_a=scale * sum(x for x, _ in pairs) / n, mean_b=scale * sum(y for _, y in pairs) / n,
        diff=scale * mean_diff, low=scale * lo, high=scale * hi, p_bootstrap=p_boot,
        b_only=b_only, a_only=a_only, p_mcnemar=binom_two_sided(b_only, b_only + a_only),
    )


def verdict_of(test: PairedTest, lower_is_better: bool = False, alpha: float = 0.05) -> str:
    """'B better', 'A better' or 'no significant difference', requiring both tests to agree at alpha."""
    significant = test.p_bootstrap < alpha and test.p_mcnemar < alpha and not (test.low <= 0 <= test.high)
    if not significant or test.diff == 0:
        return "no significant difference"
    b_higher = test.diff > 0
    return "B better" if b_higher != lower_is_better else "A better"


def pairwise_win_rate(wins_b: int, wins_a: int, ties: int) -> tuple[float, float]:
    """Share of decided head-to-head judgments won by B (ties excluded) and its sign-test p-value."""
    decided_n = wins_a + wins_b
    rate = wins_b / decided_n if decided_n else 0.5
    return rate, binom_two_sided(wins_b, decided_n)


def turn_means(ratings: Iterable[tuple[int, float]], turns: int = 10) -> list[float | None]:
    """Mean rating per turn k = 1..turns from (turn, rating) pairs; None where no rating exists."""
    sums = [0.0] * turns
    counts = [0] * turns
    for turn, rating in ratings:
        if 1 <= turn <= turns:
            sums[turn - 1] += rating
            counts[turn - 1] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]
