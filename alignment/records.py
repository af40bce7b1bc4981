"""Reading the record files of shared/design/formats.md: JSONL, or a saved Hugging Face datasets directory.

Every reader of user-supplied test sets, signal files and persona files goes through here, so a malformed line
is reported the same way (file:line and what is wrong) wherever it is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignment.errors import FormatError


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, decoded object) for a JSONL file or a datasets directory; malformed JSON is an error."""
    if path.is_dir():
        try:
            from datasets import load_from_disk

            dataset = load_from_disk(str(path))
        except Exception as exc:
            raise FormatError(f"{path}: not a JSONL file or a datasets directory ({exc})") from None
        for i, row in enumerate(dataset):
            yield f"{path}[{i}]", {k: v for k, v in dict(row).items() if v is not None}
        return
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
