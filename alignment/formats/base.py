"""An output format: one declaration (a grammar node tree plus a reader of its captures) from which the
llguidance grammar, the strict reader, the relaxed reader for unconstrained endpoints, the JSON schema (for
JSON outputs) and the token bound all come. An invalid declaration fails when it is made, naming the format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from alignment.errors import CdraError
from alignment.formats.grammar import Compiled, Node

T = TypeVar("T")


class FormatDeclarationError(CdraError):
    """A format's grammar does not compile: a programming error, raised at start-up with the format's name."""


class FormatParseError(CdraError, ValueError):
    """A model output that is not in its declared format (only possible without constrained decoding)."""

    def __init__(self, format_name: str, problem: str, text: str = "") -> None:
        self.format_name, self.problem, self.text = format_name, problem, text
        super().__init__(f"output is not in the {format_name} format: {problem}: {text[:160]!r}")


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A parsed output; ``repaired`` when only the relaxed reader accepted it (callers count these)."""

    value: T
    repaired: bool = False


@dataclass(frozen=True, eq=False)
class OutputFormat(Generic[T]):
    """One declared output type.

    ``build(captures, text)`` turns the reader's named captures into the typed value (and may raise
    ``ValueError`` for what a regex cannot say, e.g. a number's range). ``json_schema`` is set for outputs
    that are one JSON object, so endpoints with structured outputs can enforce it themselves.
    """

    name: str
    root: Node
    build: Callable[[dict[str, str], str], T]
    json_schema: dict[str, Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        from alignment.formats.constrain import validate_grammar

        try:
            grammar = self.lark
        except ValueError as exc:
            raise FormatDeclarationError(f"the {self.name} output format is declared wrongly: {exc}") from exc
        problem = validate_grammar(grammar)
        if problem:
            raise FormatDeclarationError(f"the {self.name} output format does not compile: {problem}")
        try:
            self.pattern, self.relaxed_pattern  # noqa: B018 - compile both readers now
        except re.error as exc:
            raise FormatDeclarationError(f"the {self.name} output format's reader does not compile: {exc}") from exc

    # -- what the engines use ---------------------------------------------------------------------------
    @cached_property
    def lark(self) -> str:
        """The grammar in llguidance's Lark dialect."""
        out = Compiled()
        start = self.root.lark(out)
        return out.text(start)

    @property
    def max_tokens(self) -> int:
        """An upper bound of the tokens of any output the grammar allows (a generation budget that always finishes)."""
        return self.root.max_tokens + 1  # + end of sequence

    # -- what the callers use -----------------------------------------------------------------------------
    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.root.regex(), re.DOTALL)

    @cached_property
    def relaxed_pattern(self) -> re.Pattern[str]:
        return re.compile(r"\s*" + self.root.regex(relaxed=True) + r"\s*", re.DOTALL | re.IGNORECASE)

    def parse(self, text: str) -> T:
        """The strict reader: exactly what the grammar produces (surrounding whitespace aside)."""
        return self.read(text).value

    def read(self, text: str, *, lenient: bool = False) -> Reading[T]:
        """Strict first; with ``lenient`` (an unconstrained endpoint) the relaxed reader derived from the same
        declaration (any whitespace, any case of fixed words; JSON by ``json.loads``), marked ``repaired``."""
        if not isinstance(text, str):
            raise FormatParseError(self.name, "not text", repr(text))
        match = self.pattern.fullmatch(text.strip())
        if match is not None:
            return Reading(self._build(match.groupdict(), text), repaired=False)
        if lenient:
            relaxed = self.relaxed_pattern.fullmatch(text)
            if relaxed is not None:
                return Reading(self._build(relaxed.groupdict(), text), repaired=True)
            if self.json_schema is not None:
                return Reading(self._build_json(text), repaired=True)
        raise FormatParseError(self.name, "does not match the declared format", text)

    def _build(self, captures: dict[str, str], text: str) -> T:
        try:
            return self.build({k: v for k, v in captures.items() if v is not None}, text)
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatParseError(self.name, str(exc), text) from None

    def _build_json(self, text: str) -> T:
        body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip(), flags=re.IGNORECASE)
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise FormatParseError(self.name, f"not JSON ({exc})", text) from None
        if not isinstance(obj, dict):
            raise FormatParseError(self.name, "not a JSON object", text)
        properties = (self.json_schema or {}).get("properties", {})
        captures = {key: obj.get(key) for key in properties}
        missing = [k for k in (self.json_schema or {}).get("required", []) if captures.get(k) in (None, "")]
        if missing:
            raise FormatParseError(self.name, f"missing {', '.join(missing)}", text)
        return self._build({k: str(v) for k, v in captures.items() if v is not None}, text)
