"""OpenAIEngine and the OpenAI-compatible server, end to end: a real `cdra serve` subprocess on the
default model, called through our engine and through the official `openai` client."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from alignment.engines import EngineError, ModelSpec, SamplingParams
from alignment.engines.openai_engine import OpenAIEngine, option_logprobs
from app.settings import ROLES

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
JUDGE = [
    {"role": "system", "content": "You are a judge. Reply with one letter only."},
    {"role": "user", "content": "Which is a fruit? A: apple. B: hammer. Reply A or B."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cdra_command() -> list[str]:
    """The installed `cdra` script beside this interpreter, else the same entry point through -c."""
    script = Path(sys.executable).parent / "cdra"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'cdra'; from app.cli import main; main()"]


def cdra_env(data_dir: Path, model_cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDRA_")}
    env.update(CDRA_DATA_DIR=str(data_dir), CDRA_MODEL_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", COLUMNS="200", **extra)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache):
    """One `cdra serve` process for the whole module; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cdra_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=cdra_env(tmp_path_factory.mktemp("data"), model_cache), stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cdra serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"cdra serve did not become ready in 180 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def served(model_cache):
    """What `cdra serve` answers with on the default configuration: llama.cpp on the packaged GGUF."""
    from alignment.engines import build_engine

    return build_engine(ModelSpec(backend="llamacpp"), model_cache)


@pytest.fixture(scope="module")
def remote(server):
    engine = OpenAIEngine(ModelSpec(backend="openai", base_url=server, model="cdra-policy", timeout_s=120))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="unused", timeout=120, max_retries=0)


def test_greedy_generation_equals_the_local_engine(remote, served):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    other = [{"role": "user", "content": "Name a primary color."}]
    got = [c[0].text for c in remote.generate([QUESTION, other], params)]
    want = [c[0].text for c in served.generate([QUESTION, other], params)]
    assert got == want
    assert all(t.strip() for t in got)


def test_n_seeded_samples_per_prompt(remote):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=11)
    first = remote.generate([QUESTION], params)
    assert [len(x) for x in first] == [3]
    assert all(c.text for c in first[0])
    again = remote.generate([QUESTION], params)
    assert [c.text for c in again[0]] == [c.text for c in first[0]]


def test_score_matches_the_local_engine_and_ranks(remote, served):
    texts = ["The capital of France is Paris.", "Banana purple seventeen."]
    got = remote.score([QUESTION, QUESTION], texts)
    want = served.score([QUESTION, QUESTION], texts)
    assert got[0].logprob > got[1].logprob
    for g, w in zip(got, want):
        assert g.num_tokens == w.num_tokens
        assert g.logprob == pytest.approx(w.logprob, abs=1e-3)


def test_choice_logprobs_agree_with_the_local_engine(remote, default_engine):
    got = remote.choice_logprobs(JUDGE, ["A", "B"])
    want = default_engine.choice_logprobs(JUDGE, ["A", "B"])
    assert max(range(2), key=got.__getitem__) == max(range(2), key=want.__getitem__)
    # the endpoint pools " A" with "A", so it can only be at least the local single-spelling value
    for g, w in zip(got, want):
        assert g >= w - 1e-3


def test_official_client_chat_stream_and_models(client, served):
    ids = {m.id for m in client.models.list().data}
    assert {"cdra-policy", *ROLES} <= ids
    full = client.chat.completions.create(model="cdra-policy", messages=QUESTION, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    assert text == served.generate([QUESTION], SamplingParams(max_new_tokens=12))[0][0].text
    assert full.usage.completion_tokens > 0 and full.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="cdra-policy", messages=QUESTION, max_tokens=12,
                                                 temperature=0, stream=True))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_bad_requests_get_openai_shaped_errors(client, server):
    import openai

    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="cdra-policy", messages=[], max_tokens=4)
    assert empty.value.status_code == 400 and "messages" in empty.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-nonexistent", messages=QUESTION, max_tokens=4)
    assert "cdra-policy" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="cdra-policy", messages=[{"role": "user", "content": "word " * 9000}],
                                       max_tokens=4)
    assert "context window" in long.value.message
    raw = httpx.post(f"{server}/chat/completions", json={"messages": []}, timeout=30).json()
    assert set(raw["error"]) == {"message", "type", "param", "code"}


def test_unreachable_endpoint_fails_fast_in_one_line():
    engine = OpenAIEngine(ModelSpec(backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                    model="m", max_retries=1, timeout_s=5))
    start = time.monotonic()
    with pytest.raises(EngineError, match="cannot reach") as err:
        engine.generate([QUESTION], SamplingParams(max_new_tokens=4))
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)
    with pytest.raises(EngineError, match="cannot reach"):
        engine.score([QUESTION], ["x"])


def test_option_logprobs_pools_spellings_and_bounds_missing_options():
    top = [("A", -0.5), (" A", -1.5), ("B", -2.0), ("Yes", -3.0)]
    a, b, c, missing = option_logprobs(top, ["A", "B", "Yes please", "Z"])
    assert a == pytest.approx(-0.5 + math.log1p(math.exp(-1.0)))
    assert b == -2.0 and c == -3.0  # "Yes please" falls back to its listed prefix "Yes"
    assert missing == -3.0  # not listed: bounded above by the smallest listed log-prob


def test_an_endpoint_that_ignores_the_format_is_validated_retried_and_counted(server):
    """`cdra serve` does not enforce response_format: the engine validates every reply, re-draws a broken one
    at most ``format_retries`` times, and hands the caller the failure (and the counts)."""
    from alignment.formats import verdict

    engine = OpenAIEngine(ModelSpec(backend="openai", base_url=server, model="cdra-policy", timeout_s=120,
                                    format_retries=1))
    fmt = verdict("yesno", 12)
    assert engine.enforces(fmt) and not engine.exact_formats  # asked for a JSON schema, so read it leniently
    out = engine.generate([JUDGE], SamplingParams(max_new_tokens=24, temperature=0.9, seed=4, format=fmt))[0][0]
    stats = engine.format_stats
    assert stats["checked"] >= 1
    if out.format_error is None:  # the free 135M happened to write valid JSON
        assert out.parsed.rationale and stats["failed"] == 0
    else:
        assert out.parsed is None and stats["retried"] == 1 and stats["failed"] == 1 and stats["checked"] == 2
    plain = OpenAIEngine(ModelSpec(backend="openai", base_url=server, model="cdra-policy", structured_outputs="none"))
    assert not plain.enforces(fmt)
    engine.close()
    plain.close()
