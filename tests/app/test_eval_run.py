"""`cdra eval run / compare / import-*` and `cdra bench eval` end to end on the real packaged model:
a couple of items, tiny generations, the full report folder, a free re-run, a paired comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignment.errors import CdraError, FormatError
from alignment.methods import MethodSpec, read_alignment_testset, write_jsonl_atomic

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "data" / "dev" / "alignment_dev.jsonl"
TINY = ["--max-new-tokens", "12", "--judge-max-new-tokens", "12", "--no-progress", "--bootstrap", "200"]


@pytest.fixture(scope="module")
def cli():
    from app.cli import _register, app

    if not any(g.name == "eval" for g in app.registered_groups):
        _register()
    return app


@pytest.fixture
def env(tmp_path, model_cache, monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("CDRA_") and key != "CDRA_TEST_MODEL_CACHE":
            monkeypatch.delenv(key)
    monkeypatch.setenv("CDRA_MODEL_CACHE_DIR", str(model_cache))
    return tmp_path


def invoke(cli, *args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


@pytest.fixture(scope="module")
def two_items(tmp_path_factory) -> Path:
    """One explicit and one implicit choice-based item of the dev set (short prompts)."""
    items = read_alignment_testset(DEV)
    pick = [next(i for i in items if i.extras["form"] == "explicit"),
            next(i for i in items if i.extras["form"] == "implicit-choice")]
    return write_jsonl_atomic(tmp_path_factory.mktemp("testset") / "two.jsonl",
                              [i.model_dump(exclude_none=True) for i in pick])


@pytest.mark.slow
def test_eval_run_writes_the_full_report_and_a_rerun_costs_nothing(cli, env, two_items):
    personas = write_jsonl_atomic(env / "personas.jsonl", [json.loads(
        (REPO / "data" / "dev" / "aloe_personas.jsonl").read_text().splitlines()[1])])
    _log_human_aloe_session(env / "data")
    out = env / "report"
    args = ["--data-dir", str(env / "data"), "eval", "run", "--methods", "zero-shot,cot", "--testset", str(two_items),
            "--memory", "with,without", "--aloe-personas", str(personas), "--aloe-turns", "2",
            "--aloe-user-max-new-tokens", "10", "--aloe-human", "--out", str(out), *TINY]
    first = invoke(cli, *args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    assert "Acc_PF ↑" in first.output and "report:" in first.output

    for name in ("report.md", "table1.md", "table3.md", "radar.png", "aloe.md", "aloe.csv", "aloe.png",
                 "answers.jsonl", "judgments.jsonl", "indicators.jsonl", "aloe_turns.jsonl", "metrics.json",
                 "config.json", "cache.sqlite"):
        assert (out / name).is_file(), name
    for png in ("radar.png", "aloe.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 * 2 * 2  # methods x memory conditions x items
    assert {(a["method"], a["condition"]) for a in answers} == {(m, c) for m in ("zero-shot", "cot") for c in ("with", "without")}
    explicit_with = next(a for a in answers if a["condition"] == "with" and a["history_turns"] == 0)
    assert explicit_with["retrieved"]  # the preference reached the prompt as a retrieved line
    assert all(a["retrieved"] == [] and a["history_turns"] == 0 for a in answers if a["condition"] == "without")

    judgments = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) >= 8 * 7  # every answer, every rubric but H (H only where it can matter)
    for j in judgments:
        assert j["rationale"] and j["raw"] is not None and j["judge"]
        assert j["source"] == "logprobs" and isinstance(j["verdict"], bool | int)
        assert (j["json_error"] is None) == (j["json_verdict"] is not None)

    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rows"]) == 4
    for row in metrics["rows"]:
        for name in ("acc_pf", "acc_da", "acc_mis", "m_th", "m_dm", "m_ie", "e_puv", "e_hp", "e_ir", "e_ur"):
            m = row["metrics"][name]
            assert m["n"] + m["missing"] == 2
            if m["value"] is not None:
                assert m["low"] <= m["value"] <= m["high"]
    table1 = (out / "table1.md").read_text()
    assert table1.count("| zero-shot |") == 2 and table1.count("| cot |") == 2 and "[" in table1
    report = (out / "report.md").read_text()
    for section in ("Table 1", "Explicit preference errors", "Table 3", "Judge: readable verdicts", "ALOE"):
        assert section in report
    aloe = (out / "aloe.md").read_text()
    assert "k=1" in aloe and "| zero-shot (simulated) |" in aloe and "| cot (simulated) |" in aloe
    assert "| policy-0007 (human) | 4.00 | 5.00 |" in aloe  # the app's rated ALOE session, same table
    turns = [json.loads(x) for x in (out / "aloe_turns.jsonl").read_text().splitlines()]
    assert len(turns) == 2 * 2 and all(t["user"] and t["judgment"]["rationale"] for t in turns)
    assert turns[0]["user"].startswith("Hi! Any ideas")  # the persona's own opening

    config = json.loads((out / "config.json").read_text())
    assert config["testset"]["sha256"] and len(config["testset"]["item_ids"]) == 2
    assert [m["model"] for m in config["methods"]] == ["default:SmolLM2-135M-Instruct"] * 2
    assert config["judge"]["model"] == "default:SmolLM2-135M-Instruct"
    assert config["model_calls"]["total"] > 0

    second = invoke(cli, *args)
    assert second.exit_code == 0, second.output + repr(second.exception)
    assert "model calls: 0 generate, 0 score" in second.output
    assert json.loads((out / "config.json").read_text())["model_calls"]["total"] == 0
    assert (out / "table1.md").read_text() == table1
    assert (out / "aloe.md").read_text() == aloe

    # B vs A on the same items: paired tests, plus the position-controlled head-to-head judge
    compared = invoke(cli, "--data-dir", str(env / "data"), "eval", "compare", str(out), str(out),
                      "--method-a", "zero-shot", "--method-b", "cot", "--pairwise", "--judge-max-new-tokens", "8",
                      "--no-progress", "--bootstrap", "200")
    assert compared.exit_code == 0, compared.output + repr(compared.exception)
    assert "paired on 2 shared items" in compared.output and "p (McNemar)" in compared.output
    assert "head to head (2 items, both orders)" in compared.output


def _log_human_aloe_session(data_dir: Path) -> None:
    """A finished ALOE session of the app, two turns rated 4 and 5, as the app's session log holds it."""
    from memory.session_log import SessionLog, TurnRecord, default_log_path

    log = SessionLog(default_log_path(data_dir / "logs"))
    session = log.start_session("alice", "aloe", {"policy_version": "policy-0007"})
    for query, rating in (("Hi, plans for Saturday?", 4), ("Something calm, please.", 5)):
        turn = log.log_turn(TurnRecord("alice", session, "aloe", query, answer="A quiet garden walk.",
                                       model_versions={"policy": "policy-0007"}))
        log.set_rating("alice", turn, rating)
    log.update_session("alice", session, status="finished")
    log.close()


def test_bad_input_fails_before_any_model_work(cli, env, two_items):
    bad = env / "bad.jsonl"
    bad.write_text(two_items.read_text().splitlines()[0] + "\n{\"id\": \"x\", \"query\": \"q\"}\n")
    result = invoke(cli, "--data-dir", str(env / "data"), "eval", "run", "--testset", str(bad), "--out", str(env / "r"))
    assert isinstance(result.exception, FormatError) and "bad.jsonl:2: preference" in str(result.exception)
    result = invoke(cli, "--data-dir", str(env / "data"), "eval", "run", "--methods", "zero-shot,magic",
                    "--testset", str(two_items), "--out", str(env / "r"))
    assert isinstance(result.exception, CdraError) and "unknown method 'magic'" in str(result.exception)
    result = invoke(cli, "--data-dir", str(env / "data"), "eval", "run", "--methods", "cdra",
                    "--testset", str(two_items), "--out", str(env / "r"))
    assert isinstance(result.exception, CdraError) and "no registered policy trained with 'cdra'" in str(result.exception)
    result = invoke(cli, "--data-dir", str(env / "data"), "eval", "compare", str(env), str(env))
    assert isinstance(result.exception, CdraError) and "not a report folder" in str(result.exception)


def test_registered_versions_resolve_by_method_and_by_name(env):
    from app.reports import resolve_method, trained_method_of
    from app.settings import load_settings
    from training.registry import ModelRegistry, RegisteredModel

    settings = load_settings(data_dir=env / "data")
    registry = ModelRegistry(settings.registry_dir)
    for config in ({"rft": {}}, {"rft": {}, "cdpa": {"method": "cdpa"}}, {"cdpa": {"method": "grpo-process"}}):
        version, path = registry.new_version_dir("policy")
        (path / "adapter").mkdir()
        registry.register(RegisteredModel("policy", version, path, adapter="adapter", config=config))
    assert [trained_method_of(m) for m in registry.versions("policy")] == ["rft", "cdra", "grpo-process"]
    cdra = resolve_method(settings, MethodSpec("cdra", "policy"))
    assert cdra.key == cdra.version == "policy-0002" and cdra.spec.adapter.endswith("policy-0002/adapter")
    assert resolve_method(settings, MethodSpec("sft", "policy", "policy-0001")).version == "policy-0001"
    assert resolve_method(settings, MethodSpec("cot", "cot")).key == "default:SmolLM2-135M-Instruct"
    with pytest.raises(CdraError, match="not base, serving, a registered policy version"):
        resolve_method(settings, MethodSpec("cdra", "policy", "policy-0099"))


def test_importers_from_the_command_line(cli, env, shared_dir):
    out = env / "prefeval.jsonl"
    result = invoke(cli, "eval", "import-prefeval", "--root", str(shared_dir / "data" / "prefeval"),
                    "--topics", "shop_home,travel_activities", "--per-topic", "1", "--out", str(out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "wrote 6 items" in result.output and len(read_alignment_testset(out)) == 6

    aloe = env / "datasets"
    aloe.mkdir()
    (aloe / "profile_eval.jsonl").write_text('"He is a 33-year-old engineer who runs marathons."\n"She is a chef."\n')
    (aloe / "personality_eval.jsonl").write_text('"He is calm."\n"She is witty."\n"He is shy."\n')
    result = invoke(cli, "eval", "import-aloe", str(aloe), "--out", str(env / "personas.jsonl"),
                    "--personalities-per-profile", "2")
    assert result.exit_code == 0, result.output + repr(result.exception)
    from alignment.aloe_sim import read_personas

    personas = read_personas(env / "personas.jsonl")
    assert len(personas) == 4 and personas[0].profile.startswith("He is a 33") and personas[1].personality == "She is witty."
    # the original layout also reads directly: every profile with ALOE's first five personalities (here 3)
    assert [p.id for p in read_personas(aloe)] == [f"aloe/{i}/{j}" for i in range(2) for j in range(3)]


@pytest.mark.slow
def test_prefs_testset_adds_acc_jud_and_acc_gen_to_the_report(cli, env, two_items):
    out = env / "report-prefs"
    result = invoke(cli, "--data-dir", str(env / "data"), "eval", "run", "--methods", "zero-shot", "--testset",
                    str(two_items), "--memory", "without", "--limit", "1", "--prefs-testset",
                    str(REPO / "data" / "dev" / "prefeval_prefs_test.jsonl"), "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output + repr(result.exception)
    prefs = json.loads((out / "metrics.json").read_text())["prefs"]
    assert prefs["rows"] and all(row["n"] == 1 for row in prefs["rows"])
    for row in prefs["rows"]:
        jud = row["acc_jud"]
        assert jud["value"] in (0.0, 100.0) and jud["low"] <= jud["value"] <= jud["high"]  # one item: 0 or 100 %
    report = (out / "report.md").read_text()
    assert "Preference inference (AlignXplore Acc_jud / Acc_gen)" in report and "| Acc_jud ↑ |" in report


@pytest.mark.slow
def test_bench_eval_prints_the_batched_speed_ratio(cli, env):
    result = invoke(cli, "--data-dir", str(env / "data"), "bench", "eval", "-n", "4", "--max-new-tokens", "4",
                    "--batch-size", "4")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "one call per judgment" in result.output and "batched (4 per call)" in result.output
    assert "x |" in result.output


@pytest.mark.slow
def test_chroma_memory_store_puts_what_retrieval_finds_in_the_prompt(env):
    """`--memory-store chroma`: the item's preference or conversation goes into a fresh vector memory."""
    import tempfile

    from alignment.methods import AlignmentItem
    from app.reports import _ChromaContexts
    from app.settings import load_settings

    explicit = AlignmentItem(id="e", preference="I strictly avoid restaurants that serve gluten (severe intolerance).",
                             query="Which must-try restaurants in Rome would you recommend for me?")
    implicit = AlignmentItem(id="i", preference="Avoids gluten.", query="Where should I get lunch near the office?",
                             history=[{"role": "user", "content": "I can't eat gluten. Where can I get lunch?"},
                                      {"role": "assistant", "content": "Try the salad bar."}])
    with tempfile.TemporaryDirectory() as tmp:
        contexts = _ChromaContexts(load_settings(data_dir=env / "data"), Path(tmp))
        lines = contexts(explicit).preferences
        assert any("gluten" in line for line in lines)
        assert any("salad bar" in line for line in contexts(implicit).preferences)
