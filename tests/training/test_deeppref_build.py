"""The whole DeepPref build on the real default model (2 seed scenarios, tiny trees): the record
contract of docs/ARCHITECTURE.md, the data card (constrained decoding: nothing unreadable), datasets
loading, exact resume after Ctrl-C, and a teacher that times out; plus the split and best-path rules on
hand-made records and the fingerprint's output formats."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from alignment.engines.base import Engine, EngineError
from alignment.errors import CdraError
from alignment.steps import format_response, parse_response
from training.council import PRUNE_REASONS, CouncilConfig, ThoughtTree
from training.deeppref import (
    REA_FILE,
    RESULTS_DIR,
    RFT_FILE,
    BuildConfig,
    assign_splits,
    best_record,
    build_deeppref,
    fingerprint,
    load_deeppref,
    read_records,
    result_file,
)
from training.scenarios import SEED_SCENARIOS, read_scenarios, write_scenarios

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample_deeppref"
IDS = ("seed-privacy-security-2", "seed-food-cooking-2")
REA_KEYS = {"id", "scenario_id", "domain", "preference", "query", "steps", "answer", "critiques", "scores",
            "total_score", "split"}


def _scenarios(ids=IDS):
    by_id = {s.id: s for s in read_scenarios(SEED_SCENARIOS)}
    return [by_id[i] for i in ids]


def check_contract(rea: list[dict], rft: list[dict]) -> None:
    """The binding record format (docs/ARCHITECTURE.md, "DeepPref records")."""
    for r in rea:
        assert REA_KEYS <= r.keys()
        assert r["steps"] and all(isinstance(s, str) and s.strip() for s in r["steps"])
        assert isinstance(r["answer"], str) and r["answer"].strip()
        assert len(r["critiques"]) == len(r["scores"]) == len(r["steps"]) + 1  # steps, then the answer
        assert all(isinstance(c, str) and c.strip() for c in r["critiques"])
        assert all(-1.0 <= s <= 1.0 for s in r["scores"])
        assert math.isclose(r["total_score"], sum(r["scores"]), abs_tol=1e-3)
        assert r["split"] in ("train", "validation")
    assert len({r["id"] for r in rea}) == len(rea)
    by_scenario: dict[str, list[dict]] = {}
    for r in rea:
        by_scenario.setdefault(r["scenario_id"], []).append(r)
    assert sorted(r["scenario_id"] for r in rft) == sorted(by_scenario)  # one best path per scenario
    for r in rft:
        assert REA_KEYS <= r.keys()
        assert r["total_score"] == max(x["total_score"] for x in by_scenario[r["scenario_id"]])
        assert r["response"] == format_response(r["steps"], r["answer"])
        parsed = parse_response(r["response"])
        assert parsed.well_formed and parsed.steps == r["steps"] and parsed.answer == r["answer"]
    for sid, records in by_scenario.items():
        assert len({r["split"] for r in records}) == 1, f"scenario {sid} is split across train and validation"


class Interruptible(Engine):
    """The real engine, with a Ctrl-C (or a time-out) that can be armed to strike after k more calls."""

    def __init__(self, inner: Engine, error: BaseException | None = None) -> None:
        self.inner, self.error = inner, error or KeyboardInterrupt()
        self.version, self.description = inner.version, inner.description
        self.constrained = inner.constrained
        self.calls_left: int | None = None

    def can_enforce(self, fmt) -> bool:
        return self.inner.can_enforce(fmt)

    def generate(self, conversations, params):
        if self.calls_left is not None:
            if self.calls_left <= 0:
                raise self.error
            self.calls_left -= 1
        return self.inner.generate(conversations, params)

    def score(self, conversations, continuations):
        return self.inner.score(conversations, continuations)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, default_engine):
    """An uninterrupted tiny build of two seed scenarios."""
    out = tmp_path_factory.mktemp("reference")
    summary = build_deeppref(_scenarios(), default_engine, default_engine, out, BuildConfig.tiny(seed=0))
    return out, summary


# -- pure rules ----------------------------------------------------------------------------------------
def test_splits_are_by_scenario_deterministic_and_order_free():
    ids = [f"s{i}" for i in range(20)]
    splits = assign_splits(ids, 0.1, seed=0)
    assert sum(v == "validation" for v in splits.values()) == 2
    assert assign_splits(list(reversed(ids)), 0.1, seed=0) == splits
    assert assign_splits(ids, 0.1, seed=1) != splits
    assert list(assign_splits(["a", "b"], 0.1, 0).values()).count("validation") == 1  # at least one
    assert set(assign_splits(["a"], 0.5, 0).values()) == {"train"}  # never all validation
    assert set(assign_splits(ids, 0.0, 0).values()) == {"train"}


def test_best_record_takes_the_highest_total_and_the_first_of_ties():
    recs = [{"id": "a", "steps": ["x y z"], "answer": "A.", "total_score": 0.5},
            {"id": "b", "steps": ["u v w"], "answer": "B.", "total_score": 1.5},
            {"id": "c", "steps": ["p q r"], "answer": "C.", "total_score": 1.5}]
    best = best_record(recs)
    assert best["id"] == "b" and best["response"] == "Step 1: u v w\nAnswer: B."
    assert best_record([]) is None


# -- the real build --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_writes_valid_rea_rft_and_a_data_card(reference):
    out, summary = reference
    rea, rft = read_records(out / REA_FILE), read_records(out / RFT_FILE)
    assert summary.computed == 2 and summary.resumed == 0 and not summary.failed
    assert len(rea) == summary.rea_records >= 1 and len(rft) == summary.rft_records
    check_contract(rea, rft)
    assert {r["scenario_id"] for r in rea} <= set(IDS)

    card = json.loads((out / "data_card.json").read_text())
    assert card["records"]["rea"] == len(rea) and card["records"]["rft"] == len(rft)
    assert sum(d["paths"] for d in card["per_domain"].values()) == len(rea)
    assert card["scenarios"]["total"] == 2 and card["tree"]["trees"] == 2
    tree = card["tree"]
    assert tree["nodes_proposed"] >= 4 and 0.0 <= tree["pruning_rate"] <= 1.0
    assert sum(card["scores"]["steps_histogram"]) == sum(len(r["steps"]) for r in rea)
    assert card["depth"]["mean"] == pytest.approx(sum(len(r["steps"]) for r in rea) / len(rea), abs=1e-3)
    assert (out / "score_histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pruning rate" in (out / "data_card.md").read_text()
    assert not list(out.rglob("*.tmp"))
    # constrained decoding: every thought, value and critique was in its declared format on the first attempt
    assert (tree["value_parse_failures"], tree["thought_parse_failures"], tree["value_retries"], tree["repaired"]) == (0, 0, 0, 0)
    annotation = card["annotation"]
    assert (annotation["parse_failures"], annotation["retries"], annotation["dropped_paths"], annotation["repaired"]) == (0, 0, 0, 0)
    assert tree["nodes_pruned"]["unparseable_value"] == tree["nodes_pruned"]["unparseable_thought"] == 0
    manifest = json.loads((out / "build.json").read_text())
    assert {"council_value", "step_judgment[40]"} <= set(manifest["formats"])


def check_tree(tree: ThoughtTree, config: CouncilConfig) -> None:
    """Invariants of a council tree: counters match the nodes, paths are unpruned parent-child chains."""
    nodes = tree.nodes
    proposed = [n for n in nodes.values() if n.parent is not None]
    assert tree.stats.proposed == len(proposed)
    assert sum(len(n.children) for n in nodes.values()) == len(proposed)
    assert tree.stats.pruned_total == sum(1 for n in proposed if n.pruned)
    assert all(n.pruned in (None, *PRUNE_REASONS) for n in proposed)
    for n in proposed:
        assert n.persona in config.personas and n.id.startswith(n.parent + ".")
        if n.pruned is None:
            assert n.value is not None and n.value >= config.value_threshold
    for path in tree.paths:
        chain = [nodes[i] for i in path.node_ids]
        assert [n.depth for n in chain] == list(range(1, len(chain) + 1))
        assert all(b.parent == a.id for a, b in zip(chain, chain[1:]))
        assert path.steps == [n.thought for n in chain] and all(n.pruned is None for n in chain)
        assert path.answer.strip()
        parsed = parse_response(path.response)
        assert parsed.steps == path.steps and parsed.answer == path.answer
    assert len({tuple(p.steps) for p in tree.paths}) == len(tree.paths)  # de-duplicated
    # batched: per level one call for the proposals, one for the values (+ retries); one for all answers
    levels = max(n.depth for n in proposed)
    assert tree.stats.model_calls <= levels * (2 + config.value_retries) + 1
    assert tree.stats.conversations > tree.stats.model_calls  # several nodes per call


@pytest.mark.slow
def test_reference_trees_are_consistent_and_batched(reference):
    out, _ = reference
    config = BuildConfig.tiny().council
    for scenario in _scenarios():
        data = json.loads(result_file(out, scenario.id).read_text())
        tree = ThoughtTree.from_dict(data["tree"])
        check_tree(tree, config)
        assert tree.stats.proposed >= len(config.personas)
        assert ThoughtTree.from_dict(tree.to_dict()).to_dict() == data["tree"]
        kept = {tuple(p["steps"]) for p in data["paths"]}  # annotated paths are a subset of the tree's paths
        assert kept <= {tuple(p.steps) for p in tree.paths}
        assert len(tree.paths) - len(kept) == data["annotation"]["dropped_paths"]


@pytest.mark.slow
def test_build_loads_as_huggingface_datasets(reference, tmp_path):
    import datasets

    out, summary = reference
    rea = load_deeppref(out, "rea")
    assert set(rea) == {"train", "validation"}
    assert rea["train"].num_rows + rea["validation"].num_rows == summary.rea_records
    raw = datasets.load_dataset("json", data_files=str(out / RFT_FILE), split="train", cache_dir=str(tmp_path))
    assert raw.num_rows == summary.rft_records and "response" in raw.column_names


@pytest.mark.slow
def test_interrupted_build_resumes_from_the_cli_to_the_same_records(reference, tmp_path, default_engine, settings,
                                                                    monkeypatch, model_cache):
    from typer.testing import CliRunner

    from app.cli import app

    ref_out, ref = reference
    assert ref.rea_records >= 1  # the comparison below is about real records
    out = tmp_path / "build"
    engine = Interruptible(default_engine)

    def ctrl_c_soon(scenario, result):  # scenario 1 is saved: interrupt scenario 2 after its first call
        engine.calls_left = 1

    with pytest.raises(KeyboardInterrupt):
        build_deeppref(_scenarios(), engine, engine, out, BuildConfig.tiny(seed=0), on_scenario=ctrl_c_soon)
    assert len(list((out / RESULTS_DIR).glob("*.json"))) == 1 and not (out / REA_FILE).exists()

    scenario_file = tmp_path / "scenarios.jsonl"
    write_scenarios(scenario_file, _scenarios())
    monkeypatch.setenv("CDRA_MODEL_CACHE_DIR", str(model_cache))
    _register_cli_once()
    result = CliRunner().invoke(app, ["--data-dir", str(settings.data_dir), "data", "build", "--scenarios",
                                      str(scenario_file), "--out", str(out), "--tiny", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 scenarios built, 1 already finished" in result.output
    for name in (REA_FILE, RFT_FILE):
        assert (out / name).read_text() == (ref_out / name).read_text()


@pytest.mark.slow
def test_a_teacher_that_times_out_never_corrupts_the_output(reference, tmp_path, default_engine):
    ref_out, _ = reference
    out = tmp_path / "build"
    shutil.copytree(ref_out, out)
    before = {name: (out / name).read_bytes() for name in (REA_FILE, RFT_FILE)}
    down = Interruptible(default_engine, EngineError("the teacher endpoint timed out after 120 s"))
    down.calls_left = 0
    more = _scenarios((*IDS, "seed-travel-1", "seed-career-1"))
    with pytest.raises(CdraError, match=r"2 of 4 scenarios failed \(first: seed-travel-1: the teacher endpoint "
                                        r"timed out.*run the same command again"):
        build_deeppref(more, down, down, out, BuildConfig.tiny(seed=0))
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.rglob("*.tmp"))
    assert len(list((out / RESULTS_DIR).glob("*.json"))) == 2


def test_other_settings_cannot_resume_into_the_same_directory(tmp_path, default_engine):
    out = tmp_path / "build"
    down = Interruptible(default_engine, EngineError("offline"))
    down.calls_left = 0
    with pytest.raises(CdraError, match="failed"):
        build_deeppref(_scenarios(IDS[:1]), down, down, out, BuildConfig.tiny(seed=0))
    with pytest.raises(CdraError, match="other settings or engines"):
        build_deeppref(_scenarios(IDS[:1]), down, down, out, BuildConfig.tiny(seed=1))


class _Versioned(Engine):
    """Only what a fingerprint reads: a version and whether decoding is constrained."""

    def __init__(self, constrained: bool = True) -> None:
        self.version, self.constrained = "v1", constrained

    def can_enforce(self, fmt) -> bool:
        return True

    def generate(self, conversations, params):  # pragma: no cover - never called
        raise NotImplementedError

    def score(self, conversations, continuations):  # pragma: no cover - never called
        raise NotImplementedError


def test_fingerprint_covers_output_formats_and_their_enforcement():
    from dataclasses import replace

    config = BuildConfig.tiny(seed=0)
    engine = _Versioned()
    base = fingerprint(config, engine, engine)
    assert fingerprint(BuildConfig.tiny(seed=0), _Versioned(), _Versioned()) == base
    longer_critiques = replace(config, annotation=replace(config.annotation, critique_tokens=80))
    longer_thoughts = replace(config, council=replace(config.council, step_tokens=64))
    assert fingerprint(longer_critiques, engine, engine) != base
    assert fingerprint(longer_thoughts, engine, engine) != base
    assert fingerprint(config, _Versioned(constrained=False), engine) != base  # the teacher's own format
    assert fingerprint(config, engine, _Versioned(constrained=False)) != base


def test_committed_sample_follows_the_contract():
    rea, rft = read_records(SAMPLE / REA_FILE), read_records(SAMPLE / RFT_FILE)
    assert rea and rft
    check_contract(rea, rft)
    assert json.loads((SAMPLE / "data_card.json").read_text())["records"]["rea"] == len(rea)


_registered = False


def _register_cli_once() -> None:
    global _registered
    if not _registered:
        from app.cli import _register

        _register()
        _registered = True
