"""`cdra serve` as an outsider attacks it (issue 14, S1/R2/R3): no key or another user's key reads and writes
nothing of alice; API keys are per user; every malformed request is a 4xx; client errors log no turn."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from alignment.errors import CdraError
from alignment.explicit_extraction import extract_explicit
from app.assistant import Assistant, AssistantConfig, make_responder
from app.server import POLICY_MODEL, check_exposure, create_app
from app.users import UserStore

MARKER = "quokkamarker"
ASK = [{"role": "user", "content": "I'm allergic to plantedbybob. What should I cook tonight?"}]


class Probe:
    """The real assistant behind the real API, counting every read and write of alice's data."""

    def __init__(self, settings, engine) -> None:
        self.settings = settings
        self.users = UserStore.for_data_dir(settings.data_dir)
        for name in ("alice", "bob", "ops"):
            self.users.add(name, f"{name}-password")
        self.alice_key, _ = self.users.create_key("alice")
        self.bob_key, _ = self.users.create_key("bob")
        self.admin_key, _ = self.users.create_key("ops", admin=True)
        self.bot = Assistant(settings, AssistantConfig(background_inference=False), policy=engine)
        self.bot.memory.for_user("alice").add_preferences(extract_explicit(f"I'm allergic to {MARKER}.", "t0"))
        self.reads: list[str] = []
        retrieve = self.bot.retrieve

        def counted(scope: str, query: str):
            self.reads.append(scope)
            return retrieve(scope, query)

        self.bot.retrieve = counted
        self.engine = engine

    def client(self, settings=None, key: str | None = None) -> TestClient:
        app = create_app(settings or self.settings, engines={POLICY_MODEL: self.engine},
                         responder=make_responder(self.settings, self.bot), users=self.users)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(app, raise_server_exceptions=False, headers=headers)

    def alice_reads(self) -> int:
        return self.reads.count("alice")

    def alice_writes(self) -> tuple[int, list[str]]:
        prefs = [s.text for s in self.bot.memory.for_user("alice").list_preferences()]
        return len(self.bot.log.turns(user_id="alice")), prefs


@pytest.fixture
def probe(settings, default_engine):
    p = Probe(settings, default_engine)
    yield p
    p.bot.close()


def _ask(client: TestClient, user: str = "alice", stream: bool = False, **extra):
    body = {"model": POLICY_MODEL, "messages": ASK, "max_tokens": 4, "temperature": 0, "user": user,
            "stream": stream, **extra}
    return client.post("/v1/chat/completions", json=body)


@pytest.mark.slow
def test_nobody_but_alice_reads_or_writes_alices_memory(probe):
    before = probe.alice_writes()
    shared = probe.settings.model_copy(update={"serve": probe.settings.serve.model_copy(update={"api_key": "shared"})})
    attempts = {
        "no key": (probe.client(), 401),
        "wrong key": (probe.client(key="cdra_000000000000_" + "x" * 43), 401),
        "bob's key": (probe.client(key=probe.bob_key), 403),
        "the shared key": (probe.client(shared, key="shared"), 403),
    }
    refused = []
    for name, (client, status) in attempts.items():
        for stream in (False, True):
            r = _ask(client, "alice", stream)
            refused.append((name, stream, r.status_code == status and r.json()["error"]["code"] in
                            ("invalid_api_key", "user_not_allowed")))
    assert all(ok for *_, ok in refused), refused
    assert _ask(probe.client(key=probe.alice_key), "alice\n").status_code == 400  # full-match user names
    assert probe.alice_reads() == 0 and probe.alice_writes() == before  # 0 reads, 0 writes

    own = _ask(probe.client(key=probe.alice_key), "alice")
    assert own.status_code == 200 and own.json()["choices"][0]["message"]["content"]
    assert probe.alice_reads() == 1
    turns, prefs = probe.alice_writes()
    assert turns == 1 and "Avoids plantedbybob (allergy)" in prefs
    # an admin key may act for anyone, explicitly; a revoked key is refused at once
    assert _ask(probe.client(key=probe.admin_key), "alice").status_code == 200
    probe.users.revoke_keys("alice")
    assert _ask(probe.client(key=probe.alice_key), "alice").status_code == 401


def test_without_any_key_the_api_is_loopback_only_and_impersonal(settings, default_engine):
    users = UserStore.for_data_dir(settings.data_dir)
    serve = settings.serve
    check_exposure(serve, users)  # loopback, no keys: fine
    with pytest.raises(CdraError, match="only listens on 127.0.0.1"):
        check_exposure(serve.model_copy(update={"host": "0.0.0.0"}), users)
    check_exposure(serve.model_copy(update={"host": "0.0.0.0", "api_key": "k"}), users)
    seen = []
    client = TestClient(create_app(settings, engines={POLICY_MODEL: default_engine},
                                   responder=lambda r: seen.append(r) or iter(["x"]), users=users))
    refused = _ask(client, "alice")
    assert refused.status_code == 401 and "cdra users key create alice" in refused.json()["error"]["message"]
    assert seen == []
    assert client.get("/v1/models").status_code == 200  # plain model use needs no key on loopback


def test_serve_refuses_a_public_host_without_keys_and_keys_come_from_the_cli(cdra_main, tmp_path):
    code, _, err = cdra_main("serve", "--host", "0.0.0.0")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: no API key is configured"), err
    assert cdra_main("users", "add", "carol", "--password", "carol-secret")[0] == 0
    code, out, err = cdra_main("users", "key", "create", "carol")
    key = out.strip()
    assert code == 0 and key.startswith("cdra_") and "shown only this once" in err
    store = UserStore.for_data_dir(tmp_path / "data")
    assert store.authenticate_key(key).user == "carol"
    assert key not in (tmp_path / "data" / "users.json").read_text()  # only its hash is stored
    code, out, _ = cdra_main("users", "key", "list")
    assert code == 0 and "carol" in out and key not in out
    assert cdra_main("users", "key", "revoke", "carol")[0] == 0
    assert store.authenticate_key(key) is None
    code, _, err = cdra_main("users", "key", "create", "nobody")
    assert code == 2 and "cdra users add nobody" in err


#: (route, body, why it is wrong): none may give a 5xx
MALFORMED = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 2**80}, "seed too big"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": -1}, "negative seed"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1, "seed": 2**80}, "seed too big"),
    ("/v1/completions", {"prompt": [10**9], "max_tokens": 1}, "token id out of range"),
    ("/v1/completions", {"prompt": [-1], "max_tokens": 1}, "negative token id"),
    ("/v1/completions", {"prompt": [[1, 2], [49152]], "max_tokens": 0, "echo": True, "logprobs": 1}, "id = vocab"),
    ("/detokenize", {"tokens": [10**9]}, "token id out of range"),
    ("/v1/detokenize", {"tokens": [-5]}, "negative token id"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, "huge max"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, "huge max_tokens"),
    ("/v1/completions", {"prompt": [1] * 9000, "max_tokens": 1}, "prompt too long"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 9000}]}, "prompt too long"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages not a list"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": {"a": 1}}]}, "content an object"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "unsupported role"),
    ("/v1/chat/completions", {"messages": []}, "no messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n = 0"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p = 0"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "type"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}, "no model"),
    ("/v1/completions", {"prompt": [[]], "max_tokens": 1}, "empty prompt"),
    ("/v1/completions", {"prompt": ["a", 1], "max_tokens": 1}, "mixed prompt"),
    ("/tokenize", {"messages": []}, "no messages"),
    ("/tokenize", {}, "nothing to tokenize"),
]
#: the same mistakes on the personalized path (alice, with her key): 4xx, and no failed turn is logged
PERSONAL = [
    {"max_tokens": 10**9}, {"max_tokens": 8192}, {"seed": 2**80}, {"user": "alice__aloe__x"},
    {"messages": [{"role": "user", "content": "hi " * 5000}]},
    {"messages": [{"role": "assistant", "content": "the last message is not the user's"}]},
    {"messages": [{"role": "user", "content": "\x00\x01\x02" * 50}]},
]


@pytest.mark.slow
def test_malformed_requests_are_4xx_and_log_nothing(probe):
    client = probe.client(key=probe.alice_key)
    statuses = []
    for route, body, why in MALFORMED:
        r = client.post(route, json=body)
        statuses.append((why, route, r.status_code, r.json()["error"]["message"][:80]))
    raw = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    statuses.append(("not JSON", "/v1/chat/completions", raw.status_code, ""))
    for extra in PERSONAL:
        extra = {"user": "alice", **extra}
        r = _ask(client, **extra)
        statuses.append((json.dumps(extra)[:40], "personal", r.status_code, r.text[:120]))
        r = _ask(client, stream=True, **extra)
        statuses.append((json.dumps(extra)[:40], "personal stream", r.status_code, ""))
    server_errors = [s for s in statuses if s[2] >= 500]
    assert server_errors == [], server_errors
    assert [s for s in statuses if not 400 <= s[2] < 500] == []
    assert probe.bot.log.turns(user_id="alice") == []  # client errors are not failed turns
