"""Forget is final (issue 14, D2/D3): `cdra prefs forget` in another process while `cdra serve` is answering
and inferring leaves 0 records of the user, and a process killed between logging a turn and writing it to
memory leaves a log that says so; the next start finishes the write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.assistant import Assistant, AssistantConfig, make_responder
from app.server import POLICY_MODEL, create_app
from app.users import UserStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _cdra_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRA_")}
    env.update(CDRA_DATA_DIR=str(settings.data_dir), CDRA_MODEL_CACHE_DIR=str(settings.models_dir),
               HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", CDRA_CHAT__MAX_NEW_TOKENS="16")
    return env


class HeldInferrer:
    """The real preference inferrer, held at the start of a run until the test lets it go."""

    def __init__(self, real) -> None:
        self.real, self.engine = real, real.engine
        self.started, self.release = threading.Event(), threading.Event()

    def infer(self, *args, **kwargs):
        self.started.set()
        self.release.wait(120)
        return self.real.infer(*args, **kwargs)


def test_forget_in_another_process_while_serving_leaves_nothing(settings, default_engine):
    users = UserStore.for_data_dir(settings.data_dir)
    users.add("alice", "alice-password")
    key, _ = users.create_key("alice")
    bot = Assistant(settings, AssistantConfig(infer_idle_s=0.2, infer_max_new_tokens=16), policy=default_engine)
    held = HeldInferrer(bot._make_inferrer())
    bot.worker._inferrer = held
    client = TestClient(create_app(settings, engines={POLICY_MODEL: default_engine},
                                   responder=make_responder(settings, bot), users=users),
                        headers={"Authorization": f"Bearer {key}"})

    def ask(text: str) -> None:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}],
                                                      "user": "alice", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text

    try:
        ask("I'm allergic to QUOKKAFUR. What could I cook tonight?")
        assert held.started.wait(180)  # the background inference of that turn is running ...
        ask("And something quick for lunch?")  # ... and this turn's signal waits behind it
        assert bot.memory.for_user("alice").count() > 0
        forget = subprocess.run([*_cdra(), "prefs", "forget", "--user", "alice", "--yes"], env=_cdra_env(settings),
                                capture_output=True, text=True, timeout=300, check=False)
        assert forget.returncode == 0, forget.stderr
        held.release.set()
        assert bot.worker.drain(120)
        time.sleep(1.0)  # 5x the idle wait: nothing is left to run
        assert bot.memory.for_user("alice").count() == 0 and "alice" not in bot.memory.users()
        assert bot.worker.runs == 1  # the queued signal from before the forget never reached the model
        ask("I prefer short answers. Any tea you'd recommend?")  # new activity after the forget is kept
        assert "Prefers short answers" in [s.text for s in bot.memory.for_user("alice").list_preferences()]
    finally:
        held.release.set()
        bot.worker.cancel_user("alice")
        bot.worker.drain(120)  # a daemon thread still inside the model at exit aborts the interpreter
        bot.close()


#: a turn whose process is killed right after the log write, before the memory write
KILLED_TURN = """
import os, signal, sys
from app.assistant import Assistant, AssistantConfig
from app.settings import load_settings

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

Assistant._remember = die
bot = Assistant(load_settings(), AssistantConfig(background_inference=False))
bot.answer("alice", "I'm allergic to kiwis. Suggest a snack.")
"""


def test_a_kill_between_log_and_memory_is_visible_and_replayed(settings):
    killed = subprocess.run([sys.executable, "-c", KILLED_TURN], env=_cdra_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    bot = Assistant(settings, AssistantConfig(background_inference=False, recover_after_s=3600))
    (turn,) = bot.log.turns(user_id="alice")
    assert turn["status"] == "ok" and turn["memory"] == "pending"  # the log says what did not reach memory
    assert bot.memory.for_user("alice").count() == 0
    assert bot.recover_pending(min_age_s=0) == 1  # what the next start does with a crash older than 10 s
    assert bot.log.turn("alice", turn["turn_id"])["memory"] == "stored"
    memory = bot.memory.for_user("alice")
    assert [t["turn_id"] for t in memory.turns()] == [turn["turn_id"]]
    assert "Avoids kiwis (allergy)" in [s.text for s in memory.list_preferences()]
    assert bot.recover_pending(min_age_s=0) == 0
    bot.close()


def _cdra() -> list[str]:
    script = Path(sys.executable).parent / "cdra"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]
