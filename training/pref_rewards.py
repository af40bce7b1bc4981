"""Rewards for training the preference inferrer where a gold preference exists (AlignXplore Eq. 6-7, 9-11):
the gold sentence as statement lines, "a statement states the gold" (same stance, embedding agreement >= a
threshold calibrated on held-out pairs), R_agree, R_jud (only with a judge that passes the sanity check).

Pure on strings and similarity matrices; ``GoldScorer`` adds the packaged all-MiniLM-L6-v2 embeddings.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alignment.errors import CdraError
from alignment.formats import StatementLine
from alignment.preference_inference import InferenceConfig
from alignment.preferences import PreferenceStatement, subject_key

#: the declared inference format's dimensions, as the app's inferrer is configured
FORMAT_DIMENSIONS: tuple[str, ...] = tuple(InferenceConfig().dimensions)
#: the explicit extractor's wider dimensions folded onto the format's (PrefEval's tastes are mostly "interests")
DIMENSION_MAP = {"interests": "values", "budget": "values", "lifestyle": "values", "tone": "style",
                 "format": "style", "general": "values"}
#: the threshold used until one is calibrated (`calibrate_threshold` on held-out pairs; docs/EVALUATION.md)
DEFAULT_THRESHOLD = 0.658  # calibrated: `cdra train prefs data` card (TPR 0.93, FPR 0.05 train; 0.95 / 0.06 held-out)
_FIRST_PERSON = re.compile(r"^(?:as an? [^,]+,\s*)?(?:i|i'm|i am|i've|i have|my)\s+", re.IGNORECASE)
_NEGATIVE = re.compile(r"\b(?:avoid|dislike|hate|detest|despise|can't|cannot|don't|do not|never|not|no|aversion|"
                       r"allergic|intoleran\w*|phobia|against|refuse)\b", re.IGNORECASE)


def format_dimension(dimension: str, allowed: Sequence[str] = FORMAT_DIMENSIONS) -> str:
    """A dimension the declared format accepts (unknown ones fold onto ``values``)."""
    dim = DIMENSION_MAP.get(dimension, dimension)
    return dim if dim in allowed else ("values" if "values" in allowed else allowed[0])


_PRONOUNS = {"my": "their", "me": "them", "myself": "themselves", "mine": "theirs", "i": "they", "i'm": "they're",
             "i've": "they've", "i'd": "they'd"}


def third_person(text: str) -> str:
    """A subject about the user, not in their voice ("for my home" -> "for their home")."""
    return re.sub(r"\b(?:myself|mine|my|me|I'm|I've|I'd|I)\b",
                  lambda m: _PRONOUNS[m.group(0).lower()], text)


def clip_words(text: str, max_words: int) -> str:
    words = " ".join(text.replace("|", "/").replace("<", "(").split()).split(" ")
    return " ".join(words[:max_words]).rstrip(",;:-") if len(words) > max_words else " ".join(words)


def gold_statements(gold: str, confidence: float = 0.8, max_words: int = 14,
                    dimensions: Sequence[str] = FORMAT_DIMENSIONS) -> list[StatementLine]:
    """The data set's preference sentence as the format's statement lines (the SFT target d).

    The project's explicit extractor reads the sentence (it reads 606 of PrefEval's 610 preferences);
    for the rest the sentence itself, without its first-person lead, is the subject.
    """
    from alignment.explicit_extraction import _dimension, extract_explicit

    text = " ".join(str(gold).strip().strip('"').split())
    if not text:
        raise CdraError("an empty gold preference")
    found = extract_explicit(text, "gold")
    lines = [StatementLine(s.stance, format_dimension(s.dimension, dimensions),
                           clip_words(third_person(s.subject), max_words), confidence) for s in found if s.subject.strip()]
    if not lines:
        subject = _FIRST_PERSON.sub("", text.split(". ")[0]).rstrip(".")
        subject = re.sub(r"^(?:really |strongly |always )?(?:need|require|want|must have|look for)\s+", "", subject)
        stance = "avoids" if _NEGATIVE.search(subject.split(",")[0]) else "prefers"
        subject = re.sub(r"^(?:am |are )?allergic to (.+)$", r"\1 (allergy)", subject, flags=re.IGNORECASE)
        lines = [StatementLine(stance, format_dimension(_dimension(subject), dimensions),
                               clip_words(third_person(subject), max_words), confidence)]
    unique: dict[tuple[str, str], StatementLine] = {}
    for line in lines:
        unique.setdefault((line.stance, line.subject.lower()), line)
    return list(unique.values())


def statement_text(stance: str, subject: str) -> str:
    """The readable text memory stores for a statement ("Avoids spicy food"): what agreement compares."""
    return PreferenceStatement.make(stance, subject).text  # type: ignore[arg-type]


@dataclass(frozen=True)
class Agreement:
    """Which statements state a gold statement, and which gold statements are stated."""

    states: tuple[bool, ...]  # per produced statement
    recovered: tuple[bool, ...]  # per gold statement
    best: tuple[float, ...] = ()  # per produced statement: best same-stance similarity

    @property
    def recall(self) -> float:
        return sum(self.recovered) / len(self.recovered) if self.recovered else 0.0

    @property
    def precision(self) -> float:
        return sum(self.states) / len(self.states) if self.states else 0.0

    @property
    def any_recovered(self) -> bool:
        return any(self.recovered)

    @property
    def junk(self) -> int:
        return len(self.states) - sum(self.states)


def agreement(stances: Sequence[str], gold_stances: Sequence[str], sims: np.ndarray, threshold: float) -> Agreement:
    """``sims[i, j]``: cosine of produced statement i and gold statement j. A statement states gold j when the
    stances are equal and the cosine reaches ``threshold`` ("Prefers X" never states "Avoids X")."""
    sims = np.asarray(sims, dtype=float).reshape(len(stances), len(gold_stances))
    same = np.array([[a == b for b in gold_stances] for a in stances], dtype=bool).reshape(sims.shape)
    masked = np.where(same, sims, -1.0)
    hits = masked >= threshold
    best = tuple(float(v) for v in (masked.max(axis=1) if masked.size else np.zeros(len(stances))))
    return Agreement(tuple(bool(v) for v in hits.any(axis=1)) if len(stances) else (),
                     tuple(bool(v) for v in hits.any(axis=0)) if len(stances) else tuple(False for _ in gold_stances),
                     best)


def r_agree(result: Agreement, r_format: float = 1.0) -> float:
    """Gold-agreement reward: R_format x recall x precision (1 = every gold stated, nothing else)."""
    return float(r_format) * result.recall * result.precision


def r_agree_soft(result: Agreement, r_format: float = 1.0) -> float:
    """A graded form for GRPO groups whose binary rewards tie: mean best same-stance cosine x precision-ish."""
    if not result.best:
        return 0.0
    graded = float(np.mean([max(0.0, b) for b in result.best]))
    return float(r_format) * (0.5 * r_agree(result) + 0.5 * graded)


# -- the threshold ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    threshold: float
    tpr: float
    fpr: float
    positives: int
    negatives: int

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "tpr": self.tpr, "fpr": self.fpr, "positives": self.positives,
                "negatives": self.negatives}


def rates(pos: Sequence[float], neg: Sequence[float], threshold: float) -> tuple[float, float]:
    """(true positive rate, false positive rate) of ``sim >= threshold``."""
    tpr = sum(p >= threshold for p in pos) / len(pos) if pos else 0.0
    fpr = sum(n >= threshold for n in neg) / len(neg) if neg else 0.0
    return tpr, fpr


def calibrate_threshold(pos: Sequence[float], neg: Sequence[float], max_fpr: float = 0.1) -> Calibration:
    """The threshold with the best Youden J (TPR - FPR) among those whose FPR is at most ``max_fpr``."""
    if not pos or not neg:
        raise CdraError("calibrating the agreement threshold needs positive and negative pairs")
    best: tuple[float, float] | None = None
    for t in sorted({round(float(v), 4) for v in [*pos, *neg]}):
        tpr, fpr = rates(pos, neg, t)
        if fpr <= max_fpr and (best is None or tpr - fpr > best[1]):
            best = (t, tpr - fpr)
    threshold = best[0] if best else max(neg) + 1e-4
    tpr, fpr = rates(pos, neg, threshold)
    return Calibration(threshold, tpr, fpr, len(pos), len(neg))


def shares_content(a: str, b: str) -> bool:
    """At least two content stems in common (or all of a one-word subject): the lexical label of a pair."""
    ka, kb = subject_key(a), subject_key(b)
    common = ka & kb
    return len(common) >= 2 or (bool(common) and min(len(ka), len(kb)) == 1)


# -- the embedding scorer -----------------------------------------------------------------------------
@dataclass
class GoldScorer:
    """Agreement of produced statements with gold statements by the packaged sentence embeddings."""

    threshold: float = DEFAULT_THRESHOLD
    embedder: object | None = None
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def _embedder(self):
        if self.embedder is None:
            from memory.embeddings import get_embedder

            self.embedder = get_embedder()
        return self.embedder

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for text, vec in zip(missing, self._embedder().embed(list(missing))):
                self._cache[text] = vec
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return self.vectors(a) @ self.vectors(b).T

    def agreement(self, produced: Sequence[tuple[str, str]], golds: Sequence[StatementLine]) -> Agreement:
        """``produced``: (stance, subject) pairs; ``golds``: the gold statement lines."""
        texts = [statement_text(s, subj) for s, subj in produced]
        gold_texts = [statement_text(g.stance, g.subject) for g in golds]
        return agreement([s for s, _ in produced], [g.stance for g in golds], self.similarity(texts, gold_texts),
                         self.threshold)


# -- R_jud and the judge's sanity check -----------------------------------------------------------------
@dataclass(frozen=True)
class SanityCheck:
    """Does a correct description help the judge? Golden must beat Null with non-overlapping 95% CIs."""

    null: dict
    golden: dict
    n: int
    passed: bool
    judge: str = ""

    def line(self) -> str:
        def fmt(e: dict) -> str:
            return "–" if e["value"] is None else f"{e['value']:.1f} [{e['low']:.1f}, {e['high']:.1f}]"

        verdict = "passes" if self.passed else "FAILS"
        return (f"judge sanity check on {self.n} comparisons: Acc_jud Null {fmt(self.null)} vs Golden "
                f"{fmt(self.golden)} -> {verdict} (Golden above Null with non-overlapping 95% CIs)")


def sanity_check(null_rewards: Sequence[float], golden_rewards: Sequence[float], judge: str = "",
                 n_boot: int = 2000, seed: int = 0) -> SanityCheck:
    from alignment.metrics import estimate

    null, golden = estimate(list(null_rewards), n_boot, seed), estimate(list(golden_rewards), n_boot, seed)
    passed = bool(null.high is not None and golden.low is not None and golden.low > null.high)
    return SanityCheck(null.as_dict(), golden.as_dict(), len(golden_rewards), passed, judge)


def run_sanity_check(judge, comparisons: Sequence[dict], seed: int = 0, n_boot: int = 2000) -> SanityCheck:
    """The check on ``comparisons`` ({id, post, chosen, rejected, golden}) with the judge engine."""
    from alignment.preference_metrics import a_is_chosen, judge_pair, r_jud
    from alignment.prompts.preference import NO_PREFERENCE

    if not comparisons:
        raise CdraError("the judge sanity check needs comparisons (post, chosen, rejected) with a gold preference")
    null, golden = [], []
    for c in comparisons:
        order = a_is_chosen(c["id"], seed)
        null.append(r_jud(judge_pair(judge, c["post"], NO_PREFERENCE, c["chosen"], c["rejected"], order)))
        golden.append(r_jud(judge_pair(judge, c["post"], c["golden"], c["chosen"], c["rejected"], order)))
    return sanity_check(null, golden, getattr(judge, "description", ""), n_boot, seed)


def jud_reward(judge, post: str, description: str, chosen: str, rejected: str, r_format: float,
               rng: random.Random) -> float:
    """Eq. 6 for one rollout: the judge, told d, picks y_w over y_l (A/B order drawn from ``rng``) x R_format."""
    from alignment.preference_metrics import judge_pair, r_jud

    if r_format <= 0 or not description.strip():
        return 0.0
    return r_jud(judge_pair(judge, post, description, chosen, rejected, rng.random() < 0.5), r_format)
