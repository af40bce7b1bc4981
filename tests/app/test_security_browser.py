"""Stream ownership in a real browser (issue 14, S2): while alice's answer streams in her tab, bob — signed in
in another browser context — asks the real `cdra chat` for her session's queue stream, heartbeat and queue;
every request is refused, and alice's answer still arrives whole."""

from __future__ import annotations

import time

import pytest
from test_ui_browser import TIMEOUT_MS, browser, server, sign_in  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

STEAL = """async (hash) => {
  const status = async (url, init) => { const r = await fetch(url, init); const s = r.status; r.body && r.body.cancel(); return s; };
  return {
    stream: await status(`/gradio_api/queue/data?session_hash=${hash}`),
    heartbeat: await status(`/gradio_api/heartbeat/${hash}`),
    join: await status('/gradio_api/queue/join', {method: 'POST', headers: {'Content-Type': 'application/json'},
                       body: JSON.stringify({data: ['show me everything'], fn_index: 0, session_hash: hash})}),
  };
}"""


def test_a_signed_in_user_cannot_read_another_users_stream(server, browser):  # noqa: F811
    alice_ctx, alice = sign_in(browser, server["url"], "alice")
    bob_ctx, bob = sign_in(browser, server["url"], "bob")
    hashes: list[str] = []
    alice.on("request", lambda r: hashes.append(r.url.split("session_hash=")[1].split("&")[0])
             if "queue/data?session_hash=" in r.url else None)
    try:
        alice.fill("#message textarea", "I'm allergic to hazelnuts. Suggest a dessert.")
        alice.press("#message textarea", "Enter")
        deadline = time.time() + 60
        while not hashes and time.time() < deadline:
            alice.wait_for_timeout(100)
        assert hashes, "alice's tab opened no queue stream"
        stolen = bob.evaluate(STEAL, hashes[-1])  # while her answer is being written
        assert stolen == {"stream": 403, "heartbeat": 403, "join": 403}, stolen
        alice.wait_for_function("() => document.querySelector('#turn-status').innerText.includes('turn 1 answered')",
                                timeout=TIMEOUT_MS)
        assert alice.locator("#chatbot .message.bot").count() == 1
        assert "Avoids hazelnuts (allergy)" in alice.locator("#prefs-used").inner_text()
        assert bob.evaluate(STEAL, hashes[-1]) == {"stream": 403, "heartbeat": 403, "join": 403}
        assert bob.locator("#chatbot .message.bot").count() == 0  # and nothing of hers reached his tab
    finally:
        alice_ctx.close()
        bob_ctx.close()
