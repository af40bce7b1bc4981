"""AlignXplore's offline metrics (paper Eq. 5, 6): Acc_jud and Acc_gen of a preference description d over a
test set of (signals, x, y_w, y_l), for the inferred d and the Null / E / Golden baselines.

R_jud reads the judge's probabilities of "Response A" vs "Response B" (Engine.choice_logprobs), with the A/B
order drawn per item from the seed; R_gen compares log p(y|x,d) − log p(y|x) of y_w and y_l. Both are
multiplied by R_format (1 for the baselines). Results are written per item as they come (resumable).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.engines.base import Engine
from alignment.errors import CdraError
from alignment.explicit_extraction import explicit_from_signals
from alignment.preference_inference import PreferenceInferrer
from alignment.preferences import PreferenceDescription
from alignment.prompts import render
from alignment.prompts.preference import (
    GEN_WITH_PROMPT,
    GEN_WITHOUT_PROMPT,
    JUDGE_OPTIONS,
    JUDGE_PROMPT,
    NO_PREFERENCE,
    format_signals,
)
from alignment.signals import PreferenceTestItem, read_testset

METHODS = ("null", "signals", "golden", "explicit", "inferred")
METHOD_LABELS = {"null": "Null (no description)", "signals": "E (raw signals)", "golden": "Golden (persona)",
                 "explicit": "Explicit extractor (no model)", "inferred": "Inferred (AlignXplore)"}


# -- the two rewards (pure given the model scores) ---------------------------------------------------

@dataclass(frozen=True)
class JudgeOutcome:
    """The judge's log-probabilities of the two labels, and which label y_w had."""

    logp_a: float
    logp_b: float
    w_is_a: bool

    @property
    def p_w(self) -> float:
        """P(judge picks y_w) normalized over the two options."""
        lw, ll = (self.logp_a, self.logp_b) if self.w_is_a else (self.logp_b, self.logp_a)
        return 1.0 / (1.0 + math.exp(max(-700.0, min(700.0, ll - lw))))

    @property
    def prefers_w(self) -> bool:
        lw, ll = (self.logp_a, self.logp_b) if self.w_is_a else (self.logp_b, self.logp_a)
        return lw > ll


def r_jud(outcome: JudgeOutcome, r_format: float = 1.0) -> float:
    """Eq. 6: 1[R_jud(y_w|x,d,y_w,y_l) > R_jud(y_l|x,d,y_w,y_l)] · R_format."""
    return float(outcome.prefers_w) * r_format


def gen_margin(w_with: float, w_without: float, l_with: float, l_without: float) -> float:
    """log R(y_w|x,d)/R(y_w|x) − log R(y_l|x,d)/R(y_l|x): > 0 means d moved the model toward y_w."""
    return (w_with - w_without) - (l_with - l_without)


def r_gen(margin: float, r_format: float = 1.0) -> float:
    """Eq. 5: 1[margin > 0] · R_format."""
    return float(margin > 0) * r_format


# -- model calls -------------------------------------------------------------------------------------

def judge_conversation(post: str, preference: str, response_a: str, response_b: str) -> list:
    return render(JUDGE_PROMPT, prompt=post, preference=preference or NO_PREFERENCE,
                  response_a=response_a, response_b=response_b)


def judge_pair(judge: Engine, post: str, preference: str, chosen: str, rejected: str, w_is_a: bool) -> JudgeOutcome:
    """Ask the judge which response the user prefers, reading the probabilities of the two labels."""
    a, b = (chosen, rejected) if w_is_a else (rejected, chosen)
    logp_a, logp_b = judge.choice_logprobs(judge_conversation(post, preference, a, b), list(JUDGE_OPTIONS))
    return JudgeOutcome(float(logp_a), float(logp_b), w_is_a)


def gen_scores(engine: Engine, post: str, preference: str, chosen: str, rejected: str) -> float:
    """The R_gen margin from four log-probabilities of the reply model."""
    with_d = render(GEN_WITH_PROMPT, preference=preference or NO_PREFERENCE, post=post)
    without = render(GEN_WITHOUT_PROMPT, post=post)
    s = engine.score([with_d, without, with_d, without], [chosen, chosen, rejected, rejected])
    return gen_margin(s[0].logprob, s[1].logprob, s[2].logprob, s[3].logprob)


def a_is_chosen(item_id: str, seed: int) -> bool:
    """The per-item A/B order: random, reproducible from the seed, the same for every method."""
    return random.Random(f"{seed}/{item_id}").random() < 0.5


# -- evaluation --------------------------------------------------------------------------------------

@dataclass
class PrefEvalConfig:
    """Which descriptions and metrics, how many items, and the seed of the A/B order."""

    methods: tuple[str, ...] = METHODS
    metrics: tuple[str, ...] = ("jud", "gen")
    seed: int = 0
    limit: int | None = None
    max_signal_chars: int = 400


@dataclass
class MethodSummary:
    method: str
    label: str
    n: int
    acc_jud: float | None
    acc_gen: float | None
    format_rate: float
    failed: int
    acc_jud_ignoring_format: float | None
    mean_p_w: float | None


@dataclass
class PrefEvalReport:
    rows: list[dict] = field(default_factory=list)
    summaries: list[MethodSummary] = field(default_factory=list)

    def table(self) -> str:
        """Markdown: one line per description source."""
        lines = ["| description | N | Acc_jud | Acc_gen | R_format | failed | Acc_jud w/o R_format | mean P(y_w) |",
                 "|---|---|---|---|---|---|---|---|"]

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{100 * v:.1f}"

        for s in self.summaries:
            lines.append(f"| {s.label} | {s.n} | {pct(s.acc_jud)} | {pct(s.acc_gen)} | {pct(s.format_rate)} | "
                         f"{s.failed} | {pct(s.acc_jud_ignoring_format)} | "
                         f"{'–' if s.mean_p_w is None else f'{s.mean_p_w:.3f}'} |")
        return "\n".join(lines)


def _description(method: str, item: PreferenceTestItem, inferrer: PreferenceInferrer | None,
                 max_chars: int) -> tuple[str | None, float, bool, str | None]:
    """(description text or None when not applicable, R_format, failed, error)."""
    if method == "null":
        return NO_PREFERENCE, 1.0, False, None
    if method == "signals":
        return format_signals(item.signals, max_chars), 1.0, False, None
    if method == "golden":
        return (item.golden, 1.0, False, None) if item.golden else (None, 1.0, False, None)
    if method == "explicit":  # what the fast pattern extractor alone finds in the user's own words
        return PreferenceDescription(statements=explicit_from_signals(item.signals)).as_text(), 1.0, False, None
    if method == "inferred":
        if inferrer is None:
            raise CdraError("the inferred description needs a preference model (inferrer)")
        result = inferrer.infer(item.signals)
        if result.failed:
            return "", 0.0, True, result.error
        return result.description.as_text(), result.r_format, False, None
    raise CdraError(f"unknown description method {method!r}: use {', '.join(METHODS)}")


def evaluate_item(item: PreferenceTestItem, method: str, judge: Engine, gen: Engine | None,
                  inferrer: PreferenceInferrer | None, config: PrefEvalConfig) -> dict | None:
    """One (item, method) row: the description, its R_format, and the rewards asked for (None: the item has no
    comparison, only a gold preference — training/pref_eval.py measures recovery on those)."""
    if not item.has_comparison:
        return None
    text, r_format, failed, error = _description(method, item, inferrer, config.max_signal_chars)
    if text is None:
        return None
    row: dict[str, Any] = {"item": item.id, "method": method, "r_format": r_format, "failed": failed,
                           "error": error, "description": text if method == "inferred" else None}
    if "jud" in config.metrics:
        if failed:
            row["jud"] = {"reward": 0.0, "p_w": None, "w_is_a": None, "prefers_w": None}
        else:
            outcome = judge_pair(judge, item.post, text, item.chosen, item.rejected, a_is_chosen(item.id, config.seed))
            row["jud"] = {"reward": r_jud(outcome, r_format), "p_w": outcome.p_w, "w_is_a": outcome.w_is_a,
                          "prefers_w": outcome.prefers_w}
    if "gen" in config.metrics:
        if failed or gen is None:
            row["gen"] = {"reward": 0.0 if failed else None, "margin": None}
        else:
            margin = gen_scores(gen, item.post, text, item.chosen, item.rejected)
            row["gen"] = {"reward": r_gen(margin, r_format), "margin": margin}
    return row


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def summarize(rows: Sequence[dict], methods: Sequence[str]) -> list[MethodSummary]:
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        jud = [r["jud"] for r in mine if "jud" in r]
        out.append(MethodSummary(
            method=method, label=METHOD_LABELS.get(method, method), n=len(mine),
            acc_jud=_mean(j["reward"] for j in jud) if jud else None,
            acc_gen=_mean(r["gen"]["reward"] for r in mine if "gen" in r),
            format_rate=_mean(r["r_format"] for r in mine) or 0.0,
            failed=sum(bool(r["failed"]) for r in mine),
            acc_jud_ignoring_format=_mean(float(j["prefers_w"]) if j["prefers_w"] is not None else 0.0 for j in jud)
            if jud else None,
            mean_p_w=_mean(j["p_w"] for j in jud)))
    return out


def _done_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: redo from here
    return rows


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _check_setup(path: Path, setup: dict) -> None:
    """Resume only a run with the same models and settings; otherwise say so instead of mixing results."""
    setup = json.loads(json.dumps(setup))
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != setup:
            changed = sorted(k for k in set(previous) | set(setup) if previous.get(k) != setup.get(k))
            raise CdraError(f"{path.parent} holds results of a different setup ({', '.join(changed)} changed): "
                            "pass another --out directory or delete it")
        return
    _atomic_write(path, json.dumps(setup, indent=2))


def evaluate_preferences(
    items: Sequence[PreferenceTestItem],
    judge: Engine,
    gen: Engine | None = None,
    inferrer: PreferenceInferrer | None = None,
    config: PrefEvalConfig | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> PrefEvalReport:
    """Acc_jud / Acc_gen per description method over ``items``.

    With ``out_dir`` every row is appended to ``rows.jsonl`` as soon as it is known and a rerun skips the
    rows already there (resume); ``summary.json`` and ``summary.md`` are written atomically at the end.
    """
    config = config or PrefEvalConfig()
    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise CdraError(f"unknown description method(s) {', '.join(sorted(unknown))}: use {', '.join(METHODS)}")
    items = list(items)[: config.limit] if config.limit else list(items)
    if "gen" in config.metrics and gen is None:
        gen = judge
    rows_path = None
    rows: list[dict] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _check_setup(out / "run.json", {
            "judge": judge.description, "judge_version": judge.version, "gen": gen.description if gen else None,
            "preference": inferrer.engine.description if inferrer else None,
            "inference": asdict(inferrer.config) if inferrer else None, "seed": config.seed,
            "metrics": list(config.metrics), "max_signal_chars": config.max_signal_chars})
        rows_path = out / "rows.jsonl"
        rows = _done_rows(rows_path)
        _atomic_write(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
    done = {(r["item"], r["method"]) for r in rows}
    work = [(item, method) for item in items for method in config.methods if (item.id, method) not in done]
    iterator = progress(work) if progress else work
    for item, method in iterator:
        row = evaluate_item(item, method, judge, gen, inferrer, config)
        if row is None:
            continue
        rows.append(row)
        if rows_path is not None:
            with rows_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
    wanted = {i.id for i in items}
    rows = [r for r in rows if r["item"] in wanted and r["method"] in config.methods]
    report = PrefEvalReport(rows=rows, summaries=summarize(rows, config.methods))
    if out_dir is not None:
        out = Path(out_dir)
        _atomic_write(out / "summary.json", json.dumps([asdict(s) for s in report.summaries], indent=2))
        _atomic_write(out / "summary.md", report.table() + "\n")
    return report


def evaluate_for_report(judge: Engine, preference: Engine, testset: str | Path, limit: int | None = None,
                        n_boot: int = 1000, seed: int = 0) -> dict:
    """For `cdra eval run --prefs-testset`: rows of {label, acc_jud, acc_gen (value/low/high in %), n}.

    The caller (app/reports.py) resolves the judge and preference-inference roles through its registry.
    """
    from alignment.metrics import estimate
    from alignment.preference_inference import InferenceConfig

    items = read_testset(testset)
    inferrer = PreferenceInferrer(preference, InferenceConfig(seed=seed))
    report = evaluate_preferences(items, judge, judge, inferrer, PrefEvalConfig(seed=seed, limit=limit))
    out = []
    for summary in report.summaries:
        mine = [r for r in report.rows if r["method"] == summary.method]
        out.append({"label": summary.label, "n": summary.n,
                    "acc_jud": estimate([r["jud"]["reward"] for r in mine], n_boot=n_boot, seed=seed).as_dict(),
                    "acc_gen": estimate([r["gen"]["reward"] for r in mine if r["gen"]["reward"] is not None],
                                        n_boot=n_boot, seed=seed).as_dict()})
    return {"rows": out, "table": report.table()}
