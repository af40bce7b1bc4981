"""Why the assistant believes each statement, readably: the user's quoted words and when, or for an
inferred statement its signals (the turns' words) and the inference's reasoning. Used by
`cdra prefs show` and the UI memory panel.

A statement carries its quotes (``sources``) since they were added; older statements, and ones the
background inference stored, cite only ids: those are looked up in the user's remembered turns and
the inference log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from alignment.preferences import Evidence, PreferenceStatement

_SIGNAL_SUFFIX = re.compile(r"-(?:turn|up|down|correction)$")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)


def _when(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def _reasoning(raw: str) -> str:
    match = _THINK.search(raw or "")
    return " ".join((match.group(1) if match else "").split())


def explain(statements: Sequence[PreferenceStatement], turns: Sequence[dict],
            inferences: Sequence[dict]) -> dict[str, list[Evidence]]:
    """statement id -> its evidence, oldest first, each with the quoted words where they are known."""
    by_turn = {str(t.get("turn_id")): t for t in turns if t.get("turn_id")}
    runs = [(t, r) for r in inferences if not r.get("failed") and (t := _when(r.get("time", ""))) is not None]
    out: dict[str, list[Evidence]] = {}
    for statement in statements:
        quoted: dict[str, list[Evidence]] = {}
        for source in statement.sources:
            quoted.setdefault(source.id, []).append(source)
        rows: list[Evidence] = []
        for evidence_id in statement.evidence:
            if evidence_id in quoted:
                rows += quoted[evidence_id]
                continue
            turn = by_turn.get(evidence_id) or by_turn.get(_SIGNAL_SUFFIX.sub("", evidence_id))
            rows.append(Evidence(id=evidence_id, quote=str(turn.get("user", "")) if turn else "",
                                 time=str(turn.get("time") or "") if turn else "", origin=statement.origin))
        rows += [e for e in statement.sources if e.id not in statement.evidence]
        if statement.origin == "inferred" and not any(e.reasoning for e in rows):
            run = _nearest_run(statement, runs)
            if run is not None:
                rows.append(Evidence(id=f"inference {run.get('time', '')}", quote="", time=run.get("time", ""),
                                     origin="inferred", reasoning=_reasoning(run.get("raw", ""))))
        out[statement.id] = rows
    return out


def _nearest_run(statement: PreferenceStatement, runs: list[tuple[float, dict]], window_s: float = 120.0):
    """The inference run that produced an inferred statement: logged right after it was parsed."""
    created = _when(statement.created)
    if created is None or not runs:
        return None
    time, run = min(runs, key=lambda r: abs(r[0] - created))
    return run if abs(time - created) <= window_s else None


def evidence_text(rows: Sequence[Evidence], max_quote: int = 120) -> list[str]:
    """One readable line per evidence: what was said (or the signal) and when."""
    lines = []
    for e in rows:
        when = e.time[:16].replace("T", " ") if e.time else ""
        quote = e.quote if len(e.quote) <= max_quote else e.quote[: max_quote - 1] + "…"
        if e.reasoning:
            reasoning = e.reasoning if len(e.reasoning) <= 2 * max_quote else e.reasoning[: 2 * max_quote - 1] + "…"
            lines.append(f"reasoning ({e.id}{', ' + when if when and when not in e.id else ''}): {reasoning}")
        elif quote:
            verb = "said" if e.origin in ("explicit", "user_edit") else "signal"
            lines.append(f"{verb}: \"{quote}\" ({e.id}{', ' + when if when else ''})")
        else:
            lines.append(f"{e.origin or 'evidence'}: {e.id}{' (' + when + ')' if when else ''} (its text is not stored)")
    return lines


def history_text(statement: PreferenceStatement) -> str:
    """The statement's changes in one line: "created 12-01 21:50; merged 12-02 08:00 (was: …)"."""
    parts = []
    for h in statement.history:
        when = h.time[5:16].replace("T", " ")
        extra = f" (was: {h.previous})" if h.previous else ""
        cited = f" +{', '.join(h.evidence)}" if h.evidence and h.action != "created" else ""
        parts.append(f"{h.action} {when}{cited}{extra}")
    return "; ".join(parts)
