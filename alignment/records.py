"""Reading the record files of shared/design/formats.md: JSONL, a whole JSON file, or a saved Hugging Face
datasets directory.

Every reader of user-supplied files (test sets, signals, personas, scenarios, D_Rea/D_RFT records, ALOE
ratings, memory exports) goes through here, so any malformed byte stream is reported the same way: a
``FormatError`` naming file:line and what is wrong, never a Python traceback. That covers bytes that are
not UTF-8, text that is not JSON (NaN and Infinity included), JSON nested deeper than ``MAX_DEPTH``,
numbers too long to convert, and files that cannot be read at all.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignment.errors import FormatError

#: deeper JSON is refused (formats.md records are a few levels deep; Python's parser gives up near 1000)
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def decode_json(text: str, where: str) -> Any:
    """One JSON value from ``text``; anything wrong with it is a FormatError that starts with ``where``."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # NaN/Infinity, an integer longer than Python converts
        raise FormatError(f"{where}: not valid JSON ({exc})") from None
    if _too_deep(obj):
        raise FormatError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)")
    return obj


def _not_utf8(path: Path, number: int, byte: int, column: int) -> FormatError:
    return FormatError(f"{path}:{number}: not UTF-8 text (byte 0x{byte:02x} at column {column}): save the file as UTF-8")


def _open(path: Path):
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        return path.open("rb")
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc.strerror})") from None


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a UTF-8 text file (a byte-order mark is skipped)."""
    path = Path(path)
    with _open(path) as handle:
        try:
            for number, raw in enumerate(handle, 1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, number, raw[exc.start], exc.start + 1) from None
        except OSError as exc:  # an I/O error mid-file
            raise FormatError(f"{path}: cannot be read ({exc.strerror})") from None


def jsonl_values(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(file:line, decoded value) for each non-blank line of a JSONL file."""
    path = Path(path)
    for number, line in text_lines(path):
        if line.strip():
            yield f"{path}:{number}", decode_json(line, f"{path}:{number}")


def jsonl_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Like ``jsonl_values`` but every line must be a JSON object."""
    for where, obj in jsonl_values(path):
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def load_json_file(path: str | Path) -> Any:
    """A whole-file JSON document (a memory export); errors name the line where parsing stopped."""
    path = Path(path)
    with _open(path) as handle:
        try:
            raw = handle.read()
        except OSError as exc:
            raise FormatError(f"{path}: cannot be read ({exc.strerror})") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise _not_utf8(path, number, raw[exc.start], column) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise FormatError(f"{path}:1: JSON nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise FormatError(f"{path}:1: not valid JSON ({exc})") from None
    if _too_deep(obj):
        raise FormatError(f"{path}:1: JSON nested too deeply (at most {MAX_DEPTH} levels)")
    return obj


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, decoded object) for a JSONL file or a datasets directory; any malformed input is an error."""
    path = Path(path)
    if path.is_dir():
        try:
            from datasets import load_from_disk

            dataset = load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to load means "not a datasets directory"
            raise FormatError(f"{path}: not a JSONL file or a datasets directory ({exc})") from None
        try:
            for i, row in enumerate(dataset):
                yield f"{path}[{i}]", {k: v for k, v in dict(row).items() if v is not None}
        except FormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged arrow file fails while rows are read
            raise FormatError(f"{path}: the datasets directory is damaged ({type(exc).__name__}: {exc})") from None
        return
    yield from jsonl_values(path)
