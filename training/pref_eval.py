"""What a preference inferrer recovers: per description source (Null, E, Golden, the explicit extractor, and any
preference models), recovery (a stored statement states the gold), junk rate (stored statements that state no
gold), R_format, and Acc_jud / Acc_gen where the item has a comparison; 95% bootstrap CIs. Resumable rows.

Model outputs come from one batched, greedy generation per item with the engine as given: pass an engine
built with ``constrained=False`` to measure the model's own format (what R_format means here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from alignment.consensus import Agreement
from alignment.engines.base import Engine, SamplingParams
from alignment.errors import CdraError
from alignment.explicit_extraction import explicit_from_signals
from alignment.formats import StatementLine
from alignment.metrics import estimate
from alignment.preference_inference import InferenceConfig, ParsedInference, PreferenceInferrer, storable
from alignment.preference_metrics import (
    METHOD_LABELS,
    _atomic_write,
    _check_setup,
    _done_rows,
    a_is_chosen,
    gen_scores,
    judge_pair,
    r_gen,
    r_jud,
)
from alignment.preferences import PreferenceDescription, PreferenceStatement, merge_descriptions
from alignment.prompts.preference import NO_PREFERENCE, format_signals
from alignment.signals import PreferenceTestItem
from training.pref_rewards import GoldScorer, gold_statements, r_agree

BASELINES = ("null", "signals", "golden", "explicit")
LABELS = {name: METHOD_LABELS[name] for name in BASELINES}


def item_golds(item: PreferenceTestItem) -> list[StatementLine]:
    """The gold statement lines of a test item (``gold_statements`` if written, else from ``golden``)."""
    lines = getattr(item, "gold_statements", None) or []
    if lines:
        return [StatementLine(g["stance"], g["dimension"], g["subject"], float(g.get("confidence", 0.8))) for g in lines]
    if not item.golden:
        raise CdraError(f"test item {item.id} has no golden preference: recovery needs one")
    return gold_statements(item.golden)


def item_previous(item: PreferenceTestItem) -> PreferenceDescription | None:
    prev = getattr(item, "previous", None) or []
    if not prev:
        return None
    return PreferenceDescription(statements=[PreferenceStatement.make(p["stance"], p["subject"], p["dimension"],
                                                                      confidence=float(p.get("confidence", 0.8)))
                                             for p in prev])


def has_comparison(item: PreferenceTestItem) -> bool:
    return bool(item.post and item.chosen and item.rejected)


# -- batched inference ----------------------------------------------------------------------------------
def infer_batch(engine: Engine, cases: Sequence[tuple[Sequence, PreferenceDescription | None]],
                config: InferenceConfig | None = None, batch_size: int = 8, max_new_tokens: int = 256,
                temperature: float = 0.0, seed: int = 0, progress: Callable[[int], None] | None = None,
                agreement: Agreement | None = None) -> list[tuple[str, ParsedInference]]:
    """One generation per (signals, d_prev) case, ``batch_size`` prompts per engine call. Unconstrained engines
    stop at ``max_new_tokens`` (a trained output is ~130 tokens); constrained ones get the format's bound.
    With ``config.votes``, each output is then voted on as the product does (``PreferenceInferrer.voted``)."""
    inferrer = PreferenceInferrer(engine, config or InferenceConfig(), agreement)
    enforced = engine.enforces(inferrer.format)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=inferrer.config.top_p,
                            seed=seed, format=inferrer.format if enforced else None)
    out: list[tuple[str, ParsedInference]] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        convs = [inferrer.prompt(list(s), p) for s, p in chunk]
        for (signals, _), conv, completions in zip(chunk, convs, engine.generate(convs, params)):
            text = completions[0].text
            ids = [s.id for s in signals]
            out.append((text, inferrer.voted(inferrer.read(text, ids), conv, signals)))  # no votes: as read
        if progress:
            progress(len(chunk))
    return out


# -- rows -------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """A description source: a baseline name, or a preference model (its engine)."""

    name: str
    engine: Engine | None = None
    label: str = ""


def _judge_fields(row: dict, item: PreferenceTestItem, text: str, r_format: float, judge, gen, seed: int,
                  metrics: Sequence[str]) -> None:
    if not has_comparison(item):
        return
    if "jud" in metrics and judge is not None:
        outcome = judge_pair(judge, item.post, text, item.chosen, item.rejected, a_is_chosen(item.id, seed))
        row["jud"] = r_jud(outcome, r_format)
    if "gen" in metrics and gen is not None:
        row["gen"] = r_gen(gen_scores(gen, item.post, text, item.chosen, item.rejected), r_format)


def statement_row(item: PreferenceTestItem, source: str, statements: Sequence[tuple[str, str]], r_format: float,
                  scorer: GoldScorer, raw: str | None = None) -> dict:
    """Recovery and junk of the statements one source stored for one item."""
    golds = item_golds(item)
    result = scorer.agreement(list(statements), golds)
    return {"item": item.id, "source": source, "form": getattr(item, "form", None), "r_format": r_format,
            "statements": [f"{s} | {subj}" for s, subj in statements], "states": list(result.states),
            "recovery": result.recall, "junk": result.junk, "n_statements": len(statements),
            "reward": r_agree(result, r_format), "raw": raw}


def baseline_row(item: PreferenceTestItem, source: str, scorer: GoldScorer, max_chars: int = 400) -> dict:
    if source == "null":
        row = {"item": item.id, "source": source, "form": getattr(item, "form", None), "r_format": 1.0,
               "statements": [], "states": [], "recovery": 0.0, "junk": 0, "n_statements": 0, "reward": 0.0}
        return row | {"description": NO_PREFERENCE}
    if source == "signals":  # raw signals are no statements: only the judge metrics apply
        return {"item": item.id, "source": source, "form": getattr(item, "form", None), "r_format": 1.0,
                "recovery": None, "junk": None, "n_statements": None,
                "description": format_signals(item.signals, max_chars)}
    if source == "golden":
        golds = item_golds(item)
        row = statement_row(item, source, [(g.stance, g.subject) for g in golds], 1.0, scorer)
        return row | {"description": item.golden or ""}
    if source == "explicit":
        found = explicit_from_signals(item.signals)
        row = statement_row(item, source, [(s.stance, s.subject) for s in found], 1.0, scorer)
        return row | {"description": PreferenceDescription(statements=found).as_text()}
    raise CdraError(f"unknown description source {source!r}: use {', '.join(BASELINES)} or a model")


def evaluate_inference(items: Sequence[PreferenceTestItem], sources: Sequence[Source], scorer: GoldScorer,
                       judge: Engine | None = None, gen: Engine | None = None, metrics: Sequence[str] = ("jud",),
                       config: InferenceConfig | None = None, out_dir: str | Path | None = None, seed: int = 0,
                       batch_size: int = 8, max_new_tokens: int = 256, setup: Mapping | None = None,
                       progress: Callable[[str, int], Callable[[int], None]] | None = None,
                       agreement: Agreement | None = None) -> list[dict]:
    """Rows for every (item, source); with ``out_dir`` rows are appended as they come and a rerun resumes."""
    rows: list[dict] = []
    rows_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _check_setup(out / "run.json", {"judge": judge.description if judge else None, "metrics": list(metrics),
                                        "threshold": scorer.threshold, "seed": seed, "max_new_tokens": max_new_tokens,
                                        **dict(setup or {})})
        _check_sources(out / "sources.json", {s.name: (s.engine.description if s.engine else None) for s in sources})
        rows_path = out / "rows.jsonl"
        rows = _done_rows(rows_path)
        _atomic_write(rows_path, "".join(json.dumps(r) + "\n" for r in rows))
    done = {(r["item"], r["source"]) for r in rows}

    def keep(new: Iterable[dict]) -> None:
        for row in new:
            rows.append(row)
            if rows_path is not None:
                with rows_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")

    for source in sources:
        todo = [i for i in items if (i.id, source.name) not in done]
        if not todo:
            continue
        tick = progress(source.name, len(todo)) if progress else None
        if source.engine is None:
            for item in todo:
                row = baseline_row(item, source.name, scorer)
                _judge_fields(row, item, row.pop("description"), 1.0, judge, gen, seed, metrics)
                keep([row])
                if tick:
                    tick(1)
            continue
        for start in range(0, len(todo), batch_size):  # one batch at a time, so an interruption loses little
            chunk = todo[start:start + batch_size]
            outputs = infer_batch(source.engine, [(i.signals, item_previous(i)) for i in chunk], config, batch_size,
                                  max_new_tokens, seed=seed, agreement=agreement)
            new = []
            for item, (text, parsed) in zip(chunk, outputs):
                kept = storable(parsed.statements, item.signals)[0]  # what the product would store
                found = [(s.stance, s.subject) for s in kept]
                row = statement_row(item, source.name, found, parsed.r_format, scorer, raw=text[:1200])
                merged = merge_descriptions(item_previous(item) or PreferenceDescription(), kept)
                description = merged.as_text() if merged.statements else ""
                _judge_fields(row, item, description or NO_PREFERENCE, parsed.r_format if description else 0.0,
                              judge, gen, seed, metrics)
                new.append(row)
            keep(new)
            if tick:
                tick(len(chunk))
    wanted = {i.id for i in items}
    names = {s.name for s in sources}
    return [r for r in rows if r["item"] in wanted and r["source"] in names]


def _check_sources(path: Path, sources: dict) -> None:
    """Sources may be added to a results directory later; a name already there must mean the same model."""
    known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    clash = sorted(n for n in sources if n in known and known[n] != sources[n])
    if clash:
        raise CdraError(f"{path.parent} holds results of a different setup (source {', '.join(clash)} was another "
                        "model): pass another --out directory or another NAME")
    _atomic_write(path, json.dumps(known | sources, indent=2))


# -- summary ----------------------------------------------------------------------------------------------
def summarize_rows(rows: Sequence[dict], sources: Sequence[Source], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """One dict per source: recovery, junk rate (per stored statement), R_format, Acc_jud, Acc_gen (percent,
    with 95% CIs), items, statements per item."""
    out = []
    for source in sources:
        mine = [r for r in rows if r["source"] == source.name]
        if not mine:
            continue
        flags = [s for r in mine for s in (r.get("states") or [])]
        out.append({
            "source": source.name, "label": source.label or LABELS.get(source.name, source.name), "n": len(mine),
            "recovery": estimate([r["recovery"] for r in mine], n_boot, seed).as_dict(),
            "junk": estimate([not s for s in flags], n_boot, seed).as_dict() if flags else None,
            "r_format": estimate([r["r_format"] for r in mine], n_boot, seed).as_dict(),
            "acc_jud": estimate([r["jud"] for r in mine if "jud" in r], n_boot, seed).as_dict(),
            "acc_gen": estimate([r["gen"] for r in mine if "gen" in r], n_boot, seed).as_dict(),
            "statements_per_item": (sum(r["n_statements"] for r in mine if r.get("n_statements") is not None)
                                    / max(1, sum(1 for r in mine if r.get("n_statements") is not None))),
        })
    return out


def _fmt(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    return f"{e['value']:.1f} [{e['low']:.1f}, {e['high']:.1f}]"


def summary_table(summary: Sequence[dict]) -> str:
    lines = ["| description source | N | recovery % | junk % | R_format % | Acc_jud % | Acc_gen % | statements/item |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['label']} | {s['n']} | {_fmt(s['recovery'])} | {_fmt(s['junk'])} | {_fmt(s['r_format'])} | "
                     f"{_fmt(s['acc_jud'])} | {_fmt(s['acc_gen'])} | {s['statements_per_item']:.2f} |")
    return "\n".join(lines)


def write_summary(out_dir: str | Path, summary: Sequence[dict], extra: Mapping | None = None) -> None:
    out = Path(out_dir)
    _atomic_write(out / "summary.json", json.dumps({"sources": list(summary), **dict(extra or {})}, indent=2))
    _atomic_write(out / "summary.md", summary_table(summary) + "\n")
