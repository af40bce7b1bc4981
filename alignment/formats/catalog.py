"""Every output the project reads from a model, declared once: the policy's response, preference inference,
Pers-GenPRM step judgments, judge verdicts, the council's thoughts and values, and generated scenarios.

Each factory returns a cached ``OutputFormat``; its parameters are the format's length bounds, so the same
declaration serves a tiny CPU budget and a 7B model's longer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from alignment.formats.base import OutputFormat
from alignment.formats.grammar import (
    Choice,
    Number,
    Numbered,
    Repeat,
    Text,
    json_choice,
    json_object,
    json_string,
    seq,
)

# -- the policy's response (alignment/steps.py) ---------------------------------------------------------

ANSWER_LABEL = "Answer: "


def step_label(k: int) -> str:
    return f"Step {k}: "


@lru_cache(maxsize=32)
def policy_response(max_steps: int = 3, step_tokens: int = 48, answer_tokens: int = 192,
                    min_steps: int = 1) -> OutputFormat:
    """``Step 1: …`` … (``min_steps``..``max_steps`` one-line steps of at most ``step_tokens``), then ``Answer: …``.

    The bounds are budget forcing in grammar form: a step that reaches its budget is closed, and after the
    last step the only continuation is ``Answer:``; the answer has its own budget and may span lines.
    """
    from alignment.steps import parse_structured

    steps = Numbered(lambda k: seq(step_label(k), Text("step", step_tokens)), min_steps, max_steps, sep="\n")
    answer = Text("answer", answer_tokens, multiline=True, no_line_starts=("Step", ANSWER_LABEL.strip()))
    root = seq(steps, ANSWER_LABEL, answer)

    def build(captures: dict[str, str], text: str):
        return parse_structured(text.strip())

    return OutputFormat(f"policy_response[{max_steps}x{step_tokens}+{answer_tokens}]", root, build,
                        description="defensive reasoning steps, then the answer")


# -- preference inference (AlignXplore) ---------------------------------------------------------------------


@dataclass(frozen=True)
class StatementLine:
    """One line of ``<answer>``: ``- prefers | style | short, direct answers | confidence 0.8``."""

    stance: str
    dimension: str
    subject: str
    confidence: float


@dataclass(frozen=True)
class InferredDescription:
    reasoning: str
    statements: tuple[StatementLine, ...]


@lru_cache(maxsize=16)
def preference_inference(dimensions: tuple[str, ...], max_statements: int = 8, think_tokens: int = 160,
                         statement_tokens: int = 24) -> OutputFormat[InferredDescription]:
    """``<think> r </think>`` then ``<answer>`` with 1..``max_statements`` statement lines (paper format, R_format 1)."""
    dimension = Choice("dimension", dimensions)
    line = seq("- ", Choice("stance", ("prefers", "avoids")), " | ", dimension, " | ",
               Text("subject", statement_tokens, exclude="|<"), " | confidence ", Number("confidence", 0, 1, 2))
    lines = Repeat("statements", line, 1, max_statements, sep="\n")
    root = seq("<think>", Text("reasoning", think_tokens, multiline=True, exclude="<"), "</think>\n<answer>\n",
               lines, "\n</answer>")

    def build(captures: dict[str, str], text: str) -> InferredDescription:
        found = []
        for item in lines.items(captures["statements"], relaxed=True):
            subject = item["subject"].strip()
            if not subject:
                raise ValueError("a statement without a subject")
            found.append(StatementLine(item["stance"].lower(), dimension.canonical(item["dimension"]), subject,
                                       float(item["confidence"])))
        return InferredDescription(captures["reasoning"].strip(), tuple(found))

    return OutputFormat(f"preference_inference[{max_statements}x{statement_tokens}+{think_tokens}]", root, build,
                        description="<think> reasoning </think> <answer> statement lines </answer>")


def render_inference(reasoning: str, statements: tuple[StatementLine, ...] | list[StatementLine]) -> str:
    """The text the preference_inference grammar writes for (r, d): the SFT target of AlignXplore's cold start."""
    lines = "\n".join(f"- {s.stance} | {s.dimension} | {' '.join(s.subject.replace('|', '/').split())} | "
                      f"confidence {min(1.0, max(0.0, s.confidence)):.2f}" for s in statements)
    think = " ".join(reasoning.replace("<", "(").split())
    return f"<think>{think}</think>\n<answer>\n{lines}\n</answer>"


# -- Pers-GenPRM step judgments (alignment/critique.py) ----------------------------------------------------


@lru_cache(maxsize=8)
def step_judgment(critique_tokens: int = 96) -> OutputFormat:
    """``Critique: c`` then ``SCORE: x`` with x in [-1, 1]: the critique first, so the score is grounded in it."""
    from alignment.critique import StepJudgment

    root = seq("Critique: ", Text("critique", critique_tokens), "\nSCORE: ", Number("score", -1, 1, 2))

    def build(captures: dict[str, str], text: str) -> StepJudgment:
        return StepJudgment(captures["critique"].strip(), float(captures["score"]))

    return OutputFormat(f"step_judgment[{critique_tokens}]", root, build,
                        description="a critique, then SCORE in [-1, 1]")


# -- judge verdicts (alignment/judges.py, alignment/preference_metrics.py) -------------------------------


@dataclass(frozen=True)
class Verdict:
    rationale: str
    verdict: bool | str | int  # yes/no -> bool, pair -> "A"/"B", rating -> 1..5


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@lru_cache(maxsize=16)
def verdict(kind: str, rationale_tokens: int = 64) -> OutputFormat[Verdict]:
    """One JSON object, rationale first: ``{"rationale": "…", "verdict": "yes"|"no"}`` (kind ``yesno``),
    ``"verdict": "A"|"B"`` (``pair``) or ``"rating": 1..5`` (``rating``)."""
    rationale = json_string("rationale", rationale_tokens)
    rationale_schema = {"type": "string", "minLength": 1, "maxLength": 8 * rationale_tokens}
    if kind == "yesno":
        options = ("yes", "no")
        value, key = json_choice("verdict", options), "verdict"
        value_schema: dict = {"type": "string", "enum": list(options)}
    elif kind == "pair":
        options = ("A", "B")
        value, key = json_choice("verdict", options), "verdict"
        value_schema = {"type": "string", "enum": list(options)}
    elif kind == "rating":
        value, key = Number("rating", 1, 5, 0), "rating"
        value_schema = {"type": "integer", "minimum": 1, "maximum": 5}
    else:
        raise ValueError(f"unknown verdict kind {kind!r}")
    root = json_object([("rationale", rationale), (key, value)])

    def build(captures: dict[str, str], text: str) -> Verdict:
        reason = captures["rationale"].strip()
        if not reason:
            raise ValueError("empty rationale")
        raw = captures[key].strip()
        if kind == "yesno":
            if raw.lower() not in options:
                raise ValueError(f"verdict must be yes or no, not {raw!r}")
            return Verdict(reason, raw.lower() == "yes")
        if kind == "pair":
            if raw.upper() not in options:
                raise ValueError(f"verdict must be A or B, not {raw!r}")
            return Verdict(reason, raw.upper())
        number = float(raw)
        if number != int(number) or not 1 <= number <= 5:
            raise ValueError(f"rating must be a whole number 1..5, not {raw!r}")
        return Verdict(reason, int(number))

    return OutputFormat(f"verdict_{kind}", root, build,
                        json_schema=_schema({"rationale": rationale_schema, key: value_schema}, ["rationale", key]),
                        description=f"a judge's {kind} verdict with its rationale")


@lru_cache(maxsize=1)
def preference_selection() -> OutputFormat[str]:
    """The AlignXplore judge's ``{"selection": "Response A" | "Response B"}`` (paper, Appendix B)."""
    options = ("Response A", "Response B")
    root = json_object([("selection", json_choice("selection", options))])

    def build(captures: dict[str, str], text: str) -> str:
        value = captures["selection"].strip()
        if value not in options:
            raise ValueError(f"selection must be one of {options}, not {value!r}")
        return value

    return OutputFormat("preference_selection", root, build,
                        json_schema=_schema({"selection": {"type": "string", "enum": list(options)}}, ["selection"]),
                        description="the preference judge's A/B selection")


# -- DeepPref construction: the council's thoughts and values, generated scenarios ------------------------


@lru_cache(maxsize=16)
def council_thought(step_number: int, step_tokens: int = 64) -> OutputFormat[str]:
    """``Step k: …`` — one reasoning step proposed by a council persona (one line)."""
    root = seq(step_label(step_number), Text("step", step_tokens))
    return OutputFormat(f"council_thought[{step_number}]", root, lambda c, t: c["step"].strip(),
                        description="one council reasoning step")


@lru_cache(maxsize=1)
def council_value() -> OutputFormat[float]:
    """``VALUE: x`` with x in [0, 1]: the heuristic value V of a thought."""
    root = seq("VALUE: ", Number("value", 0, 1, 2))
    return OutputFormat("council_value", root, lambda c, t: float(c["value"]), description="a thought's value V")


@lru_cache(maxsize=4)
def scenario(preference_tokens: int = 96, query_tokens: int = 40) -> OutputFormat[tuple[str, str]]:
    """``PREFERENCE: P`` then ``QUERY: q`` (one line each): a new DeepPref scenario."""
    root = seq("PREFERENCE: ", Text("preference", preference_tokens), "\nQUERY: ", Text("query", query_tokens))

    def build(captures: dict[str, str], text: str) -> tuple[str, str]:
        return captures["preference"].strip(), captures["query"].strip().strip('"')

    return OutputFormat("scenario", root, build, description="a preference and an ambiguous query")


def declared_formats() -> dict[str, OutputFormat]:
    """One instance of every declared format at its default bounds (start-up checks, tests, `cdra bench formats`)."""
    from alignment.preferences import DIMENSIONS

    formats = [policy_response(), preference_inference(tuple(DIMENSIONS)), step_judgment(),
               verdict("yesno"), verdict("pair"), verdict("rating"), preference_selection(),
               council_thought(1), council_value(), scenario()]
    return {f.name: f for f in formats}
