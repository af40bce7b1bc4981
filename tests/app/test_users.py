"""The user store (salted scrypt hashes), `cdra users` / `cdra logs`, and the first-start account."""

from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from alignment.errors import CdraError
from app.users import UserError, UserStore, ensure_first_account, verify_password


def test_add_verify_remove(tmp_path):
    store = UserStore(tmp_path / "users.json")
    assert store.is_empty()
    store.add("alice", "correct horse")
    store.add("bob", "correct horse")
    assert store.verify("alice", "correct horse") and not store.verify("alice", "wrong horse!")
    assert not store.verify("carol", "correct horse")
    raw = json.loads((tmp_path / "users.json").read_text())["users"]
    assert raw["alice"]["hash"] != raw["bob"]["hash"]  # salted: equal passwords, different hashes
    assert "correct horse" not in (tmp_path / "users.json").read_text()
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    with pytest.raises(UserError, match="already exists"):
        store.add("alice", "another password")
    store.add("alice", "another password", replace=True)
    assert store.verify("alice", "another password")
    store.remove("bob")
    assert [u.name for u in store.list()] == ["alice"]
    with pytest.raises(UserError, match="no user"):
        store.remove("bob")


@pytest.mark.parametrize("name", ["", "a b", "../etc", "bob__aloe__x", "-x", "x" * 65, "ümlaut"])
def test_bad_names(tmp_path, name):
    with pytest.raises(UserError, match="invalid user name"):
        UserStore(tmp_path / "u.json").add(name, "long enough")


def test_short_password_and_corrupt_store(tmp_path):
    store = UserStore(tmp_path / "u.json")
    with pytest.raises(UserError, match="too short"):
        store.add("alice", "short")
    (tmp_path / "u.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        store.verify("alice", "whatever1")
    assert not verify_password("x", "md5$abc")


def test_first_start_creates_one_account(tmp_path):
    store = UserStore(tmp_path / "u.json")
    created = ensure_first_account(store)
    assert created is not None
    name, password = created
    assert store.verify(name, password) and len(password) >= 12
    assert ensure_first_account(store) is None


def test_auth_off_is_single_user_and_loopback_only(settings):
    from app.ui import prepare_auth

    off = settings.model_copy(update={"chat": settings.chat.model_copy(update={"auth": False})})
    assert prepare_auth(off) is None
    exposed = settings.model_copy(
        update={"chat": settings.chat.model_copy(update={"auth": False, "host": "0.0.0.0"})}
    )
    with pytest.raises(CdraError, match="only listens on 127.0.0.1"):
        prepare_auth(exposed)
    check = prepare_auth(settings)  # auth on, empty store: an account is created and printed
    user = UserStore.for_data_dir(settings.data_dir).list()[0]
    assert callable(check) and not check(user.name, "wrong password")


def test_users_and_logs_cli(settings, tmp_path):
    from app.cli import _register, app
    from memory.session_log import SessionLog, TurnRecord, default_log_path

    _register()
    runner = CliRunner()
    env = {"CDRA_DATA_DIR": str(settings.data_dir), "CDRA_MODEL_CACHE_DIR": str(settings.models_dir)}
    result = runner.invoke(app, ["users", "add", "alice", "--password", "s3cret-pass"], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["users", "list"], env=env)
    assert "alice" in result.output
    result = runner.invoke(app, ["users", "add", "alice", "--password", "s3cret-pass"], env=env)
    assert result.exit_code != 0
    assert UserStore.for_data_dir(settings.data_dir).verify("alice", "s3cret-pass")

    log = SessionLog(default_log_path(settings.logs_dir))
    log.log_turn(
        TurnRecord(
            user_id="alice",
            session_id="s1",
            mode="ask",
            query="hi",
            answer="hello",
            time="2021-06-01T00:00:00.000+00:00",
        )
    )
    log.log_turn(
        TurnRecord(user_id="alice", session_id="s1", mode="ask", query="again", answer="hello again")
    )
    out = tmp_path / "turns.jsonl"
    result = runner.invoke(app, ["logs", "export", "--out", str(out), "--since", "2024-01-01"], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["query"] for x in lines] == ["again"] and lines[0]["user_preferences"] == []
    result = runner.invoke(app, ["logs", "prune", "--older-than-days", "365"], env=env)
    assert "deleted 1 turns" in result.output
    result = runner.invoke(app, ["users", "remove", "alice", "--forget"], env=env)
    assert result.exit_code == 0, result.output
    assert log.turns(user_id="alice") == []
    assert UserStore.for_data_dir(settings.data_dir).list() == []
