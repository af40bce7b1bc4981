"""`cdra eval run` / `compare`: run the methods under test on an alignment test set, judge every answer
like the CDRA paper, and write a self-contained report folder; compare two reports with paired tests.

Report folder: ``report.md`` (Table 1, error types, Table 3, judge reliability, ALOE Table 2, preference
inference), ``table1.md``, ``table3.md``, ``radar.png``, ``aloe.{md,csv,png}``, ``answers.jsonl``,
``judgments.jsonl``, ``indicators.jsonl``, ``aloe_turns.jsonl``, ``metrics.json``, ``config.json`` and the
cache ``cache.sqlite`` that makes a re-run free. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignment.aloe_sim import Participant, Persona, SimConfig, read_personas, simulate
from alignment.engines import Engine, ModelSpec, build_engine
from alignment.engines.base import SamplingParams
from alignment.errors import CdraError
from alignment.judges import (
    CallStats, EvalCache, Judge, JudgeConfig, Judgment, is_local_key, rubric_request, verdict_counts,
)
from alignment.methods import (
    PROMPT_BASELINES, SUPERVISION, AlignmentItem, ItemContext, MethodSpec, cached_generate, conversation,
    prompt_context, read_alignment_testset, visible_reply, write_jsonl_atomic,
)
from alignment.metrics import (
    ALL_METRICS, ERROR_METRICS, LOWER_IS_BETTER, METRIC_LABELS, TABLE1_METRICS, Estimate, item_indicators,
    needs_hallucination_check, paired_test, pairwise_win_rate, summarize, verdict_of,
)
from alignment.prompts.judge import YES_NO_RUBRICS
from app.settings import Settings
from training.registry import ModelRegistry, RegisteredModel

STAGE_ONE = tuple(r for r in YES_NO_RUBRICS if r != "hallucinates")


# -- which model answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A concrete model: ``key`` names it in the cache and the report (a registry version when it is one)."""

    key: str
    spec: ModelSpec
    version: str | None = None

    def loader(self, settings: Settings) -> Callable[[], Engine]:
        return lambda: build_engine(self.spec, settings.models_dir, version=self.version)


def model_key(spec: ModelSpec, version: str | None) -> str:
    """What answered or judged, for caches and reports; a role decoding freely (``constrained = false``) is
    another model as far as its outputs go."""
    key = _base_model_key(spec, version)
    return key if spec.constrained else key + "+free"


def _base_model_key(spec: ModelSpec, version: str | None) -> str:
    if version:
        return version
    if spec.backend == "default":
        from alignment.engines.default_model import DEFAULT_MODEL_NAME

        return f"default:{DEFAULT_MODEL_NAME}" + (f"+{spec.adapter}" if spec.adapter else "")
    if spec.backend == "openai":
        return f"openai:{spec.base_url}:{spec.model}"
    return f"{spec.backend}:{spec.path}" + (f"+{spec.adapter}" if spec.adapter else "")


def resolve_role(settings: Settings, role: str) -> ResolvedModel:
    from app.models import resolve_spec

    spec, version = resolve_spec(settings, role)  # type: ignore[arg-type]
    return ResolvedModel(model_key(spec, version), spec, version)


def _registered_spec(settings: Settings, model: RegisteredModel) -> ModelSpec:
    base = settings.policy if settings.policy.backend != "auto" else ModelSpec()
    if model.weights_dir is not None:
        return base.model_copy(update={"backend": "transformers", "path": str(model.weights_dir), "adapter": None})
    where = {"backend": "default", "path": None} if model.base == "default" else {"backend": "transformers", "path": model.base}
    return base.model_copy(update={**where, "adapter": str(model.adapter_dir) if model.adapter_dir else None})


#: the CDPA trainer's ``method`` -> the method name of the tables
_CDPA_METHODS = {"cdpa": "cdra", "grpo-outcome": "grpo-outcome", "grpo-process": "grpo-process"}


def trained_method_of(model: RegisteredModel) -> str | None:
    """The method a registered policy was last trained with, from its manifest's ``config`` as the trainers
    write it (``{"cdpa": {"method": ...}}`` after RL, ``{"rft": ...}`` or ``{"sft": ...}`` after SFT)."""
    config = model.config if isinstance(model.config, dict) else {}
    if isinstance(config.get("method"), str):
        return config["method"]
    cdpa = config.get("cdpa")
    if isinstance(cdpa, dict) and isinstance(cdpa.get("method"), str):
        return _CDPA_METHODS.get(cdpa["method"], cdpa["method"])
    for name in ("rft", "sft"):
        if name in config or name in (model.metrics or {}):
            return name
    return None


def resolve_method(settings: Settings, method: MethodSpec) -> ResolvedModel:
    """``base`` | ``serving`` | a registry policy version | a local model or adapter directory; default:
    base for prompt baselines, the newest policy version trained with the method's name otherwise."""
    registry = ModelRegistry(settings.registry_dir)
    source = method.source
    if source is None:
        if method.name in PROMPT_BASELINES:
            source = "base"
        elif method.name == "policy":
            source = "serving"
        else:
            matches = [m for m in registry.versions("policy") if trained_method_of(m) == method.name]
            if not matches:
                known = ", ".join(f"{m.version} ({trained_method_of(m) or 'method not recorded'})"
                                  for m in registry.versions("policy")) or "none"
                raise CdraError(f"no registered policy trained with {method.name!r}: give one as "
                                f"{method.name}=policy-000N or {method.name}=/path/to/model (registered: {known})")
            return ResolvedModel(matches[-1].version, _registered_spec(settings, matches[-1]), matches[-1].version)
    if source == "base":
        spec = settings.policy if settings.policy.backend != "auto" else ModelSpec(backend="default")
        return ResolvedModel(model_key(spec, None), spec)
    if source == "serving":
        return resolve_role(settings, "policy")
    try:
        registered = registry.get("policy", source)
    except KeyError:
        registered = None
    if registered is not None:
        return ResolvedModel(registered.version, _registered_spec(settings, registered), registered.version)
    path = Path(source).expanduser()
    if (path / "adapter_config.json").is_file():
        spec = ModelSpec(backend="default", adapter=str(path.resolve()))
        return ResolvedModel(model_key(spec, None), spec)
    if (path / "config.json").is_file():
        spec = ModelSpec(backend="transformers", path=str(path.resolve()))
        return ResolvedModel(model_key(spec, None), spec)
    raise CdraError(f"method {method.name}: {source!r} is not base, serving, a registered policy version "
                    f"in {settings.registry_dir}, or a model/adapter directory")


# -- configuration ----------------------------------------------------------------------------------


@dataclass
class EvalRunConfig:
    """One evaluation run.

    Parameters that pick the work: ``testset``, ``methods``, ``conditions`` (``with``/``without`` memory),
    ``memory_store`` (``prompt``: the preference as retrieved lines; ``chroma``: a fresh per-item vector
    memory), ``limit`` (first N items). Decoding of the answers: ``max_new_tokens``, ``temperature``,
    ``batch_size``. The judge: ``judge`` (a JudgeConfig), ``judge_sees`` (``reply``: the text after
    ``Answer:``; ``full``: the whole response). ALOE: ``aloe_personas``, ``aloe_turns``, ``aloe_limit``,
    ``aloe_user_role``, ``aloe_human``. Preference inference: ``prefs_testset``. Statistics: ``n_boot``, ``seed``.
    """

    testset: Path
    methods: list[MethodSpec]
    out_dir: Path
    conditions: tuple[str, ...] = ("with",)
    memory_store: str = "prompt"
    limit: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 8
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    judge_sees: str = "reply"
    aloe_personas: Path | None = None
    aloe_turns: int = 10
    aloe_limit: int | None = None
    aloe_user_role: str = "teacher"
    aloe_user_max_new_tokens: int = 64
    aloe_human: bool = False
    prefs_testset: Path | None = None
    n_boot: int = 2000
    seed: int = 0
    cache_path: Path | None = None
    dataset_name: str | None = None
    progress: bool = True


@dataclass
class RowResult:
    """One row of Table 1: a method under one memory condition."""

    label: str
    method: MethodSpec
    condition: str
    model: ResolvedModel
    metrics: dict[str, Estimate]
    n_items: int
    answer_errors: int


@dataclass
class EvalResult:
    out_dir: Path
    rows: list[RowResult]
    stats: CallStats
    judge_counts: dict
    aloe_rows: list = field(default_factory=list)
    prefs: dict | None = None
    files: list[Path] = field(default_factory=list)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or total == 0, leave=False, dynamic_ncols=True)


# -- memory conditions -----------------------------------------------------------------------------


class _ChromaContexts:
    """``--memory-store chroma``: each item's preference (or conversation) goes into a fresh per-item vector
    memory the way the app fills it (explicit statements extracted from what the user said, plus the turns),
    and what ``retrieve(query)`` returns is what the model sees."""

    def __init__(self, settings: Settings, root: Path) -> None:
        from memory.vector_store import VectorMemory

        self._memory = VectorMemory(settings.memory, persist_dir=root)

    def __call__(self, item: AlignmentItem) -> ItemContext:
        from alignment.explicit_extraction import extract_explicit
        from alignment.preferences import PreferenceStatement

        user = self._memory.for_user("eval-" + hashlib.sha1(item.id.encode()).hexdigest()[:16])
        if item.history:
            turns = item.history
            statements = []
            for i in range(0, len(turns), 2):
                user_text = turns[i]["content"] if turns[i]["role"] == "user" else ""
                reply = turns[i + 1]["content"] if i + 1 < len(turns) else ""
                user.add_turn("eval", f"{i // 2}", user_text, reply)
                statements += extract_explicit(user_text, f"turn-{i // 2}")
        else:
            statements = extract_explicit(item.preference, "preference") or [PreferenceStatement(
                text=item.preference, stance="prefers", origin="explicit", evidence=["preference"], confidence=1.0)]
        if statements:
            user.add_preferences(statements)
        return ItemContext(preferences=user.retrieve(item.query).as_prompt_lines())


# -- the run -------------------------------------------------------------------------------------


def run_eval(settings: Settings, config: EvalRunConfig) -> EvalResult:
    """Answer, judge, aggregate and write the report folder; everything model-made goes through the cache."""
    items = read_alignment_testset(config.testset)
    if config.limit is not None:
        items = items[: config.limit]
    for condition in config.conditions:
        if condition not in ("with", "without"):
            raise CdraError(f"unknown memory condition {condition!r}: use with, without")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = EvalCache(config.cache_path or out / "cache.sqlite")
    stats = CallStats()
    judge_model = resolve_role(settings, "judge")
    judge = Judge(judge_model.loader(settings), judge_model.key, config.judge, cache, stats)
    resolved = [(m, resolve_method(settings, m)) for m in config.methods]
    try:
        answers = _answer_all(settings, config, items, resolved, cache, stats)
        judgments = _judge_all(config, items, answers, judge)
        rows, indicator_records = _aggregate(config, items, resolved, answers, judgments)
        aloe_rows, aloe_turns, aloe_ratings = _run_aloe(settings, config, resolved, judge, cache, stats)
        prefs = _run_prefs(settings, config)
    finally:
        cache.close()
    result = EvalResult(out, rows, stats, verdict_counts(judgments), aloe_rows, prefs)
    _write_folder(settings, config, items, resolved, judge_model, result, answers, judgments, indicator_records,
                  aloe_turns, aloe_ratings)
    return result


def _answer_all(settings: Settings, config: EvalRunConfig, items: Sequence[AlignmentItem],
                resolved: Sequence[tuple[MethodSpec, ResolvedModel]], cache: EvalCache, stats: CallStats) -> list[dict]:
    """One answer record per (method, condition, item)."""
    from alignment.budget_forcing import ReasoningBudget

    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    chat = settings.chat
    # the trained policy answers as the app serves it: budgeted steps, then the answer (its declared format)
    policy_params = params.but(format=ReasoningBudget(chat.reasoning_steps, chat.step_tokens, chat.answer_tokens)
                               .within(config.max_new_tokens).format)
    contexts: dict[str, list[ItemContext]] = {}
    for condition in config.conditions:
        if condition == "with" and config.memory_store == "chroma":
            with tempfile.TemporaryDirectory(prefix="cdra-eval-memory-") as tmp:
                chroma = _ChromaContexts(settings, Path(tmp))
                contexts[condition] = [chroma(item) for item in items]
        elif config.memory_store not in ("prompt", "chroma"):
            raise CdraError(f"unknown memory store {config.memory_store!r}: use prompt or chroma")
        else:
            contexts[condition] = [prompt_context(item, condition) for item in items]  # type: ignore[arg-type]
    records: list[dict] = []
    for method, model in resolved:
        for condition in config.conditions:
            convs = [conversation(method.style, ctx, item.query) for ctx, item in zip(contexts[condition], items)]
            with _bar(len(items), f"answers {method.label} ({condition} memory)", config.progress) as bar:
                gens = cached_generate(convs, policy_params if method.style == "policy" else params, model_key=model.key, engine=model.loader(settings), cache=cache,
                                       stats=stats, batch_size=config.batch_size, progress=bar.update,
                                       metas=[{"item_id": it.id, "method": method.label} for it in items])
            for item, ctx, gen in zip(items, contexts[condition], gens):
                response = gen.text
                reply = None if response is None else (visible_reply(response) if config.judge_sees == "reply" else response)
                records.append({
                    "method": method.label, "name": method.name, "style": method.style, "condition": condition,
                    "item_id": item.id, "model": model.key, "retrieved": ctx.preferences,
                    "history_turns": len(ctx.history), "response": response, "reply": reply, "error": gen.error,
                    "cached": gen.cached,
                })
    return records


def _judge_all(config: EvalRunConfig, items: Sequence[AlignmentItem], answers: Sequence[dict], judge: Judge) -> list[Judgment]:
    """Stage 1: every rubric but H; stage 2: H only where A ∧ V ∧ U may hold (it cannot matter elsewhere)."""
    by_id = {item.id: item for item in items}

    def request(rubric: str, answer: dict):
        item = by_id[answer["item_id"]]
        meta = {"item_id": item.id, "method": answer["method"], "condition": answer["condition"]}
        return rubric_request(rubric, preference=item.preference, query=item.query, response=answer["reply"],
                              notes=item.notes, meta=meta)

    answered = [a for a in answers if a["reply"] is not None]
    first = [request(r, a) for a in answered for r in STAGE_ONE]
    with _bar(len(first), "judging", config.progress) as bar:
        judged = judge.run(first, progress=bar.update)
    verdicts: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for j in judged:
        verdicts[(j.meta["method"], j.meta["condition"], j.meta["item_id"])][j.rubric] = j.verdict
    second = [request("hallucinates", a) for a in answered
              if needs_hallucination_check(*(verdicts[(a["method"], a["condition"], a["item_id"])].get(r)
                                             for r in ("acknowledges", "violates", "helpful")))]
    with _bar(len(second), "judging (hallucination check)", config.progress) as bar:
        judged += judge.run(second, progress=bar.update)
    return judged


def _aggregate(config: EvalRunConfig, items: Sequence[AlignmentItem], resolved: Sequence[tuple[MethodSpec, ResolvedModel]],
               answers: Sequence[dict], judgments: Sequence[Judgment]) -> tuple[list[RowResult], list[dict]]:
    verdicts: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for j in judgments:
        verdicts[(j.meta["method"], j.meta["condition"], j.meta["item_id"])][j.rubric] = j.verdict
    by_id = {item.id: item for item in items}
    per_row: dict[tuple[str, str], list[dict]] = defaultdict(list)
    records = []
    for a in answers:
        key = (a["method"], a["condition"], a["item_id"])
        indicators = item_indicators(verdicts[key]) if a["reply"] is not None else {m: None for m in ALL_METRICS}
        item = by_id[a["item_id"]]
        records.append({"method": a["method"], "condition": a["condition"], "item_id": a["item_id"],
                        "domain": item.domain, "form": item.extras.get("form"), "answer_error": a["error"], **indicators})
        per_row[(a["method"], a["condition"])].append(indicators)
    rows = []
    for method, model in resolved:
        for condition in config.conditions:
            inds = per_row[(method.label, condition)]
            errors = sum(1 for a in answers if a["method"] == method.label and a["condition"] == condition and a["error"])
            rows.append(RowResult(method.label, method, condition, model,
                                  summarize(inds, n_boot=config.n_boot, seed=config.seed), len(inds), errors))
    return rows, records


def _run_aloe(settings: Settings, config: EvalRunConfig, resolved: Sequence[tuple[MethodSpec, ResolvedModel]],
              judge: Judge, cache: EvalCache, stats: CallStats) -> tuple[list, list[dict], list]:
    """Simulated ALOE conversations per method (+ human sessions from the app's log when asked)."""
    from app.aloe_report import AloeRating, aloe_table

    ratings: list[AloeRating] = []
    turns_out: list[dict] = []
    if config.aloe_personas is not None:
        personas: list[Persona] = read_personas(config.aloe_personas)[: config.aloe_limit]
        user_model = resolve_role(settings, config.aloe_user_role)
        user = Participant(user_model.key, user_model.loader(settings))
        sim = SimConfig(turns=config.aloe_turns, user_max_new_tokens=config.aloe_user_max_new_tokens,
                        assistant_max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                        batch_size=config.batch_size, seed=config.seed)
        for method, model in resolved:
            with _bar(len(personas) * sim.turns, f"ALOE {method.label}", config.progress) as bar:
                turns = simulate(personas, method=method.label, style=method.style,
                                 assistant=Participant(model.key, model.loader(settings)), user=user, judge=judge,
                                 cache=cache, stats=stats, config=sim, progress=bar.update)
            for t in turns:
                turns_out.append(asdict(t))
                if t.rating is not None:
                    ratings.append(AloeRating(f"simulated/{method.label}/{t.persona_id}", method.label, t.turn,
                                              t.rating, "simulated"))
    if config.aloe_human:
        try:
            from app.aloe import ratings_from_log
            from app.assistant import open_log
        except ImportError as exc:
            raise CdraError(f"--aloe-human needs the app's ALOE session support ({exc})") from exc
        ratings += ratings_from_log(open_log(settings))
    return (aloe_table(ratings) if ratings else []), turns_out, ratings


def _run_prefs(settings: Settings, config: EvalRunConfig) -> dict | None:
    """Acc_jud / Acc_gen of the preference-inference model, from the preferences module, when asked."""
    if config.prefs_testset is None:
        return None
    try:
        from alignment import preference_metrics
    except ImportError as exc:
        raise CdraError(f"--prefs-testset needs alignment/preference_metrics.py ({exc})") from exc
    from app.models import engine_for

    return preference_metrics.evaluate_for_report(
        engine_for(settings, "judge"), engine_for(settings, "preference"), config.prefs_testset,
        limit=config.limit, n_boot=config.n_boot, seed=config.seed,
    )


# -- tables and plots ------------------------------------------------------------------------------


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def table1(rows: Sequence[RowResult], dataset: str) -> str:
    """CDRA Table 1: Acc_PF, Acc_DA, Acc_Mis, m_th, m_dm, m_ie (percent, with 95% CIs)."""
    head = ["Method", "Memory", *[METRIC_LABELS[m] for m in TABLE1_METRICS], "N"]
    lines = [f"**Dataset: {dataset}** — % of responses, 95% bootstrap CI in brackets", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.label, r.condition, *[r.metrics[m].format() for m in TABLE1_METRICS],
                                        _n(r)]) + " |")
    return "\n".join(lines) + "\n"


def _n(r: RowResult) -> str:
    missing = max((r.metrics[m].missing for m in TABLE1_METRICS), default=0)
    text = str(r.n_items)
    if missing:
        text += f" ({missing} unjudged)"
    return text


def error_table(rows: Sequence[RowResult]) -> str:
    head = ["Method", "Memory", *[METRIC_LABELS[m] for m in ERROR_METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.label, r.condition, *[r.metrics[m].format() for m in ERROR_METRICS]]) + " |")
    return "\n".join(lines) + "\n"


def table3(rows: Sequence[RowResult]) -> str:
    """CDRA Table 3: reward paradigms with process / critique supervision marks; the base row is CoT
    (as in the paper), else zero-shot, on the base model."""
    head = ["Model / Method", "Memory", "Pro. Sup.", "Cri. Sup.", *[METRIC_LABELS[m] for m in TABLE1_METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = [r for r in rows if r.method.name == "cot" and r.method.source in (None, "base")] or \
           [r for r in rows if r.method.name == "zero-shot" and r.method.source in (None, "base")]
    body = [(f"Base ({r.model.key}, {r.method.name})", r, "–", "–") for r in base]
    order = list(SUPERVISION)
    trained = sorted((r for r in rows if r.method.name in SUPERVISION), key=lambda r: order.index(r.method.name))
    for r in trained:
        pro, cri = SUPERVISION[r.method.name]
        body.append((r.label, r, _mark(pro), _mark(cri)))
    for label, r, pro, cri in body:
        lines.append("| " + " | ".join([label, r.condition, pro, cri, *[r.metrics[m].format() for m in TABLE1_METRICS]]) + " |")
    if not trained:
        lines.append("")
        lines.append("_No trained method (sft, rft, grpo-outcome, grpo-process, cdra) in this run: "
                     "add e.g. `cdra=policy-0003` to --methods._")
    return "\n".join(lines) + "\n"


def form_table(rows: Sequence[RowResult], indicator_records: Sequence[dict], n_boot: int, seed: int) -> str:
    """Acc_PF and Acc_DA per PrefEval form (explicit / implicit choice / implicit persona) when items carry one."""
    forms = sorted({r["form"] for r in indicator_records if r.get("form")})
    if len(forms) < 2:
        return ""
    head = ["Method", "Memory", *[f"{f} Acc_PF" for f in forms], *[f"{f} Acc_DA" for f in forms]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sel = [x for x in indicator_records if x["method"] == r.label and x["condition"] == r.condition]
        cells = []
        for metric in ("acc_pf", "acc_da"):
            for f in forms:
                est = summarize([x for x in sel if x.get("form") == f], metrics=(metric,), n_boot=n_boot, seed=seed)[metric]
                cells.append(est.format())
        lines.append("| " + " | ".join([r.label, r.condition, *cells]) + " |")
    return "\n".join(lines) + "\n"


def judge_table(counts: dict) -> str:
    head = ["Rubric", "Judgments", "JSON unreadable", "No verdict", "Failed", "JSON ↔ probability agreement", "Mean P(yes)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rubric, c in sorted(counts.items()):
        agree = "–" if c["agreement"] is None else f"{100 * c['agreement']:.0f}%"
        p = "–" if c["mean_p_yes"] is None else f"{c['mean_p_yes']:.2f}"
        lines.append(f"| {rubric} | {c['n']} | {c['json_unparsed']} | {c['no_verdict']} | {c['failed']} | {agree} | {p} |")
    return "\n".join(lines) + "\n"


def radar_chart(rows: Sequence[RowResult], path: Path) -> None:
    """The six metrics on a radar (CDRA Fig. 4), Acc_Mis inverted to 100 − Acc_Mis so outward is better."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

    axes = [("acc_pf", "Acc_PF"), ("acc_da", "Acc_DA"), ("acc_mis", "100 − Acc_Mis"), ("m_th", "m_th"),
            ("m_dm", "m_dm"), ("m_ie", "m_ie")]
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    fig = plt.figure(figsize=(6, 6), dpi=120)
    ax = fig.add_subplot(111, polar=True)
    for r in rows:
        values = []
        for metric, _ in axes:
            v = r.metrics[metric].value
            v = 0.0 if v is None else v
            values.append(100 - v if metric == "acc_mis" else v)
        ax.plot(angles + angles[:1], values + values[:1], marker="o", label=f"{r.label} ({r.condition} memory)")
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([label for _, label in axes])
    ax.set_ylim(0, 100)
    ax.set_title("Six metrics, % (higher is better on every axis)", pad=24)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        _atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def prefs_table(prefs: dict) -> str:
    """Acc_jud / Acc_gen rows from the preferences module: {"rows": [{"label", "acc_jud": Estimate|dict, ...}]}."""
    lines = ["| Preference description | Acc_jud ↑ | Acc_gen ↑ | N |", "|---|---|---|---|"]
    for row in prefs.get("rows", []):
        cells = []
        for key in ("acc_jud", "acc_gen"):
            v = row.get(key)
            if isinstance(v, Estimate):
                v = v.as_dict()
            cells.append("–" if not v or v.get("value") is None else
                         f"{v['value']:.1f} [{v['low']:.1f}, {v['high']:.1f}]")
        lines.append(f"| {row.get('label', '?')} | {cells[0]} | {cells[1]} | {row.get('n', '')} |")
    return "\n".join(lines) + "\n"


# -- writing -------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> Path:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def write_json(path: Path, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "langchain-core", "chromadb", "vllm", "openai"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _config_record(config: EvalRunConfig, items: Sequence[AlignmentItem], resolved, judge_model: ResolvedModel,
                   stats: CallStats) -> dict:
    from alignment.prompts import judge as judge_prompts
    from alignment.prompts import methods as method_prompts

    def prompt_hash(module) -> str:
        return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:16]

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "testset": {"path": str(Path(config.testset).resolve()), "sha256": _sha256(Path(config.testset)),
                    "items": len(items), "limit": config.limit, "item_ids": [it.id for it in items]},
        "methods": [{"label": m.label, "name": m.name, "style": m.style, "source": m.source, "model": r.key,
                     "version": r.version, "spec": r.spec.model_dump()} for m, r in resolved],
        "judge": {"model": judge_model.key, "version": judge_model.version, "spec": judge_model.spec.model_dump(),
                  **asdict(config.judge), "sees": config.judge_sees,
                  "verdicts_from": "probabilities after the rationale" if (
                      config.judge.use_logprobs if config.judge.use_logprobs is not None else is_local_key(judge_model.key)
                  ) else "JSON only"},
        "answers": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                    "batch_size": config.batch_size, "conditions": list(config.conditions),
                    "memory_store": config.memory_store},
        "aloe": {"personas": str(config.aloe_personas) if config.aloe_personas else None,
                 "turns": config.aloe_turns, "limit": config.aloe_limit, "user_role": config.aloe_user_role,
                 "user_max_new_tokens": config.aloe_user_max_new_tokens, "human": config.aloe_human},
        "prefs_testset": str(config.prefs_testset) if config.prefs_testset else None,
        "statistics": {"bootstrap_resamples": config.n_boot, "confidence": 0.95, "seed": config.seed},
        "prompt_files_sha256": {"judge": prompt_hash(judge_prompts), "methods": prompt_hash(method_prompts)},
        "git_commit": _git_commit(),
        "packages": _versions(),
        "model_calls": asdict(stats) | {"total": stats.model_calls},
    }


def _write_folder(settings: Settings, config: EvalRunConfig, items, resolved, judge_model, result: EvalResult,
                  answers, judgments, indicator_records, aloe_turns, aloe_ratings) -> None:
    out = result.out_dir
    dataset = config.dataset_name or Path(config.testset).stem
    files = [
        write_jsonl_atomic(out / "answers.jsonl", answers),
        write_jsonl_atomic(out / "judgments.jsonl", (j.to_record() | {"cached": j.cached} for j in judgments)),
        write_jsonl_atomic(out / "indicators.jsonl", indicator_records),
        write_text(out / "table1.md", table1(result.rows, dataset)),
        write_text(out / "table3.md", table3(result.rows)),
    ]
    radar_chart(result.rows, out / "radar.png")
    files.append(out / "radar.png")
    sections = [
        f"# Evaluation report — {dataset}\n",
        (f"Test set `{config.testset}` ({len(items)} items), judge `{judge_model.key}`, "
         f"{config.n_boot} bootstrap resamples, seed {config.seed}. Exact configuration: `config.json`.\n"),
        "## Table 1 — core performance and deep reasoning quality\n", table1(result.rows, dataset),
        "## Explicit preference errors (PrefEval; lower is better)\n", error_table(result.rows),
        "## Table 3 — reward modeling paradigms\n", table3(result.rows),
    ]
    forms = form_table(result.rows, indicator_records, config.n_boot, config.seed)
    if forms:
        sections += ["## By preference form\n", forms]
    sections += ["## Judge: readable verdicts\n",
                 ("Verdicts are read from the judge's probabilities after its rationale on local engines, from its "
                  "JSON otherwise; unreadable ones are counted here and left out of the percentages above.\n"),
                 judge_table(result.judge_counts)]
    if aloe_ratings:
        from app.aloe_report import to_markdown, write_aloe_report

        report = write_aloe_report(aloe_ratings, out, stem="aloe")
        files += [report.markdown_path, report.csv_path, report.png_path]
        files.append(write_jsonl_atomic(out / "aloe_ratings.jsonl", (asdict(r) for r in aloe_ratings)))
        unrated = sum(1 for t in aloe_turns if t["rating"] is None)
        sections += ["## ALOE multi-turn alignment (Table 2: mean rating 1-5 at turn k)\n", to_markdown(result.aloe_rows)]
        if unrated:
            sections.append(f"\n{unrated} simulated turns had no readable rating and are not in the means.\n")
    elif config.aloe_personas is not None:
        sections += ["## ALOE multi-turn alignment\n", "No turn received a readable rating.\n"]
    if aloe_turns:
        files.append(write_jsonl_atomic(out / "aloe_turns.jsonl", aloe_turns))
    if result.prefs is not None:
        sections += ["## Preference inference (AlignXplore Acc_jud / Acc_gen)\n", prefs_table(result.prefs)]
    stats = result.stats
    sections.append(f"\nModel calls this run: {stats.generate_calls} generate, {stats.score_calls} score "
                    f"({stats.cache_hits} results reused from the cache).\n")
    files.append(write_text(out / "report.md", "\n".join(sections)))
    metrics = {
        "dataset": dataset,
        "rows": [{"method": r.label, "name": r.method.name, "style": r.method.style, "condition": r.condition,
                  "model": r.model.key, "version": r.model.version, "n_items": r.n_items,
                  "answer_errors": r.answer_errors, "metrics": {m: e.as_dict() for m, e in r.metrics.items()}}
                 for r in result.rows],
        "judge_counts": result.judge_counts,
        "aloe": [asdict(r) for r in result.aloe_rows],
        "prefs": result.prefs,
    }
    files.append(write_json(out / "metrics.json", metrics))
    files.append(write_json(out / "config.json", _config_record(config, items, resolved, judge_model, stats)))
    result.files = files


# -- comparing two reports -------------------------------------------------------------------------


@dataclass
class ComparisonRow:
    metric: str
    n: int
    a: float
    b: float
    diff: float
    low: float
    high: float
    p_bootstrap: float
    p_mcnemar: float
    verdict: str


def _load_indicators(report_dir: Path) -> list[dict]:
    path = Path(report_dir) / "indicators.jsonl"
    if not path.is_file():
        raise CdraError(f"{report_dir} is not a report folder (no indicators.jsonl): run `cdra eval run --out` first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pick(rows: list[dict], method: str | None, condition: str | None, where: Path) -> tuple[str, str, dict[str, dict]]:
    labels = sorted({r["method"] for r in rows})
    if method is None:
        if len(labels) != 1:
            raise CdraError(f"{where} has several methods ({', '.join(labels)}): choose one with --method-a/--method-b")
        method = labels[0]
    conditions = sorted({r["condition"] for r in rows if r["method"] == method})
    if not conditions:
        raise CdraError(f"{where} has no method {method!r} (it has {', '.join(labels)})")
    if condition is None:
        condition = "with" if "with" in conditions else conditions[0]
    selected = {r["item_id"]: r for r in rows if r["method"] == method and r["condition"] == condition}
    if not selected:
        raise CdraError(f"{where}: method {method!r} has no {condition!r}-memory rows")
    return method, condition, selected


def compare_reports(dir_a: Path, dir_b: Path, method_a: str | None = None, method_b: str | None = None,
                    condition: str | None = None, n_boot: int = 5000, seed: int = 0) -> tuple[list[ComparisonRow], dict]:
    """Paired comparison on the items both reports judged: per metric, B − A with a paired bootstrap CI and
    p-value and an exact McNemar test on the per-item indicators."""
    label_a, cond_a, a = _pick(_load_indicators(dir_a), method_a, condition, dir_a)
    label_b, cond_b, b = _pick(_load_indicators(dir_b), method_b, condition, dir_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise CdraError("the two reports have no test item in common: compare runs on the same test set")
    rows = []
    for metric in ALL_METRICS:
        xs, ys = [a[i].get(metric) for i in shared], [b[i].get(metric) for i in shared]
        try:
            t = paired_test(xs, ys, n_boot=n_boot, seed=seed)
        except ValueError:
            continue
        rows.append(ComparisonRow(metric, t.n, t.mean_a, t.mean_b, t.diff, t.low, t.high, t.p_bootstrap, t.p_mcnemar,
                                  verdict_of(t, lower_is_better=metric in LOWER_IS_BETTER)))
    info = {"a": f"{label_a} ({cond_a} memory) in {dir_a}", "b": f"{label_b} ({cond_b} memory) in {dir_b}",
            "items": len(shared), "method_a": label_a, "method_b": label_b, "condition_a": cond_a, "condition_b": cond_b}
    return rows, info


def format_comparison(rows: Sequence[ComparisonRow], info: dict) -> str:
    lines = [f"A = {info['a']}", f"B = {info['b']}", f"paired on {info['items']} shared items", "",
             "| Metric | N | A % | B % | B − A [95% CI] | p (bootstrap) | p (McNemar) | Verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {METRIC_LABELS[r.metric]} | {r.n} | {r.a:.1f} | {r.b:.1f} | {r.diff:+.1f} [{r.low:+.1f}, {r.high:+.1f}] "
                     f"| {r.p_bootstrap:.3f} | {r.p_mcnemar:.3f} | {r.verdict} |")
    headline = {r.metric: r.verdict for r in rows}
    pf, da = headline.get("acc_pf"), headline.get("acc_da")
    lines += ["", f"Acc_PF: {pf or 'n/a'}; Acc_DA: {da or 'n/a'} (both tests at p < 0.05)."]
    return "\n".join(lines) + "\n"


def pairwise_compare(settings: Settings, dir_a: Path, dir_b: Path, info: dict, judge_config: JudgeConfig,
                     progress: bool = True) -> dict:
    """Head-to-head judge on the two reports' answers to the same items, both orders (position-bias control),
    with a sign test on the decided pairs."""
    from alignment.judges import pairwise_outcome, pairwise_requests

    def answers(d: Path, method: str, condition: str) -> dict[str, dict]:
        path = Path(d) / "answers.jsonl"
        if not path.is_file():
            raise CdraError(f"{d}: no answers.jsonl")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {r["item_id"]: r for r in rows if r["method"] == method and r["condition"] == condition and r["reply"]}

    config = json.loads((Path(dir_b) / "config.json").read_text(encoding="utf-8"))
    testset = Path(config["testset"]["path"])
    items = {it.id: it for it in read_alignment_testset(testset)}
    a = answers(dir_a, info["method_a"], info["condition_a"])
    b = answers(dir_b, info["method_b"], info["condition_b"])
    shared = sorted(set(a) & set(b) & set(items))
    judge_model = resolve_role(settings, "judge")
    cache = EvalCache(Path(dir_b) / "cache.sqlite")
    try:
        judge = Judge(judge_model.loader(settings), judge_model.key, judge_config, cache)
        requests = []
        for item_id in shared:
            it = items[item_id]
            requests += pairwise_requests(preference=it.preference, query=it.query, response_x=a[item_id]["reply"],
                                          response_y=b[item_id]["reply"], meta={"item_id": item_id}, swap=True)
        with _bar(len(requests), "pairwise judging", progress) as bar:
            judged = judge.run(requests, progress=bar.update)
    finally:
        cache.close()
    outcomes = defaultdict(list)
    for j in judged:
        outcomes[j.meta["item_id"]].append(j)
    counts = {"x": 0, "y": 0, "tie": 0, None: 0}
    for item_id in shared:
        counts[pairwise_outcome(outcomes[item_id])[0]] += 1
    rate, p = pairwise_win_rate(wins_b=counts["y"], wins_a=counts["x"], ties=counts["tie"])
    return {"items": len(shared), "b_wins": counts["y"], "a_wins": counts["x"], "ties": counts["tie"],
            "undecided": counts[None], "b_win_rate": rate, "p_sign": p}
