"""`cdra prefs …` end to end in one process: real chromadb under a temporary data dir, the packaged models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def cli():
    from app.cli import _register, app

    if not any(getattr(g, "name", None) == "prefs" for g in app.registered_groups):
        _register()
    return app


@pytest.fixture
def run(cli, tmp_path, model_cache, monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("CDRA_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CDRA_MODEL_CACHE_DIR", str(model_cache))
    data_dir = tmp_path / "data"

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.data_dir = data_dir
    return invoke


def test_show_add_edit_delete_export_import_forget(run, tmp_path):
    run("prefs", "add", "--user", "alice", "I'm allergic to cats and I prefer short answers.")
    shown = [json.loads(line) for line in run("prefs", "show", "--user", "alice", "--json").output.splitlines()]
    assert {s["text"] for s in shown} == {"Avoids cats (allergy)", "Prefers short answers"}
    short = next(s for s in shown if s["subject"] == "short answers")
    out = run("prefs", "edit", "--user", "alice", short["id"], "--text", "Prefers detailed answers").output
    assert "Prefers detailed answers" in out and "v2" in out
    run("prefs", "delete", "--user", "alice", next(s["id"] for s in shown if s["dimension"] == "health"))
    export = tmp_path / "alice.json"
    run("prefs", "export", "--user", "alice", "--out", str(export))
    data = json.loads(export.read_text())
    assert [p["text"] for p in data["preferences"]] == ["Prefers detailed answers"]
    assert set(data["suppressed"]) == {"Prefers short answers", "Avoids cats (allergy)"}
    run("prefs", "import", "--user", "bob", str(export))
    assert "Prefers detailed answers" in run("prefs", "show", "--user", "bob").output
    assert "(no preferences stored)" in run("prefs", "show", "--user", "carol").output
    run("prefs", "forget", "--user", "alice", "--yes")
    assert "(no preferences stored)" in run("prefs", "show", "--user", "alice").output
    assert "Prefers detailed answers" in run("prefs", "show", "--user", "bob").output


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    from alignment.errors import CdraError, FormatError

    signals = tmp_path / "signals.jsonl"
    signals.write_text('{"kind": "statement", "text": "I love tea."}\n{"kind": "post"}\n')
    with pytest.raises(FormatError, match=r"signals.jsonl:2: text: Field required"):
        run("prefs", "infer", "--user", "dave", "--signals", str(signals))
    assert "(no preferences stored)" in run("prefs", "show", "--user", "dave").output  # not even the good line
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "cdra-memory", "preferences": [{"text": "x", "stance": "sometimes"}]}')
    with pytest.raises(FormatError, match="bad preference record"):
        run("prefs", "import", "--user", "dave", str(bad))
    with pytest.raises(CdraError, match="no preference with id"):
        run("prefs", "delete", "--user", "dave", "pref-missing")


@pytest.mark.slow
def test_infer_stores_explicit_at_once_and_never_stores_a_failed_inference(run, tmp_path, monkeypatch):
    """Decoding freely (the role set to ``constrained = false``) on the untrained base model (``backend =
    "default"``: the packaged model without the shipped adapter, which has learned the format), the output is
    never in the format: the run fails after its retries, is logged, and stores nothing inferred."""
    from alignment.errors import CdraError

    monkeypatch.setenv("CDRA_PREFERENCE__CONSTRAINED", "false")
    monkeypatch.setenv("CDRA_PREFERENCE__BACKEND", "default")

    signals = tmp_path / "signals.jsonl"
    signals.write_text("\n".join(json.dumps(s) for s in [
        {"kind": "statement", "text": "Please don't share my location.", "id": "s1"},
        {"kind": "comparison", "post": "Lunch?", "chosen": "A salad bar", "rejected": "A burger place", "id": "c1"},
    ]) + "\n")
    with pytest.raises(CdraError, match=r"failed after 2 attempt\(s\)"):
        run("prefs", "infer", "--user", "erin", "--signals", str(signals), "--max-new-tokens", "2", "--retries", "1")
    export = json.loads(run("prefs", "export", "--user", "erin").output)
    assert [p["text"] for p in export["preferences"]] == ["Avoids sharing my location"]
    assert export["preferences"][0]["origin"] == "explicit" and export["preferences"][0]["evidence"] == ["s1"]
    [log] = export["inferences"]
    assert log["failed"] is True and log["attempts"] == 2 and log["statements"] == 0


@pytest.mark.slow
def test_infer_with_votes_stores_only_what_the_votes_support(run, tmp_path):
    """The shipped adapter, constrained; its statements are voted on by sampled outputs compared with the memory's
    embeddings. An impossible quorum is refused before anything runs; a quorum of one reports what it dropped."""
    from alignment.errors import CdraError

    signals = tmp_path / "signals.jsonl"
    signals.write_text(json.dumps({"kind": "turn", "id": "t1", "user": "I dislike series with a lot of episodes; "
                                   "they feel overwhelming. What should I watch this month?"}) + "\n")
    with pytest.raises(CdraError, match=r"cannot exceed inference.votes \(2\)"):
        run("prefs", "infer", "--user", "finn", "--signals", str(signals), "--votes", "2", "--min-support", "3")
    out = run("prefs", "infer", "--user", "finn", "--signals", str(signals), "--votes", "2").output
    assert "dropped as too few of 2 votes stated them" in out, out
    [log] = json.loads(run("prefs", "export", "--user", "finn").output)["inferences"]
    inferred = int(out.split("R_format=1; ")[1].split(" statement")[0])
    assert log["statements"] == inferred and log["unsupported"] >= 0 and not log["failed"]


@pytest.fixture
def slice_file(shared_dir, tmp_path):
    from training.prefeval import import_preference_testset

    out = tmp_path / "slice.jsonl"
    import_preference_testset(shared_dir / "data/prefeval", out, topics=["travel_restaurant"], signals_from="choice",
                              limit_per_topic=3)
    return out


@pytest.mark.slow
def test_eval_and_bench_commands_print_their_tables(run, slice_file, tmp_path):
    out = run("eval", "prefs", "--testset", str(slice_file), "--methods", "null,golden", "--metrics", "jud",
              "--limit", "1", "--out", str(tmp_path / "ev")).output
    assert "| Null (no description) | 1 |" in out and "| Golden (persona) | 1 |" in out
    assert (tmp_path / "ev" / "summary.md").is_file()
    out = run("bench", "memory", "--sizes", "150", "--queries", "10", "--pool", "40", "--texts", str(slice_file)).output
    assert "| 150 |" in out and "recall@10" in out
    out = run("bench", "prefs", "--histories", "2", "--new", "1", "--max-new-tokens", "1",
              "--signals", str(slice_file)).output
    assert "| 2 | 1 |" in out and "tokens full/stream" in out


def test_retrieve_shows_what_the_assistant_would_use_and_show_quotes_the_evidence(run):
    run("prefs", "add", "--user", "vera", "I'm vegetarian and I hate long answers")
    run("prefs", "add", "--user", "vera", "I can't stand horror movies.")
    out = run("prefs", "retrieve", "--user", "vera", "What should I cook for friends this weekend?").output
    assert "3 of 3 statement(s)" in out and "+  " in out and "Prefers vegetarian options" in out
    assert "prompt lines:" in out and "Prefers vegetarian options (stated)" in out
    data = json.loads(run("prefs", "retrieve", "--user", "vera", "What should I cook?", "--json").output)
    assert data["tokens"] <= data["token_budget"] == 256 and data["prompt_lines"]
    veg = next(s for s in data["statements"] if s["statement"]["text"] == "Prefers vegetarian options")
    assert veg["used"] and veg["rank"] <= 2 and set(veg) >= {"score", "cosine", "situation", "why"}
    assert "food and drink" in veg["statement"]["applies_to"]
    shown = run("prefs", "show", "--user", "vera").output
    assert 'said: "I\'m vegetarian and I hate long answers" (cli-' in shown and "applies to:" in shown
    assert "history: created" in shown
    listed = {s["text"]: s for s in map(json.loads, run("prefs", "show", "--user", "vera", "--json").output.splitlines())}
    assert listed["Prefers vegetarian options"]["sources"][0]["quote"] == "I'm vegetarian and I hate long answers"
    assert listed["Avoids long answers"]["evidence_quoted"][0]["id"].startswith("cli-")
    assert "(nothing stored for this user)" in run("prefs", "retrieve", "--user", "nobody", "hello").output


@pytest.mark.slow
def test_recall_and_extraction_benches_print_their_tables(run):
    out = run("bench", "recall", "--per-topic", "1", "--k", "0,2").output
    assert "| 0 | 12 | 12 |" in out and "| 2 | 12 |" in out and "false merges" in out and "| total | 64 |" in out
    out = run("bench", "extraction", "--per-topic", "3").output
    assert "| explicit preference sentences read | 36/36" in out and "false positives: questions" in out
