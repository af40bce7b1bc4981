"""Model engines behind one interface (see base.py); build_engine turns a ModelSpec into one."""

from alignment.engines.base import (
    Completion,
    Conversation,
    EmptyPromptError,
    Engine,
    EngineError,
    Message,
    PromptTooLongError,
    SamplingParams,
    Scored,
)
from alignment.engines.factory import build_engine
from alignment.engines.spec import ModelSpec

__all__ = [
    "Completion",
    "Conversation",
    "EmptyPromptError",
    "Engine",
    "EngineError",
    "Message",
    "ModelSpec",
    "PromptTooLongError",
    "SamplingParams",
    "Scored",
    "build_engine",
]
