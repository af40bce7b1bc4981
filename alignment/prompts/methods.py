"""Prompts of the methods under test (CDRA Appendix C): zero-shot, few-shot and chain-of-thought baselines.

Trained policies (SFT/RFT, GRPO, CDRA) answer with the defensive prompt of ``policy.py``. Every template
takes ``preferences`` (retrieved lines, or NO_PREFERENCES), an optional ``history`` and the ``query``.
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from alignment.prompts.policy import DIRECT_PROMPT, POLICY_PROMPT

#: the model is told the user's profile and the question, nothing else
ZERO_SHOT_PROMPT = DIRECT_PROMPT

_FEW_SHOT_SYSTEM = """You are a helpful personal assistant who tailors every answer to the user.
Two examples of answers that follow what a user prefers:

Example 1
What the assistant knew about the user: - Avoids anything involving animals (severe allergies).
User: Recommend some outdoor experiences for a weekend.
Assistant: Since animals are off the table for you, try a canyon hike, a sunrise kayak on a lake, or a
botanical-garden tour (check the garden has no petting area). All three keep you outdoors with no animal contact.

Example 2
What the assistant knew about the user: - Prefers not to share real-time location.
User: How can I let my family know I'm safe when I travel alone?
Assistant: To keep control over your location, send a scheduled check-in message at fixed times, or share
your itinerary in advance; a "check-in if I don't arrive" timer alerts them only when something is wrong.

Now answer the real user the same way.
What you know about the user:
{preferences}"""

FEW_SHOT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", _FEW_SHOT_SYSTEM), MessagesPlaceholder("history", optional=True), ("human", "{query}")]
)

_COT_SYSTEM = """You are a helpful personal assistant.
What you know about the user:
{preferences}

First think step by step about what this user prefers and what that means for the question, starting
with "Reasoning:". Then write "Answer:" followed by your reply to the user."""

COT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", _COT_SYSTEM), MessagesPlaceholder("history", optional=True), ("human", "{query}")]
)

#: prompt style -> template (style "policy" is the defensive-reasoning prompt trained policies use)
METHOD_PROMPTS: dict[str, ChatPromptTemplate] = {
    "zero-shot": ZERO_SHOT_PROMPT,
    "few-shot": FEW_SHOT_PROMPT,
    "cot": COT_PROMPT,
    "policy": POLICY_PROMPT,
}
