"""Tombstones: when each user was forgotten, so that a late write for activity from before the forget
(a background inference, an answer still streaming, another process) is refused at write time.

The rule: a write carries the time of the user activity it comes from (``as_of``: when the message
arrived, when the command started); it is refused when the user was forgotten after that time.
New activity after the forget is written normally. Users are stored as a SHA-256 of their id (a
tombstone says *that* someone was forgotten, never who), in a small SQLite file that every process
sharing the data directory reads on each write. A scope ``user__aloe__…`` belongs to ``user``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from alignment.errors import CdraError
from memory.private_files import private_sqlite


class ForgottenError(CdraError):
    """A write for a user who was forgotten after the activity it belongs to; nothing was written."""


def now_iso() -> str:
    """UTC with milliseconds, the timestamp format of the session log (sorts in time order)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def stamp(when: str | datetime | None = None) -> str:
    """``when`` (ISO 8601 or datetime; naive = UTC; None = now) in the tombstone format, for comparing."""
    if when is None:
        return now_iso()
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.strip())
        except ValueError:
            raise CdraError(f"{when!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds")


def user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def owners(scope: str) -> list[str]:
    """The ids whose forget also covers ``scope``: itself and, for ``user__…`` scopes, the user."""
    head = scope.split("__", 1)[0]
    return [scope] if head == scope or not head else [scope, head]


def forgotten_at_in(db: sqlite3.Connection, scope: str, table: str = "forgotten") -> str | None:
    """The latest tombstone covering ``scope`` in ``table`` (user_key, time) of an open database."""
    keys = [user_key(s) for s in owners(scope)]
    row = db.execute(
        f"SELECT MAX(time) FROM {table} WHERE user_key IN ({','.join('?' * len(keys))})", keys
    ).fetchone()
    return row[0] if row else None


def refuse_if_forgotten(forgotten_at: str | None, scope: str, as_of: str) -> None:
    if forgotten_at is not None and forgotten_at > as_of:
        raise ForgottenError(
            f"{scope!r} was forgotten at {forgotten_at}, after the activity this write belongs to "
            f"({as_of}): nothing was written"
        )


class ChromaTombstones:
    """The tombstones of a vector memory on a chroma *server*: a collection there (``cdra-forgotten``, one
    record per forgotten user hash), so every app process using that server honours them and nothing is
    written locally."""

    NAME = "cdra-forgotten"

    def __init__(self, client) -> None:
        self.client = client
        self._collection = None

    def _col(self):
        if self._collection is None:
            self._collection = self.client.get_or_create_collection(
                self.NAME, embedding_function=None, metadata={"kind": "cdra-tombstones"})
        return self._collection

    def mark(self, user_id: str, when: str | None = None) -> str:
        at = max(stamp(when), self.forgotten_at(user_id, own_only=True) or "")
        self._col().upsert(ids=[user_key(user_id)], embeddings=[[1.0]], metadatas=[{"time": at}])
        return at

    def forgotten_at(self, scope: str, own_only: bool = False) -> str | None:
        keys = [user_key(s) for s in ([scope] if own_only else owners(scope))]
        found = self._col().get(ids=keys, include=["metadatas"])
        times = [m["time"] for m in found.get("metadatas") or [] if m and m.get("time")]
        return max(times) if times else None

    def check(self, scope: str, as_of: str) -> None:
        refuse_if_forgotten(self.forgotten_at(scope), scope, stamp(as_of))


class Tombstones:
    """The tombstone file of an embedded vector memory (``<chroma dir>/cdra-forgotten.sqlite3``)."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS forgotten (user_key TEXT PRIMARY KEY, time TEXT NOT NULL)"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        private_sqlite(self.path)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute(self.SCHEMA)

    def mark(self, user_id: str, when: str | None = None) -> str:
        """Record that ``user_id`` (and every ``user_id__…`` scope) is forgotten as of ``when`` (now)."""
        at = stamp(when)
        with self._lock:
            self._db.execute(
                "INSERT INTO forgotten(user_key, time) VALUES (?, ?) "
                "ON CONFLICT(user_key) DO UPDATE SET time = MAX(time, excluded.time)",
                (user_key(user_id), at),
            )
        return at

    def forgotten_at(self, scope: str) -> str | None:
        with self._lock:
            return forgotten_at_in(self._db, scope)

    def check(self, scope: str, as_of: str) -> None:
        """Raise ForgottenError if ``scope`` was forgotten after ``as_of``."""
        refuse_if_forgotten(self.forgotten_at(scope), scope, stamp(as_of))
