"""LLM-as-judge: rubric requests -> judgments with the judge's rationale and a strictly parsed verdict.

A judgment's verdict comes from the judge's JSON reply (``{"rationale": ..., "verdict": "yes"}``), declared
once in alignment/formats (``verdict(kind)``) and enforced by constrained decoding where the engine can; an
unconstrained endpoint's reply is read as JSON, and anything else is an unparseable verdict that is counted
and reported, never guessed. On local
engines the verdict is read from the judge's probabilities of each option right after its own rationale
(``{"rationale": "...", "verdict": "yes`` vs ``..."no``: one forward pass on a local transformers model,
``Engine.score`` otherwise), which a 135M judge gives reliably even when its JSON is broken; both are stored. Judgments are cached in SQLite
(``EvalCache``) per (judge, rubric, rendered prompt), so an interrupted run resumes and a re-run is free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from alignment.engines.base import Engine, EngineError, Message, PromptTooLongError, SamplingParams
from alignment.errors import CdraError
from alignment.formats import FormatParseError, verdict
from alignment.prompts import render
from alignment.prompts.judge import ALOE_TURN, NO_NOTES, PAIRWISE, YES_NO_RUBRICS

Kind = Literal["yesno", "pair", "rating"]
OPTIONS: dict[str, tuple[str, ...]] = {"yesno": ("yes", "no"), "pair": ("A", "B"), "rating": ("1", "2", "3", "4", "5")}
VERDICT_KEY: dict[str, str] = {"yesno": "verdict", "pair": "verdict", "rating": "rating"}
RUBRIC_KIND: dict[str, Kind] = {**{name: "yesno" for name in YES_NO_RUBRICS}, "pairwise": "pair", "aloe_turn": "rating"}


class VerdictParseError(CdraError, ValueError):
    """The judge's reply is not exactly one JSON object with a rationale and a valid verdict."""


@dataclass(frozen=True)
class ParsedVerdict:
    rationale: str
    verdict: bool | str | int  # yes/no -> bool, pair -> "A"/"B", rating -> 1..5


def verdict_format(kind: Kind, rationale_tokens: int = 64):
    """The declared reply of a rubric of this kind (alignment/formats.catalog.verdict)."""
    return verdict(kind, rationale_tokens)


def parse_verdict(text: str, kind: Kind, *, strict: bool = False) -> ParsedVerdict:
    """The verdict of one reply: exactly the declared JSON (``strict``), or any JSON object with a non-empty
    ``rationale`` and the verdict key of its kind (an unconstrained judge; one ```json fence allowed); extra
    prose, a missing key or an invalid value is a ``VerdictParseError``, never a guess."""
    try:
        reading = verdict_format(kind).read(text, lenient=not strict)
    except FormatParseError as exc:
        raise VerdictParseError(f"{exc.problem}: {text[:120]!r}") from None
    return ParsedVerdict(reading.value.rationale, reading.value.verdict)


# -- requests and judgments ------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeRequest:
    rubric: str
    kind: Kind
    messages: tuple[Message, ...]
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # item_id, method, ... kept with the judgment


@dataclass
class Judgment:
    rubric: str
    kind: str
    verdict: bool | str | int | None  # None: no readable verdict (counted, reported)
    rationale: str
    source: str  # "logprobs" | "json" | "none"
    json_verdict: bool | str | int | None = None
    json_error: str | None = None  # why the JSON reply could not be read
    probabilities: dict[str, float] | None = None  # option -> probability (local engines)
    raw: str = ""
    judge: str = ""
    error: str | None = None  # the request itself failed (e.g. prompt too long)
    meta: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def p_yes(self) -> float | None:
        return self.probabilities.get("yes") if self.probabilities else None

    def to_record(self) -> dict:
        record = asdict(self)
        record.pop("cached")
        return record

    @classmethod
    def from_record(cls, record: dict, meta: dict | None = None) -> Judgment:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        judgment = cls(**fields)
        if meta is not None:
            judgment.meta = dict(meta)
        return judgment


def rubric_request(rubric: str, *, preference: str, query: str, response: str, notes: str | None = None,
                   meta: dict | None = None) -> JudgeRequest:
    """A yes/no rubric (alignment/prompts/judge.py) applied to one response; the judge sees the gold preference."""
    if rubric not in YES_NO_RUBRICS:
        raise CdraError(f"unknown rubric {rubric!r}; known: {', '.join(YES_NO_RUBRICS)}")
    messages = render(
        YES_NO_RUBRICS[rubric], preference=preference or "(none stated)", query=query,
        notes=notes or NO_NOTES, response=response or "(empty reply)",
    )
    return JudgeRequest(rubric, "yesno", tuple(messages), dict(meta or {}))


def pairwise_requests(*, preference: str, query: str, response_x: str, response_y: str, meta: dict | None = None,
                      swap: bool = True, rng: random.Random | None = None) -> list[JudgeRequest]:
    """Head-to-head requests for responses x and y with position-bias control.

    ``swap=True`` asks both orders (x as A, then x as B), so a judge that always prefers one position
    produces a tie rather than a win; ``swap=False`` asks one order drawn at random.
    """
    orders = ["xy", "yx"] if swap else [(rng or random.Random()).choice(["xy", "yx"])]
    requests = []
    for order in orders:
        a, b = (response_x, response_y) if order == "xy" else (response_y, response_x)
        messages = render(PAIRWISE, preference=preference or "(none stated)", query=query, response_a=a, response_b=b)
        requests.append(JudgeRequest("pairwise", "pair", tuple(messages), {**(meta or {}), "order": order}))
    return requests


def pairwise_outcome(judgments: Sequence[Judgment]) -> tuple[str | None, float | None]:
    """Combine the orders of one pair: ("x" | "y" | "tie" | None, P(x better) averaged over orders)."""
    votes, probs = [], []
    for j in judgments:
        order = j.meta.get("order", "xy")
        if j.verdict in ("A", "B"):
            votes.append("x" if (j.verdict == "A") == (order == "xy") else "y")
        if j.probabilities:
            p_a = j.probabilities.get("A", 0.5)
            probs.append(p_a if order == "xy" else 1 - p_a)
    p_x = sum(probs) / len(probs) if probs else None
    if not votes or len(votes) < len(judgments):
        return None, p_x  # an order without a readable verdict: the pair is undecided, not a win
    if len(set(votes)) > 1:
        return "tie", p_x  # the verdict followed the position, not the content
    return votes[0], p_x


def aloe_turn_request(*, profile: str, personality: str, hidden_preferences: Sequence[str], message: str,
                      response: str, meta: dict | None = None) -> JudgeRequest:
    """ALOE's per-turn rating: a judge that knows the person rates the reply to their latest message 1-5."""
    messages = render(
        ALOE_TURN, profile=profile, personality=personality or "(not given)",
        hidden_preferences="; ".join(hidden_preferences) or "(none listed)", message=message,
        response=response or "(empty reply)",
    )
    return JudgeRequest("aloe_turn", "rating", tuple(messages), dict(meta or {}))


# -- the cache -----------------------------------------------------------------------------------


def digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class EvalCache:
    """Answers and judgments of evaluation runs in one SQLite file (WAL), keyed by what produced them.

    Each chunk is committed as soon as it is computed, so a killed run loses at most one chunk.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT, "
                "item_id TEXT, method TEXT, rubric TEXT, payload TEXT NOT NULL, created TEXT NOT NULL)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise CdraError(f"cannot open the evaluation cache {self.path}: {exc}; delete it to start afresh") from exc
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, payload in self._db.execute(f"SELECT key, payload FROM entries WHERE key IN ({marks})", chunk):
                    found[key] = json.loads(payload)
        self.hits += len(found)
        self.misses += len(set(keys) - set(found))
        return found

    def put_many(self, rows: Iterable[tuple[str, str, dict, dict]]) -> None:
        """rows: (key, kind, payload, meta with optional model/item_id/method/rubric)."""
        now = datetime.now(timezone.utc).isoformat()
        values = [
            (key, kind, meta.get("model"), meta.get("item_id"), meta.get("method"), meta.get("rubric"),
             json.dumps(payload, ensure_ascii=False, default=str), now)
            for key, kind, payload, meta in rows
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?)", values)
            self._db.commit()

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class CallStats:
    """Model work actually done (cache misses) versus reused; a fully cached re-run shows zero calls."""

    generate_calls: int = 0
    generated: int = 0  # completions produced
    score_calls: int = 0
    scored: int = 0  # continuations scored
    cache_hits: int = 0

    @property
    def model_calls(self) -> int:
        return self.generate_calls + self.score_calls


# -- the judge ------------------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """How the judge decodes and reads verdicts.

    ``use_logprobs``: read verdicts from option probabilities after the rationale (None: yes for local
    engines, no for endpoints, decided from ``judge_key``). ``batch_size``: requests per engine call;
    an endpoint engine fans each call out under its own ``max_concurrency``.
    """

    max_new_tokens: int = 96
    rationale_tokens: int = 64  # the declared verdict format's bound on the rationale
    temperature: float = 0.0
    batch_size: int = 16
    use_logprobs: bool | None = None
    rationale_chars: int = 600
    seed: int = 0


EngineSource = Engine | Callable[[], Engine]


def is_local_key(judge_key: str) -> bool:
    """Endpoint judges are keyed ``openai:…``; everything else runs in this process and can be scored."""
    return not judge_key.startswith("openai:")


class Judge:
    """Runs rubric requests on one judge model, batched, cached and counted."""

    def __init__(self, engine: EngineSource, judge_key: str, config: JudgeConfig | None = None,
                 cache: EvalCache | None = None, stats: CallStats | None = None) -> None:
        self._engine_source = engine
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self.judge_key = judge_key
        self.config = config or JudgeConfig()
        self.cache = cache
        self.stats = stats or CallStats()
        self.use_logprobs = self.config.use_logprobs if self.config.use_logprobs is not None else is_local_key(judge_key)

    @property
    def engine(self) -> Engine:
        """Loaded on first use: a fully cached run never loads the judge model."""
        if self._engine is None:
            self._engine = self._engine_source()  # type: ignore[operator]
        return self._engine

    def _key(self, request: JudgeRequest) -> str:
        c = self.config
        return digest({"judge": self.judge_key, "rubric": request.rubric, "kind": request.kind,
                       "messages": list(request.messages), "max_new_tokens": c.max_new_tokens,
                       "format": verdict_format(request.kind, c.rationale_tokens).name,
                       "temperature": c.temperature, "logprobs": self.use_logprobs, "seed": c.seed,
                       "rationale_chars": c.rationale_chars})

    def run(self, requests: Sequence[JudgeRequest], progress: Callable[[int], None] | None = None) -> list[Judgment]:
        """One judgment per request, in order; cached ones are reused, the rest computed in batches."""
        keys = [self._key(r) for r in requests]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        results: list[Judgment | None] = [None] * len(requests)
        todo: list[int] = []
        for i, key in enumerate(keys):
            if key in cached:
                results[i] = Judgment.from_record(cached[key], meta=requests[i].meta)
                results[i].cached = True
                self.stats.cache_hits += 1
            else:
                todo.append(i)
        if progress and len(todo) < len(requests):
            progress(len(requests) - len(todo))
        # one verdict format per call; similar lengths batch with less padding
        todo.sort(key=lambda i: (requests[i].kind, _prompt_chars(requests[i].messages)))
        chunks = [todo[s : s + self.config.batch_size] for s in range(0, len(todo), self.config.batch_size)]
        chunks = [[i for i in c if requests[i].kind == kind] for c in chunks for kind in dict.fromkeys(
            requests[i].kind for i in c)]
        for chunk in chunks:
            judged = self._judge_chunk([requests[i] for i in chunk])
            for i, judgment in zip(chunk, judged):
                results[i] = judgment
            if self.cache is not None:
                self.cache.put_many(
                    (keys[i], "judgment", results[i].to_record(),  # type: ignore[union-attr]
                     {"model": self.judge_key, "rubric": requests[i].rubric, **requests[i].meta})
                    for i in chunk if results[i].error is None  # type: ignore[union-attr]
                )
            if progress:
                progress(len(chunk))
        return results  # type: ignore[return-value]

    # -- internals ----------------------------------------------------------------------------------
    def _params(self, kind: Kind) -> SamplingParams:
        c = self.config
        return SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=c.seed,
                              format=verdict_format(kind, c.rationale_tokens))

    def _generate(self, requests: Sequence[JudgeRequest]) -> list[str | EngineError]:
        """Texts in order (all of one kind); a request the engine rejects (e.g. too long) becomes its error."""
        try:
            self.stats.generate_calls += 1
            out = self.engine.generate([list(r.messages) for r in requests], self._params(requests[0].kind))
            self.stats.generated += len(out)
            return [c[0].text for c in out]
        except EngineError:
            if len(requests) == 1:
                raise
        texts: list[str | EngineError] = []
        for r in requests:
            try:
                texts.extend(self._generate([r]))
            except EngineError as exc:
                texts.append(exc)
        return texts

    def _judge_chunk(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        try:
            texts = self._generate(requests)
        except EngineError as exc:
            texts = [exc]
        judgments: list[Judgment] = []
        for request, text in zip(requests, texts):
            if isinstance(text, EngineError):
                judgments.append(Judgment(request.rubric, request.kind, None, "", "none", judge=self.judge_key,
                                          error=str(text), meta=dict(request.meta)))
                continue
            judgments.append(self._read(request, text))
        if self.use_logprobs:
            self._add_probabilities([(r, j) for r, j in zip(requests, judgments) if j.error is None])
        return judgments

    def _read(self, request: JudgeRequest, text: str) -> Judgment:
        fmt = verdict_format(request.kind, self.config.rationale_tokens)
        try:
            parsed = parse_verdict(text, request.kind, strict=self.engine.enforces(fmt) and self.engine.exact_formats)
            rationale, json_verdict, json_error = parsed.rationale, parsed.verdict, None
        except VerdictParseError as exc:
            rationale, json_verdict, json_error = _fallback_rationale(text), None, str(exc)
        return Judgment(
            rubric=request.rubric, kind=request.kind, verdict=json_verdict,
            rationale=rationale[: self.config.rationale_chars], source="json" if json_error is None else "none",
            json_verdict=json_verdict, json_error=json_error, raw=text, judge=self.judge_key, meta=dict(request.meta),
        )

    def _add_probabilities(self, pairs: Sequence[tuple[JudgeRequest, Judgment]]) -> None:
        """Each option's probability right after each judgment's rationale.

        A local transformers judge reads all options from one forward pass per judgment (the next-token
        distribution at the verdict position, ``next_token_logprobs``); any other engine scores every
        option's full text with ``Engine.score``. Both give log p(prefix + option), up to the shared prefix.
        A judgment whose prompt plus rationale no longer fits the context keeps its JSON verdict.
        """
        if not pairs:
            return
        plans = [decision_point(self.engine, r.messages, verdict_prefix(j.rationale, r.kind), OPTIONS[r.kind])
                 for r, j in pairs]
        fast = [(pair, plan) for pair, plan in zip(pairs, plans) if plan is not None]
        slow = [pair for pair, plan in zip(pairs, plans) if plan is None]
        if fast:
            window = self.engine.context_window or 10**9
            fits = [(pair, plan) for pair, plan in fast if len(plan[0]) <= window]
            for pair, plan in fast:
                if len(plan[0]) > window:
                    pair[1].error = f"probability reading skipped: {len(plan[0])} tokens exceed the context window"
            self.stats.score_calls += 1
            logps = next_token_logprobs(self.engine, [plan[0] for _, plan in fits], [plan[1] for _, plan in fits])
            self.stats.scored += len(fits)
            for (pair, _), row in zip(fits, logps):
                self._apply(pair, row)
        if slow:
            self._add_scored(slow)

    def _add_scored(self, pairs: Sequence[tuple[JudgeRequest, Judgment]]) -> None:
        try:
            scored = self._score(pairs)
        except PromptTooLongError:
            for pair in pairs:
                try:
                    self._apply(pair, [s.logprob for s in self._score([pair])])
                except PromptTooLongError as exc:
                    pair[1].error = f"probability reading skipped: {exc}"
            return
        start = 0
        for pair in pairs:
            n = len(OPTIONS[pair[0].kind])
            self._apply(pair, [s.logprob for s in scored[start : start + n]])
            start += n

    def _score(self, pairs: Sequence[tuple[JudgeRequest, Judgment]]) -> list:
        conversations, continuations = [], []
        for request, judgment in pairs:
            prefix = verdict_prefix(judgment.rationale, request.kind)
            for option in OPTIONS[request.kind]:
                conversations.append(list(request.messages))
                continuations.append(prefix + option)
        try:
            self.stats.score_calls += 1
            scored = self.engine.score(conversations, continuations)
        except PromptTooLongError:
            raise
        except (NotImplementedError, EngineError) as exc:
            raise CdraError(f"the judge {self.judge_key} cannot score text for probability verdicts ({exc}); "
                            "use JSON verdicts only (--no-judge-logprobs)") from exc
        self.stats.scored += len(scored)
        return scored

    @staticmethod
    def _apply(pair: tuple[JudgeRequest, Judgment], logprobs: Sequence[float]) -> None:
        request, judgment = pair
        options = OPTIONS[request.kind]
        probs = softmax(list(logprobs))
        judgment.probabilities = dict(zip(options, probs))
        best = options[max(range(len(options)), key=lambda k: probs[k])]
        judgment.verdict = {"yesno": best == "yes", "pair": best, "rating": int(best) if best.isdigit() else best}[request.kind]
        judgment.source = "logprobs"


# -- one forward pass per judgment on a local model ------------------------------------------------


def is_local_transformers(engine: Engine) -> bool:
    """An in-process model whose logits we can read: the engine exposes model, tokenizer and token ids."""
    return all(hasattr(engine, a) for a in ("model", "tokenizer", "prompt_ids", "continuation_ids")) \
        and getattr(engine, "model", None) is not None


def decision_point(engine: Engine, messages: Sequence[Message], prefix: str,
                   options: Sequence[str]) -> tuple[list[int], list[int]] | None:
    """Token ids up to where the options diverge, and each option's single token there; None when the
    engine is not a local transformers model or an option needs more than one token after that point."""
    if not is_local_transformers(engine):
        return None
    fulls = [engine.continuation_ids(prefix + option) for option in options]  # type: ignore[attr-defined]
    common = os.path.commonprefix(fulls)
    if any(len(f) != len(common) + 1 for f in fulls) or len({f[-1] for f in fulls}) != len(fulls):
        return None
    return engine.prompt_ids(list(messages)) + list(common), [f[-1] for f in fulls]  # type: ignore[attr-defined]


def next_token_logprobs(engine: Engine, rows: Sequence[list[int]], targets: Sequence[list[int]],
                        batch_size: int = 8) -> list[list[float]]:
    """log p(target token | row) for each row's targets, one left-padded forward pass per batch that keeps
    only the last position's logits (so memory does not grow with the prompt)."""
    import torch

    model, pad = engine.model, engine.tokenizer.pad_token_id  # type: ignore[attr-defined]
    device = next(model.parameters()).device
    out: list[list[float]] = []
    with getattr(engine, "_lock", contextlib.nullcontext()), torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in chunk], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
            logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
            for i, tokens in enumerate(targets[start : start + batch_size]):
                out.append([float(logp[i, t]) for t in tokens])
    return out


def _prompt_chars(messages: Sequence[Message]) -> int:
    return sum(len(m["content"]) for m in messages)


def verdict_prefix(rationale: str, kind: Kind) -> str:
    """The judge's canonical reply up to the verdict value, e.g. ``{"rationale": "…", "verdict": "``."""
    key = VERDICT_KEY[kind]
    opener = '"' if kind in ("yesno", "pair") else ""
    return '{"rationale": ' + json.dumps(rationale, ensure_ascii=False) + f', "{key}": ' + opener


def _fallback_rationale(text: str) -> str:
    """The judge's free text, used as its rationale when its JSON is unreadable (for the logprob reading)."""
    match = re.search(r'"rationale"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    if match:
        try:
            return json.loads('"' + match.group(1) + '"').strip()
        except json.JSONDecodeError:
            pass
    return " ".join(text.split()) or "(no rationale)"


def softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def verdict_counts(judgments: Iterable[Judgment]) -> dict[str, dict[str, int | float | None]]:
    """Per rubric: judgments, unreadable JSON, unreadable verdicts, failed requests, and how often the JSON
    verdict and the probability reading agree where both exist (a check on the judge's consistency)."""
    table: dict[str, dict] = {}
    for j in judgments:
        row = table.setdefault(j.rubric, {"n": 0, "json_unparsed": 0, "no_verdict": 0, "failed": 0,
                                          "both": 0, "agree": 0, "p_sum": 0.0, "p_n": 0})
        row["n"] += 1
        row["json_unparsed"] += j.json_error is not None
        row["no_verdict"] += j.verdict is None
        row["failed"] += j.error is not None
        if j.json_verdict is not None and j.source == "logprobs":
            row["both"] += 1
            row["agree"] += j.json_verdict == j.verdict
        if j.p_yes is not None:
            row["p_sum"] += j.p_yes
            row["p_n"] += 1
    for row in table.values():
        row["agreement"] = row["agree"] / row["both"] if row["both"] else None
        row["mean_p_yes"] = row["p_sum"] / row["p_n"] if row["p_n"] else None
        for k in ("agree", "p_sum", "p_n"):
            row.pop(k)
    return table
