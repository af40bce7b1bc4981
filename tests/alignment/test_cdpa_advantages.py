"""CDPA's per-token advantages (Eq. 3) and the outcome / process GRPO baselines, on hand-made tensors."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from alignment.cdpa import (
    EPS,
    cdpa_advantages,
    completion_segments,
    compute_advantages,
    outcome_advantages,
    outcome_rewards,
    process_advantages,
    step_scores_tensor,
    token_rewards,
)

NAN = math.nan


def mask_of(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = max(lengths) if width is None else width
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def padded(rows: list[list[float]], width: int) -> torch.Tensor:
    return torch.tensor([r + [NAN] * (width - len(r)) for r in rows], dtype=torch.float32)


def assert_adv(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


def z(value: float, mean: float, std: float) -> float:
    return (value - mean) / (std + EPS)


# -- step scores and token rewards ---------------------------------------------------------------------


def test_step_scores_tensor_pads_ragged_rows_and_marks_failures_nan():
    t = step_scores_tensor([[0.5, None, -1.0], [1.0], []])
    assert t.shape == (3, 3)
    assert t[0, 0] == 0.5 and math.isnan(t[0, 1]) and t[0, 2] == -1.0
    assert t[1, 0] == 1.0 and torch.isnan(t[1, 1:]).all()
    assert torch.isnan(t[2]).all()
    assert step_scores_tensor([[0.1]], width=4).shape == (1, 4)
    with pytest.raises(ValueError):
        step_scores_tensor([[0.1, 0.2]], width=1)


def test_token_rewards_map_each_token_to_its_step_score():
    scores = step_scores_tensor([[0.5, -0.25, 1.0], [0.0, NAN]])
    seg = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 0, 0]])
    mask = mask_of([5, 3])
    r = token_rewards(scores, seg, mask)
    assert r[0].tolist() == [0.5, 0.5, -0.25, 1.0, 1.0]
    assert r[1, 0] == 0.0
    assert torch.isnan(r[1, 1:]).all()  # a failed step (NaN) and padding both carry no reward


def test_token_rewards_segment_beyond_scores_is_unscored():
    r = token_rewards(step_scores_tensor([[0.3]]), torch.tensor([[0, 1, 5]]), mask_of([3]))
    assert r[0, 0] == pytest.approx(0.3) and torch.isnan(r[0, 1:]).all()


# -- CDPA (Eq. 3) ----------------------------------------------------------------------------------------


def test_cdpa_ragged_group_normalizes_per_position_and_zeroes_lone_positions():
    rewards = padded([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.5, 0.5]], 5)
    mask = mask_of([3, 5])
    adv = cdpa_advantages(rewards, mask, group_size=2)
    s = statistics.stdev([1.0, 0.0])  # Bessel-corrected, as trl's group std
    expected = [
        [z(1, 0.5, s), z(1, 0.5, s), z(-1, -0.5, s), 0.0, 0.0],
        [z(0, 0.5, s), z(0, 0.5, s), z(0, -0.5, s), 0.0, 0.0],  # t = 3, 4: only sample 1 reaches them
    ]
    assert_adv(adv, expected)
    assert adv.shape == mask.shape


def test_cdpa_three_samples_positions_reached_by_two():
    rewards = padded([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1], [-0.5, -0.5, 0.3, 0.3]], 4)
    mask = mask_of([4, 2, 4])
    adv = cdpa_advantages(rewards, mask, group_size=3)
    m01, s01 = statistics.mean([0.9, 0.1, -0.5]), statistics.stdev([0.9, 0.1, -0.5])
    m23, s23 = statistics.mean([0.9, 0.3]), statistics.stdev([0.9, 0.3])
    assert_adv(adv[0], [z(0.9, m01, s01)] * 2 + [z(0.9, m23, s23)] * 2)
    assert_adv(adv[1], [z(0.1, m01, s01)] * 2 + [0.0, 0.0])
    assert_adv(adv[2], [z(-0.5, m01, s01)] * 2 + [z(0.3, m23, s23)] * 2)


def test_cdpa_single_sample_group_has_zero_advantage():
    adv = cdpa_advantages(torch.tensor([[0.7, 0.7, -0.2]]), mask_of([3]), group_size=1)
    assert adv.tolist() == [[0.0, 0.0, 0.0]]


def test_cdpa_zero_variance_gives_zero_not_nan():
    rewards = torch.full((4, 3), 0.4)
    adv = cdpa_advantages(rewards, torch.ones(4, 3), group_size=4)
    assert torch.equal(adv, torch.zeros(4, 3))


def test_cdpa_padding_values_are_ignored_even_if_not_nan():
    # Garbage in padded slots must not leak into μ_t / σ_t.
    clean = cdpa_advantages(padded([[1.0, 0.0], [0.0]], 2), mask_of([2, 1]), 2)
    dirty = cdpa_advantages(torch.tensor([[1.0, 0.0], [0.0, 99.0]]), mask_of([2, 1]), 2)
    assert torch.equal(clean, dirty)
    assert dirty[1, 1] == 0.0 and dirty[0, 1] == 0.0


def test_cdpa_unscored_step_is_left_out_and_gets_zero():
    rewards = torch.tensor([[1.0, 1.0], [0.0, NAN], [0.5, 0.0]])
    adv = cdpa_advantages(rewards, torch.ones(3, 2), group_size=3)
    m0, s0 = statistics.mean([1.0, 0.0, 0.5]), statistics.stdev([1.0, 0.0, 0.5])
    m1, s1 = statistics.mean([1.0, 0.0]), statistics.stdev([1.0, 0.0])
    assert adv[:, 0].tolist() == pytest.approx([z(1, m0, s0), z(0, m0, s0), z(0.5, m0, s0)], abs=1e-6)
    assert adv[:, 1].tolist() == pytest.approx([z(1, m1, s1), 0.0, z(0, m1, s1)], abs=1e-6)


def test_cdpa_groups_in_a_batch_are_independent():
    g1 = padded([[1.0, 1.0], [0.0]], 3)
    g2a = padded([[0.2, 0.2, 0.2], [-0.8, -0.8, -0.8]], 3)
    g2b = padded([[5.0, 5.0, 5.0], [3.0, 3.0, 3.0]], 3)
    mask = mask_of([2, 1, 3, 3], 3)
    a = cdpa_advantages(torch.cat([g1, g2a]), mask, group_size=2)
    b = cdpa_advantages(torch.cat([g1, g2b]), mask, group_size=2)
    assert torch.equal(a[:2], b[:2])  # group 1 does not see group 2
    s = statistics.stdev([0.2, -0.8])
    assert_adv(a[2], [z(0.2, -0.3, s)] * 3)
    assert_adv(a[3], [z(-0.8, -0.3, s)] * 3)


def _reference_cdpa(rewards: list[list[float]], lengths: list[int], group: int) -> list[list[float]]:
    """Loop-by-loop Eq. 3, to check the vectorized code on random ragged batches."""
    width = max(lengths)
    out = [[0.0] * width for _ in rewards]
    for g0 in range(0, len(rewards), group):
        for t in range(width):
            members = [i for i in range(g0, g0 + group) if t < lengths[i] and not math.isnan(rewards[i][t])]
            vals = [rewards[i][t] for i in members]
            if len(vals) < 2:
                continue
            mu, sd = statistics.mean(vals), statistics.stdev(vals)
            for i in members:
                out[i][t] = (rewards[i][t] - mu) / (sd + EPS)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_cdpa_matches_loop_reference_on_random_ragged_batches(seed):
    rng = random.Random(seed)
    group, groups = rng.choice([2, 3, 5]), rng.choice([1, 2, 3])
    n = group * groups
    lengths = [rng.randint(1, 9) for _ in range(n)]
    width = max(lengths)
    rows = [[rng.choice([-1.0, -0.5, 0.0, 0.25, 1.0, NAN]) for _ in range(width)] for _ in range(n)]
    adv = cdpa_advantages(torch.tensor(rows), mask_of(lengths, width), group)
    assert_adv(adv, _reference_cdpa(rows, lengths, group))
    assert not torch.isnan(adv).any()


# -- outcome-supervised GRPO ---------------------------------------------------------------------------


def test_outcome_rewards_mean_and_sum():
    scores = step_scores_tensor([[0.5, 1.0], [0.2, None, 0.4], [None, None], [-1.0]])
    mean = outcome_rewards(scores, "mean")
    assert mean[:2].tolist() == pytest.approx([0.75, 0.3])
    assert math.isnan(mean[2]) and mean[3] == -1.0
    total = outcome_rewards(scores, "sum", num_steps=torch.tensor([2, 3, 2, 1]))
    assert total[0] == pytest.approx(1.5) and total[3] == -1.0
    assert math.isnan(total[1]) and math.isnan(total[2])  # a failed step makes the sum incomparable
    assert outcome_rewards(scores, "sum")[1] == pytest.approx(0.6)  # without step counts: scored steps only
    with pytest.raises(ValueError):
        outcome_rewards(scores, "max")  # type: ignore[arg-type]


def test_outcome_advantages_broadcast_over_each_response():
    mask = mask_of([2, 4, 3, 1])
    adv = outcome_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), mask, group_size=2)
    s = statistics.stdev([1.0, 0.0])
    assert_adv(adv[0], [z(1, 0.5, s)] * 2 + [0, 0])
    assert_adv(adv[1], [z(0, 0.5, s)] * 4)
    assert adv[2:].tolist() == [[0.0] * 4, [0.0] * 4]  # zero variance group


def test_outcome_unscored_response_and_single_sample():
    adv = outcome_advantages(torch.tensor([1.0, NAN, 0.0]), torch.ones(3, 2), group_size=3)
    s = statistics.stdev([1.0, 0.0])
    assert_adv(adv, [[z(1, 0.5, s)] * 2, [0.0, 0.0], [z(0, 0.5, s)] * 2])
    assert outcome_advantages(torch.tensor([0.9]), torch.ones(1, 3), 1).tolist() == [[0.0] * 3]


# -- process-supervised GRPO (Appendix D) --------------------------------------------------------------


def test_process_advantage_is_suffix_sum_of_group_normalized_steps():
    scores = step_scores_tensor([[1.0, 0.0], [0.5]])
    seg = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    mask = mask_of([5, 3])
    adv = process_advantages(scores, seg, mask, group_size=2)
    mu, sd = statistics.mean([1.0, 0.0, 0.5]), statistics.stdev([1.0, 0.0, 0.5])
    n = [z(1.0, mu, sd), z(0.0, mu, sd)]
    assert_adv(adv[0], [n[0] + n[1]] * 2 + [n[1]] * 3)
    assert_adv(adv[1], [z(0.5, mu, sd)] * 3 + [0.0, 0.0])


def test_process_failed_step_adds_nothing_and_is_out_of_stats():
    scores = step_scores_tensor([[0.2, None, -0.6], [0.8, 0.4]])
    seg = torch.tensor([[0, 1, 2], [0, 1, 1]])
    adv = process_advantages(scores, seg, torch.ones(2, 3), group_size=2)
    vals = [0.2, -0.6, 0.8, 0.4]
    mu, sd = statistics.mean(vals), statistics.stdev(vals)
    a = [z(v, mu, sd) for v in vals]
    assert_adv(adv[0], [a[0] + a[1], a[1], a[1]])
    assert_adv(adv[1], [a[2] + a[3], a[3], a[3]])


def test_process_groups_are_independent_and_zero_variance_is_zero():
    scores = step_scores_tensor([[0.3, 0.3], [0.3], [1.0], [0.0]])
    seg = torch.tensor([[0, 1], [0, 0], [0, 0], [0, 0]])
    adv = process_advantages(scores, seg, torch.ones(4, 2), group_size=2)
    assert adv[:2].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    s = statistics.stdev([1.0, 0.0])
    assert_adv(adv[2:], [[z(1, 0.5, s)] * 2, [z(0, 0.5, s)] * 2])
    single = process_advantages(step_scores_tensor([[0.9, -0.1]]), torch.tensor([[0, 1]]), torch.ones(1, 2), 1)
    s1 = statistics.stdev([0.9, -0.1])  # a lone response still compares its own steps
    assert_adv(single, [[z(0.9, 0.4, s1) + z(-0.1, 0.4, s1), z(-0.1, 0.4, s1)]])


# -- dispatch and errors -------------------------------------------------------------------------------


def test_compute_advantages_dispatches_every_method_to_n_by_t():
    scores = step_scores_tensor([[1.0, -1.0], [0.0, 0.5]])
    seg = torch.tensor([[0, 1, 1], [0, 0, 1]])
    mask = mask_of([3, 2], 3)
    cdpa = compute_advantages("cdpa", scores, seg, mask, 2)
    assert torch.equal(cdpa, cdpa_advantages(token_rewards(scores, seg, mask), mask, 2))
    outcome = compute_advantages("grpo-outcome", scores, seg, mask, 2)
    assert torch.equal(outcome, outcome_advantages(outcome_rewards(scores), mask, 2))
    process = compute_advantages("grpo-process", scores, seg, mask, 2)
    assert torch.equal(process, process_advantages(scores, seg, mask, 2))
    for adv in (cdpa, outcome, process):
        assert adv.shape == (2, 3) and adv[1, 2] == 0.0
    with pytest.raises(ValueError, match="unknown method"):
        compute_advantages("ppo", scores, seg, mask, 2)  # type: ignore[arg-type]


def test_shape_and_group_errors_are_clear():
    with pytest.raises(ValueError, match="groups of 2"):
        cdpa_advantages(torch.zeros(3, 2), torch.ones(3, 2), 2)
    with pytest.raises(ValueError, match="differ"):
        cdpa_advantages(torch.zeros(2, 3), torch.ones(2, 2), 2)
    with pytest.raises(ValueError, match="differ"):
        process_advantages(torch.zeros(2, 1), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2), 2)
    with pytest.raises(ValueError, match=r"\(N=2,\)"):
        outcome_advantages(torch.zeros(3), torch.ones(2, 2), 2)


# -- generated ids -> steps (the real tokenizer of the default model) ----------------------------------


@pytest.fixture(scope="module")
def tokenizer(model_cache):
    from transformers import AutoTokenizer

    from alignment.engines.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(str(ensure_default_model(model_cache)))


def test_completion_segments_on_canonical_ids_with_eos(tokenizer):
    from alignment.steps import format_response, tokenize_with_segments

    text = format_response(["She values privacy.", "Naming clinics is risky."], "Try a local group.")
    ids, segs = tokenize_with_segments(tokenizer, text)
    decoded, got = completion_segments(tokenizer, ids + [tokenizer.eos_token_id])
    assert decoded == text
    assert got == segs + [2]  # EOS falls into the last segment (the answer)
    assert sorted(set(got)) == [0, 1, 2]


def test_completion_segments_on_non_canonical_ids(tokenizer):
    pieces = ["Step 1: pri", "vacy first\nStep 2: a", "void names\nAns", "wer: ok"]
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    text, segs = completion_segments(tokenizer, ids)
    assert text == "".join(pieces)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != ids  # not the re-encoding path
    assert len(segs) == len(ids)
    # every token lies in the segment that holds its first character
    first_step2 = text.index("Step 2")
    starts, pos = [], 0
    for i in ids:
        starts.append(pos)
        pos += len(tokenizer.decode([i]))
    for start, seg in zip(starts, segs):
        expected = 0 if start < first_step2 else (1 if start < text.index("Answer") else 2)
        assert seg == expected, (start, seg)


def test_completion_segments_with_a_character_split_across_tokens(tokenizer):
    from alignment.cdpa import _offsets_by_token_pieces

    pieces = ["Step 1: she likes 🙂 and pri", "vacy\nAnswer: 日本 trip"]
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    text, segs = completion_segments(tokenizer, ids)
    assert text == "".join(pieces)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] != ids
    assert _offsets_by_token_pieces(tokenizer, ids, text, set()) is None  # so prefixes were decoded
    answer_at = text.index("Answer")
    for k, seg in enumerate(segs):
        start = len(tokenizer.decode(ids[:k]).replace("\ufffd", ""))  # a partial character counts as not there yet
        assert seg == (0 if start < answer_at else 1), (k, start, seg)
