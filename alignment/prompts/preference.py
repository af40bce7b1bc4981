"""Preference-inference prompts (AlignXplore §3, Appendix B): infer d from signals, update d_prev with new
signals only, the A/B preference judge (R_jud, Eq. 6) and the conditioned reply prompts (R_gen, Eq. 5)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.prompts import ChatPromptTemplate

# The R1-style system prompt of the paper's case study (Appendix A.4), plus the structured answer format.
INFER_SYSTEM = """A conversation between User and Assistant. The User asks a question, and the Assistant solves it. \
The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. \
The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, \
respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.

Inside <answer>, write one line per preference, exactly like this:
- prefers | dimension | what the user prefers | confidence 0.8
- avoids | dimension | what the user avoids | confidence 0.6
Dimensions: {dimensions}. Confidence is a number between 0 and 1.

Example:
<think>The user chose the short reply twice and rejected the one full of jargon. They mention a cat allergy.</think>
<answer>
- prefers | style | short, direct answers | confidence 0.8
- avoids | expertise | technical jargon | confidence 0.6
- avoids | health | cats (allergy) | confidence 0.9
</answer>"""

INFER_USER = """You must put your answer inside <answer> </answer> tags.

Generate the user's preference based on their historical behavior.
The following aspects can be referred to when analyzing user preferences: {dimensions}.

This person's behavior:
{signals}"""

UPDATE_USER = """You must put your answer inside <answer> </answer> tags.

Update the user's preference description with their new behavior. Keep what still holds, change what the
new behavior contradicts, add what is new. The following aspects can be referred to: {dimensions}.

Current description (from earlier behavior):
{previous}

New behavior since then:
{signals}"""

#: what the worked example above states: a small model copies it for users who never said any of it, so an
#: inferred statement that repeats one of these and that no signal mentions is the example, not the user
EXAMPLE_SUBJECTS = ("short, direct answers", "technical jargon", "cats (allergy)")

INFER_PROMPT = ChatPromptTemplate.from_messages([("system", INFER_SYSTEM), ("human", INFER_USER)])
UPDATE_PROMPT = ChatPromptTemplate.from_messages([("system", INFER_SYSTEM), ("human", UPDATE_USER)])

# The paper's evaluation prompt (Appendix B) for the preference judge R_jud.
JUDGE_SYSTEM = """Determine which response the user prefers based on the user's preferences. \
Please output your selection below in a json format by filling in the placeholders in []:
{{"selection": "[Response A / Response B]"}}"""

JUDGE_USER = """Prompt
{prompt}

Preference
{preference}

Response A
{response_a}

Response B
{response_b}"""

JUDGE_PROMPT = ChatPromptTemplate.from_messages([("system", JUDGE_SYSTEM), ("human", JUDGE_USER)])
#: the two continuations whose probabilities the judge is read by (Engine.choice_logprobs)
JUDGE_OPTIONS = ('{"selection": "Response A"}', '{"selection": "Response B"}')
NO_PREFERENCE = "(nothing is known about this user)"

# R_gen: the reply model with and without the description.
GEN_WITH_SYSTEM = """You are replying to a user with these preferences:
{preference}"""
GEN_WITH_PROMPT = ChatPromptTemplate.from_messages([("system", GEN_WITH_SYSTEM), ("human", "{post}")])
GEN_WITHOUT_PROMPT = ChatPromptTemplate.from_messages([("human", "{post}")])


def clip(text: str, max_chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def format_signal(signal: object, index: int, max_chars: int = 400) -> str:
    """One signal as a numbered line ``[e3] …``; the number is how the model cites evidence."""
    kind = getattr(signal, "kind", "")
    tag = f"[e{index}]"
    if kind == "comparison":
        return (f"{tag} On the post: {clip(signal.post, max_chars)}\n     chose: {clip(signal.chosen, max_chars)}\n"  # type: ignore[attr-defined]
                f"     rejected: {clip(signal.rejected, max_chars)}")  # type: ignore[attr-defined]
    if kind == "post":
        return f"{tag} The user wrote: {clip(signal.text, max_chars)}"  # type: ignore[attr-defined]
    if kind == "statement":
        return f"{tag} The user said: {clip(signal.text, max_chars)}"  # type: ignore[attr-defined]
    if kind == "turn":
        lines = [f"{tag} The user asked: {clip(signal.user, max_chars)}"]  # type: ignore[attr-defined]
        if signal.assistant:  # type: ignore[attr-defined]
            lines.append(f"     assistant replied: {clip(signal.assistant, max_chars // 2)}")  # type: ignore[attr-defined]
        if signal.feedback:  # type: ignore[attr-defined]
            lines.append(f"     the user rated the reply: {'good' if signal.feedback == 'up' else 'bad'}")  # type: ignore[attr-defined]
        if signal.correction:  # type: ignore[attr-defined]
            lines.append(f"     the user would rather: {clip(signal.correction, max_chars)}")  # type: ignore[attr-defined]
        return "\n".join(lines)
    raise ValueError(f"unknown signal kind {kind!r}")


def format_signals(signals: Sequence[object], max_chars: int = 400) -> str:
    return "\n".join(format_signal(s, i + 1, max_chars) for i, s in enumerate(signals))


def format_previous(lines: Sequence[str]) -> str:
    return "\n".join(lines) if lines else "(empty)"


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4}


def copies_the_example(statement_text: str, signals_text: str) -> bool:
    """True when ``statement_text`` states a subject of the prompt's worked example (most of its content words)
    and none of those words occurs in what the user actually did (``signals_text``)."""
    said = _content_words(signals_text)
    stated = _content_words(statement_text)
    for subject in EXAMPLE_SUBJECTS:
        words = _content_words(subject)
        if len(words & stated) * 2 >= len(words) and not words & said:
            return True
    return False
