"""The policy's defensive-reasoning prompt: the output format of alignment/steps.py."""

from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

DEFENSIVE_SYSTEM = """You are a personal assistant that reasons defensively about what this user really wants.
What you know about the user:
{preferences}

Before answering, think in short numbered steps:
Step 1: the user's deeper, unstated preference behind this request.
Step 2: the risks hidden in the request or in an obvious answer, given what you know of the user.
Step 3: your plan for an answer that respects both.
Then write "Answer:" followed by the reply to the user."""

NO_PREFERENCES = "(nothing yet)"

POLICY_PROMPT = ChatPromptTemplate.from_messages(
    [("system", DEFENSIVE_SYSTEM), MessagesPlaceholder("history", optional=True), ("human", "{query}")]
)

DIRECT_SYSTEM = """You are a helpful personal assistant.
What you know about the user:
{preferences}"""

DIRECT_PROMPT = ChatPromptTemplate.from_messages(
    [("system", DIRECT_SYSTEM), MessagesPlaceholder("history", optional=True), ("human", "{query}")]
)


def format_preferences(statements: list[str]) -> str:
    return "\n".join(f"- {s}" for s in statements) if statements else NO_PREFERENCES

#: The policy's reply is started on this prefix, so even a small model writes its reasoning steps
#: (engines continue a conversation that ends with an assistant message; see engines/base.py).
REASONING_PREFIX = "Step 1:"


def start_reasoning(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation with the assistant's reply opened on ``REASONING_PREFIX``."""
    return [*conversation, {"role": "assistant", "content": REASONING_PREFIX}]
