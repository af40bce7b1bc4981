"""The DeepPref data card: what a build holds (per domain, depth, scores) and what it cost (pruning,
unreadable replies, model calls), as JSON, Markdown and a histogram PNG.

Computed from the per-scenario results when they exist (trees, counters) and from the records alone
otherwise, so `cdra data stats` works on any directory of D_Rea/D_RFT files.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.council import PRUNE_REASONS
from training.scenarios import write_bytes_atomic, write_text_atomic

CARD_JSON = "data_card.json"
CARD_MD = "data_card.md"
HIST_PNG = "score_histograms.png"
SCORE_BINS = [round(-1.0 + 0.2 * i, 1) for i in range(11)]  # step scores lie in [-1, 1]


def _histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(counts)):
            last = i == len(counts) - 1
            if edges[i] <= v < edges[i + 1] or (last and v == edges[-1]):
                counts[i] += 1
                break
    return counts


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def compute_card(results: Sequence[dict[str, Any]], rea: Sequence[dict[str, Any]], rft: Sequence[dict[str, Any]],
                 scenarios_total: int | None = None, failed: int = 0) -> dict[str, Any]:
    """The card as a JSON-ready dict (see the module docstring)."""
    per_domain: dict[str, dict[str, Any]] = defaultdict(lambda: {"scenarios": 0, "paths": 0, "rft": 0})
    for r in results:
        per_domain[r["scenario"]["domain"]]["scenarios"] += 1
    domain_totals: dict[str, list[float]] = defaultdict(list)
    for rec in rea:
        per_domain[rec["domain"]]["paths"] += 1
        domain_totals[rec["domain"]].append(rec["total_score"])
    for rec in rft:
        per_domain[rec["domain"]]["rft"] += 1
    for domain, totals in domain_totals.items():
        per_domain[domain]["mean_total_score"] = round(statistics.fmean(totals), 4)

    step_scores = [s for rec in rea for s in rec["scores"][:-1]]
    answer_scores = [rec["scores"][-1] for rec in rea if rec["scores"]]
    totals = [rec["total_score"] for rec in rea]
    depths = [len(rec["steps"]) for rec in rea]
    card: dict[str, Any] = {
        "scenarios": {
            "total": scenarios_total if scenarios_total is not None else len({rec["scenario_id"] for rec in rea}),
            "finished": len(results) if results else None,
            "with_paths": len({rec["scenario_id"] for rec in rea}),
            "failed": failed,
        },
        "records": {"rea": len(rea), "rft": len(rft),
                    "splits": dict(Counter(rec["split"] for rec in rea)),
                    "rft_splits": dict(Counter(rec["split"] for rec in rft))},
        "per_domain": {d: per_domain[d] for d in sorted(per_domain)},
        "depth": {"mean": round(statistics.fmean(depths), 3) if depths else None,
                  "counts": {str(k): v for k, v in sorted(Counter(depths).items())}},
        "scores": {
            "steps": _summary(step_scores), "answers": _summary(answer_scores), "path_totals": _summary(totals),
            "bins": SCORE_BINS,
            "steps_histogram": _histogram(step_scores, SCORE_BINS),
            "answers_histogram": _histogram(answer_scores, SCORE_BINS),
        },
    }
    if results:
        card.update(_tree_counters(results))
    return card


def _tree_counters(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    trees = [r["tree"] for r in results if r.get("tree")]
    proposed = sum(t["stats"]["proposed"] for t in trees)
    pruned = {reason: sum(t["stats"]["pruned"].get(reason, 0) for t in trees) for reason in PRUNE_REASONS}
    values = [n["value"] for t in trees for n in t["nodes"] if n.get("value") is not None]
    annotation = [r["annotation"] for r in results]
    n = max(1, len(trees))
    return {
        "tree": {
            "trees": len(trees),
            "prompt_too_long": sum(1 for r in results if r.get("error")),
            "nodes_proposed": proposed,
            "nodes_pruned": pruned,
            "pruning_rate": round(sum(pruned.values()) / proposed, 4) if proposed else None,
            "value_parse_failures": sum(t["stats"]["value_parse_failures"] for t in trees),
            "thought_parse_failures": sum(t["stats"].get("thought_parse_failures", 0) for t in trees),
            "repaired": sum(t["stats"].get("repaired", 0) for t in trees),
            "value_retries": sum(t["stats"]["value_retries"] for t in trees),
            "empty_answers": sum(t["stats"]["empty_answers"] for t in trees),
            "paths_answered": sum(len(t["paths"]) for t in trees),
            "values": _summary(values),
            "teacher_calls_per_tree": round(sum(t["stats"]["model_calls"] for t in trees) / n, 2),
            "teacher_seconds_per_tree": round(sum(t["stats"]["seconds"] for t in trees) / n, 2),
        },
        "annotation": {
            "judgments": sum(a["judgments"] for a in annotation),
            "parse_failures": sum(a["parse_failures"] for a in annotation),
            "retries": sum(a["retries"] for a in annotation),
            "dropped_paths": sum(a["dropped_paths"] for a in annotation),
            "repaired": sum(a.get("repaired", 0) for a in annotation),
            "evaluator_calls_per_tree": round(sum(a["model_calls"] for a in annotation) / n, 2),
        },
    }


def render_markdown(card: dict[str, Any]) -> str:
    sc, rec, depth, scores = card["scenarios"], card["records"], card["depth"], card["scores"]
    lines = [
        "# DeepPref data card",
        "",
        f"* scenarios: {sc['total']} (finished {sc['finished']}, with paths {sc['with_paths']}, failed {sc['failed']})",
        f"* D_Rea paths: {rec['rea']} (splits {rec['splits']}); D_RFT: {rec['rft']} (splits {rec['rft_splits']})",
        f"* mean depth (reasoning steps per path): {depth['mean']} (counts {depth['counts']})",
        f"* step scores: {scores['steps']}; answer scores: {scores['answers']}; path totals: {scores['path_totals']}",
    ]
    if "tree" in card:
        t, a = card["tree"], card["annotation"]
        lines += [
            f"* nodes proposed: {t['nodes_proposed']}, pruned: {t['nodes_pruned']}, pruning rate: {t['pruning_rate']}",
            f"* values V: {t['values']}; unreadable value replies: {t['value_parse_failures']} "
            f"(retried thoughts {t['value_retries']}); unreadable thoughts: {t.get('thought_parse_failures', 0)}; "
            f"read leniently (unconstrained teacher): {t.get('repaired', 0)}; empty answers: {t['empty_answers']}",
            f"* critiques: {a['judgments']} judged, {a['parse_failures']} unreadable replies, {a['retries']} retries, "
            f"{a['dropped_paths']} paths dropped, {a.get('repaired', 0)} read leniently (unconstrained evaluator)",
            f"* model calls per tree: teacher {t['teacher_calls_per_tree']}, evaluator {a['evaluator_calls_per_tree']}; "
            f"teacher seconds per tree {t['teacher_seconds_per_tree']}",
        ]
    lines += ["", "| domain | scenarios | paths | RFT | mean Σr |", "|---|---|---|---|---|"]
    for domain, row in card["per_domain"].items():
        lines.append(f"| {domain} | {row['scenarios']} | {row['paths']} | {row['rft']} | {row.get('mean_total_score', '-')} |")
    lines += ["", "| score bin | steps | answers |", "|---|---|---|"]
    bins = scores["bins"]
    for i, (s, a) in enumerate(zip(scores["steps_histogram"], scores["answers_histogram"])):
        lines.append(f"| [{bins[i]}, {bins[i + 1]}{']' if i == len(bins) - 2 else ')'} | {s} | {a} |")
    lines += ["", f"![score histograms]({HIST_PNG})", ""]
    return "\n".join(lines)


def plot_histograms(rea: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], path: Path) -> None:
    """Step scores, path totals Σ_j r^j and the council's values V, side by side."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [n["value"] for r in results if r.get("tree") for n in r["tree"]["nodes"] if n.get("value") is not None]
    panels = [
        ("step scores r^j (answers included)", [s for rec in rea for s in rec["scores"]], SCORE_BINS),
        ("path totals Σ_j r^j", [rec["total_score"] for rec in rea], 12),
        ("thought values V (teacher)", values, [i / 10 for i in range(11)]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, data, bins) in zip(axes, panels):
        ax.hist(data, bins=bins, color="#4C72B0", edgecolor="white")
        ax.set_title(f"{title} (n={len(data)})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def write_card(card: dict[str, Any], rea: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
               out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / CARD_JSON, json.dumps(card, indent=2))
    write_text_atomic(out_dir / CARD_MD, render_markdown(card))
    plot_histograms(rea, results, out_dir / HIST_PNG)
    return [out_dir / CARD_JSON, out_dir / CARD_MD, out_dir / HIST_PNG]


def compute_card_for_dir(build_dir: str | Path) -> dict[str, Any]:
    """The card of a build directory (its per-scenario results when present), or of any directory
    holding one ``*rea*.jsonl`` and optionally one ``*rft*.jsonl``."""
    from alignment.errors import CdraError
    from training.deeppref import RESULTS_DIR, read_records

    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise CdraError(f"{build_dir} is not a directory")
    rea_files = sorted(build_dir.glob("*rea*.jsonl"))
    rft_files = sorted(build_dir.glob("*rft*.jsonl"))
    if not rea_files:
        raise CdraError(f"no *rea*.jsonl in {build_dir}: run `cdra data build --out {build_dir}` first")
    rea = [r for f in rea_files for r in read_records(f)]
    rft = [r for f in rft_files for r in read_records(f)]
    results = []
    for path in sorted((build_dir / RESULTS_DIR).glob("*.json")):
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise CdraError(f"{path}: unreadable scenario result ({exc})") from None
    return compute_card(results, rea, rft, scenarios_total=len(results) or None)
