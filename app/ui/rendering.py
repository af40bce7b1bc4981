"""How a turn looks in the browser: the answer, its defensive reasoning folded beneath it, the preferences
used and the status line. Pure functions of the model's text; all model text is HTML-escaped."""

from __future__ import annotations

import html

from alignment.steps import read_response
from app.assistant import RetrievedPreference, TurnResult

CSS = """
.cdra-reasoning { margin-top: .6em; border-left: 3px solid var(--color-accent-soft); padding-left: .6em; }
.cdra-reasoning summary { cursor: pointer; font-size: .9em; opacity: .8; }
.cdra-reasoning ol { margin: .3em 0 0 1.2em; font-size: .92em; }
#turn-status, #aloe-status { font-size: .9em; }
"""


def split_reasoning(raw: str) -> tuple[list[str], str]:
    """(steps, answer) of a (possibly partial) response: the same split Pers-GenPRM scores."""
    segments = read_response(raw).segments
    steps = [s.text for s in segments if not s.is_answer and s.text]
    answer = next((s.text for s in segments if s.is_answer), "")
    return steps, answer


def budget_note(reasoning: dict | None) -> str:
    """``of at most 3 · 40 tokens a step · answer forced``: the step budget a turn used (meta["reasoning"])."""
    if not reasoning or not reasoning.get("budget"):
        return ""
    steps, _, rest = str(reasoning["budget"]).partition("×")
    per_step = rest.partition("+")[0]
    note = f"of at most {html.escape(steps)} · {html.escape(per_step)} tokens a step"
    if reasoning.get("forced"):
        note += " · answer forced by the budget"
    return note


def reasoning_html(steps: list[str], open_: bool, reasoning: dict | None = None) -> str:
    """The numbered steps, folded under the answer (``<details>``), titled with the step budget used;
    escaped, since it is model text."""
    note = budget_note(reasoning)
    if steps:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in steps)
        body = f"<ol>{items}</ol>"
        count = f"{len(steps)} step{'s' if len(steps) != 1 else ''}"
    else:
        body = "<p><em>The model wrote no separate reasoning steps for this answer.</em></p>"
        count = "no steps"
    title = f"Defensive reasoning ({count}{' ' + note if note else ''})"
    return f'<details class="cdra-reasoning"{" open" if open_ else ""}><summary>{title}</summary>{body}</details>'


def render_answer(raw: str, streaming: bool, result: TurnResult | None = None) -> str:
    """The assistant bubble: the answer first, then its reasoning folded beneath (open while it is being
    written), titled with the step budget the turn used."""
    steps, answer = split_reasoning(raw)
    reasoning = None
    if result is not None:
        steps, answer, reasoning = result.steps, result.answer, result.reasoning
    if not answer:
        if streaming:
            answer = "_thinking…_"
        elif result is not None and result.status == "ok":
            answer = "_The model wrote no answer this time: press Regenerate._"
    answer_started = bool(answer) and not answer.startswith("_")
    text = html.escape(answer) if answer_started else answer
    if result is not None and result.status != "ok":
        text = (
            (text + "\n\n" if text else "") + f"Error: {html.escape(result.error or 'the answer failed')} — "
            "your message is saved; send it again or press Regenerate."
        )
    return f"{text}\n\n{reasoning_html(steps, open_=streaming and not answer_started, reasoning=reasoning)}"


def render_retrieved(retrieved: list[RetrievedPreference], added: list[str] | None = None) -> str:
    lines = ["#### Preferences used for this answer"]
    if retrieved:
        lines += [
            f"- {html.escape(r.text)}  \n  <small>relevance {r.score:.2f} · confidence {r.confidence:.2f} · "
            f"{r.origin}</small>"
            for r in retrieved
        ]
    else:
        lines.append("_No stored preference was relevant to this message._")
    if added:
        lines += ["", "#### Learned from your message"] + [f"- {html.escape(a)}" for a in added]
    return "\n".join(lines)


def status_line(result: TurnResult, k: int) -> str:
    """One line under the chat: which policy answered turn k, and how fast (or what went wrong)."""
    if result.status != "ok":
        return f"Error: turn {k}: {html.escape(result.error or 'failed')}"
    lat = result.latency_ms
    total = sum(lat.get(phase, 0.0) for phase in ("retrieval", "prompt", "generation", "logging")) / 1000
    first = lat.get("first_answer_token", lat.get("first_token", 0.0)) / 1000
    r = result.reasoning or {}
    budget = ""
    if r.get("budget"):
        budget = f" · {r.get('steps', 0)} reasoning step(s) within {html.escape(str(r['budget']))} tokens" + (
            " (answer forced)" if r.get("forced") else "")
    return (
        f"✓ turn {k} answered by policy `{result.version}` in {total:.1f} s (answer began after {first:.1f} s)"
        + budget
    )
