"""Declared output formats (grammar + reader from one declaration) and their constrained decoding.

Callers pass a format on ``SamplingParams(format=...)``; engines that can enforce it do (llguidance on
transformers and llama.cpp, structured outputs on vLLM, JSON schema on endpoints), and every caller reads the
result with ``fmt.read(text, lenient=not engine.enforces(fmt))``.
"""

from alignment.formats.base import FormatDeclarationError, FormatParseError, OutputFormat, Reading
from alignment.formats.catalog import (
    InferredDescription,
    StatementLine,
    Verdict,
    council_thought,
    council_value,
    declared_formats,
    policy_response,
    preference_inference,
    preference_selection,
    render_inference,
    scenario,
    step_judgment,
    verdict,
)

__all__ = [
    "FormatDeclarationError",
    "FormatParseError",
    "InferredDescription",
    "OutputFormat",
    "Reading",
    "StatementLine",
    "Verdict",
    "council_thought",
    "council_value",
    "declared_formats",
    "policy_response",
    "preference_inference",
    "preference_selection",
    "render_inference",
    "scenario",
    "step_judgment",
    "verdict",
]
