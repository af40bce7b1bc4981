"""CDPA's advantage math (CDRA §2.4, Eq. 3) and the GRPO baselines of Appendix D, as pure tensor functions.

Inputs are step scores ``(N, S)`` (NaN = no such step, or a score the PRM failed to give), each completion
token's step index ``(N, T)`` and the completion mask ``(N, T)``; rows come in groups of ``group_size``
consecutive samples of one prompt (trl's layout). Every function returns per-token advantages ``(N, T)``,
zero at padding. Nothing here knows about models or trainers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

#: the ε of Eq. 3 (trl uses the same value for its group normalization)
EPS = 1e-4
Method = Literal["cdpa", "grpo-outcome", "grpo-process"]
METHODS: tuple[str, ...] = ("cdpa", "grpo-outcome", "grpo-process")
Outcome = Literal["mean", "sum"]


def step_scores_tensor(scores: Sequence[Sequence[float | None]], width: int | None = None) -> torch.Tensor:
    """Ragged per-response step scores -> ``(N, S)`` float tensor; missing steps and ``None`` become NaN."""
    width = max([len(row) for row in scores] + [1]) if width is None else width
    out = torch.full((len(scores), width), math.nan, dtype=torch.float32)
    for i, row in enumerate(scores):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} step scores, more than width={width}")
        for j, value in enumerate(row):
            if value is not None and not math.isnan(float(value)):
                out[i, j] = float(value)
    return out


def _check(step_scores: torch.Tensor | None, segment_ids: torch.Tensor | None, mask: torch.Tensor, group_size: int) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be (N, T), got shape {tuple(mask.shape)}")
    n = mask.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rows cannot be split into groups of {group_size}")
    if segment_ids is not None and segment_ids.shape != mask.shape:
        raise ValueError(f"segment_ids {tuple(segment_ids.shape)} and mask {tuple(mask.shape)} differ")
    if step_scores is not None and (step_scores.dim() != 2 or step_scores.shape[0] != n):
        raise ValueError(f"step_scores must be (N={n}, S), got shape {tuple(step_scores.shape)}")


def token_rewards(step_scores: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """r_{i,t} = r_i^j for every token t of step j; NaN at padding and where step j has no score."""
    _check(step_scores, segment_ids, mask, 1)
    scores = step_scores.to(torch.float32)
    width = scores.shape[1]
    inside = (segment_ids >= 0) & (segment_ids < width)
    picked = scores.gather(1, segment_ids.clamp(0, width - 1).long())
    valid = mask.bool() & inside
    return torch.where(valid, picked, torch.full_like(picked, math.nan))


def _group_stats(values: torch.Tensor, valid: torch.Tensor, dim: int | tuple[int, ...]):
    """Mean and Bessel-corrected std over ``dim`` of the valid entries (std 0 where fewer than 2)."""
    count = valid.sum(dim=dim, keepdim=True)
    filled = torch.where(valid, values, torch.zeros_like(values))
    mean = filled.sum(dim=dim, keepdim=True) / count.clamp(min=1)
    sq = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values)).sum(dim=dim, keepdim=True)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean, torch.where(count > 1, std, torch.zeros_like(std)), count


def cdpa_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """Eq. 3: Â(t, y_i) = (r_{i,t} − μ_t) / (σ_t + ε), μ_t and σ_t over the group's samples that reach t.

    Samples past their end (padding) or with an unscored step (NaN) are left out of μ_t, σ_t and get 0.
    A position that only one sample reaches has no one to be compared with, so its advantage is 0.
    """
    _check(None, None, mask, group_size)
    if rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} differ")
    n, t = mask.shape
    r = rewards.to(torch.float32).view(n // group_size, group_size, t)
    valid = mask.bool().view_as(r) & ~torch.isnan(r)
    mean, std, _ = _group_stats(r, valid, dim=1)
    adv = (r - mean) / (std + eps)
    return torch.where(valid, adv, torch.zeros_like(adv)).view(n, t)


def outcome_rewards(
    step_scores: torch.Tensor, aggregate: Outcome = "mean", num_steps: torch.Tensor | None = None
) -> torch.Tensor:
    """One score per response: the mean of its scored steps, or R_dense = Σ_j r^j.

    'mean' averages the steps that were scored. 'sum' is only comparable when every step is scored, so a
    response with fewer scores than ``num_steps`` (its step count, when given) is NaN, i.e. unscored.
    A response with no scored step is NaN either way.
    """
    valid = ~torch.isnan(step_scores)
    filled = torch.where(valid, step_scores, torch.zeros_like(step_scores)).to(torch.float32)
    count = valid.sum(dim=1)
    if aggregate == "mean":
        out = filled.sum(dim=1) / count.clamp(min=1)
    elif aggregate == "sum":
        out = filled.sum(dim=1)
        if num_steps is not None:
            out = torch.where(count < num_steps.to(count.device), torch.full_like(out, math.nan), out)
    else:
        raise ValueError(f"unknown outcome aggregate {aggregate!r}: use 'mean' or 'sum'")
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def outcome_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = EPS) -> torch.Tensor:
    """Outcome-supervised GRPO: (r_i − μ_r) / (σ_r + ε) over the group, broadcast to the response's tokens.

    An unscored response (NaN) is left out of μ_r, σ_r and gets 0 everywhere.
    """
    _check(None, None, mask, group_size)
    if rewards.shape != (mask.shape[0],):
        raise ValueError(f"rewards must be (N={mask.shape[0]},), got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float32).view(-1, group_size)
    valid = ~torch.isnan(r)
    mean, std, _ = _group_stats(r, valid, dim=1)
    adv = torch.where(valid, (r - mean) / (std + eps), torch.zeros_like(r)).view(-1, 1)
    return adv * mask.to(torch.float32)


def process_advantages(
    step_scores: torch.Tensor, segment_ids: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = EPS
) -> torch.Tensor:
    """Process-supervised GRPO (Appendix D): Â_{i,t} = Σ_{j ≥ step(t)} (r_i^j − μ_R) / (σ_R + ε).

    μ_R, σ_R are over every scored step of every response in the group; an unscored step (NaN) is left
    out of them and adds 0 to the sums.
    """
    _check(step_scores, segment_ids, mask, group_size)
    n, s = step_scores.shape
    r = step_scores.to(torch.float32).view(n // group_size, group_size * s)
    valid = ~torch.isnan(r)
    mean, std, _ = _group_stats(r, valid, dim=1)
    normalized = torch.where(valid, (r - mean) / (std + eps), torch.zeros_like(r)).view(n, s)
    suffix = normalized.flip(1).cumsum(1).flip(1)  # suffix[i, j] = Σ_{k ≥ j} normalized[i, k]
    inside = mask.bool() & (segment_ids >= 0) & (segment_ids < s)
    picked = suffix.gather(1, segment_ids.clamp(0, s - 1).long())
    return torch.where(inside, picked, torch.zeros_like(picked))


def compute_advantages(
    method: Method,
    step_scores: torch.Tensor,
    segment_ids: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    eps: float = EPS,
    outcome: Outcome = "mean",
    num_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-token advantages ``(N, T)`` of one method; the one entry point the trainer uses.

    ``outcome`` and ``num_steps`` only matter for 'grpo-outcome' (see ``outcome_rewards``).
    """
    if method == "cdpa":
        return cdpa_advantages(token_rewards(step_scores, segment_ids, mask), mask, group_size, eps)
    if method == "grpo-outcome":
        return outcome_advantages(outcome_rewards(step_scores, outcome, num_steps), mask, group_size, eps)
    if method == "grpo-process":
        return process_advantages(step_scores, segment_ids, mask, group_size, eps)
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")


def completion_segments(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int]]:
    """The text of generated token ids and the step (segment) index of every one of those ids.

    The text is what the PRM scores, so its ``parse_response`` segments are the steps the scores refer to.
    Re-encoding the text usually gives back the same ids, and then the tokenizer's offsets are used; when it
    does not (non-canonical sampled tokenizations), the tokens decoded one by one usually join up to the
    text; only when they do not (a character split across tokens) is each start found by decoding prefixes.
    Special tokens (EOS) decode to nothing and fall into the step where they stand (the last one at the end).
    """
    from alignment.steps import parse_response, token_segment_ids

    ids = [int(i) for i in token_ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    starts = _offsets_by_reencoding(tokenizer, ids, text, special)
    if starts is None:
        starts = _offsets_by_token_pieces(tokenizer, ids, text, special)
    if starts is None:
        starts = _offsets_by_prefix_decoding(tokenizer, ids, text)
    return text, token_segment_ids([(s, s) for s in starts], parse_response(text))


def _offsets_by_reencoding(tokenizer, ids: list[int], text: str, special: set[int]) -> list[int] | None:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    content = [i for i in ids if i not in special]
    if list(enc["input_ids"]) != content:
        return None
    offsets = iter(start for start, _ in enc["offset_mapping"])
    starts: list[int] = []
    pending = 0  # special tokens waiting for the next content token's start
    for i in ids:
        if i in special:
            pending += 1
            continue
        start = next(offsets)
        starts.extend([start] * (pending + 1))
        pending = 0
    starts.extend([len(text)] * pending)
    return starts


def _offsets_by_token_pieces(tokenizer, ids: list[int], text: str, special: set[int]) -> list[int] | None:
    pieces = ["" if i in special else tokenizer.decode([i], skip_special_tokens=True) for i in ids]
    if "".join(pieces) != text:
        return None
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    return starts


def _offsets_by_prefix_decoding(tokenizer, ids: list[int], text: str) -> list[int]:
    starts, best = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[:k], skip_special_tokens=True)
        common = 0
        limit = min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        best = max(best, common)  # a partial UTF-8 character decodes as U+FFFD: keep the agreed prefix
        starts.append(best)
    return starts
