"""The real app (`cdra chat`, real default model, chromadb, session log) in Debian's headless Chromium:
sign in, chat two streamed turns with folded reasoning, like an answer, delete a preference in the
memory panel, rate an ALOE session, and check the log; a second user sees none of it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.users import UserStore

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}
PERSONA = {
    "id": "runner",
    "profile": "A 33-year-old engineer who runs marathons and lives in a small flat.",
    "personality": "spontaneous, witty",
    "hidden_preferences": ["Allergic to cats", "Likes concrete numbers"],
    "opening": "I have a free weekend. Any ideas?",
}
TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    data = tmp_path_factory.mktemp("browser") / "data"
    personas = data.parent / "personas.jsonl"
    personas.write_text(json.dumps(PERSONA) + "\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRA_")}
    env.update(
        CDRA_DATA_DIR=str(data),
        CDRA_MODEL_CACHE_DIR=str(model_cache),
        CDRA_CHAT__STEP_TOKENS="24",  # the default 3 steps, shorter: the screenshots show whole turns
        CDRA_CHAT__ANSWER_TOKENS="64",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        NO_PROXY="*",
    )
    store = UserStore.for_data_dir(data)  # `cdra users add` itself is tested in test_users.py
    for user, password in PASSWORDS.items():
        store.add(user, password)
    log_file = (data.parent / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from app.cli import main; main()",
            "chat",
            "--port",
            str(port),
            "--personas",
            str(personas),
        ],
        cwd=REPO,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 420  # seconds on a quiet CI machine; minutes on a shared, overloaded one
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                log_file.close()
                pytest.fail(f"`cdra chat` did not start:\n{(data.parent / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield {"url": url, "data": data, "log": data.parent / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log_file.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-gpu",
            ],
        )
        yield chromium
        chromium.close()


def sign_in(browser, url: str, user: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#message textarea")
    page.wait_for_selector("#signed-in-user")
    assert page.locator("#signed-in-user").inner_text() == user
    return context, page


def chat(page, text: str, k: int) -> list[str]:
    """Send a message and sample the answer bubble while it streams; returns the distinct texts seen."""
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")
    bubbles = page.locator("#chatbot .message.bot")
    seen: list[str] = []
    deadline = time.time() + TIMEOUT_MS / 1000
    while time.time() < deadline:
        if bubbles.count() >= k:
            body = bubbles.nth(k - 1).inner_text()
            if body and (not seen or seen[-1] != body):
                seen.append(body)
        if f"turn {k} answered" in page.locator("#turn-status").inner_text():
            return seen
        time.sleep(0.1)
    raise AssertionError(f"turn {k} did not finish; status: {page.locator('#turn-status').inner_text()}")


def answer_shown(page, k: int) -> str:
    """The answer of bot bubble k as the browser shows it: the text above its folded reasoning."""
    body = page.locator("#chatbot .message.bot").nth(k - 1).inner_text()
    answer = body.split("Defensive reasoning")[0].strip()
    assert answer and "thinking" not in answer and "no answer" not in answer, f"turn {k} shows no answer: {body}"
    return answer


def choose(page, dropdown: str, text: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=text).first.click()


def test_two_users_chat_memory_aloe_and_log(server, browser, artifacts_dir):
    started = time.time()
    alice_ctx, page = sign_in(browser, server["url"], "alice")
    try:
        flow(server, browser, artifacts_dir, page)
    except BaseException:
        page.screenshot(path=str(artifacts_dir / "browser-failure.png"), full_page=True)
        print(server["log"].read_text()[-4000:])
        raise
    finally:
        alice_ctx.close()
    print(f"browser flow took {time.time() - started:.1f} s")


def flow(server, browser, artifacts_dir, page) -> None:
    from memory.session_log import SessionLog, default_log_path

    # -- chat: two streamed turns, each with its reasoning folded under the answer ------------------------
    first = chat(page, "I'm allergic to cats. Suggest a weekend activity.", 1)
    assert len(first) >= 3, f"the answer did not stream: {first}"
    first_answer = answer_shown(page, 1)  # a streamed turn ends with a non-empty answer, shown first
    assert "Avoids cats (allergy)" in page.locator("#prefs-used").inner_text()  # learned from the message
    second = chat(page, "Which pet would suit my small flat?", 2)
    assert len(second) >= 3
    answer_shown(page, 2)
    assert "cats" in page.locator("#prefs-used").inner_text().lower()  # the preference used for turn 2
    folds = page.locator("#chatbot details.cdra-reasoning")
    assert folds.count() == 2
    assert not any(folds.nth(i).evaluate("el => el.open") for i in range(2))  # folded once written
    assert "Defensive reasoning" in folds.nth(1).locator("summary").inner_text()
    assert "of at most 3" in folds.nth(1).locator("summary").inner_text()  # the step budget used
    steps_shown = [folds.nth(i).locator("li").count() for i in range(2)]
    page.locator("#chatbot .message.bot").first.hover()
    page.locator("#chatbot button[aria-label='Like']").first.click()
    page.wait_for_function("() => document.querySelector('#turn-status').innerText.includes('Thanks')")
    page.fill("#correction textarea", "I'd rather have ideas for indoors.")
    page.locator("#send-correction").click()
    page.wait_for_function(
        "() => document.querySelector('#turn-status').innerText.includes('Correction saved')"
    )
    page.screenshot(path=str(artifacts_dir / "chat.png"), full_page=True)

    # -- memory panel: the statement is there with its evidence; delete it -----------------------------------
    page.get_by_role("tab", name="Memory").click()
    page.wait_for_function("() => document.querySelector('#memory-table').innerText.includes('Avoids cats')")
    row_id = (  # the statement's id, in the table's last column (background inference may add other rows)
        "() => { const row = [...document.querySelectorAll('#memory-table [role=row]')]"
        ".find(r => r.textContent.includes('Avoids cats (allergy)'));"
        " const m = row && row.textContent.match(/pref-[0-9a-f]{12}/); return m ? m[0] : '' }"
    )
    deleted = page.evaluate(row_id)
    assert deleted.startswith("pref-")
    choose(page, "#pref-pick", "Avoids cats (allergy)")
    page.locator("#pref-delete").click()
    page.wait_for_function(f"() => !document.querySelector('#memory-table').innerText.includes('{deleted}')")

    # -- ALOE: start with a persona, rate each turn before the next one opens ---------------------------------
    page.get_by_role("tab", name="ALOE evaluation").click()
    choose(page, "#aloe-persona", "runner")
    page.locator("#aloe-start").click()
    page.wait_for_function("() => document.querySelector('#aloe-status').innerText.includes('Turn 0/10')")
    assert page.locator("#aloe-message textarea").input_value() == PERSONA["opening"]
    for k, (message, score) in enumerate(
        [(PERSONA["opening"], "4"), ("Something near home, please.", "5")], 1
    ):
        page.fill("#aloe-message textarea", message)
        page.locator("#aloe-send").click()
        page.wait_for_function(
            f"() => document.querySelector('#aloe-status').innerText.includes('Rate turn {k}')",
            timeout=TIMEOUT_MS,
        )
        assert page.locator("#aloe-send").is_disabled()  # no next turn before this one is rated
        page.locator("#aloe-rating").get_by_label(score).check()
        page.locator("#aloe-rate").click()
        page.wait_for_function(
            f"() => document.querySelector('#aloe-status').innerText.includes('Write turn {k + 1}')"
        )
    page.screenshot(path=str(artifacts_dir / "aloe.png"), full_page=True)
    page.locator("#aloe-pause").click()
    page.wait_for_function("() => document.querySelector('#aloe-status').innerText.includes('paused')")

    # -- a second user in a second browser context sees none of it ------------------------------------------
    bob_ctx, bob = sign_in(browser, server["url"], "bob")
    assert bob.locator("#chatbot .message").count() == 0
    bob.get_by_role("tab", name="Memory").click()
    bob.wait_for_function(
        "() => document.querySelector('#memory-summary').innerText.includes('0 preference')"
    )
    assert "cats" not in bob.locator("#memory-table").inner_text().lower()
    bob.get_by_role("tab", name="ALOE evaluation").click()
    bob.locator("#aloe-sessions input").click()
    assert bob.get_by_role("option").count() == 0
    # bob closes the tab while an answer streams; the log keeps a consistent record, the next turn works
    bob.get_by_role("tab", name="Chat").click()
    bob.fill("#message textarea", "Tell me a story about the sea.")
    bob.press("#message textarea", "Enter")
    bob.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot .message.bot');"
        " return b.length && !b[0].innerText.includes('thinking') }"  # the first streamed words
    )
    bob_ctx.close()
    bob_ctx, bob = sign_in(browser, server["url"], "bob")
    chat(bob, "Tell me a story about the sea.", 1)
    bob_ctx.close()
    with pytest.raises(urllib.error.HTTPError) as denied:  # the API needs a signed-in session too
        urllib.request.urlopen(server["url"] + "config", timeout=10)
    assert denied.value.code == 401

    # -- the session log holds all of it -------------------------------------------------------------------
    log = SessionLog(default_log_path(server["data"] / "logs"))
    chat_turns = log.turns(user_id="alice", mode="chat")
    assert [t["status"] for t in chat_turns] == ["ok", "ok"]
    assert all(t["answer"].strip() for t in chat_turns) and first_answer
    assert all(t["meta"]["reasoning"]["budget"] for t in chat_turns)
    assert [len(t["reasoning_steps"]) for t in chat_turns] == steps_shown
    assert chat_turns[0]["feedback"] == "up" and chat_turns[1]["feedback"] is None
    assert chat_turns[1]["correction"] == "I'd rather have ideas for indoors."
    assert any("cats" in p.lower() for p in chat_turns[1]["retrieved_preferences"])
    assert all(
        t["model_versions"]["policy"].startswith("default:") and t["latency_ms"]["generation"] > 0
        for t in chat_turns
    )
    aloe = log.sessions(user_id="alice", mode="aloe")
    assert len(aloe) == 1 and aloe[0]["status"] == "paused" and aloe[0]["meta"]["persona"]["id"] == "runner"
    rated = log.turns(user_id="alice", session_id=aloe[0]["session_id"])
    assert [t["rating"] for t in rated] == [4, 5] and all(t["persona"]["id"] == "runner" for t in rated)
    assert all(t["answer"].strip() for t in rated)  # ALOE turns end in an answer like the chat
    bob_turns = log.turns(user_id="bob")
    # one record per turn either way; whether the server notices the closed tab before the last token is a
    # race (the cancelled path itself is pinned in tests/app/test_assistant.py)
    assert len(bob_turns) == 2 and bob_turns[1]["status"] == "ok"
    assert bob_turns[0]["status"] in {"cancelled", "ok"} and bob_turns[0]["raw"]
    assert all(t["retrieved_preferences"] == [] for t in bob_turns)  # none of alice's memory
    log.close()

    shots = REPO / "docs" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for name in ("chat.png", "aloe.png"):
        shutil.copyfile(artifacts_dir / name, shots / name)
