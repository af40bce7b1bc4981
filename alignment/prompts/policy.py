"""The policy's defensive-reasoning prompt (the output format of alignment/steps.py), used by the app, RFT,
CDPA rollouts and evaluation alike.

The system message says what to do without wording a small model could copy into its steps (the old one
listed "Step 1: the user's deeper, unstated preference …", and SmolLM2 wrote exactly that back); one worked
example, on a topic far from any real query, shows the shape. Constrained decoding (alignment/formats
``policy_response``) enforces the shape on local engines; the example teaches it to endpoints that cannot.

Order: what never changes comes first (instructions, the worked example: the same tokens for every user and
turn), then the history, then what the memory knows for this query, then the query. An engine that keeps
the previous prompt's evaluated tokens (llama.cpp reuses the longest common prefix) prefills only what changed:
on CPU, prefill is most of the time to the first token (~120 tokens/s here).
"""

from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

DEFENSIVE_SYSTEM = """You are a personal assistant who thinks before replying. Reply with a few short reasoning \
lines, each starting with "Step" and its number, then a line starting with "Answer:" that speaks to the user \
directly."""

#: what the memory knows, for this query: a message of its own just before the query (see the module doc)
KNOWN_ABOUT_USER = """What you know about the user:
{preferences}"""

#: the worked example: what the user implied, a risk in the obvious answer, the plan; then the answer
EXAMPLE_QUERY = "I get seasick. Plan a family day at the coast."
EXAMPLE_RESPONSE = """Step 1: Seasickness means no boat trips, even though they are the usual coastal outing.
Step 2: Children need things to do on land, near the beach.
Answer: Start with a cliff-top walk, have lunch at a harbour café, then spend the afternoon rock-pooling \
and on the beach. Everything stays on solid ground."""

NO_PREFERENCES = "(nothing yet)"

POLICY_PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", DEFENSIVE_SYSTEM),
        ("human", EXAMPLE_QUERY),
        ("ai", EXAMPLE_RESPONSE),
        MessagesPlaceholder("history", optional=True),
        ("system", KNOWN_ABOUT_USER),
        ("human", "{query}"),
    ]
)

DIRECT_SYSTEM = """You are a helpful personal assistant.
What you know about the user:
{preferences}"""

DIRECT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", DIRECT_SYSTEM), MessagesPlaceholder("history", optional=True), ("human", "{query}")]
)


def format_preferences(statements: list[str]) -> str:
    return "\n".join(f"- {s}" for s in statements) if statements else NO_PREFERENCES


def template_text() -> str:
    """The prompt's own wording (instructions and the worked example, no user content): what a step must not
    repeat (the template-echo rate of `cdra bench chat`, alignment/echo.py)."""
    return "\n".join([DEFENSIVE_SYSTEM, KNOWN_ABOUT_USER.replace("{preferences}", ""), EXAMPLE_QUERY,
                      EXAMPLE_RESPONSE])


#: where an engine that cannot enforce the policy grammar is started: the reply is opened on this label, so
#: even a small model writes its reasoning steps (engines continue a conversation that ends with an assistant
#: message; see engines/base.py). Grammar-constrained engines need no prefix: the grammar writes it.
REASONING_PREFIX = "Step 1:"


def start_reasoning(conversation: list[dict[str, str]], prefix: str = REASONING_PREFIX) -> list[dict[str, str]]:
    """The conversation with the assistant's reply opened on ``prefix``."""
    return [*conversation, {"role": "assistant", "content": prefix}]
