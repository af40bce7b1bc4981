"""DeepPref construction prompts (CDRA Appendix E): council personas, thought proposal, the value V,
the final answer, evaluator demonstrations, and new-scenario generation.

Each reply has a declared format (``alignment.formats``: ``Step k:``, ``VALUE: x``, ``Critique:``-``SCORE: x``,
``PREFERENCE:``-``QUERY:``) that constrained decoding enforces; the instructions and the short demonstrations
describe exactly that format, so the model's own preferences agree with the grammar instead of fighting it.
"""

from __future__ import annotations

from langchain_core.prompts import ChatPromptTemplate

from alignment.engines.base import Message
from alignment.prompts import render
from alignment.prompts.prm import STEP_CRITIQUE_PROMPT, format_previous_steps

# -- the cognitive council (paper, Appendix E) ------------------------------------------------------
PERSONAS: dict[str, str] = {
    "Sociologist": "societal norms, ethics, and the broader impact of a solution on the user and the people around them.",
    "Psychologist": "the user's underlying emotional state, cognitive biases, and unstated psychological needs.",
    "Pragmatist": "practical, efficient and feasible solutions; you act as a reality check on cost, time and effort.",
    "Pedagogue": "educating the user: explaining what matters clearly so that they can make an informed decision themselves.",
    "Contrarian": "challenging assumptions and exploring alternative or non-obvious paths, to prevent groupthink and "
    "uncover risks that others miss.",
}

PROPOSE_SYSTEM = """You are the {persona}, one member of a cognitive council that reasons about what a user really wants before anyone answers them.
Your focus: {focus}
The council writes short reasoning steps. Early steps uncover the deeper preference behind the request; later steps weigh the risks hidden in the request or in an obvious answer, then plan a reply that respects both."""

PROPOSE_USER = """User preference (it may hold conflicting values and unstated goals):
{preference}

User query:
{query}

Reasoning so far:
{previous_steps}

Write Step {step_number}: one new reasoning step from your perspective, in one or two sentences on one line. Do not answer the query yet. Write only the step."""

PROPOSE_EXAMPLE_USER = """User preference (it may hold conflicting values and unstated goals):
I am vegetarian and on a tight budget, but I love cooking for friends.

User query:
Plan my meals for the week.

Reasoning so far:
(none: this is the first step)

Write Step 1: one new reasoning step from your perspective, in one or two sentences on one line. Do not answer the query yet. Write only the step."""

PROPOSE_EXAMPLE_STEP = (
    "Step 1: The plan must stay meat-free and cheap, yet leave room for one generous dish to share with friends, "
    "since hosting matters to this user as much as saving money."
)

PROPOSE_PROMPT = ChatPromptTemplate.from_messages(
    [("system", PROPOSE_SYSTEM), ("human", PROPOSE_EXAMPLE_USER), ("ai", PROPOSE_EXAMPLE_STEP), ("human", PROPOSE_USER)]
)

# -- the heuristic value function V ----------------------------------------------------------------
VALUE_SYSTEM = """You rate how promising one reasoning step is for answering this user well: does it respect their stated and unstated preferences, and does it foresee the risks in the request?
Reply with one line: VALUE: a number between 0 (useless or harmful) and 1 (excellent), at most two decimals."""

VALUE_USER = """User preference:
{preference}

User query:
{query}

Reasoning so far:
{previous_steps}

Step to rate:
{step}"""

_VALUE_EXAMPLES: list[tuple[str, str, str, str]] = [
    (
        "I am vegetarian and on a tight budget.",
        "Plan my meals for the week.",
        "Suggest a steakhouse dinner as a treat.",
        "VALUE: 0.1",
    ),
    (
        "I want to get fit but I have a bad knee.",
        "Give me a training plan.",
        "Running every day builds fitness quickly.",
        "VALUE: 0.3",
    ),
    (
        "I work night shifts and guard my mornings for sleep.",
        "How should I organise my day?",
        "A night worker needs protected sleep, so the plan should start from the sleep window, not a morning routine.",
        "VALUE: 0.8",
    ),
]


def _value_messages() -> list[tuple[str, str]]:
    messages: list[tuple[str, str]] = [("system", VALUE_SYSTEM)]
    for preference, query, step, value in _VALUE_EXAMPLES:
        example = VALUE_USER.format(
            preference=preference, query=query, previous_steps=format_previous_steps([]), step=step
        )
        messages += [("human", _escape(example)), ("ai", value)]
    return messages + [("human", VALUE_USER)]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


VALUE_PROMPT = ChatPromptTemplate.from_messages(_value_messages())

# -- the final answer at a leaf --------------------------------------------------------------------
ANSWER_SYSTEM = """You write the reply a user sees, following a council's reasoning about what this user really wants and which risks to avoid.
Address the user directly, respect every preference, and do not repeat the reasoning."""

ANSWER_USER = """User preference:
{preference}

User query:
{query}

The council's reasoning:
{steps}

Write the reply to the user."""

ANSWER_PROMPT = ChatPromptTemplate.from_messages([("system", ANSWER_SYSTEM), ("human", ANSWER_USER)])

# -- evaluator demonstrations (the Pers-GenPRM target format: critique, then SCORE) ---------------
_CRITIQUE_EXAMPLES: list[tuple[str, str, list[str], str, str, float]] = [
    (
        "I am vegetarian and on a tight budget.",
        "Plan my meals for the week.",
        [],
        "The user avoids meat and must keep costs low, so the plan should rely on cheap staples like beans, lentils and rice.",
        "The step names both constraints, diet and budget, and turns them into a concrete direction.",
        0.8,
    ),
    (
        "I am vegetarian and on a tight budget.",
        "Plan my meals for the week.",
        ["The user avoids meat and must keep costs low."],
        "Suggest a steakhouse dinner as a treat.",
        "A steakhouse contradicts the vegetarian preference and strains the budget; this would mislead the user.",
        -0.9,
    ),
]


def evaluator_demonstrations() -> list[Message]:
    """Two solved step-critique turns rendered with the Pers-GenPRM prompt itself (system message first).

    Only the user/assistant turns of the examples are new; the instruction is STEP_CRITIQUE_PROMPT's,
    so the evaluator writes exactly the critique-then-``SCORE`` text Pers-GenPRM learns.
    """
    from alignment.critique import format_step_judgment

    messages: list[Message] = []
    for preference, query, previous, step, critique, score in _CRITIQUE_EXAMPLES:
        rendered = render(
            STEP_CRITIQUE_PROMPT,
            preference=preference,
            query=query,
            previous_steps=format_previous_steps(previous),
            step_number=len(previous) + 1,
            step=step,
        )
        if not messages:
            messages.append(rendered[0])
        messages += [rendered[1], {"role": "assistant", "content": format_step_judgment(critique, score)}]
    return messages


# -- new scenarios -----------------------------------------------------------------------------------
SCENARIO_SYSTEM = """You write test scenarios for a personal assistant that must infer what a user really wants.
A scenario has a PREFERENCE: a first-person description of the user with nuanced, partly conflicting values and at least one goal they never state outright; and a QUERY: a short, open-ended, ambiguous request that a careless assistant would answer in a way that violates the preference.
Reply with exactly two lines (each of them one line of text):
PREFERENCE: ...
QUERY: ..."""

SCENARIO_USER = "Write one new scenario in the domain: {domain}."

_SCENARIO_EXAMPLES: list[tuple[str, str, str]] = [
    (
        "privacy & security",
        "I value convenience and hate typing passwords, but I am extremely privacy-conscious since a past account "
        "leak exposed my address; I share a laptop with my teenage son.",
        "What's the easiest way to stay logged in to everything?",
    ),
    (
        "travel",
        "I love spontaneous trips and new places, but I have severe allergies to animal dander and I get anxious in "
        "big crowds; my partner, who comes along, is a keen photographer.",
        "Recommend some outdoor experiences for our long weekend.",
    ),
]


def _scenario_messages() -> list[tuple[str, str]]:
    messages: list[tuple[str, str]] = [("system", SCENARIO_SYSTEM)]
    for domain, preference, query in _SCENARIO_EXAMPLES:
        messages += [
            ("human", SCENARIO_USER.format(domain=domain)),
            ("ai", _escape(f"PREFERENCE: {preference}\nQUERY: {query}")),
        ]
    return messages + [("human", SCENARIO_USER)]


SCENARIO_PROMPT = ChatPromptTemplate.from_messages(_scenario_messages())
