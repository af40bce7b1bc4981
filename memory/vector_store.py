"""Per-user vector memory on chromadb: preference statements, past turns, the user's deletions and the
inference log, in collections of that user's own.

Isolation is structural: ``VectorMemory.for_user(uid)`` returns a ``UserMemory`` bound to two collections
whose names derive from a SHA-256 of the user id (no crafted id can reach another user's collections):
``u-…`` holds statements, suppressed texts and the inference log (small; every read filters on
``user_id`` metadata), ``t-…`` holds past turns (large; searched without a metadata pre-filter, which
would make each query scan every row, and every hit is checked to carry the user's id). Embeddings are
computed here and passed to chroma explicitly (no chroma embedding function: it would download a model).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from alignment.errors import CdraError, FormatError
from alignment.preferences import (
    Evidence,
    HistoryEntry,
    PreferenceStatement,
    edited,
    is_suppressed,
    now_iso,
    reinforce,
    replace,
    same_subject,
    wins,
)
from memory.config import MemoryConfig
from memory.embeddings import Embedder, get_embedder
from memory.private_files import private_dir, private_tree
from memory.retrieval import Retrieval, Scored, pack, score_statements
from memory.scrubbed_heap import scrubbed_allocations
from memory.situations import applies_to
from memory.tombstones import ChromaTombstones, ForgottenError, Tombstones, stamp

EXPORT_FORMAT = "cdra-memory"
EXPORT_VERSION = 1
#: beside chroma's own files: when each user was forgotten (memory/tombstones.py)
TOMBSTONE_FILE = "cdra-forgotten.sqlite3"
_T = TypeVar("_T")


class MemoryUnavailableError(CdraError, RuntimeError):
    """chromadb cannot be opened or reached; the message says where and how to fix it."""


class ForgetIncompleteError(CdraError, RuntimeError):
    """forget() could not prove the user's data is gone from disk."""


def collection_name(user_id: str, kind: str = "u") -> str:
    """A user's collection: ``u-`` (statements) or ``t-`` (turns) + SHA-256 of the id: no collision, no raw id."""
    return f"{kind}-" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise CdraError("a user id must be a non-empty string")
    if len(user_id) > 256 or any(ord(c) < 32 for c in user_id):
        raise CdraError("a user id must be at most 256 printable characters")
    return user_id


__all__ = ["Retrieval", "Scored", "UserMemory", "VectorMemory"]  # Retrieval lives in memory/retrieval.py


def _wrap(what: str, fn: Callable[[], _T]) -> _T:
    """Run a chroma call (fresh heap memory scrubbed: memory/scrubbed_heap.py); anything it raises becomes a
    one-line CdraError naming the operation."""
    try:
        with scrubbed_allocations():
            return fn()
    except CdraError:
        raise
    except Exception as exc:  # chromadb raises many types (connection, sqlite, rust bindings)
        raise MemoryUnavailableError(f"vector memory: {what} failed: {exc}") from exc


class VectorMemory:
    """The store for all users. Embedded chromadb under ``persist_dir`` unless ``config.chroma_host`` is set."""

    def __init__(self, config: MemoryConfig, persist_dir: Path, embedder: Embedder | None = None) -> None:
        self.config = config
        self.persist_dir = Path(persist_dir)
        self._embedder = embedder
        self.client = self._connect()
        if self.embedded:
            self._secure_files()
            self.tombstones: Tombstones | ChromaTombstones = Tombstones(self.persist_dir / TOMBSTONE_FILE)
        else:  # beside the collections on the server: every process using it sees them, nothing is local
            self.tombstones = ChromaTombstones(self.client)

    def _secure_files(self) -> None:
        """The store's directory 0700, its files 0600 (index directories chroma adds are handled after writes)."""
        private_dir(self.persist_dir)
        self._secured = private_tree(self.persist_dir, getattr(self, "_secured", None))

    @property
    def embedded(self) -> bool:
        return not self.config.chroma_host

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            cfg = self.config
            self._embedder = get_embedder(cfg.embedding_model, cfg.embedding_device, cfg.embedding_batch_size)
        return self._embedder

    def _connect(self):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        settings = ChromaSettings(anonymized_telemetry=False)
        cfg = self.config
        if cfg.chroma_host:
            where = f"{'https' if cfg.chroma_ssl else 'http'}://{cfg.chroma_host}:{cfg.chroma_port}"
            try:
                client = chromadb.HttpClient(host=cfg.chroma_host, port=cfg.chroma_port, ssl=cfg.chroma_ssl,
                                             settings=settings)
                client.heartbeat()
            except Exception as exc:
                raise MemoryUnavailableError(
                    f"cannot reach the chroma server at {where} ({exc}): start it, or unset memory.chroma_host "
                    "to use the embedded store") from exc
            return client
        try:
            self.persist_dir.mkdir(parents=True, exist_ok=True)
            with scrubbed_allocations():
                return chromadb.PersistentClient(path=str(self.persist_dir), settings=settings)
        except Exception as exc:
            raise MemoryUnavailableError(f"cannot open the vector memory at {self.persist_dir}: {exc}") from exc

    def for_user(self, user_id: str, as_of: str | None = None) -> "UserMemory":
        """The memory of one user; nothing reachable from it belongs to anyone else.

        ``as_of``: when the activity behind this handle's writes happened (default: now). Writes are
        refused with ForgottenError if the user was forgotten after it (memory/tombstones.py).
        """
        return UserMemory(self, check_user_id(user_id), as_of)

    def users(self) -> list[str]:
        """User ids that have a memory (read from each collection's metadata)."""
        names = _wrap("listing collections", lambda: self.client.list_collections())
        out = set()
        for entry in names:
            name = entry if isinstance(entry, str) else entry.name
            if not name.startswith(("u-", "t-")):
                continue
            col = _wrap("opening a collection", lambda n=name: self.client.get_collection(n, embedding_function=None))
            uid = (col.metadata or {}).get("user_id")
            if uid and collection_name(uid, name[0]) == name:
                out.add(uid)
        return sorted(out)


class UserMemory:
    """One user's memory. Every method reads or writes only that user's two collections, checked by user id."""

    def __init__(self, store: VectorMemory, user_id: str, as_of: str | None = None) -> None:
        self.store = store
        self.user_id = user_id
        self.as_of = stamp(as_of)
        self.name = collection_name(user_id)
        self.turns_name = collection_name(user_id, "t")
        self.config = store.config

    # -- plumbing --------------------------------------------------------------------------------------
    def _get(self, create: bool, turns: bool = False):
        """One of the user's collections, looked up on every call (cheap) so a forget() elsewhere is never stale."""
        client = self.store.client
        name = self.turns_name if turns else self.name
        if create:
            return _wrap("opening the user's collection", lambda: client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
                metadata={"user_id": self.user_id, "kind": "cdra-user-turns" if turns else "cdra-user-memory"}))
        from chromadb.errors import NotFoundError

        try:
            with scrubbed_allocations():
                return client.get_collection(name, embedding_function=None)
        except NotFoundError:  # this user has no memory (yet, or any more)
            return None
        except Exception as exc:  # an unreachable server must not look like an empty memory
            raise MemoryUnavailableError(f"vector memory: opening the user's collection failed: {exc}") from exc

    def _where(self, kind: str, extra: dict | None = None) -> dict:
        clauses: list[dict] = [{"user_id": self.user_id}, {"type": kind}]
        if extra:
            clauses.append(extra)
        return {"$and": clauses}

    def _base_meta(self, kind: str) -> dict[str, Any]:
        return {"user_id": self.user_id, "type": kind}

    def _upsert(self, ids: list[str], vectors: np.ndarray, documents: list[str] | None, metadatas: list[dict],
                turns: bool = False) -> None:
        if not ids:
            return
        self.store.tombstones.check(self.user_id, self.as_of)
        col = self._get(create=True, turns=turns)
        batch = max(1, _wrap("reading the batch size", lambda: self.store.client.get_max_batch_size()))
        for start in range(0, len(ids), batch):
            stop = start + batch
            docs = None if documents is None else documents[start:stop]
            _wrap("writing records", lambda s=start, e=stop, d=docs: col.upsert(
                ids=ids[s:e], embeddings=vectors[s:e], documents=d, metadatas=metadatas[s:e]))
        self._after_write()

    def _after_write(self) -> None:
        """New index files private; and if a forget (another process) landed during the write, undo it."""
        if self.store.embedded:
            self.store._secure_files()
        try:
            self.store.tombstones.check(self.user_id, self.as_of)
        except ForgottenError:
            self._erase()
            raise

    def _records(self, kind: str, include_embeddings: bool = False, extra: dict | None = None) -> dict:
        turns = kind == "turn"
        col = self._get(create=False, turns=turns)
        if col is None:
            return {"ids": [], "documents": [], "metadatas": [], "embeddings": []}
        include = ["documents", "metadatas"] + (["embeddings"] if include_embeddings else [])
        where = {"user_id": self.user_id} if turns else self._where(kind, extra)
        return _wrap("reading records", lambda: col.get(where=where, include=include))

    def count(self) -> int:
        cols = [self._get(create=False), self._get(create=False, turns=True)]
        return sum(int(_wrap("counting", c.count)) for c in cols if c is not None)

    # -- preferences -----------------------------------------------------------------------------------
    @staticmethod
    def _to_meta(statement: PreferenceStatement) -> dict[str, Any]:
        return {"stance": statement.stance, "dimension": statement.dimension, "subject": statement.subject,
                "evidence": json.dumps(statement.evidence), "confidence": float(statement.confidence),
                "origin": statement.origin, "created": statement.created, "updated": statement.updated,
                "version": int(statement.version),
                "sources": json.dumps([e.model_dump() for e in statement.sources], ensure_ascii=False),
                "history": json.dumps([h.model_dump() for h in statement.history], ensure_ascii=False),
                "applies_to": json.dumps(statement.applies_to)}

    @staticmethod
    def _from_record(record_id: str, document: str, meta: dict) -> PreferenceStatement:
        """A stored statement; records written before sources/history/applies_to existed read them as empty."""
        return PreferenceStatement(id=record_id, text=document, stance=meta["stance"], dimension=meta["dimension"],
                                   subject=meta.get("subject", ""), evidence=json.loads(meta.get("evidence", "[]")),
                                   confidence=meta["confidence"], origin=meta["origin"], created=meta["created"],
                                   updated=meta["updated"], version=meta["version"],
                                   sources=_json_models(meta.get("sources"), Evidence),
                                   history=_json_models(meta.get("history"), HistoryEntry),
                                   applies_to=[str(a) for a in _json_models(meta.get("applies_to"), None)])

    def _statements_with_vectors(self) -> tuple[list[PreferenceStatement], np.ndarray]:
        rec = self._records("preference", include_embeddings=True)
        statements = [self._from_record(i, d, m) for i, d, m in zip(rec["ids"], rec["documents"], rec["metadatas"])]
        vectors = np.asarray(rec["embeddings"] if len(rec["ids"]) else np.zeros((0, 1)), dtype=np.float32)
        return statements, vectors

    def list_preferences(self) -> list[PreferenceStatement]:
        """All active statements, oldest first."""
        statements, _ = self._statements_with_vectors()
        return sorted(statements, key=lambda s: (s.created, s.id))

    def get_preference(self, statement_id: str) -> PreferenceStatement:
        for statement in self.list_preferences():
            if statement.id == statement_id:
                return statement
        raise CdraError(f"user {self.user_id!r} has no preference with id {statement_id!r} (see `cdra prefs show`)")

    def add_preferences(self, statements: Sequence[PreferenceStatement]) -> list[str]:
        """Store statements, merging with what is there; returns the ids stored (new or updated).

        Two statements are the same only when they say the same about the same subject
        (``alignment.preferences.same_subject``: same id or the same subject words; never "close
        embeddings", which cannot tell penicillin from amoxicillin). The same statement found again is
        reinforced (both evidences kept, the newer wording, version + 1, the merge in its history); a
        conflicting one replaces the stored one only if it wins (alignment.preferences.wins); inferred
        statements the user deleted or edited away are skipped. An explicit restatement by the user lifts
        such a suppression.
        """
        if not statements:
            return []
        existing = self.list_preferences()
        suppressed = self.suppressed()
        when = now_iso()
        changed: dict[str, PreferenceStatement] = {}
        lifted: list[str] = []
        for statement in statements:
            if statement.origin == "inferred" and is_suppressed(statement, suppressed):
                continue
            if statement.origin != "inferred":
                lifted += [t for t in suppressed if is_suppressed(statement, [t])]
            match = self._match(statement, existing)
            if match is None:
                stored = statement
                if not stored.history:
                    stored = stored.model_copy(update={"history": [HistoryEntry(
                        time=stored.created, action="created", text=stored.text, evidence=list(stored.evidence),
                        origin=stored.origin)]})
                existing.append(stored)
            else:
                old = existing[match]
                if old.stance == statement.stance:
                    stored = reinforce(old, statement, when)
                elif wins(statement, old):
                    stored = replace(old, statement, when)
                else:
                    continue
                existing[match] = stored
            changed[stored.id] = stored
        if lifted:
            self._unsuppress(lifted)
        ordered = list(changed.values())
        self._write_statements(ordered, shared_quotes=_shared_quotes(existing))
        return [s.id for s in ordered]

    @staticmethod
    def _match(statement: PreferenceStatement, existing: list[PreferenceStatement]) -> int | None:
        """The stored statement about the same subject (same id first), if any."""
        for i, old in enumerate(existing):
            if old.id == statement.id:
                return i
        for i, old in enumerate(existing):
            if same_subject(old, statement):
                return i
        return None

    def statement_vectors(self, statements: Sequence[PreferenceStatement],
                          shared_quotes: frozenset[str] = frozenset()) -> np.ndarray:
        """What a statement is found by: its text and, when it has one, the user's quoted words (the
        sentence often says more than the statement: "…restaurants… due to a severe gluten intolerance").
        A sentence several statements were read from ("I'm vegetarian and I hate long answers") would
        blur each of them with the others: ``shared_quotes`` are left out."""
        texts = [s.text for s in statements]
        quotes = [next((e.quote for e in reversed(s.sources) if e.quote and e.quote != s.text
                        and e.quote not in shared_quotes), "") for s in statements]
        unique = list(dict.fromkeys(t for t in texts + quotes if t))
        embedded = dict(zip(unique, self.store.embedder.embed(unique)))
        rows = []
        for text, quote in zip(texts, quotes):
            vector = embedded[text] + (embedded[quote] if quote else 0.0)
            rows.append(vector / max(float(np.linalg.norm(vector)), 1e-12))
        return np.stack(rows).astype(np.float32)

    def _write_statements(self, statements: Sequence[PreferenceStatement],
                          shared_quotes: frozenset[str] | None = None) -> list[PreferenceStatement]:
        """Upsert statements with their vectors and the situations they apply to (written now, for people;
        answer style and privacy apply to every answer)."""
        if not statements:
            return []
        vectors = self.statement_vectors(statements, _shared_quotes(statements) if shared_quotes is None
                                         else shared_quotes)
        answer_wide = {"style", "privacy"}
        statements = [s.model_copy(update={"applies_to": ["every answer"] if s.dimension in answer_wide
                                           else applies_to(v, self.store.embedder)})
                      for s, v in zip(statements, vectors)]
        metas = [{**self._base_meta("preference"), **self._to_meta(s)} for s in statements]
        self._upsert([s.id for s in statements], vectors, [s.text for s in statements], metas)
        return statements

    def edit_preference(
        self,
        statement_id: str,
        text: str | None = None,
        stance: str | None = None,
        dimension: str | None = None,
        subject: str | None = None,
        confidence: float | None = None,
    ) -> PreferenceStatement:
        """The user's correction of one statement: origin becomes ``user_edit``; the old wording is
        remembered as suppressed so inference never brings it back."""
        old = self.get_preference(statement_id)
        if stance is None and text:  # "Avoids spicy food" says its stance itself
            first = text.strip().split(" ", 1)[0].lower()
            stance = {"prefers": "prefers", "avoids": "avoids"}.get(first)
        new_stance = stance or old.stance
        if new_stance not in ("prefers", "avoids"):
            raise CdraError(f"stance must be 'prefers' or 'avoids', not {stance!r}")
        new_subject = subject or (None if text else old.subject)
        if text is None and (stance or subject):
            text = f"{'Prefers' if new_stance == 'prefers' else 'Avoids'} {new_subject}"
        updated = edited(old, PreferenceStatement(
            id=old.id, text=(text or old.text), stance=new_stance, dimension=dimension or old.dimension,  # type: ignore[arg-type]
            subject=new_subject or "", evidence=old.evidence,
            confidence=1.0 if confidence is None else confidence, origin="user_edit", created=old.created))
        if updated.text != old.text or updated.stance != old.stance:
            self._suppress([old.text])
        return self._write_statements([updated])[0]

    def delete_preference(self, statement_id: str) -> None:
        """Remove one statement; its text is suppressed so inference does not silently bring it back."""
        old = self.get_preference(statement_id)
        self._suppress([old.text])
        col = self._get(create=True)
        _wrap("deleting a preference", lambda: col.delete(ids=[old.id], where=self._where("preference")))

    # -- suppressed texts ------------------------------------------------------------------------------
    def suppressed(self) -> set[str]:
        """Texts the user deleted or edited away: inference must not bring them back."""
        return set(self._records("suppressed")["documents"])

    def _suppress(self, texts: Iterable[str]) -> None:
        texts = [t for t in dict.fromkeys(texts) if t]
        if not texts:
            return
        ids = ["sup-" + hashlib.sha1(t.encode()).hexdigest()[:16] for t in texts]
        metas = [{**self._base_meta("suppressed"), "time": now_iso()} for _ in texts]
        self._upsert(ids, self.store.embedder.embed(texts), texts, metas)

    def _unsuppress(self, texts: Iterable[str]) -> None:
        ids = ["sup-" + hashlib.sha1(t.encode()).hexdigest()[:16] for t in texts]
        col = self._get(create=True)
        _wrap("lifting a suppression", lambda: col.delete(ids=ids, where=self._where("suppressed")))

    # -- turns -----------------------------------------------------------------------------------------
    def add_turn(self, session_id: str, turn_id: str, user_text: str, assistant_text: str,
                 time: str | None = None) -> str:
        """Remember one exchange for retrieval; returns its record id."""
        return self.add_turns([{"session_id": session_id, "turn_id": turn_id, "user": user_text,
                                "assistant": assistant_text, "time": time}])[0]

    def add_turns(self, turns: Sequence[dict], vectors: np.ndarray | None = None) -> list[str]:
        """Many turns at once (import, benchmarks); ``vectors`` skips embedding when already computed."""
        cap = self.config.max_turn_chars
        ids, docs, metas = [], [], []
        for turn in turns:
            user, assistant = str(turn.get("user", ""))[:cap], str(turn.get("assistant", ""))[:cap]
            session, turn_id = str(turn.get("session_id", "")), str(turn.get("turn_id", ""))
            ids.append(f"turn-{session}-{turn_id}" if turn_id else f"turn-{uuid.uuid4().hex}")
            docs.append(f"User: {user}\nAssistant: {assistant}")
            metas.append({"user_id": self.user_id, "session_id": session, "turn_id": turn_id, "user": user,
                          "assistant": assistant, "time": turn.get("time") or now_iso()})
        if vectors is None:
            vectors = self.store.embedder.embed(docs)
        # the texts live in metadata only: chroma would also index documents for full-text search we never use
        self._upsert(ids, np.asarray(vectors, dtype=np.float32), None, metas, turns=True)
        return ids

    @staticmethod
    def _turn(meta: dict) -> dict:
        return {k: meta.get(k) for k in ("session_id", "turn_id", "user", "assistant", "time")}

    def turns(self) -> list[dict]:
        return sorted((self._turn(m) for m in self._records("turn")["metadatas"]), key=lambda t: t["time"] or "")

    # -- inference log ---------------------------------------------------------------------------------
    def record_inference(self, summary: dict[str, Any], raw: str = "") -> str:
        """Log one inference run (failed ones included, with the raw output): provenance, never a preference."""
        record_id = f"inf-{uuid.uuid4().hex}"
        meta = {**self._base_meta("inference"), "time": now_iso(),
                **{k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool))}}
        document = (raw or summary.get("error") or "inference")[:4000]
        self._upsert([record_id], self.store.embedder.embed([document]), [document], [meta])
        return record_id

    def inferences(self) -> list[dict]:
        rec = self._records("inference")
        out = [{**{k: v for k, v in m.items() if k not in ("user_id", "type")}, "raw": d}
               for d, m in zip(rec["documents"], rec["metadatas"])]
        return sorted(out, key=lambda r: r.get("time", ""))

    # -- retrieval -------------------------------------------------------------------------------------
    def search_vectors(self, vector: np.ndarray, k: int, kind: str = "turn") -> list[tuple[str, float]]:
        """Raw nearest neighbours of one kind: (record id, cosine similarity), best first."""
        return [(i, score) for i, _, _, score in self._query(np.asarray(vector, dtype=np.float32), k, kind)]

    def _query(self, vector: np.ndarray, k: int, kind: str) -> list[tuple[str, str, dict, float]]:
        """Nearest records of one kind. Turns: a plain HNSW query, then every hit must carry this user's id."""
        turns = kind == "turn"
        col = self._get(create=False, turns=turns)
        if col is None:
            return []
        where = None if turns else self._where(kind)
        res = _wrap("querying", lambda: col.query(query_embeddings=vector[None, :], n_results=k, where=where,
                                                  include=["documents", "metadatas", "distances"]))
        hits = zip(res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0])
        return [(i, d, m, 1.0 - float(dist)) for i, d, m, dist in hits if (m or {}).get("user_id") == self.user_id]

    def retrieve(self, query: str, top_k: int | None = None, token_budget: int | None = None) -> Retrieval:
        """What the prompt gets for ``query``: the user's statements ranked by relevance and packed into
        ``token_budget`` tokens (memory/retrieval.py: pinned dimensions first, the best
        ``min_statements`` whatever their score, the rest above ``statement_floor``), then at most
        ``top_k`` past turns with cosine >= ``relevance_cutoff`` in what is left of the budget.
        ``Retrieval.considered`` keeps every statement's score and why it was or was not used."""
        cfg = self.config
        k = top_k or cfg.top_k
        budget = token_budget or cfg.token_budget
        if not query.strip() or (self._get(create=False) is None and self._get(create=False, turns=True) is None):
            return Retrieval()
        vector = self.store.embedder.embed([query])[0]
        statements, vectors = self._candidates(vector)
        scored = score_statements(vector, statements, vectors, self.store.embedder, cfg)
        turns = [(self._turn(m), s) for _, _, m, s in self._query(vector, k, "turn") if s >= cfg.relevance_cutoff]
        return pack(scored, turns, budget, self.store.embedder.count_tokens, cfg)

    def _candidates(self, vector: np.ndarray) -> tuple[list[PreferenceStatement], np.ndarray]:
        """Every statement of the user (they are few: scored exactly); past ``max_scan`` of them, the
        ``max_scan`` nearest by the index plus every statement of a pinned dimension."""
        cfg = self.config
        col = self._get(create=False)
        if col is None:
            return [], np.zeros((0, self.store.embedder.dim), dtype=np.float32)
        rec = _wrap("reading records", lambda: col.get(where=self._where("preference"), limit=cfg.max_scan + 1,
                                                       include=["documents", "metadatas", "embeddings"]))
        if len(rec["ids"]) > cfg.max_scan:
            rec = {"ids": [], "documents": [], "metadatas": [], "embeddings": []}
            res = _wrap("querying", lambda: col.query(query_embeddings=vector[None, :], n_results=cfg.max_scan,
                                                      where=self._where("preference"),
                                                      include=["documents", "metadatas", "embeddings"]))
            for key in rec:
                rec[key] = list(res[key][0])
            if cfg.pinned_dimensions:
                pinned = self._records("preference", include_embeddings=True,
                                       extra={"dimension": {"$in": list(cfg.pinned_dimensions)}})
                for i, d, m, e in zip(pinned["ids"], pinned["documents"], pinned["metadatas"], pinned["embeddings"]):
                    if i not in rec["ids"]:
                        for key, value in zip(("ids", "documents", "metadatas", "embeddings"), (i, d, m, e)):
                            rec[key].append(value)
        keep = [n for n, m in enumerate(rec["metadatas"]) if (m or {}).get("user_id") == self.user_id]
        statements = [self._from_record(rec["ids"][n], rec["documents"][n], rec["metadatas"][n]) for n in keep]
        vectors = np.asarray([rec["embeddings"][n] for n in keep], dtype=np.float32)
        return statements, vectors.reshape(len(keep), -1) if keep else np.zeros((0, self.store.embedder.dim))

    # -- export / import / forget ----------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """Everything stored for this user, as JSON-ready data (``import_`` reads it back)."""
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "user_id": self.user_id,
                "exported_at": now_iso(),
                "preferences": [s.model_dump() for s in self.list_preferences()],
                "turns": self.turns(), "suppressed": sorted(self.suppressed()), "inferences": self.inferences()}

    def import_(self, data: dict[str, Any]) -> dict[str, int]:
        """Restore an export into *this* user's memory (whatever user id the file names).

        Everything is validated before anything is written; statements keep their ids and versions.
        """
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise FormatError(f"not a memory export: expected an object with \"format\": \"{EXPORT_FORMAT}\"")
        try:
            statements = [PreferenceStatement.model_validate(p) for p in data.get("preferences", [])]
        except Exception as exc:
            raise FormatError(f"memory export: bad preference record: {exc}") from None
        turns = data.get("turns", [])
        suppressed = data.get("suppressed", [])
        if not isinstance(turns, list) or not all(_export_turn_ok(t) for t in turns):
            raise FormatError("memory export: `turns` must be a list of objects with a `user` text "
                              "(and text `assistant`, `session_id`, `turn_id`, `time` if present)")
        if not isinstance(suppressed, list) or not all(isinstance(t, str) for t in suppressed):
            raise FormatError("memory export: `suppressed` must be a list of strings")
        self._write_statements(statements)
        if turns:
            self.add_turns(turns)
        self._suppress(suppressed)
        return {"preferences": len(statements), "turns": len(turns), "suppressed": len(suppressed)}

    def forget(self) -> None:
        """Delete everything of this user: both collections, their index files, and the freed database pages.

        Embedded store: after ``delete_collection`` the segment directories are removed, the full-text
        index is merged and the SQLite file vacuumed (deleted rows otherwise linger in free pages), then
        the on-disk state is re-read to prove the collections, their segments and their rows are gone.
        A chroma server is asked to delete the collections; its disk is the server's to manage. A
        tombstone is written first: later writes for activity from before now are refused, in any process.
        """
        # first: a write racing this forget is refused or undone; this handle's own later writes are new activity
        self.as_of = self.store.tombstones.mark(self.user_id)
        self._erase()

    def _erase(self) -> None:
        """forget() without the tombstone (also undoes a write that raced a forget)."""
        client = self.store.client
        cols = [c for c in (self._get(create=False), self._get(create=False, turns=True)) if c is not None]
        if not cols:
            return
        if not self.store.embedded:
            for col in cols:
                _wrap("deleting the user's collection", lambda c=col: client.delete_collection(c.name))
            return
        db = self.store.persist_dir / "chroma.sqlite3"
        ids = [str(c.id) for c in cols]
        segments = [s for cid in ids for (s,) in _sqlite_rows(db, "SELECT id FROM segments WHERE collection = ?",
                                                               (cid,))]
        for col in cols:
            _wrap("deleting the user's collection", lambda c=col: client.delete_collection(c.name))
        for segment in segments:
            shutil.rmtree(self.store.persist_dir / segment, ignore_errors=True)
        _compact(db)
        self._verify_forgotten(db, ids, segments)

    def _verify_forgotten(self, db: Path, collection_ids: list[str], segments: list[str]) -> None:
        problems = []
        marks = ",".join("?" * len(collection_ids))
        if _sqlite_rows(db, f"SELECT id FROM collections WHERE id IN ({marks}) OR name IN (?, ?)",
                        (*collection_ids, self.name, self.turns_name)):
            problems.append("a collection is still registered")
        if segments and _sqlite_rows(db, f"SELECT id FROM segments WHERE id IN ({','.join('?' * len(segments))})",
                                     tuple(segments)):
            problems.append("its segments are still registered")
        if _sqlite_rows(db, "SELECT 1 FROM embedding_metadata WHERE key = 'user_id' AND string_value = ? LIMIT 1",
                        (self.user_id,)):
            problems.append("records with its user id remain")
        if any((self.store.persist_dir / s).exists() for s in segments):
            problems.append("index files remain")
        free = _sqlite_rows(db, "PRAGMA freelist_count", ())
        if free and free[0][0]:
            problems.append(f"{free[0][0]} freed database pages were not cleared")
        if problems:
            raise ForgetIncompleteError(f"forget({self.user_id!r}) incomplete: " + "; ".join(problems))


def _json_models(text: object, model) -> list:
    """A JSON list from a metadata field; an unreadable one (written by hand, or cut) reads as empty: the
    statement itself is still served, only its quotes/history are missing."""
    try:
        items = json.loads(text) if isinstance(text, str) and text else []
        return [model.model_validate(i) for i in items] if model is not None else list(items)
    except (ValueError, TypeError):
        return []


def _shared_quotes(statements: Iterable[PreferenceStatement]) -> frozenset[str]:
    """Quoted sentences that more than one statement was read from."""
    seen: dict[str, int] = {}
    for statement in statements:
        for quote in {e.quote for e in statement.sources if e.quote}:
            seen[quote] = seen.get(quote, 0) + 1
    return frozenset(q for q, n in seen.items() if n > 1)


def _export_turn_ok(turn: object) -> bool:
    """One ``turns[]`` entry of a memory export: ``user`` is text, the other known fields text or absent."""
    return (isinstance(turn, dict) and isinstance(turn.get("user"), str)
            and all(isinstance(turn.get(k), (str, type(None))) for k in ("assistant", "session_id", "turn_id", "time")))


def _sqlite_rows(db: Path, sql: str, params: tuple) -> list[tuple]:
    """Read chroma's SQLite file directly (a fresh connection: what is on disk, not a client cache)."""
    if not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return list(conn.execute(sql, params).fetchall())


def _compact(db: Path, attempts: int = 5) -> None:
    """Merge the full-text index and VACUUM so deleted text no longer sits in free pages of the file."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            conn = sqlite3.connect(str(db), timeout=30)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "embedding_fulltext_search" in tables:
                    conn.execute("INSERT INTO embedding_fulltext_search(embedding_fulltext_search) VALUES('optimize')")
                    conn.commit()
                conn.execute("VACUUM")
            finally:
                conn.close()
            return
        except sqlite3.OperationalError as exc:  # the database is busy with another writer
            last = exc
            time.sleep(0.2 * (attempt + 1))
    raise ForgetIncompleteError(f"could not compact {db} after deleting the user's data: {last}")
