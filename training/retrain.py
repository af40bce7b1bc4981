"""`cdra retrain`: logged sessions -> the preference inferrer's stage (training/pref_retrain.py, promoted on its
own) -> scenarios -> DeepPref -> Pers-GenPRM SFT -> RFT -> CDPA -> evaluation -> promotion of the new policy
(and its PRM) only when it beats the serving policy.

One run lives in ``<data_dir>/retrain/runs/<run_id>/``; ``<data_dir>/retrain/state.json`` records the
last processed log position and each finished stage's outputs, so a rerun resumes an interrupted run
and a run with nothing new exits 4. An fcntl lock on ``<data_dir>/retrain/retrain.lock`` keeps two runs
from overlapping. Exit codes (cron-friendly): 0 promoted, 3 trained but not promoted, 4 nothing new to
train on, 5 another run holds the lock, 6 stopped on request after a stage (resumable), 2 bad input.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

from alignment.engines import Engine, ModelSpec, SamplingParams, build_engine
from alignment.errors import CdraError, FormatError
from alignment.prm import PersGenPRM, PRMConfig
from training.balanced import grouped, round_robin
from training.prm_trainer import SFTStageConfig, read_records, split_records, train_prm
from training.registry import ModelRegistry, TrainingStart, fingerprint, training_start, write_json_atomic
from training.rft import policy_prompt, train_rft

log = logging.getLogger(__name__)

STAGES = ("collect", "preference", "scenarios", "deeppref", "prm", "rft", "cdpa", "evaluate", "promote")
Promote = Literal["if-better", "always"]


class ExitCode(IntEnum):
    PROMOTED = 0
    BAD_INPUT = 2
    NOT_PROMOTED = 3
    NOTHING_NEW = 4
    LOCKED = 5
    STOPPED = 6


class RetrainLocked(CdraError):
    """Another `cdra retrain` holds the lock."""

    exit_code = int(ExitCode.LOCKED)


# -- configuration ------------------------------------------------------------------------------------
@dataclass
class RetrainConfig:
    """One retrain run.

    Parameters that locate things: ``data_dir`` (lock, state and runs under ``retrain/``),
    ``registry_dir``, ``models_dir`` (the packaged model's cache).
    Parameters that choose the models: ``policy``, ``prm``, ``teacher`` (council), ``evaluator`` (step
    critiques), ``preference`` (the inferrer; ``auto`` continues the serving or packaged adapter) — resolved
    ModelSpecs; ``auto`` policy/PRM continue their serving versions.
    The preference stage: ``pref_sft`` (its SFT), ``pref_val_tokens`` (tokens per held-out output).
    Parameters that size the run: ``max_scenarios`` (None: all new ones), ``validation_fraction``,
    ``prm_sft`` / ``rft`` (SFT stages), ``cdpa`` (a ``training.cdpa_trainer.CDPAConfig``), ``build``
    (a ``training.deeppref.BuildConfig``), ``prm_scoring`` (Pers-GenPRM decoding during CDPA and
    evaluation), ``eval_max_new_tokens``.
    Parameters that decide promotion: ``promote`` ("if-better": only when the candidate's mean PRM
    reward on the validation scenarios beats the serving policy's by more than ``min_improvement``;
    "always").
    Parameters that control the run: ``stop_after`` (a stage; exit 6, resumable), ``fresh`` (abandon an
    unfinished run instead of resuming it; its turns are processed again), ``accelerate_config``
    (multi-GPU: the CDPA stage runs as ``accelerate launch --config_file <it>``; docs/GPU.md), ``progress``.
    """

    data_dir: Path
    registry_dir: Path
    models_dir: Path
    policy: ModelSpec = field(default_factory=ModelSpec)
    prm: ModelSpec = field(default_factory=ModelSpec)
    teacher: ModelSpec = field(default_factory=ModelSpec)
    evaluator: ModelSpec = field(default_factory=ModelSpec)
    preference: ModelSpec = field(default_factory=ModelSpec)
    max_scenarios: int | None = None
    validation_fraction: float = 0.1
    prm_sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rft: SFTStageConfig = field(default_factory=lambda: SFTStageConfig(learning_rate=1e-4))
    cdpa: Any = None
    build: Any = None
    prm_scoring: PRMConfig = field(default_factory=PRMConfig)
    eval_max_new_tokens: int = 384
    pref_sft: SFTStageConfig = field(default_factory=lambda: SFTStageConfig(lora_r=8, lora_alpha=16, batch_size=1,
                                                                           max_length=1280, learning_rate=2e-4))
    pref_val_tokens: int = 200
    promote: Promote = "if-better"
    min_improvement: float = 0.0
    seed: int = 0
    progress: bool = True
    stop_after: str | None = None  # a stage name: stop there (exit 6); the next run resumes after it
    accelerate_config: Path | None = None  # GPU: run the CDPA stage under `accelerate launch` with this file
    fresh: bool = False  # abandon an unfinished run (its turns are taken up again) instead of resuming it

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / "retrain"

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("cdpa", "build")}
        for role in ("policy", "prm", "teacher", "evaluator", "preference"):
            d[role] = getattr(self, role).model_dump()
        d["cdpa"] = self.cdpa.to_dict() if self.cdpa is not None else None
        d["build"] = self.build.to_dict() if self.build is not None else None
        return json.loads(json.dumps(d, default=str))


def tiny_config(base: RetrainConfig, max_steps: int | None = None) -> RetrainConfig:
    """Sizes that finish on a laptop CPU with the packaged 135M model (every stage still real)."""
    from training.cdpa_trainer import CDPAConfig
    from training.council import CouncilConfig
    from training.deeppref import BuildConfig
    from training.step_annotation import AnnotationConfig

    steps = max_steps or 2
    sft = SFTStageConfig(lora_r=4, lora_alpha=8, max_steps=steps, batch_size=1, max_length=512, logging_steps=1,
                         learning_rate=1e-3)  # a few steps must move a fresh LoRA visibly
    build = BuildConfig(
        council=CouncilConfig(personas=("Pragmatist", "Psychologist"), depth=1, breadth=2, branching=1,
                              value_threshold=0.0, step_tokens=24, value_samples=1, value_temperature=0.0,
                              answer_max_new_tokens=32),
        annotation=AnnotationConfig(critique_tokens=32, retries=3),
        seed=base.seed, validation_fraction=0.5,
    )
    # no in-run validation (max_val_prompts=0: the last step is kept); the evaluate stage compares anyway
    cdpa = CDPAConfig(num_generations=2, max_completion_length=40, prompts_per_step=1, max_steps=steps,
                      eval_every=max(steps, 1), max_val_prompts=0, val_max_new_tokens=40, lora_r=4, lora_alpha=8,
                      save_checkpoints=False, learning_rate=1e-4, seed=base.seed)
    return replace(base, max_scenarios=2, validation_fraction=0.5, prm_sft=sft, rft=sft,
                   cdpa=cdpa, build=build, prm_scoring=PRMConfig(critique_tokens=24, max_retries=0),
                   eval_max_new_tokens=40, pref_sft=replace(sft, max_length=768), pref_val_tokens=40)


# -- promotion ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(candidate: float | None, serving: float | None, mode: Promote = "if-better",
                     min_improvement: float = 0.0) -> PromotionDecision:
    """Promote with ``always``; with ``if-better`` only a scored candidate that beats a scored serving
    policy by more than ``min_improvement`` (an unscorable side never wins a comparison)."""
    if mode == "always":
        return PromotionDecision(True, "--promote always")
    if mode != "if-better":
        raise CdraError(f"--promote must be 'if-better' or 'always', not {mode!r}")
    if candidate is None or math.isnan(candidate):
        return PromotionDecision(False, "the candidate's responses could not be scored")
    if serving is None or math.isnan(serving):
        return PromotionDecision(False, "the serving policy's responses could not be scored: no comparison")
    if candidate > serving + min_improvement:
        return PromotionDecision(True, f"candidate {candidate:.4f} > serving {serving:.4f} + {min_improvement:g}")
    return PromotionDecision(False, f"candidate {candidate:.4f} does not beat serving {serving:.4f} + {min_improvement:g}")


# -- evaluation ---------------------------------------------------------------------------------------
@dataclass
class PolicyEval:
    """Greedy responses of one policy on the validation scenarios, scored by Pers-GenPRM."""

    mean_reward: float | None  # mean over responses of the mean step score (what CDPA's validation uses)
    mean_dense: float | None  # mean over responses of R_dense = Σ_j r^j
    responses: int
    scored: int
    unparseable: int
    readouts: int
    sample: str = ""


def evaluate_policy(policy: Engine, prm: PersGenPRM, scenarios: Sequence[dict], max_new_tokens: int) -> PolicyEval:
    from alignment.budget_forcing import ReasoningBudget

    convs = [policy_prompt(s["preference"], s["query"]) for s in scenarios]
    # candidate and serving answer as the app makes them answer: the budgeted policy format
    fmt = ReasoningBudget().within(max_new_tokens).format
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, format=fmt)
    texts = [c[0].text for c in policy.generate(convs, params)]
    scored = prm.score_batch([(s["preference"], s["query"], t) for s, t in zip(scenarios, texts)])
    means = [sum(r.scores) / len(r.scores) for r in scored.responses if r.complete and r.scores]  # type: ignore[arg-type]
    dense = [r.dense for r in scored.responses if r.dense is not None]
    return PolicyEval(
        mean_reward=sum(means) / len(means) if means else None,
        mean_dense=sum(dense) / len(dense) if dense else None,
        responses=len(texts), scored=len(means), unparseable=scored.failures, readouts=scored.readouts,
        sample=texts[0][:400] if texts else "",
    )


# -- the log position ---------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _time_key(value: str) -> str:
    """Stored ISO times compared as UTC instants (an export may use +00:00 or Z)."""
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"time {value!r} is not ISO 8601") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc).isoformat(timespec="microseconds")


def new_turns(path: Path, position: dict | None) -> tuple[list[dict], dict | None]:
    """Turns of an export after ``position`` ({"time", "turn_ids"}), and the position after them."""
    from alignment.records import jsonl_objects  # bad bytes, nesting, numbers: FormatError file:line

    rows: list[tuple[str, dict]] = []
    for where, obj in jsonl_objects(path):
        missing = [k for k in ("turn_id", "time") if not obj.get(k)]
        if missing:
            raise FormatError(f"{where}: missing required key(s) {', '.join(missing)}")
        try:
            rows.append((_time_key(str(obj["time"])), obj))
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
    last_time = position["time"] if position else None
    seen = set(position.get("turn_ids", [])) if position else set()
    fresh = [(t, o) for t, o in rows if last_time is None or t > last_time or (t == last_time and str(o["turn_id"]) not in seen)]
    if not fresh:
        return [], position
    top = max(t for t, _ in fresh)
    ids = sorted({str(o["turn_id"]) for t, o in fresh if t == top} | (seen if top == last_time else set()))
    return [o for _, o in sorted(fresh, key=lambda x: x[0])], {"time": top, "turn_ids": ids}


# -- state and lock -----------------------------------------------------------------------------------
@contextlib.contextmanager
def retrain_lock(root: Path) -> Iterator[None]:
    """An exclusive, non-blocking fcntl lock: released by the OS even if the process is killed."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "retrain.lock"
    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RetrainLocked(f"another retrain is running ({holder}); lock file {path}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {_now()}")
        fh.flush()
        yield
    finally:
        fh.close()


class RetrainState:
    """``state.json``: the processed log position, the current run's finished stages, past runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self.data.setdefault("position", None)
        self.data.setdefault("current", None)
        self.data.setdefault("history", [])

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    @property
    def current(self) -> dict | None:
        return self.data["current"]

    def stage(self, name: str) -> dict | None:
        return (self.current or {}).get("stages", {}).get(name)

    def finish_stage(self, name: str, output: dict) -> None:
        self.current["stages"][name] = output  # type: ignore[index]
        self.save()


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class RetrainResult:
    exit_code: ExitCode
    message: str
    run_id: str | None = None
    candidate: dict | None = None
    serving: dict | None = None
    policy_version: str | None = None
    prm_version: str | None = None
    promoted: bool = False
    stages: dict = field(default_factory=dict)


SessionSource = Callable[[str | None, Path], Path]
"""Gives the session-log export (JSONL) holding the turns at or after a time (None: all): either the
path it was asked to write, or an existing file; errors then name the file the user knows."""


def file_source(path: Path) -> SessionSource:
    """A session source reading an already exported JSONL file (``cdra retrain --sessions FILE``)."""
    path = Path(path)

    def export(_since: str | None, _out: Path) -> Path:
        if not path.is_file():
            raise CdraError(f"--sessions {path} does not exist")
        return path

    return export


class Retrain:
    """Runs (or resumes) one retrain under the lock; each stage's output is atomic and recorded."""

    def __init__(self, config: RetrainConfig, source: SessionSource, console=None) -> None:
        from rich.console import Console

        self.config = config
        self.source = source
        self.console = console or Console(stderr=True)
        self.registry = ModelRegistry(config.registry_dir)
        self.state = RetrainState(config.root / "state.json")
        self._engines: dict[str, Engine] = {}

    # -- helpers --------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.config.root / "runs" / self.state.current["run_id"]  # type: ignore[index]

    def say(self, text: str) -> None:
        self.console.print(text)

    def _engine(self, spec: ModelSpec, adapter: Path | None = None) -> Engine:
        """A (cached) engine for a resolved spec, optionally with an adapter replacing the spec's."""
        if adapter is not None:
            spec = spec.model_copy(update={"adapter": str(adapter)})
        return build_engine(spec, self.config.models_dir)

    def _spec_of(self, start: TrainingStart) -> ModelSpec:
        keep = {"dtype": self.config.policy.dtype, "device": self.config.policy.device,
                "adapter": str(start.adapter) if start.adapter else None}
        if start.base == "default":
            return ModelSpec(backend="default", **keep)
        return ModelSpec(backend="transformers", path=str(start.model_dir), **keep)

    def _serving_policy_spec(self) -> tuple[ModelSpec, str]:
        start = training_start(self.registry, "policy", self.config.policy, self.config.models_dir)
        if self.config.policy.backend in ("openai", "vllm"):
            return self.config.policy, "configured endpoint"
        return self._spec_of(start), start.parent or "base"

    # -- entry ----------------------------------------------------------------------------------------
    def run(self) -> RetrainResult:
        with retrain_lock(self.config.root):
            return self._run_locked()

    def _run_locked(self) -> RetrainResult:
        if self.config.stop_after is not None and self.config.stop_after not in STAGES:
            raise CdraError(f"--stop-after must be one of {', '.join(STAGES)}, not {self.config.stop_after!r}")
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self.config.fresh and self.state.current is not None:
            current = self.state.current
            self.say(f"abandoning unfinished run {current['run_id']} (finished: {', '.join(current['stages'])})")
            self.state.data["history"].append({"run_id": current["run_id"], "started": current["started"],
                                               "finished": _now(), "exit_code": None, "message": "abandoned (--fresh)"})
            self.state.data["current"] = None
            self.state.save()
        resumed = self.state.current is not None
        if not resumed:
            result = self._start_run()
            if result is not None:
                return result
        else:
            self.say(f"resuming run {self.state.current['run_id']} "
                     f"(finished: {', '.join(self.state.current['stages']) or 'nothing'})")
        progress = Progress(TextColumn("[bold]retrain[/] {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=self.console, disable=not self.config.progress, transient=False)
        handlers = {"preference": self._preference, "scenarios": self._scenarios, "deeppref": self._deeppref, "prm": self._prm, "rft": self._rft,
                    "cdpa": self._cdpa, "evaluate": self._evaluate, "promote": self._promote}
        with progress:
            task = progress.add_task("", total=len(STAGES))
            for name in STAGES:
                progress.update(task, description=name)
                if self.state.stage(name) is None:
                    outcome = handlers[name]()
                    if isinstance(outcome, RetrainResult):
                        return self._finish(outcome)
                    self.state.finish_stage(name, outcome)
                elif name != "collect" or resumed:
                    self.say(f"  {name}: done earlier, skipped")
                progress.advance(task)
                if name == self.config.stop_after and name != STAGES[-1]:
                    return RetrainResult(ExitCode.STOPPED, f"stopped after {name} as asked; run again to continue",
                                         run_id=self._run_id(), stages=dict(self.state.current["stages"]))
        return self._finish(self._result())

    def _start_run(self) -> RetrainResult | None:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        run_dir = self.config.root / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        export = run_dir / "sessions_export.jsonl"
        position = self.state.data["position"]
        since = position["time"] if position else None
        try:
            turns, new_position = new_turns(self.source(since, export), position)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if not turns:
            shutil.rmtree(run_dir, ignore_errors=True)
            return RetrainResult(ExitCode.NOTHING_NEW, f"no new logged turns since {since or 'the beginning'}")
        from training.scenarios import write_jsonl_atomic

        sessions = run_dir / "sessions.jsonl"
        write_jsonl_atomic(sessions, turns)
        export.unlink(missing_ok=True)
        self.state.data["current"] = {"run_id": run_id, "started": _now(), "position_after": new_position,
                                      "config": self.config.to_dict(), "stages": {}}
        self.state.finish_stage("collect", {"sessions": str(sessions), "turns": len(turns),
                                            "users": len({t.get("user_id") for t in turns})})
        self.say(f"run {run_id}: {len(turns)} new turns from {self.state.stage('collect')['users']} users")
        return None

    def _finish(self, result: RetrainResult) -> RetrainResult:
        """Close the run: advance the log position, record the outcome, drop the current run."""
        current = self.state.current
        if current is not None:
            result.run_id = current["run_id"]
            result.stages = current["stages"]
            self.state.data["position"] = current["position_after"]
            self.state.data["history"].append({
                "run_id": current["run_id"], "started": current["started"], "finished": _now(),
                "exit_code": int(result.exit_code), "message": result.message, "policy_version": result.policy_version,
                "prm_version": result.prm_version, "candidate": result.candidate, "serving": result.serving,
            })
            self.state.data["current"] = None
            self.state.save()
        return result

    # -- stages ---------------------------------------------------------------------------------------
    def _preference(self) -> dict:
        """The preference inferrer learns from the logged signals (training/pref_retrain.py); its promotion is
        its own (only when it beats the serving preference version on held-out users)."""
        from training.pref_retrain import run_preference_stage

        return run_preference_stage(self.config, Path(self.state.stage("collect")["sessions"]),
                                    self.run_dir / "preference", self.registry, self.say)

    def _scenarios(self) -> dict | RetrainResult:
        from training.scenarios import import_session_log, write_scenarios

        imported = import_session_log(self.state.stage("collect")["sessions"])
        scenarios = imported.scenarios
        if not scenarios:
            return RetrainResult(ExitCode.NOTHING_NEW, f"the new turns carry no user preferences "
                                 f"({imported.without_preferences} without): no scenarios to train on")
        if self.config.max_scenarios is not None and len(scenarios) > self.config.max_scenarios:
            scenarios = _spread(scenarios, self.config.max_scenarios)
        path = self.run_dir / "scenarios.jsonl"
        write_scenarios(path, scenarios)
        self.say(f"  scenarios: {len(scenarios)} (P = the user's preferences, q = the query) "
                 f"from {len(imported.scenarios)} imported, {imported.without_preferences} turns without preferences")
        return {"path": str(path), "scenarios": len(scenarios), "imported": len(imported.scenarios)}

    def _deeppref(self) -> dict | RetrainResult:
        from training.deeppref import BuildConfig, build_deeppref
        from training.scenarios import read_scenarios

        scenarios = read_scenarios(self.state.stage("scenarios")["path"])
        config = self.config.build or BuildConfig(seed=self.config.seed)
        config = replace(config, validation_fraction=self.config.validation_fraction)
        teacher = self._engine(self.config.teacher)
        evaluator = self._engine(self.config.evaluator)
        summary = build_deeppref(scenarios, teacher, evaluator, self.run_dir / "deeppref", config,
                                 progress=self.config.progress)
        if not summary.rea_records:
            return RetrainResult(ExitCode.NOTHING_NEW, "the DeepPref build kept no annotated path (the evaluator's "
                                 "scores were unreadable for every path): nothing to train on")
        self.say(f"  deeppref: {summary.rea_records} annotated paths (D_Rea), {summary.rft_records} best paths (D_RFT)")
        return {"rea": str(summary.rea_path), "rft": str(summary.rft_path), "rea_records": summary.rea_records,
                "rft_records": summary.rft_records}

    def _data(self) -> dict:
        build = self.state.stage("deeppref")
        return {"sessions": fingerprint(Path(self.state.stage("collect")["sessions"])),
                "scenarios": fingerprint(Path(self.state.stage("scenarios")["path"])),
                "rea": fingerprint(Path(build["rea"])), "rft": fingerprint(Path(build["rft"]))}

    def _prm(self) -> dict:
        start = training_start(self.registry, "prm", self.config.prm, self.config.models_dir)
        result = train_prm(Path(self.state.stage("deeppref")["rea"]), start, self.run_dir / "prm", self.config.prm_sft)
        model = self.registry.publish(
            "prm", result.artifact_dir, is_adapter=result.is_adapter, base=start.base, parent=start.parent,
            metrics=result.metrics, data=self._data(), config={"sft": self.config.prm_sft.to_dict(), "run": self._run_id()},
        )
        self.say(f"  prm: {model.version} ({result.metrics.get('steps')} steps, train loss {result.metrics.get('train_loss'):.3f}"
                 + (f", held-out loss {result.metrics['eval_loss_before']:.3f} -> {result.metrics['eval_loss_after']:.3f}"
                    if "eval_loss_after" in result.metrics else "") + ")")
        return {"version": model.version, "metrics": result.metrics, "base": start.base, "parent": start.parent}

    def _run_id(self) -> str:
        return self.state.current["run_id"]  # type: ignore[index]

    def _prm_spec(self) -> ModelSpec:
        return version_spec(self.registry.get("prm", self.state.stage("prm")["version"]), self.config.prm)

    def _prm_engine(self) -> PersGenPRM:
        return PersGenPRM(self._engine(self._prm_spec()), self.config.prm_scoring)

    def _rft(self) -> dict:
        start = training_start(self.registry, "policy", self.config.policy, self.config.models_dir)
        out = self.run_dir / "rft"
        result = train_rft(Path(self.state.stage("deeppref")["rft"]), start, out, self.config.rft)
        self.say(f"  rft: {result.metrics.get('steps')} steps, train loss {result.metrics.get('train_loss'):.3f}")
        return {"artifact": str(result.artifact_dir), "is_adapter": result.is_adapter, "metrics": result.metrics,
                "base": start.base, "model_dir": str(start.model_dir), "parent": start.parent}

    def _cdpa(self) -> dict:
        try:
            from training.cdpa_trainer import CDPAConfig, train_policy
        except ImportError as exc:  # part B's trainer is not installed in this checkout
            raise NotImplementedError(f"the CDPA stage needs training.cdpa_trainer.train_policy: {exc}") from exc

        rft = self.state.stage("rft")
        config = self.config.cdpa or CDPAConfig(seed=self.config.seed)
        if rft["is_adapter"]:
            model_dir, adapter = Path(rft["model_dir"]), Path(rft["artifact"])
        else:
            model_dir, adapter = Path(rft["artifact"]), None
        data, out = Path(self.state.stage("deeppref")["rea"]), self.run_dir / "cdpa"
        if self.config.accelerate_config is not None:
            artifact, is_adapter, metrics_cdpa = self._cdpa_launched(config, data, model_dir, adapter, out)
        else:
            result = train_policy(config, data, self._prm_engine(), model_dir, adapter_init=adapter, out_dir=out)
            artifact, is_adapter, metrics_cdpa = result.artifact_dir, result.is_adapter, result.metrics
        base = rft["base"] if is_adapter else str(artifact)
        metrics = {"prm_version": self.state.stage("prm")["version"], "rft": rft["metrics"], "cdpa": metrics_cdpa}
        model = self.registry.publish(
            "policy", artifact, is_adapter=is_adapter, base=base, parent=rft["parent"],
            metrics=metrics, data=self._data(),
            config={"rft": self.config.rft.to_dict(), "cdpa": config.to_dict(), "run": self._run_id()},
        )
        self.say(f"  cdpa: {model.version} ({metrics_cdpa.get('steps')} steps, best validation reward "
                 f"{metrics_cdpa.get('best_val_reward')})")
        return {"version": model.version, "metrics": metrics_cdpa}

    def _cdpa_launched(self, config, data: Path, model_dir: Path, adapter: Path | None, out: Path):
        """Run the CDPA stage as ``accelerate launch`` processes (one per GPU) and read their result."""
        import subprocess
        import sys

        job = self.run_dir / "cdpa_job.json"
        write_json_atomic(job, {
            "config": config.to_dict(), "data": str(data), "policy_model_dir": str(model_dir),
            "adapter_init": str(adapter) if adapter else None, "out_dir": str(out),
            "prm_spec": self._prm_spec().model_dump(), "prm_scoring": asdict(self.config.prm_scoring),
            "models_dir": str(self.config.models_dir),
        })
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.config.accelerate_config),
               "-m", "training.retrain", "--cdpa-job", str(job)]
        self.say(f"  cdpa: {' '.join(cmd)}")
        if subprocess.run(cmd, check=False).returncode != 0:
            raise CdraError("the CDPA processes failed (command above); fix and rerun `cdra retrain` to resume")
        result = json.loads((out / "result.json").read_text(encoding="utf-8"))
        return out / result["artifact"], bool(result["is_adapter"]), result["metrics"]

    def _validation_scenarios(self) -> tuple[list[dict], bool]:
        rea = read_records(Path(self.state.stage("deeppref")["rea"]), ("preference", "query"))
        train, val = split_records(rea)
        held_out = bool(val)
        unique: dict[tuple[str, str], dict] = {}
        for r in val or train:
            unique.setdefault((r["preference"], r["query"]), {"preference": r["preference"], "query": r["query"]})
        return list(unique.values()), held_out

    def _evaluate(self) -> dict:
        scenarios, held_out = self._validation_scenarios()
        prm = self._prm_engine()
        candidate = self.registry.get("policy", self.state.stage("cdpa")["version"])
        cand_spec = version_spec(candidate, self.config.policy)
        serving_spec, serving_name = self._serving_policy_spec()
        n = self.config.eval_max_new_tokens
        cand = evaluate_policy(self._engine(cand_spec), prm, scenarios, n)
        serv = evaluate_policy(self._engine(serving_spec), prm, scenarios, n)
        self.say(f"  evaluate on {len(scenarios)} {'held-out' if held_out else 'training (no held-out split)'} "
                 f"scenarios, greedy, judged by {self.state.stage('prm')['version']}: candidate "
                 f"{_fmt(cand.mean_reward)} vs serving ({serving_name}) {_fmt(serv.mean_reward)}")
        return {"candidate": asdict(cand), "serving": asdict(serv), "serving_version": serving_name,
                "scenarios": len(scenarios), "held_out": held_out}

    def _promote(self) -> dict:
        ev = self.state.stage("evaluate")
        decision = decide_promotion(ev["candidate"]["mean_reward"], ev["serving"]["mean_reward"],
                                    self.config.promote, self.config.min_improvement)
        policy_v, prm_v = self.state.stage("cdpa")["version"], self.state.stage("prm")["version"]
        model = self.registry.get("policy", policy_v)
        evaluation = {"val_reward": ev["candidate"]["mean_reward"], "serving_reward": ev["serving"]["mean_reward"],
                      "serving_version": ev["serving_version"], "val_scenarios": ev["scenarios"],
                      "held_out": ev["held_out"]}
        model.metrics = {**model.metrics, **evaluation}  # a resumed evaluation replaces the last one
        self.registry.register(model)
        details = model.path / "metrics.json"
        full = json.loads(details.read_text(encoding="utf-8")) if details.is_file() else {}
        write_json_atomic(details, {**full, "evaluation": {**evaluation, "candidate": ev["candidate"],
                                                          "serving": ev["serving"]}})
        if decision.promote:
            self.registry.promote_many({"prm": prm_v, "policy": policy_v})
        self.say(f"  promote: {'yes' if decision.promote else 'no'} ({decision.reason})")
        return {"promoted": decision.promote, "reason": decision.reason}

    def _result(self) -> RetrainResult:
        ev, pr = self.state.stage("evaluate"), self.state.stage("promote")
        code = ExitCode.PROMOTED if pr["promoted"] else ExitCode.NOT_PROMOTED
        policy_v, prm_v = self.state.stage("cdpa")["version"], self.state.stage("prm")["version"]
        verb = "promoted" if pr["promoted"] else "registered, not promoted"
        return RetrainResult(code, f"{policy_v} (with {prm_v}) {verb}: {pr['reason']}", candidate=ev["candidate"],
                             serving={**ev["serving"], "version": ev["serving_version"]}, policy_version=policy_v,
                             prm_version=prm_v, promoted=pr["promoted"])


def version_spec(model, like: ModelSpec) -> ModelSpec:
    """The spec that serves a registered version (device and dtype taken from the role's spec)."""
    keep = {"dtype": like.dtype, "device": like.device}
    if model.weights_dir is not None:
        return ModelSpec(backend="transformers", path=str(model.weights_dir), **keep)
    if model.base == "default":
        return ModelSpec(backend="default", adapter=str(model.adapter_dir), **keep)
    return ModelSpec(backend="transformers", path=model.base, adapter=str(model.adapter_dir), **keep)


def _fmt(value: float | None) -> str:
    return "unscored" if value is None else f"{value:.4f}"


def _spread(scenarios: Sequence, k: int) -> list:
    """At most ``k`` scenarios, taken round-robin across users so every user is represented."""
    def user(s) -> str:
        source = getattr(s, "source", None)
        return source.get("user_id", "") if isinstance(source, dict) else ""

    return round_robin(grouped(scenarios, user), k)


def run_retrain(config: RetrainConfig, source: SessionSource, console=None) -> RetrainResult:
    """Run or resume one retrain; see the module docstring for the exit codes."""
    return Retrain(config, source, console).run()


def run_cdpa_job(job_file: Path) -> None:
    """One process of a launched CDPA stage (``accelerate launch -m training.retrain --cdpa-job FILE``)."""
    import torch

    from training.cdpa_trainer import CDPAConfig, train_policy

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    if torch.cuda.is_available():  # each rank scores with a PRM on its own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    cfg = job["config"]
    cfg["target_modules"] = tuple(cfg["target_modules"])
    prm = PersGenPRM(build_engine(ModelSpec(**job["prm_spec"]), Path(job["models_dir"])),
                     PRMConfig(**{**job["prm_scoring"], "readout_grid": tuple(job["prm_scoring"]["readout_grid"])}))
    train_policy(CDPAConfig(**cfg), Path(job["data"]), prm, Path(job["policy_model_dir"]),
                 adapter_init=Path(job["adapter_init"]) if job["adapter_init"] else None, out_dir=Path(job["out_dir"]))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="internal: one process of a launched retrain stage")
    parser.add_argument("--cdpa-job", type=Path, required=True)
    run_cdpa_job(parser.parse_args().cdpa_job)
