"""The OpenAI-compatible app in process (no socket): API keys, the personalization hook, raw completions.
(Who may use whose memory, and the malformed-request corpus: tests/app/test_security_api.py.)"""

import pytest
from fastapi.testclient import TestClient

from alignment.engines import SamplingParams
from app.server import POLICY_MODEL, ResponderRequest, create_app
from app.users import UserStore

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_api_key_is_required_when_configured(settings, default_engine):
    secured = settings.model_copy(update={"serve": settings.serve.model_copy(update={"api_key": "s3cret"})})
    client = TestClient(create_app(secured, engines={POLICY_MODEL: default_engine}))
    refused = client.get("/v1/models")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listed = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).json()
    assert [m["id"] for m in listed["data"]] == [POLICY_MODEL]
    assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_user_field_routes_policy_requests_through_the_responder(settings, default_engine):
    seen: list[ResponderRequest] = []

    def responder(request: ResponderRequest):
        """Personalize by telling the model who is asking, then stream its answer."""
        seen.append(request)
        conversation = [{"role": "system", "content": f"The user is called {request.user}."}, *request.messages]
        return default_engine.stream(conversation, request.params)

    store = UserStore.for_data_dir(settings.data_dir)
    store.add("alice", "alice-password")
    key, _ = store.create_key("alice")
    client = TestClient(create_app(settings, engines={POLICY_MODEL: default_engine, "judge": default_engine},
                                   responder=responder), headers={"Authorization": f"Bearer {key}"})
    body = {"model": POLICY_MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "user": "alice"}
    answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    expected = default_engine.generate(
        [[{"role": "system", "content": "The user is called alice."}, *QUESTION]], SamplingParams(max_new_tokens=8)
    )[0][0].text
    assert answer == expected
    assert seen[0].user == "alice" and seen[0].params.max_new_tokens == 8
    # role models and requests without `user` never reach the hook
    client.post("/v1/chat/completions", json={**body, "model": "judge"})
    client.post("/v1/chat/completions", json={k: v for k, v in body.items() if k != "user"})
    assert len(seen) == 1


@pytest.mark.slow
def test_raw_completion_echo_scores_and_generates(settings, default_engine):
    client = TestClient(create_app(settings, engines={POLICY_MODEL: default_engine}))
    scored = client.post("/v1/completions", json={"prompt": "The capital of France is Paris", "max_tokens": 0,
                                                   "echo": True, "logprobs": 2}).json()["choices"][0]
    assert scored["text"] == "The capital of France is Paris"
    lp = scored["logprobs"]
    assert lp["token_logprobs"][0] is None and all(x <= 0 for x in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and "".join(lp["tokens"]) == scored["text"]
    assert len(lp["top_logprobs"][1]) >= 2
    generated = client.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4,
                                                      "temperature": 0}).json()
    assert generated["choices"][0]["text"].strip() and generated["usage"]["completion_tokens"] > 0
    tokens = client.post("/tokenize", json={"messages": QUESTION}).json()["tokens"]
    assert tokens == default_engine.prompt_ids(QUESTION)
    assert client.post("/detokenize", json={"tokens": tokens}).json()["prompt"].endswith("assistant\n")
    bad = client.post("/v1/completions", json={"prompt": "", "max_tokens": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
