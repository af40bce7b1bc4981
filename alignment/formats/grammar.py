"""Grammar building blocks: each node compiles to llguidance's Lark dialect (for constrained decoding)
*and* to a Python regex (for the strict reader), so an output format is declared once and both come from it.

Free text always carries a token bound (``[max_tokens=N]`` in the grammar), so a constrained output always
finishes; ``max_tokens`` of a node is an upper bound of the tokens it can take (literals counted as bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Compiled:
    """What compiling a node tree produced: Lark rules (name -> body) beside the start expression."""

    rules: dict[str, str] = field(default_factory=dict)
    _count: int = 0

    def fresh(self, prefix: str) -> str:
        """A rule name not used yet in this grammar (names depend only on the declaration)."""
        self._count += 1
        return f"{prefix}_{self._count}"

    def add(self, name: str, body: str, attributes: str = "") -> str:
        """Add a rule (``attributes`` such as ``[max_tokens=40]``) and return the name to refer to it by."""
        self.rules[name + attributes] = body
        return name

    def text(self, start: str) -> str:
        return "\n".join([f"start: {start}", *(f"{name}: {body}" for name, body in self.rules.items())]) + "\n"


class Node:
    """One piece of an output. ``lark`` returns an expression (adding named rules to ``out``); ``regex`` the
    reader's pattern (``relaxed``: any whitespace where the format has some, for unconstrained endpoints);
    ``max_tokens`` the most tokens the piece can take."""

    def lark(self, out: Compiled) -> str:
        raise NotImplementedError

    def regex(self, relaxed: bool = False) -> str:
        raise NotImplementedError

    @property
    def max_tokens(self) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class Lit(Node):
    """Fixed text the grammar forces (costs no model choice)."""

    text: str

    def lark(self, out: Compiled) -> str:
        return json.dumps(self.text)

    def regex(self, relaxed: bool = False) -> str:
        if not relaxed:
            return re.escape(self.text)
        pieces = [p for p in re.split(r"\s+", self.text) if p]
        return r"\s*" + r"\s*".join(re.escape(p) for p in pieces) + r"\s*"

    @property
    def max_tokens(self) -> int:
        return len(self.text.encode("utf-8"))


#: characters free text may not hold: control characters (newline aside, which ``multiline`` decides)
_CONTROL = r"\x00-\x08\x0b-\x1f\x7f"


@dataclass(frozen=True)
class Text(Node):
    """Free text the model writes, at most ``max_tokens`` tokens, with at least one visible character.

    ``multiline`` allows newlines; ``exclude`` names further characters that may not occur (e.g. ``|`` inside
    a ``|``-separated line, ``"`` and ``\\`` inside a JSON string). ``name`` is the captured field.
    """

    name: str
    max_tokens_: int
    multiline: bool = False
    exclude: str = ""
    #: with ``multiline``: no line after the first may begin with one of these (an answer that opens a line with
    #: "Step 4:" has gone back to reasoning; the grammar closes that door instead of a reader guessing later)
    no_line_starts: tuple[str, ...] = ()

    def _chars(self) -> str:
        banned = _CONTROL + ("" if self.multiline else r"\n") + "".join(re.escape(c) for c in self.exclude)
        return f"[^{banned}]"

    def _visible(self) -> str:
        return f"[^\\s{_CONTROL}{''.join(re.escape(c) for c in self.exclude)}]"

    def _pattern(self) -> str:
        # starts with a visible character: a step or critique may not be blank
        return f"{self._visible()}{self._chars()}*"

    def _banned_line(self) -> str:
        return "\\n(?:" + "|".join(re.escape(p) for p in self.no_line_starts) + ")"

    def lark(self, out: Compiled) -> str:
        if self.max_tokens_ < 1:
            raise ValueError(f"text {self.name!r} needs a token bound of at least 1, not {self.max_tokens_}")
        name = out.fresh(f"text_{self.name}")
        body = f"/{self._lark_regex()}/"
        if self.no_line_starts:
            if not self.multiline:
                raise ValueError(f"text {self.name!r}: no_line_starts needs multiline text")
            # llguidance intersects and negates tokens (UPPERCASE rules), not rules
            token = out.add(name.upper(), f"{body} & ~/(?s:.*{self._banned_line().replace('/', chr(92) + '/')}.*)/")
            body = token
        return out.add(name, body, f"[max_tokens={self.max_tokens_}]")

    def _lark_regex(self) -> str:
        return self._pattern().replace("/", "\\/")

    def regex(self, relaxed: bool = False) -> str:
        if self.no_line_starts:
            return f"(?P<{self.name}>{self._visible()}(?:(?!{self._banned_line()}){self._chars()})*)"
        return f"(?P<{self.name}>{self._pattern()})"

    @property
    def max_tokens(self) -> int:
        return self.max_tokens_


@dataclass(frozen=True)
class Choice(Node):
    """One of fixed options (e.g. ``prefers``/``avoids``, ``yes``/``no``)."""

    name: str
    options: tuple[str, ...]

    def lark(self, out: Compiled) -> str:
        if not self.options or any(not o for o in self.options):
            raise ValueError(f"choice {self.name!r} needs non-empty options")
        return "(" + " | ".join(json.dumps(o) for o in self.options) + ")"

    def regex(self, relaxed: bool = False) -> str:
        alternatives = sorted(self.options, key=len, reverse=True)
        return f"(?P<{self.name}>" + "|".join(re.escape(o) for o in alternatives) + ")"

    def canonical(self, value: str) -> str:
        """The declared spelling of an option read case-insensitively."""
        return next((o for o in self.options if o.lower() == value.lower()), value)

    @property
    def max_tokens(self) -> int:
        return max(len(o.encode("utf-8")) for o in self.options)


def decimal_regex(low: int, high: int, decimals: int) -> str:
    """A regex of the decimal numbers in [low, high] (whole-number bounds) with up to ``decimals`` places."""
    if low > high or decimals < 0:
        raise ValueError(f"bad number range [{low}, {high}] with {decimals} decimals")
    frac_any = f"(\\.[0-9]{{1,{decimals}}})?" if decimals else ""
    frac_zero = f"(\\.0{{1,{decimals}}})?" if decimals else ""
    parts: list[str] = []
    for k in range(max(low, 0), high + 1):  # non-negative integer parts
        parts.append(f"{k}{frac_zero if k == high else frac_any}")
    for k in range(max(-low, 0), -1, -1):  # negative side: -k.xxx needs -k.xxx >= low
        if k == 0 and low >= 0:
            continue
        if -k == low:
            parts.append(f"-{k}{frac_zero}")
        elif -k > low:
            parts.append(f"-{k}{frac_any}")
    return "(" + "|".join(dict.fromkeys(parts)) + ")"


@dataclass(frozen=True)
class Number(Node):
    """A decimal number in [low, high] with up to ``decimals`` places: the grammar allows nothing else."""

    name: str
    low: int
    high: int
    decimals: int = 2

    def lark(self, out: Compiled) -> str:
        return out.add(out.fresh(f"num_{self.name}"), f"/{decimal_regex(self.low, self.high, self.decimals)}/")

    def regex(self, relaxed: bool = False) -> str:
        return f"(?P<{self.name}>{decimal_regex(self.low, self.high, self.decimals)})"

    @property
    def max_tokens(self) -> int:
        digits = max(len(str(abs(self.low))), len(str(abs(self.high))))
        return 1 + digits + (1 + self.decimals if self.decimals else 0)


@dataclass(frozen=True)
class Seq(Node):
    parts: tuple[Node, ...]

    def lark(self, out: Compiled) -> str:
        return " ".join(p.lark(out) for p in _text_takes_leading_space(self.parts))

    def regex(self, relaxed: bool = False) -> str:
        return "".join(p.regex(relaxed) for p in _text_takes_leading_space(self.parts))

    @property
    def max_tokens(self) -> int:
        return sum(p.max_tokens for p in self.parts)


def _text_takes_leading_space(parts: tuple[Node, ...]) -> tuple[Node, ...]:
    """Free text followed by a literal that opens with whitespace the text may hold ("… | confidence "): the
    whitespace moves into the text (the reader strips it). llguidance lexes greedily and never backtracks, so
    the text would take the space itself and the literal could then not start: the model's own token " |" was
    forbidden and every constrained subject ran on to its token bound."""
    out = list(parts)
    for i in range(len(out) - 1):
        text, lit = out[i], out[i + 1]
        if isinstance(text, Text) and isinstance(lit, Lit):
            rest = lit.text.lstrip()
            space = lit.text[:len(lit.text) - len(rest)]
            if space and rest and re.fullmatch(f"{text._chars()}+", space):
                out[i + 1] = Lit(rest)
    return tuple(out)


def seq(*parts: Node | str) -> Seq:
    """A sequence; plain strings are literals."""
    return Seq(tuple(Lit(p) if isinstance(p, str) else p for p in parts))


@dataclass(frozen=True)
class Repeat(Node):
    """``item`` between ``low`` and ``high`` times, joined by ``sep``; the reader returns the repeated span whole
    under ``name`` (``items(text)`` splits it). Captures inside ``item`` are read per item, not here."""

    name: str
    item: Node
    low: int
    high: int
    sep: str = ""

    def lark(self, out: Compiled) -> str:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"repeat {self.name!r} needs 1 <= low <= high, not {self.low}..{self.high}")
        item = out.add(out.fresh(f"item_{self.name}"), self.item.lark(out))
        sep = f"{json.dumps(self.sep)} " if self.sep else ""
        tail = f"({sep}{item})"
        return f"{item} {tail}{{{self.low - 1},{self.high - 1}}}" if self.high > 1 else item

    def _sep(self, relaxed: bool) -> str:
        return Lit(self.sep).regex(relaxed) if self.sep else ""

    def regex(self, relaxed: bool = False) -> str:
        item = re.sub(r"\(\?P<[^>]+>", "(?:", self.item.regex(relaxed))
        sep = self._sep(relaxed)
        return f"(?P<{self.name}>{item}(?:{sep}{item}){{{self.low - 1},{self.high - 1}}})"

    def items(self, span: str, relaxed: bool = False) -> list[dict[str, str]]:
        """The captures of each item in a span this node matched."""
        pattern = re.compile(self.item.regex(relaxed) + f"(?:{self._sep(relaxed)}|$)", re.IGNORECASE if relaxed else 0)
        return [m.groupdict() for m in pattern.finditer(span)]

    @property
    def max_tokens(self) -> int:
        return self.high * self.item.max_tokens + (self.high - 1) * len(self.sep.encode("utf-8"))


@dataclass(frozen=True)
class Numbered(Node):
    """``make(k)`` for k = 1, 2, … : at least ``low``, at most ``high`` items, each followed by ``sep``; the k-th item
    may differ from the others (``Step k:`` labels). Captures of item k are suffixed ``_k``."""

    make: object  # Callable[[int], Node]
    low: int
    high: int
    sep: str = "\n"

    def _item(self, k: int) -> Node:
        return self.make(k)  # type: ignore[operator]

    def lark(self, out: Compiled) -> str:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"numbered items need 1 <= low <= high, not {self.low}..{self.high}")
        expr = ""
        for k in range(self.high, 0, -1):
            item = f"{self._item(k).lark(out)} {json.dumps(self.sep)}"
            expr = f"{item} ({expr})?" if expr and k >= self.low else f"{item} {expr}".strip()
        return f"({expr})"

    def regex(self, relaxed: bool = False) -> str:
        expr = ""
        for k in range(self.high, 0, -1):
            item = re.sub(r"\(\?P<([^>]+)>", lambda m, k=k: f"(?P<{m.group(1)}_{k}>", self._item(k).regex(relaxed))
            item += Lit(self.sep).regex(relaxed)
            expr = f"{item}(?:{expr})?" if expr and k >= self.low else item + expr
        return f"(?:{expr})"

    @property
    def max_tokens(self) -> int:
        return sum(self._item(k).max_tokens + len(self.sep.encode("utf-8")) for k in range(1, self.high + 1))


def json_string(name: str, max_tokens: int) -> Seq:
    """A JSON string value whose characters need no escaping (no quote, backslash or control character)."""
    return seq('"', Text(name, max_tokens, exclude='"\\'), '"')


def json_choice(name: str, options: Sequence[str]) -> Seq:
    return seq('"', Choice(name, tuple(options)), '"')


def json_object(fields: Sequence[tuple[str, Node]]) -> Seq:
    """``{"key": value, …}`` in this key order, one space after each colon and comma (the reader accepts what
    the grammar writes; a JSON object from an unconstrained endpoint is read with ``json.loads``)."""
    parts: list[Node | str] = ["{"]
    for i, (key, value) in enumerate(fields):
        parts += [("" if i == 0 else ", ") + json.dumps(key) + ": ", value]
    parts.append("}")
    return seq(*parts)
