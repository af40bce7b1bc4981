"""The DeepPref and Pers-GenPRM output formats (council thought, council value, scenario, step judgment) on each
CPU engine with the real default model: constrained decoding makes every output parse strictly. Also: the
Pers-GenPRM training target (``format_step_judgment``) is a string the step-judgment grammar accepts token by
token, so SFT targets and constrained outputs agree."""

from __future__ import annotations

import pytest

from alignment.critique import format_step_judgment
from alignment.engines import ModelSpec, SamplingParams, build_engine
from alignment.formats import council_thought, council_value, scenario, step_judgment
from alignment.prm import step_conversations
from alignment.prompts import render
from alignment.prompts.council import PERSONAS, PROPOSE_PROMPT, SCENARIO_PROMPT, VALUE_PROMPT
from alignment.prompts.prm import format_previous_steps

pytestmark = pytest.mark.slow

PREFERENCE = ("I love being outdoors and want new experiences, but I have severe allergies to animal dander, "
              "and crowds make me anxious.")
QUERY = "Recommend some outdoor experiences."
STEP = "Avoid farms, zoos and busy parks: dander and crowds are the two risks."


def _cases():
    """(format, prompt) for each output, at small bounds so a CPU test stays quick."""
    return [
        (council_thought(2, 12), render(PROPOSE_PROMPT, persona="Pragmatist", focus=PERSONAS["Pragmatist"],
                                        preference=PREFERENCE, query=QUERY,
                                        previous_steps=format_previous_steps([STEP]), step_number=2)),
        (council_value(), render(VALUE_PROMPT, preference=PREFERENCE, query=QUERY,
                                 previous_steps=format_previous_steps([]), step=STEP)),
        (scenario(24, 12), render(SCENARIO_PROMPT, domain="travel")),
        (step_judgment(12), step_conversations(PREFERENCE, QUERY, [STEP, "Answer: Try a quiet alpine lake."])[1]),
    ]


def _check_engine(engine) -> None:
    for fmt, conv in _cases():
        params = SamplingParams(max_new_tokens=0, temperature=0.8, n=2, seed=3, format=fmt)
        samples = engine.generate([conv], params)[0]
        for completion in samples:
            assert completion.format_error is None, (fmt.name, completion.text)
            assert completion.parsed == fmt.parse(completion.text), fmt.name  # the strict reader agrees
            assert not completion.format_repaired and completion.finish_reason == "stop", (fmt.name, completion.text)
            assert completion.completion_tokens <= fmt.max_tokens


def test_each_format_parses_on_transformers(default_engine):
    _check_engine(default_engine)


def test_each_format_parses_on_llamacpp(model_cache):
    engine = build_engine(ModelSpec(backend="llamacpp"), model_cache, cache=False)
    try:
        _check_engine(engine)
    finally:
        engine.close()


def test_training_targets_are_accepted_by_the_grammar(default_engine):
    from alignment.formats.constrain import TokenizerBridge

    fmt = step_judgment(24)
    bridge = TokenizerBridge.from_hf(default_engine.tokenizer, default_engine.model.get_output_embeddings().weight.shape[0])
    for critique, score in [("Names the allergy and the crowds.", 0.8), ("Suggests a petting zoo.\nIgnores dander.", -1.0),
                            ("Neutral, says little.", 0.0), ("Fine.", -0.333), ("Excellent.", 1.0)]:
        matcher = bridge.matcher(fmt)
        target = format_step_judgment(critique, score)
        tokens = default_engine.tokenizer.encode(target, add_special_tokens=False)
        assert matcher.consume_tokens(tokens), (target, matcher.get_error())
        assert matcher.is_accepting(), target  # complete: the grammar may end here (then only end-of-sequence)
