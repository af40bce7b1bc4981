"""The retrain loop's preference stage: logged signals -> preference-inference records -> SFT of the serving
preference adapter -> held-out comparison with serving -> promotion only when better.

Signals per user, from the session-log export: turns with a thumbs up/down (a 1-5 rating stands in for a missing
thumb: >= 4 up, <= 2 down), "I'd rather…" corrections, and regenerate pairs (``meta.regenerated_from``) where one
answer was liked and the other not (a comparison). Targets: the user's active statements at export time
(``user_preferences``: what they kept or edited) and what the explicit extractor reads in their corrections;
statements the signals evidence are inferred from them, the others are d_prev that the update keeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from alignment.explicit_extraction import extract_explicit
from alignment.formats import StatementLine
from alignment.preference_inference import InferenceConfig
from alignment.signals import ComparisonSignal, TurnSignal, signal_to_json
from training.pref_data import PrefRecord, _line, fit_target, template_chain
from training.pref_rewards import GoldScorer, format_dimension, gold_statements, statement_text

#: a statement counts as evidenced by the new signals when a user sentence is this close to it
EVIDENCE_SIMILARITY = 0.5


def _feedback(turn: dict) -> str | None:
    if turn.get("feedback") in ("up", "down"):
        return turn["feedback"]
    rating = turn.get("rating")
    if isinstance(rating, (int, float)):
        return "up" if rating >= 4 else "down" if rating <= 2 else None
    return None


def statement_lines(text: str, confidence: float = 0.8) -> list[StatementLine]:
    """A stored statement's text ("Avoids cats (allergy)") or a user's sentence as statement lines."""
    text = " ".join(str(text).strip().lstrip("-*• ").split())
    for word, stance in (("avoids ", "avoids"), ("prefers ", "prefers")):
        if text.lower().startswith(word):
            from alignment.explicit_extraction import _dimension

            subject = text[len(word):].rstrip(".")
            return [StatementLine(stance, format_dimension(_dimension(subject)), subject, confidence)]
    return gold_statements(text, confidence)


def user_signals(turns: Sequence[dict]) -> list:
    """The logged signals of one user's turns, oldest first."""
    by_id = {str(t.get("turn_id")): t for t in turns}
    signals: list = []
    for t in turns:
        fb, correction = _feedback(t), (t.get("correction") or None)
        if fb or correction:
            signals.append(TurnSignal(kind="turn", id=f"log-{t['turn_id']}", user=str(t.get("query", "")),
                                      assistant=str(t.get("answer", ""))[:400], feedback=fb, correction=correction))
        previous = by_id.get(str((t.get("meta") or {}).get("regenerated_from", "")))
        if previous is not None:
            mine, theirs = _feedback(t), _feedback(previous)
            if (mine == "up") != (theirs == "up") and "up" in (mine, theirs):
                liked, other = (t, previous) if mine == "up" else (previous, t)
                signals.append(ComparisonSignal(kind="comparison", id=f"log-pair-{t['turn_id']}",
                                                post=str(t.get("query", "")), chosen=str(liked.get("answer", "")),
                                                rejected=str(other.get("answer", ""))))
    return signals


def log_records(turns: Sequence[dict], count: Callable[[str], int], scorer: GoldScorer | None = None,
                validation_fraction: float = 0.5, seed: int = 0, max_signals: int = 8,
                config: InferenceConfig | None = None) -> list[dict]:
    """One record per user and chunk of ``max_signals`` signals; users split between train and validation."""
    config = config or InferenceConfig()
    scorer = scorer or GoldScorer()
    by_user: dict[str, list[dict]] = {}
    for t in turns:
        by_user.setdefault(str(t.get("user_id", "")), []).append(t)
    users = sorted(by_user)
    random.Random(seed).shuffle(users)
    held = set(users[: int(len(users) * validation_fraction)]) if len(users) > 1 else set()
    out: list[dict] = []
    for user in sorted(by_user):
        turns_u = by_user[user]
        signals = user_signals(turns_u)
        texts = list(dict.fromkeys(p for t in turns_u for p in (t.get("user_preferences") or [])))
        golds = [line for p in texts for line in statement_lines(p)]
        for t in turns_u:
            if t.get("correction"):
                golds += [StatementLine(s.stance, format_dimension(s.dimension), s.subject, 0.9)
                          for s in extract_explicit(str(t["correction"]), "c")]
        unique = {(g.stance, g.subject.lower()): g for g in golds}
        golds = list(unique.values())[: config.max_statements]
        if not signals or not golds:
            continue
        for n in range(0, len(signals), max_signals):
            chunk = signals[n:n + max_signals]
            sentences = [s for sig in chunk for s in sig.texts() if s.strip()]
            sims = scorer.similarity([statement_text(g.stance, g.subject) for g in golds], sentences)
            evidenced = [g for g, row in zip(golds, sims) if row.size and row.max() >= EVIDENCE_SIMILARITY]
            kept = [g for g in golds if g not in evidenced]
            form = "log" if evidenced else "stream-keep"
            reasoning, tags, sim = template_chain(form, chunk, evidenced or kept, scorer, kept)
            reasoning, fitted = fit_target(reasoning, [*evidenced, *kept], count, config)
            out.append({"id": f"log/{user}/{n // max_signals}", "topic": f"user:{user}", "form": form,
                        "split": "validation" if user in held else "train",
                        "signals": [signal_to_json(s) for s in chunk], "previous": [_line(k) for k in kept],
                        "golds": texts, "gold_statements": [_line(g) for g in fitted],
                        "target": {"reasoning": reasoning, "statements": [_line(g) for g in fitted]},
                        "evidence": tags, "evidence_sim": sim})
    return out


def run_preference_stage(config, sessions: Path, out_dir: Path, registry, say: Callable[[str], None]) -> dict:
    """Train, evaluate and (if better) promote a preference version from the run's logged sessions."""
    from alignment.records import jsonl_objects
    from training.pref_build import token_counter
    from training.pref_trainer import decide, preference_start, publish, start_spec, train_sft, validate
    from training.registry import fingerprint

    turns = [obj for _, obj in jsonl_objects(sessions)]
    scorer = GoldScorer()
    raw = log_records(turns, token_counter(config.models_dir), scorer, config.validation_fraction, config.seed)
    records = [PrefRecord.model_validate(r) for r in raw]
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split == "validation"] or train
    if not train:
        say("  preference: skipped (no logged feedback, correction or regenerate pair with known preferences)")
        return {"skipped": "no logged signals with known preferences", "records": len(records)}
    start = preference_start(registry, config.preference, config.models_dir)
    result = train_sft(train, start, out_dir, config.pref_sft, save_steps=max(1, config.pref_sft.max_steps // 2 or 10))
    like = config.preference if config.preference.backend != "auto" else None
    candidate = validate(start_spec(start, like, adapter=result.adapter_dir, constrained=False), config.models_dir,
                         val, scorer, max_new_tokens=config.pref_val_tokens)
    serving = validate(start_spec(start, like, constrained=False), config.models_dir, val, scorer,
                       max_new_tokens=config.pref_val_tokens)
    ok, reason = decide(candidate, serving, "always" if config.promote == "always" else "if-better",
                        config.min_improvement)
    model = publish(registry, result, start, "sft", {"validation": candidate, "serving_validation": serving,
                                                       "val_score": candidate["score"], "serving_score": serving["score"]},
                    {"sessions": fingerprint(Path(sessions))}, {"sft": config.pref_sft.to_dict(), "source": "logs"})
    if ok:
        registry.promote("preference", model.version)
    say(f"  preference: {model.version} from {len(train)} records ({len(val)} held out): score "
        f"{candidate['score']:.3f} vs serving {serving['score']:.3f}; promoted: {'yes' if ok else 'no'} ({reason})")
    return {"version": model.version, "promoted": ok, "reason": reason, "candidate": candidate, "serving": serving,
            "records": len(records), "train_records": len(train), "started_from": str(start.adapter or start.base)}
