"""AlignXplore training data from PrefEval (explicit, implicit choice-based, implicit persona-driven) and
streaming examples: signals E (+ d_prev) -> target (r, d), d = the data set's own preference as statement
lines, r = a chain that cites the signals it rests on. Split by topic; records validated on read (file:line).

Record (JSONL): ``{"id", "topic", "form", "split", "signals": [...], "previous": [line], "golds": [sentence],
"gold_statements": [line], "target": {"reasoning", "statements": [line]}, "r_source", "evidence": [tag],
"evidence_sim", "comparison": {"post", "chosen", "rejected"} | null}`` with line = {stance, dimension,
subject, confidence}. r: ``template`` (built from the signals, citing the evidence) or ``teacher`` (pref_teacher).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from alignment.errors import CdraError, FormatError
from alignment.formats import StatementLine, render_inference
from alignment.preference_inference import InferenceConfig, PreferenceInferrer
from alignment.preferences import PreferenceDescription, PreferenceStatement
from alignment.signals import ComparisonSignal, PostSignal, Signal, TurnSignal, parse_signal, signal_to_json
from training.pref_rewards import GoldScorer, clip_words, gold_statements, statement_text

#: three of the twelve dev topics, never trained on (the other eight PrefEval topics are held out elsewhere)
VALIDATION_TOPICS = ("entertain_shows", "lifestyle_beauty", "travel_activities")
FORMS = ("explicit", "implicit-choice", "implicit-persona")
RECORD_FORMS = (*FORMS, "stream-keep", "stream-add", "log")
CONFIDENCE = {"explicit": 0.9, "implicit-choice": 0.7, "implicit-persona": 0.6}


class Line(BaseModel):
    stance: Literal["prefers", "avoids"]
    dimension: str
    subject: str = Field(min_length=1)
    confidence: float = Field(ge=0.0, le=1.0)

    def statement_line(self) -> StatementLine:
        return StatementLine(self.stance, self.dimension, self.subject, self.confidence)


class Target(BaseModel):
    reasoning: str = Field(min_length=1)
    statements: list[Line] = Field(min_length=1)


class Comparison(BaseModel):
    post: str
    chosen: str
    rejected: str


class PrefRecord(BaseModel):
    """One training or validation example (see the module docstring)."""

    id: str
    topic: str = ""
    form: Literal["explicit", "implicit-choice", "implicit-persona", "stream-keep", "stream-add", "log"]
    split: Literal["train", "validation"] = "train"
    signals: list[dict] = Field(min_length=1)
    previous: list[Line] = Field(default_factory=list)
    golds: list[str] = Field(default_factory=list)
    gold_statements: list[Line] = Field(min_length=1)
    target: Target
    r_source: Literal["template", "teacher"] = "template"
    evidence: list[str] = Field(default_factory=list)
    evidence_sim: float | None = None
    comparison: Comparison | None = None

    def parsed_signals(self) -> list[Signal]:
        return [parse_signal(s, f"{self.id}.signals[{i}]") for i, s in enumerate(self.signals)]

    def previous_description(self) -> PreferenceDescription | None:
        if not self.previous:
            return None
        return PreferenceDescription(statements=[
            PreferenceStatement.make(p.stance, p.subject, p.dimension, confidence=p.confidence) for p in self.previous])

    def golds_lines(self) -> list[StatementLine]:
        return [g.statement_line() for g in self.gold_statements]

    def completion(self) -> str:
        return render_inference(self.target.reasoning, [s.statement_line() for s in self.target.statements])


def _line(s: StatementLine) -> dict:
    return {"stance": s.stance, "dimension": s.dimension, "subject": s.subject, "confidence": s.confidence}


def read_pref_records(path) -> list[PrefRecord]:
    """Validated records of a JSONL file; a record that does not parse names the file and line."""
    from alignment.records import jsonl_objects

    out = []
    for where, obj in jsonl_objects(path):
        try:
            record = PrefRecord.model_validate(obj)
            record.parsed_signals()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise FormatError(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        out.append(record)
    if not out:
        raise FormatError(f"{path}: no records")
    return out


# -- prompts and completions ------------------------------------------------------------------------
def prompt_for(record: PrefRecord, config: InferenceConfig | None = None) -> list[dict]:
    """Exactly the conversation the app's inferrer sends for these signals and d_prev."""
    inferrer = PreferenceInferrer(None, config or InferenceConfig())  # type: ignore[arg-type]  # prompt() needs no engine
    return inferrer.prompt(record.parsed_signals(), record.previous_description())


def sft_examples(records: Sequence[PrefRecord], config: InferenceConfig | None = None) -> list[dict]:
    """trl prompt/completion pairs: the loss falls on r and d only (Eq. 8)."""
    return [{"prompt": prompt_for(r, config), "completion": [{"role": "assistant", "content": r.completion()}]}
            for r in records]


# -- templated chains ---------------------------------------------------------------------------------
def _phrase(lines: Sequence[StatementLine]) -> str:
    verbs = {"prefers": "prefer", "avoids": "avoid"}
    return " and ".join(f"{verbs[s.stance]} {s.subject}" for s in lines)


def _quote(text: str, words: int) -> str:
    return clip_words(text.replace('"', "'"), words).rstrip(".!?,;: ")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if len(s.strip()) > 3]


def evidence_sentence(signals: Sequence[Signal], golds: Sequence[StatementLine], scorer: GoldScorer
                      ) -> tuple[int, str, float]:
    """(signal index, the user's sentence that best states the gold, its cosine): what the chain cites."""
    candidates = [(i, s) for i, sig in enumerate(signals) for text in sig.texts() for s in _sentences(text)]
    if not candidates:
        return 0, "", 0.0
    gold_texts = [statement_text(g.stance, g.subject) for g in golds]
    sims = scorer.similarity([s for _, s in candidates], gold_texts).max(axis=1)
    best = int(sims.argmax())
    return candidates[best][0], candidates[best][1], float(sims[best])


def template_chain(form: str, signals: Sequence[Signal], golds: Sequence[StatementLine], scorer: GoldScorer,
                   previous: Sequence[StatementLine] = (), quote_words: int = 22) -> tuple[str, list[str], float | None]:
    """(r, cited tags, cosine of the cited sentence with the gold): a short chain that cites its evidence."""
    n = len(signals)
    if form == "stream-keep":
        turns = "[e1]" if n == 1 else f"[e1]-[e{n}]"
        return (f"The current description says they {_phrase(previous)}. The new turns {turns} are about "
                "other things and do not contradict it, so it is kept.", [], None)
    first = signals[0]
    if isinstance(first, ComparisonSignal):
        text = (f'[e1] Asked "{_quote(first.post, 10)}", the user chose "{_quote(first.chosen, 12)}" over '
                f'"{_quote(first.rejected, 10)}".')
        tags, sim = ["e1"], None
        if n > 1:  # the user's own words at the choice: the sentence that says why
            index, sentence, sim = evidence_sentence(signals[1:], golds, scorer)
            tags.append(f"e{index + 2}")
            text += f' [e{index + 2}] They say: "{_quote(sentence, 16)}".'
        text += f" The choice suggests they {_phrase(golds)}."
    else:
        index, sentence, sim = evidence_sentence(signals, golds, scorer)
        tag = f"e{index + 1}"
        verb = "says" if form in ("explicit", "log") or (form == "stream-add" and n <= 2) else "mentions"
        text = f'[{tag}] The user {verb}: "{_quote(sentence, quote_words)}". That means they {_phrase(golds)}.'
        if n > 1:
            text += " The other signals say nothing about it."
        tags = [tag]
    if previous:
        text += f" The current description ({_phrase(previous)}) still holds and is kept."
    return text, tags, sim


def fit_target(reasoning: str, lines: Sequence[StatementLine], count: Callable[[str], int],
               config: InferenceConfig) -> tuple[str, list[StatementLine]]:
    """Shrink quotes and subjects until r and each line fit the format's token bounds (margin of 4)."""
    words = 40
    fitted = []
    for line in lines[: config.max_statements]:
        subject, n = line.subject, 16
        while count(subject) > config.statement_tokens - 4 and n > 2:
            subject, n = clip_words(line.subject, n), n - 1
        fitted.append(StatementLine(line.stance, line.dimension, subject, line.confidence))
    text = reasoning
    while count(text) > config.think_tokens - 4 and words > 6:
        quotes = re.findall(r'"([^"]*)"', text)
        if not quotes:
            text = clip_words(text, words)
        else:
            longest = max(quotes, key=len)
            text = text.replace(f'"{longest}"', f'"{clip_words(longest, max(3, len(longest.split()) - 3))}"', 1)
        words -= 2
    return text, fitted


# -- PrefEval -> records ------------------------------------------------------------------------------
def _signals(form: str, record, rng: random.Random, base: str, choice_words: bool = True) -> list[Signal]:
    """E for one PrefEval record. A choice is a comparison signal followed, with ``choice_words``, by what the
    user wrote when choosing (PrefEval's ``user_selection``: it often says why); without them it is a bare
    comparison, as the app logs a regenerated reply the user liked."""
    if form == "explicit":
        return [TurnSignal(kind="turn", id=f"{base}-e1", user=record.preference),
                TurnSignal(kind="turn", id=f"{base}-e2", user=record.question)]
    if form == "implicit-choice":
        comparison = ComparisonSignal(kind="comparison", id=f"{base}-e1", post=record.conversation.query,
                                      chosen=record.aligned_op, rejected=rng.choice(record.conflicting))
        if not choice_words:
            return [comparison]
        return [comparison, PostSignal(kind="post", id=f"{base}-e2", text=record.conversation.user_selection)]
    return [TurnSignal(kind="turn", id=f"{base}-e{k + 1}", user=t.user, assistant=t.assistant)
            for k, t in enumerate(record.turns)]


def _record(rid: str, topic: str, form: str, split: str, signals: Sequence[Signal], golds: Sequence[str],
            gold_lines: Sequence[StatementLine], scorer: GoldScorer, count: Callable[[str], int],
            config: InferenceConfig, previous: Sequence[StatementLine] = (), comparison: dict | None = None) -> dict:
    reasoning, tags, sim = template_chain(form, signals, gold_lines, scorer, previous)
    target_lines = [*gold_lines, *previous] if form == "stream-add" else list(gold_lines)  # keep: gold = d_prev
    reasoning, fitted = fit_target(reasoning, target_lines, count, config)
    return {"id": rid, "topic": topic, "form": form, "split": split, "signals": [signal_to_json(s) for s in signals],
            "previous": [_line(p) for p in previous], "golds": list(golds),
            "gold_statements": [_line(g) for g in (target_lines if form == "stream-add" else gold_lines)],
            "target": {"reasoning": reasoning, "statements": [_line(s) for s in fitted]}, "r_source": "template",
            "evidence": tags, "evidence_sim": sim, "comparison": comparison}


def build_prefeval_records(root, count: Callable[[str], int], scorer: GoldScorer | None = None,
                           validation_topics: Sequence[str] = VALIDATION_TOPICS, per_topic: int | None = None,
                           val_per_topic: int | None = None, stream_per_topic: int = 4, seed: int = 0,
                           topics: Sequence[str] | None = None, config: InferenceConfig | None = None) -> list[dict]:
    """Records for every form of every topic; ``per_topic`` (train) / ``val_per_topic`` preferences per form."""
    from training.prefeval import load_prefeval, prefeval_topics

    config = config or InferenceConfig()
    scorer = scorer or GoldScorer()
    all_topics = list(topics or prefeval_topics(root))
    unknown = [t for t in validation_topics if t not in all_topics]
    if unknown:
        raise CdraError(f"validation topic(s) {', '.join(unknown)} not in {root} (topics: {', '.join(all_topics)})")
    out: list[dict] = []
    for topic in all_topics:
        split = "validation" if topic in validation_topics else "train"
        limit = val_per_topic if split == "validation" else per_topic
        by_form = {form: load_prefeval(root, form, topic) for form in FORMS}
        choices = {r.preference: r for r in by_form["implicit-choice"]}
        order = list(range(len(by_form["explicit"])))
        random.Random(f"{seed}/{topic}").shuffle(order)
        picked = order[:limit] if limit is not None else order
        golds_of: dict[int, list[StatementLine]] = {}
        for form in FORMS:
            for i in picked:
                if i >= len(by_form[form]):
                    continue
                rec = by_form[form][i]
                if form == "implicit-choice" and not rec.conflicting:
                    continue
                rng = random.Random(f"{seed}/{topic}/{form}/{i}")
                base = f"prefeval/{topic}/{form}/{i}"
                lines = gold_statements(rec.preference, CONFIDENCE[form], dimensions=config.dimensions)
                golds_of.setdefault(i, lines)
                choice = choices.get(rec.preference)
                comparison = None
                if form != "implicit-choice" and choice is not None and choice.conflicting:
                    comparison = {"post": choice.implicit_query, "chosen": choice.aligned_op,
                                  "rejected": random.Random(f"{seed}/{topic}/pair/{i}").choice(choice.conflicting)}
                signals = _signals(form, rec, rng, base)
                out.append(_record(base, topic, form, split, signals, [rec.preference], lines, scorer, count,
                                   config, comparison=comparison))
        out.extend(_stream_records(topic, split, by_form, picked, golds_of, scorer, count, config,
                                   stream_per_topic, seed))
    return out


def _stream_records(topic, split, by_form, picked, golds_of, scorer, count, config, k, seed) -> list[dict]:
    """d_prev from a prefix of the history, the new signals from the rest: keep (the prefix held the evidence)
    and add (the prefix was another preference's conversation; the new signals reveal this one)."""
    rng = random.Random(f"{seed}/{topic}/stream")
    out: list[dict] = []
    personas = [i for i in picked if i < len(by_form["implicit-persona"])]
    for i in personas[:k]:
        rec = by_form["implicit-persona"][i]
        signals = _signals("implicit-persona", rec, rng, f"prefeval/{topic}/stream-keep/{i}")
        index, _, _ = evidence_sentence(signals, golds_of[i], scorer)
        rest = signals[index + 1:]
        if not rest:
            continue
        previous = [StatementLine(g.stance, g.dimension, g.subject, 0.6) for g in golds_of[i]]
        out.append(_record(f"prefeval/{topic}/stream-keep/{i}", topic, "stream-keep", split, rest, [rec.preference],
                           previous, scorer, count, config, previous=previous))
    for n, i in enumerate(picked[:k]):
        other = picked[(n + 1) % len(picked)]
        if other == i or other not in golds_of or i not in golds_of:
            continue
        form = ("explicit", "implicit-choice")[n % 2]
        rec = by_form[form][i]
        if form == "implicit-choice" and not rec.conflicting:
            continue
        signals = _signals(form, rec, random.Random(f"{seed}/{topic}/add/{i}"), f"prefeval/{topic}/stream-add/{i}",
                           choice_words=False)  # bare comparisons, as logged regenerate pairs are
        previous = [StatementLine(g.stance, g.dimension, g.subject, 0.8) for g in golds_of[other]][:2]
        lines = [StatementLine(g.stance, g.dimension, g.subject, CONFIDENCE[form]) for g in golds_of[i]]
        out.append(_record(f"prefeval/{topic}/stream-add/{i}", topic, "stream-add", split, signals,
                           [rec.preference, by_form["explicit"][other].preference], lines, scorer, count, config,
                           previous=previous))
    return out


def test_item(record: PrefRecord) -> dict:
    """The record as a preference-inference test item (formats.md; post/chosen/rejected only with a comparison;
    extra keys: topic, form, previous, gold_statements)."""
    item = {"id": record.id, "signals": record.signals, "golden": " ".join(record.golds) or None,
            "topic": record.topic, "form": record.form, "previous": [p.model_dump() for p in record.previous],
            "gold_statements": [g.model_dump() for g in record.gold_statements]}
    if record.comparison is not None:
        item.update(record.comparison.model_dump())
    return item
