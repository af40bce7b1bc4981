"""`cdra bench chat`'s prompt set and summary: PrefEval preference + question pairs across every dev topic."""

from __future__ import annotations

from app.bench_chat import SHIPPED_DEV, BenchResult, TurnStats, dev_prompts, summary


def test_dev_prompts_state_a_preference_then_ask_across_all_topics(shared_dir):
    prompts = dev_prompts(30, shared_dir / "data" / "prefeval")
    assert len(prompts) == len(set(prompts)) == 30
    assert all(p.strip() and q.strip().endswith("?") for p, q in prompts[:12])
    firsts = {p for p, _ in prompts[:12]}
    assert len(firsts) == 12  # round-robin: the first 12 come from the 12 topics
    assert len(dev_prompts(8, SHIPPED_DEV)) == 8  # the PrefEval items shipped in data/dev work too


def test_summary_rates_and_ratio():
    stats = [TurnStats(True, 3, 0, True, 100, 900, 2000 + 1000 * i, 100, 1.0) for i in range(3)]
    stats.append(TurnStats(False, 2, 1, False, 100, 5000, 9000, 50, 1.0))
    result = BenchResult(4, 0, "v", "llamacpp:x", "3×40+160", 0.0, stats, anchor={"decode_tokens_per_s": 125.0,
                                                                                   "threads": 2})
    n = summary(result)
    assert n["answer_rate"] == 0.75 and n["echo_rate"] == 1 / 11 and n["forced_rate"] == 0.75
    assert n["turn_p50_s"] == 4.0 and n["serving_decode_tps"] == 100.0 and n["decode_ratio"] == 0.8
