"""The session log: an append-only, crash-safe record (SQLite in WAL mode) of every turn the assistant
answered, with feedback and ratings as appended events; exported as JSONL for retraining.

Every read or write that names a turn or a session also names the user, and only that user's rows
match: one user can never rate, read or delete another user's turns through this API. Forgetting a
user leaves a tombstone in the same transaction: a turn that began before it is refused when it is
logged later (memory/tombstones.py). Each turn records whether it reached the vector memory
(``memory``: none | pending | stored | skipped), so a crash between the two is found and replayed.
The file and its WAL are private to their owner (0600), its directory is created 0700.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from alignment.errors import CdraError
from memory.private_files import private_dir, private_sqlite
from memory.tombstones import forgotten_at_in, refuse_if_forgotten, user_key
from memory.tombstones import stamp as _stamp

Mode = Literal["chat", "ask", "serve", "aloe", "bench"]
TurnStatus = Literal["ok", "error", "cancelled"]
Feedback = Literal["up", "down"]
MODES = ("chat", "ask", "serve", "aloe", "bench")
SESSION_STATUSES = ("active", "paused", "finished")
#: whether a turn reached the vector memory: not meant to | being written | written | not written (forgotten)
MEMORY_STATES = ("none", "pending", "stored", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    mode       TEXT NOT NULL,
    started    TEXT NOT NULL,
    updated    TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'active',
    meta       TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS turns (
    turn_id        TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL REFERENCES sessions(session_id),
    user_id        TEXT NOT NULL,
    idx            INTEGER NOT NULL,
    time           TEXT NOT NULL,
    mode           TEXT NOT NULL,
    query          TEXT NOT NULL,
    history        TEXT NOT NULL,
    retrieved      TEXT NOT NULL,
    steps          TEXT NOT NULL,
    answer         TEXT NOT NULL,
    raw            TEXT NOT NULL,
    model_versions TEXT NOT NULL,
    latency_ms     TEXT NOT NULL,
    status         TEXT NOT NULL,
    error          TEXT,
    persona        TEXT,
    meta           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id TEXT NOT NULL REFERENCES turns(turn_id),
    user_id TEXT NOT NULL,
    time    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    value   TEXT
);
CREATE TABLE IF NOT EXISTS forgotten (
    user_key TEXT PRIMARY KEY,
    time     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_user_time ON turns(user_id, time);
CREATE INDEX IF NOT EXISTS turns_session ON turns(session_id, idx);
CREATE INDEX IF NOT EXISTS events_turn ON events(turn_id, id);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id, mode, status);
"""


def now_iso() -> str:
    """UTC with milliseconds: sorts lexicographically in time order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_since(since: str | datetime | None) -> str | None:
    """A date or datetime (naive = UTC) as the stored timestamp format, for ``time >= since``."""
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.strip())
        except ValueError:
            raise CdraError(
                f"--since {since!r} is not a date or ISO 8601 time (e.g. 2026-01-31 or 2026-01-31T12:00)"
            ) from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return since.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class TurnRecord:
    """One answered (or failed, or abandoned) turn, as the assistant logs it."""

    user_id: str
    session_id: str
    mode: str
    query: str
    answer: str = ""
    history: list[dict[str, str]] = field(default_factory=list)
    retrieved_preferences: list[str] = field(default_factory=list)
    reasoning_steps: list[str] = field(default_factory=list)
    raw: str = ""  # the model's full text before splitting into steps and answer
    model_versions: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    status: TurnStatus = "ok"
    error: str | None = None
    persona: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    turn_id: str = ""
    time: str = ""
    #: when the user's message arrived (default: ``time``); refused if the user was forgotten after it
    started: str = ""
    #: ``pending`` when the caller will write the turn to the vector memory next (see ``set_memory``)
    memory: str = "none"


class SessionLog:
    """SQLite-backed log shared by the app's threads (one connection behind a lock) and other processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.exists():
            private_dir(self.path.parent)
        self._lock = threading.RLock()
        try:
            private_sqlite(self.path)  # 0600 before SQLite writes anything; its -wal and -shm inherit the mode
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed turn survives a power cut, not only a crash of this process
            self._db.execute("PRAGMA synchronous=FULL")
            # deleted rows are overwritten, so a forgotten user's text does not linger in free pages
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise CdraError(f"cannot open the session log {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(turns)")}
        if "memory" not in columns:  # logs written before turns recorded what reached memory
            self._db.execute("ALTER TABLE turns ADD COLUMN memory TEXT NOT NULL DEFAULT 'none'")

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: all of a write lands, or none of it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # locked for too long, disk full, read-only file system
                raise CdraError(f"the session log {self.path} could not be written: {exc}") from exc

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def journal_mode(self) -> str:
        return str(self._query("PRAGMA journal_mode")[0][0])

    # -- sessions ----------------------------------------------------------------------------------
    def start_session(self, user_id: str, mode: str, meta: dict[str, Any] | None = None) -> str:
        _check_mode(mode)
        session_id = uuid.uuid4().hex
        stamp = now_iso()
        with self._write() as db:
            db.execute(
                "INSERT INTO sessions(session_id, user_id, mode, started, updated, status, meta) VALUES (?,?,?,?,?,?,?)",
                (session_id, user_id, mode, stamp, stamp, "active", _dumps(meta or {})),
            )
        return session_id

    def session(self, user_id: str, session_id: str) -> dict[str, Any] | None:
        """The user's own session, or None (also when the id belongs to someone else)."""
        rows = self._query("SELECT * FROM sessions WHERE session_id=? AND user_id=?", (session_id, user_id))
        return _session_dict(rows[0]) if rows else None

    def sessions(
        self, user_id: str | None = None, mode: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Sessions, oldest first; ``user_id=None`` only for operator tools (reports, export)."""
        sql, args = "SELECT * FROM sessions WHERE 1=1", []
        for column, value in (("user_id", user_id), ("mode", mode), ("status", status)):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        return [_session_dict(r) for r in self._query(sql + " ORDER BY started", tuple(args))]

    def update_session(
        self, user_id: str, session_id: str, status: str | None = None, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Change a session's status (active/paused/finished) and merge keys into its meta."""
        if status is not None and status not in SESSION_STATUSES:
            raise CdraError(f"session status must be one of {', '.join(SESSION_STATUSES)}, not {status!r}")
        with self._write() as db:
            row = db.execute(
                "SELECT * FROM sessions WHERE session_id=? AND user_id=?", (session_id, user_id)
            ).fetchone()
            if row is None:
                raise CdraError(f"no session {session_id} for user {user_id}")
            merged = {**json.loads(row["meta"]), **(meta or {})}
            db.execute(
                "UPDATE sessions SET status=?, meta=?, updated=? WHERE session_id=?",
                (status or row["status"], _dumps(merged), now_iso(), session_id),
            )
        return self.session(user_id, session_id)  # type: ignore[return-value]

    # -- turns -------------------------------------------------------------------------------------
    def log_turn(self, record: TurnRecord) -> str:
        """Append one turn atomically; its session is created on first use (``cdra ask``, ``serve``).

        Raises ForgottenError (nothing written) if the user was forgotten after the turn ``started``.
        """
        _check_mode(record.mode)
        if record.status not in ("ok", "error", "cancelled"):
            raise CdraError(f"turn status must be ok, error or cancelled, not {record.status!r}")
        if record.memory not in MEMORY_STATES:
            raise CdraError(f"turn memory state must be one of {', '.join(MEMORY_STATES)}, not {record.memory!r}")
        turn_id = record.turn_id or uuid.uuid4().hex
        stamp = record.time or now_iso()
        started = _stamp(record.started or stamp)
        with self._write() as db:
            refuse_if_forgotten(forgotten_at_in(db, record.user_id), record.user_id, started)
            owner = db.execute(
                "SELECT user_id FROM sessions WHERE session_id=?", (record.session_id,)
            ).fetchone()
            if owner is None:
                db.execute(
                    "INSERT INTO sessions(session_id, user_id, mode, started, updated, status, meta) VALUES (?,?,?,?,?,?,?)",
                    (record.session_id, record.user_id, record.mode, stamp, stamp, "active", "{}"),
                )
            elif owner["user_id"] != record.user_id:
                raise CdraError(f"session {record.session_id} belongs to another user")
            idx = db.execute(
                "SELECT COALESCE(MAX(idx), 0) + 1 FROM turns WHERE session_id=?", (record.session_id,)
            ).fetchone()[0]
            db.execute(
                "INSERT INTO turns(turn_id, session_id, user_id, idx, time, mode, query, history, retrieved, steps, answer,"
                " raw, model_versions, latency_ms, status, error, persona, meta, memory)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    turn_id,
                    record.session_id,
                    record.user_id,
                    idx,
                    stamp,
                    record.mode,
                    record.query,
                    _dumps(record.history),
                    _dumps(record.retrieved_preferences),
                    _dumps(record.reasoning_steps),
                    record.answer,
                    record.raw,
                    _dumps(record.model_versions),
                    _dumps(record.latency_ms),
                    record.status,
                    record.error,
                    _dumps(record.persona) if record.persona is not None else None,
                    _dumps(record.meta),
                    record.memory,
                ),
            )
            db.execute("UPDATE sessions SET updated=? WHERE session_id=?", (stamp, record.session_id))
        return turn_id

    def set_memory(self, user_id: str, turn_id: str, state: str) -> None:
        """Record whether the turn reached the vector memory (``stored``, or ``skipped`` when forgotten)."""
        if state not in MEMORY_STATES:
            raise CdraError(f"turn memory state must be one of {', '.join(MEMORY_STATES)}, not {state!r}")
        with self._write() as db:
            db.execute("UPDATE turns SET memory=? WHERE turn_id=? AND user_id=?", (state, turn_id, user_id))

    def pending_memory(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Turns logged but not yet written to memory (the process died in between), oldest first."""
        rows = self._query("SELECT * FROM turns WHERE memory='pending' ORDER BY time, idx LIMIT ?", (limit,))
        return [_turn_dict(r) for r in rows]

    def forgotten_at(self, user_id: str) -> str | None:
        """When ``user_id`` (or the user owning a ``user__…`` scope) was last forgotten here, if ever."""
        with self._lock:
            return forgotten_at_in(self._db, user_id)

    def _append_event(self, user_id: str, turn_id: str, kind: str, value: str | None) -> None:
        with self._write() as db:
            owned = db.execute(
                "SELECT 1 FROM turns WHERE turn_id=? AND user_id=?", (turn_id, user_id)
            ).fetchone()
            if owned is None:
                raise CdraError(f"no turn {turn_id} for user {user_id}")
            db.execute(
                "INSERT INTO events(turn_id, user_id, time, kind, value) VALUES (?,?,?,?,?)",
                (turn_id, user_id, now_iso(), kind, value),
            )

    def set_feedback(
        self, user_id: str, turn_id: str, feedback: str | None, correction: str | None = None
    ) -> None:
        """Thumbs up/down (None clears it) and an optional "I'd rather…" correction; the latest counts."""
        if feedback not in ("up", "down", None):
            raise CdraError(f"feedback must be up, down or empty, not {feedback!r}")
        self._append_event(user_id, turn_id, "feedback", feedback)
        if correction is not None and correction.strip():
            self._append_event(user_id, turn_id, "correction", correction.strip())

    def set_correction(self, user_id: str, turn_id: str, correction: str) -> None:
        if not correction.strip():
            raise CdraError("the correction is empty: write what you would rather have had")
        self._append_event(user_id, turn_id, "correction", correction.strip())

    def set_rating(self, user_id: str, turn_id: str, rating: int) -> None:
        """An ALOE alignment rating, 1 (misaligned) to 5 (fully aligned); the latest counts."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise CdraError(f"a rating is a whole number from 1 to 5, not {rating!r}")
        self._append_event(user_id, turn_id, "rating", str(rating))

    def turn(self, user_id: str, turn_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM turns WHERE turn_id=? AND user_id=?", (turn_id, user_id))
        return self._with_events([_turn_dict(r) for r in rows])[0] if rows else None

    def turns(
        self,
        user_id: str | None = None,
        since: str | datetime | None = None,
        session_id: str | None = None,
        mode: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """Turns in time order as export-shaped dicts (latest feedback, correction, rating folded in)."""
        sql, args = "SELECT * FROM turns WHERE 1=1", []
        for column, value in (
            ("user_id", user_id),
            ("session_id", session_id),
            ("mode", mode),
            ("status", status),
        ):
            if value is not None:
                sql += f" AND {column}=?"
                args.append(value)
        stamp = parse_since(since)
        if stamp is not None:
            sql += " AND time>=?"
            args.append(stamp)
        rows = self._query(sql + " ORDER BY time, idx", tuple(args))
        return self._with_events([_turn_dict(r) for r in rows])

    def _with_events(self, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = {t["turn_id"]: t for t in turns}
        for t in turns:
            t.update(feedback=None, correction=None, rating=None)
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for ev in self._query(
                f"SELECT turn_id, kind, value FROM events WHERE turn_id IN ({marks}) ORDER BY id",
                tuple(chunk),
            ):
                t = by_id[ev["turn_id"]]
                if ev["kind"] == "feedback":
                    t["feedback"] = ev["value"]
                elif ev["kind"] == "correction":
                    t["correction"] = ev["value"]
                elif ev["kind"] == "rating":
                    t["rating"] = int(ev["value"])
        return turns

    # -- export, retention, forgetting ---------------------------------------------------------------
    def export_jsonl(
        self,
        path: str | Path,
        since: str | datetime | None = None,
        user_id: str | None = None,
        user_preferences: Callable[[str], list[str]] | None = None,
        include_failed: bool = False,
    ) -> int:
        """Write one JSON line per turn (docs/ARCHITECTURE.md schema) atomically; returns the line count.

        ``user_preferences(user_id)`` supplies each user's active statements at export time; failed
        and abandoned turns are left out unless ``include_failed`` (retraining wants complete answers).
        """
        turns = self.turns(user_id=user_id, since=since)
        if not include_failed:
            turns = [t for t in turns if t["status"] == "ok"]
        prefs_cache: dict[str, list[str]] = {}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for t in turns:
                    if user_preferences is not None and t["user_id"] not in prefs_cache:
                        prefs_cache[t["user_id"]] = list(user_preferences(t["user_id"]))
                    line = {**t, "user_preferences": prefs_cache.get(t["user_id"], [])}
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(turns)

    def forget_user(self, user_id: str) -> int:
        """Delete every session, turn and event of one user (what "forget me" means); returns turns deleted.

        A tombstone is written in the same transaction: a turn of this user that began before now and is
        logged later (an answer still streaming, another process) is refused.
        """
        with self._write() as db:
            db.execute(
                "INSERT INTO forgotten(user_key, time) VALUES (?, ?) "
                "ON CONFLICT(user_key) DO UPDATE SET time = MAX(time, excluded.time)",
                (user_key(user_id), now_iso()),
            )
            db.execute("DELETE FROM events WHERE user_id=?", (user_id,))
            n = db.execute("DELETE FROM turns WHERE user_id=?", (user_id,)).rowcount
            db.execute("DELETE FROM sessions WHERE user_id=?", (user_id,))
        self._checkpoint()
        return n

    def prune(self, before: str | datetime) -> int:
        """Retention: delete turns (and their events) older than ``before``, and sessions left empty."""
        stamp = parse_since(before)
        with self._write() as db:
            db.execute(
                "DELETE FROM events WHERE turn_id IN (SELECT turn_id FROM turns WHERE time<?)", (stamp,)
            )
            n = db.execute("DELETE FROM turns WHERE time<?", (stamp,)).rowcount
            db.execute(
                "DELETE FROM sessions WHERE updated<? AND session_id NOT IN (SELECT DISTINCT session_id FROM turns)",
                (stamp,),
            )
        self._checkpoint()
        return n

    def _checkpoint(self) -> None:
        """Fold the WAL into the database so deleted text leaves the -wal file too."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def user_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT user_id FROM sessions ORDER BY user_id")]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CdraError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _session_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        "mode": row["mode"],
        "started": row["started"],
        "updated": row["updated"],
        "status": row["status"],
        "meta": json.loads(row["meta"]),
    }


def _turn_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A stored turn in the export schema (plus ``index``, ``status``, ``error``, ``raw``, ``meta``)."""
    return {
        "user_id": row["user_id"],
        "session_id": row["session_id"],
        "turn_id": row["turn_id"],
        "index": row["idx"],
        "time": row["time"],
        "mode": row["mode"],
        "query": row["query"],
        "history": json.loads(row["history"]),
        "retrieved_preferences": json.loads(row["retrieved"]),
        "reasoning_steps": json.loads(row["steps"]),
        "answer": row["answer"],
        "raw": row["raw"],
        "model_versions": json.loads(row["model_versions"]),
        "latency_ms": json.loads(row["latency_ms"]),
        "status": row["status"],
        "error": row["error"],
        "persona": json.loads(row["persona"]) if row["persona"] else None,
        "meta": json.loads(row["meta"]),
        "memory": row["memory"],
    }


def default_log_path(logs_dir: Path) -> Path:
    """Where the app, `cdra ask` and `cdra serve` all log: ``<data_dir>/logs/sessions.sqlite3``."""
    return Path(logs_dir) / "sessions.sqlite3"
