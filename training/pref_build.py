"""A preference-inference training set on disk: ``train.jsonl``, ``validation.jsonl`` (records, training/pref_data),
``validation_testset.jsonl`` (formats.md test items for `cdra eval prefs`), ``data_card.{json,md}`` (counts,
lengths, R_format of the targets, how r was made and how good it is, the agreement threshold's calibration).

Teacher chains (paper Eq. 7): the ``teacher`` samples G (r, d) per record; only those with R_agree = 1 replace
the templated chain. Written atomically; the card records the command that made the set.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from alignment.engines.base import Engine, SamplingParams
from alignment.explicit_extraction import extract_explicit
from alignment.formats import FormatParseError
from alignment.preference_inference import InferenceConfig, inference_format, read_inference
from training.pref_data import PrefRecord, prompt_for, test_item
from training.pref_rewards import (
    GoldScorer,
    calibrate_threshold,
    r_agree,
    rates,
    shares_content,
    statement_text,
)
from training.scenarios import write_jsonl_atomic, write_text_atomic


def token_counter(models_dir: Path) -> Callable[[str], int]:
    """Tokens of the packaged model's tokenizer (what the format's bounds count)."""
    from transformers import AutoTokenizer

    from alignment.engines.default_model import ensure_default_model

    tok = AutoTokenizer.from_pretrained(str(ensure_default_model(Path(models_dir))))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


# -- teacher chains ---------------------------------------------------------------------------------------
def teacher_chains(teacher: Engine, records: list[dict], samples: int, scorer: GoldScorer, limit: int,
                   config: InferenceConfig | None = None, seed: int = 0, batch: int = 4) -> dict:
    """Sample ``samples`` chains for up to ``limit`` training records; keep the first with R_agree = 1 (Eq. 7).
    Changes ``records`` in place; returns the yield (what the card reports)."""
    config = config or InferenceConfig()
    fmt = inference_format(config)
    by_form: dict[str, list[dict]] = {}
    for r in records:
        if r["split"] == "train":
            by_form.setdefault(r["form"], []).append(r)
    tried = [r for group in zip(*by_form.values()) for r in group][:limit]  # round-robin over the forms
    stats = Counter()
    params = SamplingParams(n=samples, temperature=config.sample_temperature, top_p=config.top_p, seed=seed,
                            max_new_tokens=config.max_new_tokens, format=fmt)
    lenient = not (teacher.enforces(fmt) and teacher.exact_formats)
    for start in range(0, len(tried), batch):
        chunk = tried[start:start + batch]
        parsed_records = [PrefRecord.model_validate(r) for r in chunk]
        outputs = teacher.generate([prompt_for(p, config) for p in parsed_records], params)
        for raw, rec, completions in zip(chunk, parsed_records, outputs):
            stats["records"] += 1
            kept = None
            for c in completions:
                stats["chains"] += 1
                parsed = read_inference(fmt, c.text, lenient=lenient)
                stats["r_format"] += parsed.r_format
                result = scorer.agreement([(s.stance, s.subject) for s in parsed.statements], rec.golds_lines())
                stats["recovered"] += result.any_recovered
                if r_agree(result, parsed.r_format) == 1.0:
                    stats["passing"] += 1
                    kept = kept or parsed
            if kept is not None:
                stats["records_with_chain"] += 1
                raw["target"] = {"reasoning": kept.reasoning or "(none)", "statements": [
                    {"stance": s.stance, "dimension": s.dimension, "subject": s.subject, "confidence": s.confidence}
                    for s in kept.statements]}
                raw["r_source"] = "teacher"
    n = max(1, stats["chains"])
    return {"teacher": teacher.description, "samples_per_record": samples, "records": stats["records"],
            "chains": stats["chains"], "chains_r_format": stats["r_format"] / n,
            "chains_recovering_gold": stats["recovered"] / n, "chains_passing": stats["passing"],
            "pass_rate": stats["passing"] / n, "records_with_passing_chain": stats["records_with_chain"]}


# -- the agreement threshold --------------------------------------------------------------------------------
def calibration_pairs(records: Sequence[PrefRecord], seed: int = 0, max_negatives: int = 3000
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Positives: a statement the explicit extractor reads in a persona conversation's user turns that shares
    content words and stance with the gold; negatives: gold statements of two other preferences of one topic
    (same stance, no shared content word). Labels are lexical, independent of the embeddings."""
    pos, neg = [], []
    for r in records:
        if r.form != "implicit-persona":
            continue
        for sig in r.parsed_signals():
            for text in sig.texts():
                for s in extract_explicit(text, "x"):
                    for g in r.golds_lines():
                        if s.stance == g.stance and shares_content(s.subject, g.subject):
                            pos.append((statement_text(s.stance, s.subject), statement_text(g.stance, g.subject)))
    by_topic: dict[str, list] = {}
    for r in records:
        if r.form == "explicit":
            by_topic.setdefault(r.topic, []).extend(r.golds_lines())
    rng = random.Random(seed)
    for lines in by_topic.values():
        for i, a in enumerate(lines):
            for b in lines[i + 1:]:
                if a.stance == b.stance and not shares_content(a.subject, b.subject):
                    neg.append((statement_text(a.stance, a.subject), statement_text(b.stance, b.subject)))
    rng.shuffle(neg)
    return pos, neg[:max_negatives]


def calibrate(train: Sequence[PrefRecord], held_out: Sequence[PrefRecord], scorer: GoldScorer, max_fpr: float = 0.1,
              seed: int = 0) -> dict:
    """The threshold from training-topic pairs, its TPR / FPR on held-out-topic pairs."""
    def sims(pairs):
        return [float(scorer.similarity([a], [b])[0, 0]) for a, b in pairs]

    pos, neg = calibration_pairs(train, seed)
    cal = calibrate_threshold(sims(pos), sims(neg), max_fpr)
    hpos, hneg = calibration_pairs(held_out, seed)
    tpr, fpr = rates(sims(hpos), sims(hneg), cal.threshold)
    return {"threshold": cal.threshold, "train": cal.as_dict(), "held_out": {"tpr": tpr, "fpr": fpr,
            "positives": len(hpos), "negatives": len(hneg)}, "max_fpr": max_fpr, "embedder": "all-MiniLM-L6-v2",
            "examples": {"positive": pos[:3], "negative": neg[:3]}}


# -- the card -----------------------------------------------------------------------------------------------
def _stats(values: Sequence[int]) -> dict:
    return {"mean": round(statistics.mean(values), 1), "median": statistics.median(values), "max": max(values)} if values else {}


def data_card(records: Sequence[PrefRecord], count: Callable[[str], int], config: InferenceConfig, scorer: GoldScorer,
              extra: dict | None = None) -> dict:
    fmt = inference_format(config)
    card: dict = {"counts": {}, "prompt_tokens": {}, "target_tokens": {}, "format": fmt.name,
                  "dimensions": list(config.dimensions)}
    strict = bound_violations = 0
    for split in ("train", "validation"):
        mine = [r for r in records if r.split == split]
        card["counts"][split] = dict(Counter(r.form for r in mine)) | {"total": len(mine)}
        card["topics_" + split] = sorted({r.topic for r in mine})
        card["prompt_tokens"][split] = _stats([sum(count(m["content"]) for m in prompt_for(r, config)) for r in mine])
        card["target_tokens"][split] = _stats([count(r.completion()) for r in mine])
    for r in records:
        try:
            fmt.parse(r.completion())
        except FormatParseError:  # counted: the card says how many targets are not in the format
            in_format = False
        else:
            in_format = True
        strict += in_format
        if count(r.target.reasoning) > config.think_tokens or any(count(s.subject) > config.statement_tokens
                                                                  for s in r.target.statements):
            bound_violations += 1
    sims = [r.evidence_sim for r in records if r.evidence_sim is not None]
    card["targets_r_format"] = strict / max(1, len(records))
    card["targets_over_token_bounds"] = bound_violations
    card["statements_per_target"] = round(statistics.mean(len(r.target.statements) for r in records), 2)
    card["r_source"] = dict(Counter(r.r_source for r in records))
    card["evidence"] = {
        "cited_sentence_cosine_mean": round(statistics.mean(sims), 3) if sims else None,
        "cited_sentence_states_gold": (sum(s >= scorer.threshold for s in sims) / len(sims)) if sims else None,
        "chains_citing_a_signal": sum(bool(r.evidence) for r in records) / max(1, len(records)),
    }
    card["comparisons"] = sum(r.comparison is not None for r in records)
    return card | (extra or {})


def card_markdown(card: dict) -> str:
    lines = ["# Preference-inference training data (AlignXplore cold start / GRPO prompts)", ""]
    if card.get("command"):
        lines += ["Made by:", "", "```", card["command"], "```", ""]
    lines += [f"Source: {card.get('source', '?')}. Split by topic: validation topics "
              f"{', '.join(card.get('topics_validation', []))} never appear in training "
              f"({', '.join(card.get('topics_train', []))}).", "",
              "| split | " + " | ".join(sorted({k for c in card["counts"].values() for k in c})) + " |"]
    keys = sorted({k for c in card["counts"].values() for k in c})
    lines.append("|---|" + "---|" * len(keys))
    for split, c in card["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(c.get(k, 0)) for k in keys) + " |")
    lines += ["", f"Prompt tokens: {card['prompt_tokens']}; target (r + d) tokens: {card['target_tokens']}.",
              f"Targets in the declared format ({card['format']}, strict reading): {100 * card['targets_r_format']:.1f} %; "
              f"over the format's token bounds: {card['targets_over_token_bounds']}; statements per target: "
              f"{card['statements_per_target']}; with a comparison (R_jud): {card['comparisons']}.", "",
              "## How the reasoning chains r are made", "",
              f"Sources: {card['r_source']}. A templated chain cites the signal that states the preference "
              "([eK], the user's sentence with the highest embedding similarity to the gold statement, quoted), "
              "then concludes the gold statement; comparisons cite the choice and, where the user wrote why, "
              "their sentence most similar to the gold; streaming chains say what is kept.",
              f"Evidence quality: {card['evidence']}.", ""]
    if card.get("teacher"):
        lines += ["Teacher chains (Eq. 7: G samples, kept when R_agree = 1):", "", f"{card['teacher']}", ""]
    if card.get("agreement"):
        a = card["agreement"]
        lines += ["## \"States the gold\": the agreement threshold", "",
                  f"Same stance and cosine (all-MiniLM-L6-v2) >= {a['threshold']:.3f}, calibrated on training-topic pairs "
                  f"(TPR {a['train']['tpr']:.2f}, FPR {a['train']['fpr']:.2f}, {a['train']['positives']} positives, "
                  f"{a['train']['negatives']} negatives); on held-out topics TPR {a['held_out']['tpr']:.2f}, "
                  f"FPR {a['held_out']['fpr']:.2f} ({a['held_out']['positives']} / {a['held_out']['negatives']}).", ""]
    return "\n".join(lines)


def write_dataset(out_dir: Path, records: Sequence[dict], card: dict) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "validation"]
    write_jsonl_atomic(out_dir / "train.jsonl", train)
    write_jsonl_atomic(out_dir / "validation.jsonl", val)
    write_jsonl_atomic(out_dir / "validation_testset.jsonl", [test_item(PrefRecord.model_validate(r)) for r in val])
    write_text_atomic(out_dir / "data_card.json", json.dumps(card, indent=2) + "\n")
    write_text_atomic(out_dir / "data_card.md", card_markdown(card) + "\n")
    return {"train": len(train), "validation": len(val)}
