"""Both LangChain bridges on the real default model: our engine as a chat model, and a chat model as an engine."""

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

from alignment.engines import EngineError, SamplingParams
from alignment.engines.langchain_engine import EngineChatModel, LangChainEngine

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a primary color."}],
]


def test_engine_as_chat_model_invoke_and_stream(default_engine):
    chat = EngineChatModel(engine=default_engine, max_new_tokens=10)
    message = chat.invoke([SystemMessage("Answer in one word."), HumanMessage("Name a primary color.")])
    direct = default_engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=10))[0][0]
    assert message.content == direct.text
    assert message.usage_metadata["output_tokens"] == direct.completion_tokens
    streamed = "".join(chunk.content for chunk in chat.stream([HumanMessage("What is the capital of France?")]))
    assert streamed == default_engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10))[0][0].text
    with pytest.raises(EngineError, match="not supported"):
        chat.invoke([ToolMessage("x", tool_call_id="1")])


def test_chat_model_as_engine_generates_like_the_engine(default_engine):
    engine = LangChainEngine(EngineChatModel(engine=default_engine), max_concurrency=2)
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    through = engine.generate(PROMPTS, params)
    direct = default_engine.generate(PROMPTS, params)
    assert [c[0].text for c in through] == [c[0].text for c in direct]
    assert "".join(engine.stream(PROMPTS[0], params)) == direct[0][0].text
    sampled = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=3))
    assert len(sampled[0]) == 2 and all(c.text for c in sampled[0])


def test_scoring_goes_to_the_engine_underneath_or_fails_clearly(default_engine):
    engine = LangChainEngine(EngineChatModel(engine=default_engine))
    likely, unlikely = engine.score(PROMPTS[:1] * 2, ["The capital of France is Paris.", "Banana purple seventeen."])
    assert likely.logprob > unlikely.logprob

    # a chat model with no engine underneath (LangChain's own fake, standing in for a hosted model)
    opaque = LangChainEngine(FakeListChatModel(responses=["A"]))
    assert opaque.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))[0][0].text == "A"
    with pytest.raises(EngineError, match="cannot score"):
        opaque.score(PROMPTS[:1], ["x"])
    with pytest.raises(EngineError, match="no log-probabilities"):
        opaque.choice_logprobs(PROMPTS[0], ["A", "B"])
