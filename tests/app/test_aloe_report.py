"""ALOE Table 2 aggregation on hand-made ratings, the files it writes, and `cdra eval aloe-report` on a real log."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from alignment.errors import CdraError
from app.aloe_report import AloeRating, aloe_table, to_markdown, write_aloe_report

# CDRA paper, Table 2 (human evaluation on ALOE): per-turn means and the reported average
PAPER = {
    "CoT": ([2.0, 3.2, 3.8, 4.0, 4.2, 4.4, 4.2, 3.8, 3.8, 3.8], 3.72),
    "GRPO": ([2.0, 3.4, 3.0, 3.4, 3.6, 3.2, 3.4, 3.4, 3.0, 3.4], 3.18),
    "CDRA": ([2.0, 3.4, 4.0, 4.2, 4.4, 4.4, 4.6, 4.2, 4.0, 4.0], 3.92),
}


def _five_raters(mean: float) -> list[int]:
    """Five integer ratings whose mean is ``mean`` (the paper's means are multiples of 0.2)."""
    total = round(mean * 5)
    base, extra = divmod(total, 5)
    return [base + 1] * extra + [base] * (5 - extra)


def paper_ratings() -> list[AloeRating]:
    ratings = []
    for model, (means, _) in PAPER.items():
        for s in range(5):
            for k, mean in enumerate(means, 1):
                ratings.append(AloeRating(f"{model}-{s}", model, k, _five_raters(mean)[s]))
    return ratings


def test_reproduces_the_papers_table_2():
    rows = {r.policy_version: r for r in aloe_table(paper_ratings())}
    for model, (means, average) in PAPER.items():
        assert rows[model].per_turn == pytest.approx(means)
        assert rows[model].average == pytest.approx(average, abs=1e-9)
        assert rows[model].sessions == 5 and rows[model].counts == [5] * 10
    assert (
        "| CDRA | 2.00 | 3.40 | 4.00 | 4.20 | 4.40 | 4.40 | 4.60 | 4.20 | 4.00 | 4.00 | 3.92 | 5 |"
        in to_markdown(list(rows.values()))
    )


def test_unfinished_sessions_rerating_and_sources():
    ratings = [
        AloeRating("s1", "v1", 1, 2),
        AloeRating("s1", "v1", 1, 4),  # re-rated: the last counts
        AloeRating("s1", "v1", 2, 5),
        AloeRating("s2", "v1", 1, 2),  # stopped after one turn
        AloeRating("s3", "v1", 1, 3, source="simulated"),
    ]
    rows = aloe_table(ratings)
    human = next(r for r in rows if r.source == "human")
    assert human.per_turn[:3] == [3.0, 5.0, None] and human.counts[:2] == [2, 1]
    assert human.average == 4.0  # mean of turn means, as in the paper
    assert human.overall == pytest.approx(11 / 3, abs=1e-4)
    assert {r.label for r in rows} == {"v1 (human)", "v1 (simulated)"}


@pytest.mark.parametrize(
    "kwargs", [{"turn": 0}, {"turn": 11}, {"rating": 0}, {"rating": 6}, {"rating": 4.5}, {"source": "guess"}]
)
def test_bad_ratings_are_clear_errors(kwargs):
    fields = {"session_id": "s", "policy_version": "v", "turn": 1, "rating": 3} | kwargs
    with pytest.raises(CdraError):
        AloeRating(**fields)


def test_write_report_files(tmp_path):
    report = write_aloe_report(paper_ratings(), tmp_path / "report")
    assert report.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(report.csv_path.open()))
    assert {r["policy_version"]: r["average"] for r in rows} == {
        "CDRA": "3.9200",
        "CoT": "3.7200",
        "GRPO": "3.1800",
    }
    assert "k=10" in report.markdown_path.read_text()
    with pytest.raises(CdraError, match="no ALOE ratings"):
        write_aloe_report([], tmp_path / "empty")


def test_cli_report_from_the_session_log(settings, tmp_path, monkeypatch):
    """Finished ALOE sessions in the real log become Table 2 rows; unfinished ones only on request."""
    from app.cli import _register, app
    from memory.session_log import SessionLog, TurnRecord, default_log_path

    log = SessionLog(default_log_path(settings.logs_dir))
    for status, version, scores in (("finished", "policy-0001", [2, 3, 4]), ("paused", "policy-0002", [5])):
        sid = log.start_session("eve", "aloe", {"policy_version": version})
        for k, score in enumerate(scores, 1):
            tid = log.log_turn(
                TurnRecord(
                    user_id="eve",
                    session_id=sid,
                    mode="aloe",
                    query=f"q{k}",
                    answer="a",
                    model_versions={"policy": version},
                )
            )
            log.set_rating("eve", tid, score)
        log.update_session("eve", sid, status=status)
    _register()
    runner = CliRunner()
    env = {"CDRA_DATA_DIR": str(settings.data_dir), "CDRA_MODEL_CACHE_DIR": str(settings.models_dir)}
    out = tmp_path / "aloe"
    result = runner.invoke(app, ["eval", "aloe-report", "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "policy-0001" in result.output and "3.00" in result.output and "policy-0002" not in result.output
    assert (out / "aloe.png").is_file()
    result = runner.invoke(app, ["eval", "aloe-report", "--out", str(out), "--include-unfinished"], env=env)
    assert "policy-0002" in result.output


def _answer(log, user: str, session_id: str, k: int, version: str = "policy-0001") -> str:
    from memory.session_log import TurnRecord

    return log.log_turn(
        TurnRecord(
            user_id=user,
            session_id=session_id,
            mode="aloe",
            query=f"q{k}",
            answer=f"a{k}",
            model_versions={"policy": version},
        )
    )


def test_aloe_session_gating_pause_resume_and_finish(tmp_path):
    """Rating before the next turn, pause/resume, the 10th rating finishing the session, other users locked out."""
    from app.aloe import ALOE_TURNS, AloeSessions, Persona, memory_scope, ratings_from_log
    from memory.session_log import SessionLog

    log = SessionLog(tmp_path / "log.sqlite3")
    sessions = AloeSessions(log)
    persona = Persona(id="p1", profile="A night-shift nurse", hidden_preferences=["vegetarian"], opening="Hi")
    st = sessions.start("eve", persona)
    assert st.can_send and st.k == 0 and st.model_label == "serving policy"
    with pytest.raises(CdraError, match="no answer waiting"):
        sessions.rate("eve", st.session_id, 3)
    _answer(log, "eve", st.session_id, 1)
    st = sessions.state("eve", st.session_id)
    assert not st.can_send and st.awaiting_rating.k == 1
    with pytest.raises(CdraError, match="rate the last answer"):
        sessions.set_status("eve", st.session_id, "finished")
    st = sessions.rate("eve", st.session_id, 4)
    assert st.can_send and st.turns[0].rating == 4
    assert sessions.set_status("eve", st.session_id, "paused").can_send is False
    assert [s["session_id"] for s in sessions.resumable("eve")] == [st.session_id]
    assert sessions.resumable("mallory") == []
    with pytest.raises(CdraError):
        sessions.state("mallory", st.session_id)
    st = sessions.set_status("eve", st.session_id, "active")
    for k in range(2, ALOE_TURNS + 1):
        _answer(log, "eve", st.session_id, k)
        st = sessions.rate("eve", st.session_id, 5)
    assert st.status == "finished" and not st.can_send and sessions.resumable("eve") == []
    ratings = ratings_from_log(log)
    assert [r.turn for r in ratings] == list(range(1, 11)) and ratings[0].rating == 4
    assert memory_scope("eve", st.session_id).startswith("eve__aloe__")


def test_blind_ab_balances_arms_and_hides_the_version(tmp_path):
    from app.aloe import AloeSessions, Persona
    from memory.session_log import SessionLog

    log = SessionLog(tmp_path / "log.sqlite3")
    sessions = AloeSessions(log)
    persona = Persona(id="p1", profile="A retired teacher")
    with pytest.raises(CdraError, match="two different"):
        sessions.start("eve", persona, "policy-0001", "policy-0001", blind=True)
    first = sessions.start("eve", persona, "policy-0001", "policy-0002", blind=True)
    second = sessions.start("eve", persona, "policy-0001", "policy-0002", blind=True)
    assert {first.arm, second.arm} == {"A", "B"}  # the second session gets the other arm
    assert first.model_label.startswith("Model ") and "policy" not in first.model_label
    versions = {first.arm: first.policy_version, second.arm: second.policy_version}
    assert versions == {"A": "policy-0001", "B": "policy-0002"}
