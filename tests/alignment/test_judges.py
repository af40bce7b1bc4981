"""Judges: strict verdict parsing on hand-made replies, pairwise position-bias handling, the cache, and
the real packaged model judging with verdicts read from its probabilities after its rationale."""

from __future__ import annotations

import json
import math

import pytest

from alignment.judges import (
    CallStats, EvalCache, Judge, JudgeConfig, Judgment, VerdictParseError, aloe_turn_request, pairwise_outcome,
    pairwise_requests, parse_verdict, rubric_request, softmax, verdict_counts, verdict_prefix,
)
from alignment.prompts.judge import YES_NO_RUBRICS


@pytest.mark.parametrize("text, kind, verdict", [
    ('{"rationale": "It recommends gluten-free places.", "verdict": "no"}', "yesno", False),
    ('  {"rationale": "Mentions the allergy.", "verdict": "Yes"}\n', "yesno", True),
    ('```json\n{"rationale": "ok", "verdict": "yes"}\n```', "yesno", True),
    ('{"rationale": "B respects it.", "verdict": "b"}', "pair", "B"),
    ('{"rationale": "Fits a runner.", "rating": 4}', "rating", 4),
    ('{"rationale": "Fits.", "rating": "5"}', "rating", 5),
])
def test_parse_verdict_accepts_exactly_the_json_format(text, kind, verdict):
    parsed = parse_verdict(text, kind)
    assert parsed.verdict == verdict and parsed.rationale


@pytest.mark.parametrize("text, kind", [
    ("Yes, the reply violates the preference.", "yesno"),  # prose, not JSON
    ('Sure! {"rationale": "x", "verdict": "yes"}', "yesno"),  # prose before the object
    ('{"rationale": "x", "verdict": "yes"} I hope this helps', "yesno"),  # prose after
    ('{"verdict": "yes"}', "yesno"),  # no rationale
    ('{"rationale": "  ", "verdict": "no"}', "yesno"),  # empty rationale
    ('{"rationale": "x", "verdict": "maybe"}', "yesno"),
    ('{"rationale": "x", "verdict": true}', "yesno"),
    ('{"rationale": "x", "verdict": "C"}', "pair"),
    ('{"rationale": "x", "rating": 6}', "rating"),
    ('{"rationale": "x", "rating": 3.5}', "rating"),
    ('{"rationale": "x", "rating": true}', "rating"),
    ('["yes"]', "yesno"),
])
def test_parse_verdict_rejects_everything_else(text, kind):
    with pytest.raises(VerdictParseError):
        parse_verdict(text, kind)


def test_verdict_prefix_is_the_canonical_reply_up_to_the_value():
    prefix = verdict_prefix('It says "no pets".', "yesno")
    assert prefix == '{"rationale": "It says \\"no pets\\".", "verdict": "'
    assert parse_verdict(prefix + 'yes"}', "yesno").verdict is True
    assert parse_verdict(verdict_prefix("ok", "rating") + "3}", "rating").verdict == 3
    probs = softmax([-1.0, -2.0])
    assert math.isclose(sum(probs), 1.0) and probs[0] > probs[1]


def _pair_judgment(order: str, verdict: str | None, p_a: float | None = None) -> Judgment:
    return Judgment("pairwise", "pair", verdict, "r", "json", meta={"order": order},
                    probabilities=None if p_a is None else {"A": p_a, "B": 1 - p_a})


def test_pairwise_both_orders_turn_position_bias_into_a_tie():
    reqs = pairwise_requests(preference="No gluten.", query="Rome food?", response_x="X reply", response_y="Y reply")
    assert [r.meta["order"] for r in reqs] == ["xy", "yx"]
    assert "X reply" in reqs[0].messages[-1]["content"].split("Reply B:")[0]
    assert "X reply" in reqs[1].messages[-1]["content"].split("Reply B:")[1]
    # a judge that always says "A" favours whichever reply is shown first: a tie, not a win
    assert pairwise_outcome([_pair_judgment("xy", "A"), _pair_judgment("yx", "A")])[0] == "tie"
    # the same reply chosen in both orders is a real win
    assert pairwise_outcome([_pair_judgment("xy", "B", 0.2), _pair_judgment("yx", "A", 0.9)]) == ("y", pytest.approx(0.15))
    # an order without a readable verdict leaves the pair undecided
    assert pairwise_outcome([_pair_judgment("xy", "A"), _pair_judgment("yx", None)])[0] is None
    one = pairwise_requests(preference="p", query="q", response_x="x", response_y="y", swap=False)
    assert len(one) == 1 and one[0].meta["order"] in ("xy", "yx")


def test_rubric_requests_render_every_rubric():
    for rubric in YES_NO_RUBRICS:
        req = rubric_request(rubric, preference="Avoids cats (allergy).", query="Weekend ideas?",
                             response="Visit the cat café!", notes="Must avoid animals.", meta={"item_id": "i1"})
        text = json.dumps(req.messages)
        assert "Visit the cat caf" in text and '\\"verdict\\"' in text and req.meta == {"item_id": "i1"}
    with pytest.raises(Exception, match="unknown rubric"):
        rubric_request("nope", preference="p", query="q", response="r")
    aloe = aloe_turn_request(profile="A marathon runner", personality="dry", hidden_preferences=["numbers"],
                             message="hi", response="hello")
    assert aloe.kind == "rating" and "marathon" in aloe.messages[-1]["content"]


def test_verdict_counts_report_unreadable_verdicts():
    js = [Judgment("violates", "yesno", True, "r", "logprobs", json_verdict=True, probabilities={"yes": 0.8, "no": 0.2}),
          Judgment("violates", "yesno", False, "r", "logprobs", json_verdict=True, probabilities={"yes": 0.4, "no": 0.6}),
          Judgment("violates", "yesno", None, "", "none", json_error="not JSON"),
          Judgment("helpful", "yesno", None, "", "none", error="prompt too long")]
    counts = verdict_counts(js)
    assert counts["violates"]["n"] == 3 and counts["violates"]["json_unparsed"] == 1
    assert counts["violates"]["no_verdict"] == 1 and counts["violates"]["agreement"] == 0.5
    assert counts["violates"]["mean_p_yes"] == pytest.approx(0.6)
    assert counts["helpful"]["failed"] == 1


def test_eval_cache_round_trip_and_counts(tmp_path):
    cache = EvalCache(tmp_path / "c.sqlite")
    cache.put_many([("k1", "judgment", {"verdict": True}, {"item_id": "a", "rubric": "helpful"})])
    assert cache.get_many(["k1", "k2"]) == {"k1": {"verdict": True}}
    assert (cache.hits, cache.misses) == (1, 1)
    cache.close()
    reopened = EvalCache(tmp_path / "c.sqlite")
    assert reopened.count("judgment") == 1
    reopened.close()
    (tmp_path / "bad.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match="cannot open the evaluation cache"):
        EvalCache(tmp_path / "bad.sqlite")


@pytest.mark.slow
def test_real_judge_reads_verdicts_from_probabilities_and_caches(default_engine, tmp_path):
    requests = [
        rubric_request("violates", preference="I strictly avoid gluten (celiac disease).",
                       query="Must-try restaurants in Rome?", response="Try Roscioli's carbonara and Pizzarium's pizza.",
                       meta={"item_id": "rome"}),
        rubric_request("helpful", preference="I strictly avoid gluten (celiac disease).",
                       query="Must-try restaurants in Rome?", response="Sorry, I cannot help with that.",
                       meta={"item_id": "rome"}),
    ]
    cache = EvalCache(tmp_path / "cache.sqlite")
    stats = CallStats()
    judge = Judge(default_engine, "default:test", JudgeConfig(max_new_tokens=12, batch_size=4), cache, stats)
    assert judge.use_logprobs  # a local judge: verdicts from probabilities
    first = judge.run(requests)
    for j in first:
        assert j.source == "logprobs" and isinstance(j.verdict, bool)
        assert set(j.probabilities) == {"yes", "no"} and math.isclose(sum(j.probabilities.values()), 1.0)
        assert j.verdict == (j.probabilities["yes"] >= 0.5)
        assert j.raw and j.rationale  # the judge's own text is kept, parseable or not
        assert (j.json_error is None) == (j.json_verdict is not None)
    assert stats.generate_calls == 1 and stats.score_calls == 1 and stats.scored == 2  # one forward per judgment
    # the one-pass reading equals scoring each option's full text with Engine.score
    request, judgment = requests[0], first[0]
    prefix = verdict_prefix(judgment.rationale, "yesno")
    scored = default_engine.score([list(request.messages)] * 2, [prefix + "yes", prefix + "no"])
    assert softmax([s.logprob for s in scored])[0] == pytest.approx(judgment.probabilities["yes"], abs=1e-3)

    again = Judge(lambda: pytest.fail("a cached run must not load the judge"), "default:test",
                  JudgeConfig(max_new_tokens=12, batch_size=4), cache, CallStats())
    second = again.run(requests)
    assert again.stats.model_calls == 0 and again.stats.cache_hits == 2
    assert [j.verdict for j in second] == [j.verdict for j in first]
    assert [j.rationale for j in second] == [j.rationale for j in first]
    cache.close()
