"""Build DeepPref: scenarios -> council trees -> step critiques -> D_Rea, D_RFT and a data card.

Layout of a build directory::

    build.json                  # config, engines and their fingerprint (a resume must match it)
    scenarios/<id>.json         # one finished scenario: its tree, annotated paths and counters
    deeppref_rea.jsonl          # D_Rea: every annotated path (docs/ARCHITECTURE.md "DeepPref records")
    deeppref_rft.jsonl          # D_RFT: the best path per scenario by Σ_j r^j, with "response"
    data_card.md / .json, score_histograms.png

Each scenario's result is written atomically when it is finished and a rerun skips it, so an interrupted
build resumes where it stopped and, because every sampled call is seeded from the scenario id, gives the
same records as a build that was never interrupted. The JSONL files are rewritten atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.engines.base import Engine, EngineError, PromptTooLongError
from alignment.errors import CdraError
from alignment.steps import format_response
from training.council import CouncilConfig, ThoughtTree, grow_tree
from training.scenarios import Scenario, derive_seed, iter_jsonl, write_jsonl_atomic, write_text_atomic
from training.step_annotation import AnnotatedPath, AnnotationConfig, AnnotationStats, annotate_paths

REA_FILE = "deeppref_rea.jsonl"
RFT_FILE = "deeppref_rft.jsonl"
RESULTS_DIR = "scenarios"
MANIFEST = "build.json"


@dataclass
class BuildConfig:
    r"""
    Configuration of a DeepPref build.

    Parameters that control the two stages:
        council (`CouncilConfig`): the Tree of Thoughts (personas, depth, breadth, pruning, sampling).
        annotation (`AnnotationConfig`): the evaluator's step critiques.

    Parameters that control the output:
        seed (`int`, defaults to `0`):
            Root of every derived seed; with the same seed, scenarios and engines a build is reproducible.
        validation_fraction (`float`, defaults to `0.1`):
            Share of scenarios (not paths) whose records get ``split="validation"``; at least one
            scenario when the fraction is positive and there are two or more scenarios with paths.
        max_consecutive_failures (`int`, defaults to `3`):
            Stop after this many scenarios in a row failed with an engine error (e.g. an endpoint down).
    """

    council: CouncilConfig = field(default_factory=CouncilConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    seed: int = 0
    validation_fraction: float = 0.1
    max_consecutive_failures: int = 3

    @classmethod
    def tiny(cls, seed: int = 0) -> BuildConfig:
        """A small tree that finishes in about a minute per scenario on a laptop CPU with the default model."""
        return cls(
            council=CouncilConfig(personas=("Psychologist", "Pragmatist"), depth=2, breadth=2, branching=1,
                                  step_tokens=32, value_samples=2, answer_max_new_tokens=64),
            annotation=AnnotationConfig(critique_tokens=40, retries=2),
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prompts_digest() -> str:
    """Changes whenever a council or critique prompt changes, so a resume never mixes two prompt versions."""
    from alignment.prompts import council
    from alignment.prompts.prm import STEP_CRITIQUE_PROMPT

    templates = [council.PROPOSE_PROMPT, council.VALUE_PROMPT, council.ANSWER_PROMPT, STEP_CRITIQUE_PROMPT]
    text = repr([[(type(m).__name__, getattr(getattr(m, "prompt", None), "template", str(m))) for m in t.messages]
                 for t in templates]) + repr(council.PERSONAS) + repr(council.evaluator_demonstrations())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def output_formats(config: BuildConfig) -> list:
    """Every declared output the build reads: the council's thoughts and values, the evaluator's judgments."""
    return [*config.council.formats(), config.annotation.format]


def fingerprint(config: BuildConfig, teacher: Engine, evaluator: Engine) -> str:
    """What the records depend on: the config (batching aside), the prompts, the output formats (their grammars,
    bounds included, and whether each engine enforces them) and the engines' versions."""
    payload = config.to_dict()
    payload["prompts"] = _prompts_digest()
    council_formats = config.council.formats()
    payload["formats"] = {fmt.name: hashlib.sha256(fmt.lark.encode()).hexdigest()[:12]
                          for fmt in output_formats(config)}
    payload["enforced"] = [all(teacher.enforces(f) for f in council_formats),
                           evaluator.enforces(config.annotation.format)]
    payload["council"].pop("batched")
    payload["annotation"].pop("batched")
    payload["max_consecutive_failures"] = None
    payload["validation_fraction"] = None  # applied at assembly; changing it needs no new trees
    payload["engines"] = [teacher.version, evaluator.version]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def result_file(out_dir: Path, scenario_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", scenario_id)[:80]
    return out_dir / RESULTS_DIR / f"{safe}-{hashlib.sha1(scenario_id.encode()).hexdigest()[:8]}.json"


# -- one scenario -----------------------------------------------------------------------------------------
def run_scenario(scenario: Scenario, teacher: Engine, evaluator: Engine, config: BuildConfig) -> dict[str, Any]:
    """Tree, then critiques: the JSON-ready result of one scenario (engine errors propagate)."""
    seed = derive_seed(config.seed, scenario.id)
    tree = grow_tree(teacher, scenario, config.council, seed=seed)
    annotated, stats = annotate_paths(evaluator, scenario, tree.paths, config.annotation, seed=seed)
    return _result(scenario, tree, annotated, stats)


def _result(scenario: Scenario, tree: ThoughtTree | None, annotated: list[AnnotatedPath],
            stats: AnnotationStats, error: str | None = None) -> dict[str, Any]:
    return {
        "scenario": scenario.model_dump(),
        "tree": tree.to_dict() if tree else None,
        "paths": [
            {"node_ids": a.path.node_ids, "personas": a.path.personas, "values": a.path.values,
             "steps": a.path.steps, "answer": a.path.answer, "critiques": a.critiques, "scores": a.scores,
             "total_score": a.total_score}
            for a in annotated
        ],
        "annotation": asdict(stats),
        "error": error,
    }


def _load_result(path: Path, scenario: Scenario, fp: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # atomic writes make this rare (e.g. a file edited by hand): redo the scenario
    if data.get("fingerprint") != fp or data.get("scenario") != scenario.model_dump():
        return None
    return data


# -- the build --------------------------------------------------------------------------------------------
@dataclass
class BuildSummary:
    out_dir: Path
    scenarios: int = 0
    computed: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (scenario id, error)
    rea_records: int = 0
    rft_records: int = 0
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def rea_path(self) -> Path:
        return self.out_dir / REA_FILE

    @property
    def rft_path(self) -> Path:
        return self.out_dir / RFT_FILE


def _check_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if previous.get("fingerprint") != manifest["fingerprint"]:
        raise CdraError(
            f"{out_dir} holds a build with other settings or engines (fingerprint {previous.get('fingerprint')}, "
            f"now {manifest['fingerprint']}): resume with the same options, or write to a new --out directory"
        )


def build_deeppref(
    scenarios: Sequence[Scenario],
    teacher: Engine,
    evaluator: Engine,
    out_dir: str | Path,
    config: BuildConfig | None = None,
    *,
    progress: bool = False,
    on_scenario: Callable[[Scenario, dict[str, Any]], None] | None = None,
) -> BuildSummary:
    """Run (or resume) a build and write D_Rea, D_RFT and the data card.

    Scenarios already finished in ``out_dir`` under the same fingerprint are skipped. An engine error
    in one scenario (time-out, endpoint down) leaves that scenario unwritten, so a rerun retries it;
    after all scenarios the outputs are assembled from what is finished and a CdraError names the
    failures. ``on_scenario`` is called after each scenario is saved (progress reporting, tests).
    """
    from tqdm.auto import tqdm

    config = config or BuildConfig()
    out_dir = Path(out_dir)
    if not scenarios:
        raise CdraError("no scenarios to build from")
    fp = fingerprint(config, teacher, evaluator)
    manifest = {"fingerprint": fp, "config": config.to_dict(),
                "formats": {f.name: {"max_tokens": f.max_tokens, "grammar": f.lark} for f in output_formats(config)},
                "teacher": {"version": teacher.version, "description": teacher.description},
                "evaluator": {"version": evaluator.version, "description": evaluator.description}}
    _check_manifest(out_dir, manifest)
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, default=str))

    summary = BuildSummary(out_dir=out_dir, scenarios=len(scenarios))
    consecutive = 0
    bar = tqdm(scenarios, desc="DeepPref", unit="scenario", disable=not progress)
    for scenario in bar:
        path = result_file(out_dir, scenario.id)
        if _load_result(path, scenario, fp) is not None:
            summary.resumed += 1
            continue
        try:
            result = run_scenario(scenario, teacher, evaluator, config)
        except PromptTooLongError as exc:  # deterministic: redoing it would fail again
            result = _result(scenario, None, [], AnnotationStats(), error=str(exc))
        except EngineError as exc:
            summary.failed.append((scenario.id, str(exc)))
            consecutive += 1
            if consecutive >= config.max_consecutive_failures:
                break
            continue
        consecutive = 0
        result["fingerprint"] = fp
        write_text_atomic(path, json.dumps(result, ensure_ascii=False))
        summary.computed += 1
        bar.set_postfix(paths=len(result["paths"]))
        if on_scenario is not None:
            on_scenario(scenario, result)
    bar.close()
    if summary.computed + summary.resumed:  # with nothing finished, earlier outputs are left as they are
        assemble(out_dir, scenarios, config, summary)
    if summary.failed:
        sid, err = summary.failed[0]
        raise CdraError(
            f"{len(summary.failed)} of {len(scenarios)} scenarios failed (first: {sid}: {err}); the outputs in "
            f"{out_dir} hold the finished ones: run the same command again to retry the rest"
        )
    return summary


# -- assembly ---------------------------------------------------------------------------------------------
def assign_splits(scenario_ids: Sequence[str], fraction: float, seed: int) -> dict[str, str]:
    """train/validation by scenario: the ids ranked by a seeded hash, the first ⌈fraction·N⌉ are validation.

    Depends only on the set of ids, so resuming or reordering never moves a scenario between splits.
    """
    ids = sorted(set(scenario_ids), key=lambda s: (derive_seed(seed, "split", s), s))
    n_val = 0
    if fraction > 0 and len(ids) >= 2:
        n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return {sid: ("validation" if rank < n_val else "train") for rank, sid in enumerate(ids)}


def rea_records(result: dict[str, Any], split: str) -> list[dict[str, Any]]:
    s = result["scenario"]
    return [
        {"id": f"{s['id']}/{k}", "scenario_id": s["id"], "domain": s["domain"], "preference": s["preference"],
         "query": s["query"], "steps": p["steps"], "answer": p["answer"], "critiques": p["critiques"],
         "scores": p["scores"], "total_score": p["total_score"], "split": split,
         "personas": p["personas"], "values": p["values"]}
        for k, p in enumerate(result["paths"])
    ]


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """D_RFT's pick: the highest Σ_j r^j (ties: the earlier path), with the policy-format response."""
    if not records:
        return None
    best = max(records, key=lambda r: r["total_score"])  # max keeps the first of equals
    return {**best, "response": format_response(best["steps"], best["answer"])}


def load_results(out_dir: Path, scenarios: Sequence[Scenario]) -> list[dict[str, Any]]:
    """The finished results of these scenarios, in their order (unfinished ones are left out)."""
    results = []
    for scenario in scenarios:
        path = result_file(out_dir, scenario.id)
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("scenario") == scenario.model_dump():
                results.append(data)
    return results


def assemble(out_dir: Path, scenarios: Sequence[Scenario], config: BuildConfig,
             summary: BuildSummary | None = None) -> BuildSummary:
    """Write D_Rea, D_RFT and the data card from the finished per-scenario results."""
    from training.data_card import compute_card, write_card

    summary = summary or BuildSummary(out_dir=out_dir, scenarios=len(scenarios))
    results = load_results(out_dir, scenarios)
    with_paths = [r["scenario"]["id"] for r in results if r["paths"]]
    splits = assign_splits(with_paths, config.validation_fraction, config.seed)
    rea: list[dict[str, Any]] = []
    rft: list[dict[str, Any]] = []
    for result in results:
        records = rea_records(result, splits.get(result["scenario"]["id"], "train"))
        rea += records
        best = best_record(records)
        if best is not None:
            rft.append(best)
    write_jsonl_atomic(out_dir / REA_FILE, rea)
    write_jsonl_atomic(out_dir / RFT_FILE, rft)
    summary.rea_records, summary.rft_records = len(rea), len(rft)
    summary.card = compute_card(results, rea, rft, scenarios_total=len(scenarios), failed=len(summary.failed))
    write_card(summary.card, rea, results, out_dir)
    return summary


# -- reading a build back ---------------------------------------------------------------------------------
def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(Path(path))]


def load_deeppref(out_dir: str | Path, kind: str = "rea"):
    """D_Rea or D_RFT of a build as a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits."""
    import datasets

    if kind not in ("rea", "rft"):
        raise CdraError(f"kind must be 'rea' or 'rft', not {kind!r}")
    path = Path(out_dir) / (REA_FILE if kind == "rea" else RFT_FILE)
    records = read_records(path)
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([r for r in records if r["split"] == split])
        for split in ("train", "validation")
    })
