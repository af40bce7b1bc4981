"""Every prompt the product sends lives in this package, as langchain-core templates.

One module per area (policy, preference inference, Pers-GenPRM, council, judges). Callers render a
template with ``render(template, **values)`` and get plain chat messages for any engine.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate

from alignment.engines.base import Message

_ROLE = {"system": "system", "human": "user", "ai": "assistant"}


def to_messages(messages: list[BaseMessage]) -> list[Message]:
    return [{"role": _ROLE.get(m.type, m.type), "content": str(m.content)} for m in messages]


def render(template: ChatPromptTemplate, **values: object) -> list[Message]:
    return to_messages(template.format_messages(**values))
