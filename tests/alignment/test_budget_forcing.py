"""Budget forcing (alignment/budget_forcing.py): every response ends in a non-empty answer within its budget, on
the grammar path (llama.cpp and transformers, the real default model) and on the stop-sequence path (a real
OpenAI-compatible server, app/server.py, serving the real default model); the stream-following logic on strings."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from alignment.budget_forcing import (
    ReasoningBudget,
    ReasoningOutcome,
    _check_reasoning,
    _release,
    _strip_label,
    _truncate,
    stream_policy,
)
from alignment.echo import echo_counts, is_echo
from alignment.formats.base import FormatParseError
from alignment.prompts import render
from alignment.prompts.policy import POLICY_PROMPT, format_preferences, template_text
from alignment.steps import parse_response, read_response

QUERY = "I'm vegetarian. What should I cook for friends this weekend?"
TINY = ReasoningBudget(max_steps=2, step_tokens=6, answer_tokens=24)  # a step must be cut: forcing is exercised
KEY = "budget-forcing-test-key"
words = lambda text: len(text.split())


def conversation():
    return render(POLICY_PROMPT, preferences=format_preferences(["Avoids meat (vegetarian)"]), query=QUERY)


def check_response(text: str, outcome: ReasoningOutcome, budget: ReasoningBudget, count) -> None:
    parsed = parse_response(text)
    assert parsed.answer.strip(), text
    assert "Answer:" in text
    assert 1 <= len(parsed.steps) <= budget.max_steps, text
    assert all(count(s) <= budget.step_tokens + 1 for s in parsed.steps), text
    assert outcome.steps == len(parsed.steps) and outcome.budget == budget.label
    assert outcome.answer_tokens <= budget.answer_tokens + 1


# -- the stream-following logic, on strings -------------------------------------------------------------------


def test_reasoning_is_cut_at_the_answer_label_an_extra_step_or_a_step_budget():
    budget = ReasoningBudget(max_steps=2, step_tokens=5, answer_tokens=16)
    assert _check_reasoning("Step 1: a b\n**Answer:** hi", budget, words) == ("answer", "Step 1: a b\n")
    assert _check_reasoning("Step 1: a\nStep 2: b\nStep 3: c", budget, words)[0] == "extra_step"
    cut, keep = _check_reasoning("Step 1: one two three four five six seven", budget, words)
    assert cut == "step_tokens" and keep == "Step 1: one two three four five"
    assert _check_reasoning("Step 1: one two\nStep 2: three", budget, words) == (None, "Step 1: one two\nStep 2: three")
    assert _truncate("alpha beta gamma", 2, words) == "alpha beta"


def test_a_short_last_line_is_held_back_until_it_cannot_be_a_label():
    assert _release("first line\nSte") == ("first line", "\nSte")
    assert _release("no newline yet") == ("no newline yet", "")
    assert _release("x\n" + "long enough line") == ("x\nlong enough line", "")
    assert _strip_label("  Answer: Try a curry.") == " Try a curry."
    assert _strip_label("Try a curry.") == " Try a curry."


def test_budget_shrinks_to_a_turn_cap_and_names_itself():
    budget = ReasoningBudget(3, 40, 160)
    assert budget.label == "3×40+160" and ReasoningBudget().label == "3×32+128" and budget.within(10_000) is budget
    small = budget.within(120)
    assert small.total_tokens <= 120 and small.max_steps == 3 and small.answer_tokens >= 16


def test_echo_counts_steps_that_repeat_the_prompt_wording_but_not_the_users_words():
    old = "Step 1: the user's deeper, unstated preference behind this request."
    assert is_echo("The user's deeper, unstated preference behind this request.", old)
    assert not is_echo("Vegetarian friends: plan a meat-free menu.", old)
    user = ["I want the deeper unstated preference behind this request"]
    assert not is_echo("the deeper unstated preference behind this request", old, user)
    assert echo_counts([(["Seasickness means no boat trips."], [])], template_text()) == (1, 1)


# -- the grammar path: one constrained call ------------------------------------------------------------------------


def _grammar_run(engine, budget):
    outcome = ReasoningOutcome()
    text = "".join(stream_policy(engine, conversation(), budget, temperature=0.7, top_p=0.95, seed=1,
                                 outcome=outcome))
    count = lambda t: len(engine.encode(t))
    check_response(text, outcome, budget, count)
    assert outcome.path == "grammar" and outcome.calls == 1 and text.startswith("Step 1: ")
    return outcome


@pytest.mark.slow
def test_grammar_path_on_llamacpp_forces_the_answer(model_cache):
    from alignment.engines import ModelSpec, build_engine

    engine = build_engine(ModelSpec(backend="llamacpp"), model_cache)
    outcome = _grammar_run(engine, TINY)
    assert outcome.forced and outcome.forced_by in ("step_tokens", "max_steps")


@pytest.mark.slow
def test_grammar_path_on_transformers(default_engine):
    _grammar_run(default_engine, TINY)


# -- the stop-sequence path: an OpenAI-compatible server that cannot take the grammar -------------------------------


@pytest.fixture(scope="module")
def endpoint(default_engine, tmp_path_factory, model_cache):
    """app/server.py serving the real default model on a loopback port, in this process."""
    import uvicorn

    from app.server import create_app
    from app.settings import load_settings

    settings = load_settings(data_dir=tmp_path_factory.mktemp("serve"), model_cache_dir=model_cache,
                             serve={"api_key": KEY})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engines={"cdra-policy": default_engine}),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    os.environ["BUDGET_FORCING_TEST_KEY"] = KEY
    yield f"http://127.0.0.1:{port}/v1"
    os.environ.pop("BUDGET_FORCING_TEST_KEY", None)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_stop_path_on_an_openai_endpoint_cuts_steps_and_continues_the_answer(endpoint):
    from alignment.engines import ModelSpec
    from alignment.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine(ModelSpec(backend="openai", base_url=endpoint, model="cdra-policy", api_key_env="BUDGET_FORCING_TEST_KEY"))
    assert not engine.enforces(TINY.format)  # a hosted-style endpoint: no grammar, so stop + continuation
    outcome = ReasoningOutcome()
    text = "".join(stream_policy(engine, conversation(), TINY, temperature=0.0, outcome=outcome))
    check_response(text, outcome, TINY, lambda t: (len(t) + 3) // 4)
    assert outcome.path == "stop" and outcome.calls >= 2  # the reasoning, then the answer's continuation
    assert outcome.forced and outcome.forced_by in ("step_tokens", "max_steps", "reasoning_tokens")


@pytest.mark.slow
def test_an_assistant_turn_on_the_endpoint_ends_with_an_answer(endpoint, settings):
    from alignment.engines import ModelSpec
    from alignment.engines.openai_engine import OpenAIEngine
    from app.assistant import Assistant, AssistantConfig

    chat = settings.chat.model_copy(update={"reasoning_steps": 2, "step_tokens": 12, "answer_tokens": 32})
    engine = OpenAIEngine(ModelSpec(backend="openai", base_url=endpoint, model="cdra-policy", api_key_env="BUDGET_FORCING_TEST_KEY"))
    bot = Assistant(settings.model_copy(update={"chat": chat}), AssistantConfig(background_inference=False),
                    policy=engine)
    result = bot.answer("alice", QUERY)
    assert result.answer.strip() and 1 <= len(result.steps) <= 2
    turn = bot.log.turn("alice", result.turn_id)
    assert turn["meta"]["reasoning"]["path"] == "stop" and turn["meta"]["reasoning"]["budget"] == "2×12+32"
    assert turn["answer"] == result.answer
    bot.close()


def test_threads_leave_a_core_to_in_process_work():
    from alignment.engines.cpu_threads import in_process_work, pick_threads

    with in_process_work(cores=1):
        assert pick_threads(cores=2) == 1
    assert pick_threads(cores=1) == 1


def test_a_grammar_output_is_read_by_its_structure_even_when_the_answer_mentions_steps():
    """The grammar allows "Step 4:" or "Answer:" inside the (multi-line) answer: the old "last Answer: wins"
    split turned such an answer into extra steps (3.17 steps per turn under a budget of 3)."""
    text = "Step 1: Vegetarian, so no meat.\nStep 2: Short.\nAnswer: Try a risotto.\nStep 3: add peas.\nAnswer: done"
    parsed = read_response(text, max_steps=3)
    assert parsed.steps == ["Vegetarian, so no meat.", "Short."]
    assert parsed.answer == "Try a risotto.\nStep 3: add peas.\nAnswer: done" and parsed.well_formed
    fmt = ReasoningBudget().format
    with pytest.raises(FormatParseError):  # the grammar itself no longer lets an answer line go back to steps
        fmt.parse(text)
    assert fmt.parse("Step 1: Short.\nAnswer: Try a risotto.\n- Stepping stones: peas").answer.endswith("peas")
    answer = parsed.segments[-1]
    assert (answer.start, answer.end) == (text.index("Answer:"), len(text))  # spans cover the text
    free = "I think so.\n\nAnswer: yes"  # not the grammar's structure: the tolerant split still reads it
    assert read_response(free).answer == "yes" and read_response(free).steps == ["I think so."]
