"""RFT (CDRA §2.4 step 1): SFT of the policy on D_RFT, the best path per scenario.

The prompt is exactly what the app sends the policy (POLICY_PROMPT with P as what is known about
the user); the completion is the record's ``response`` (``Step k: …`` lines, then ``Answer: …``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from alignment.engines.base import Conversation
from alignment.prompts import render
from alignment.prompts.policy import POLICY_PROMPT, format_preferences
from alignment.steps import format_response
from training.prm_trainer import SFTResult, SFTStageConfig, read_records, run_sft, split_records
from training.registry import TrainingStart

RFT_FIELDS = ("preference", "query", "response")


def preference_lines(preference: str) -> list[str]:
    """P as the statement list the app shows the policy: one per line, bullets removed."""
    lines = [line.strip().lstrip("-*• ").strip() for line in preference.splitlines()]
    return [line for line in lines if line]


def policy_prompt(preference: str, query: str) -> Conversation:
    """The policy's conversation for (P, q): RFT, CDPA rollouts and retrain's evaluation all use it."""
    return render(POLICY_PROMPT, preferences=format_preferences(preference_lines(preference)), query=query.strip())


def rft_examples(records: Iterable[dict]) -> list[dict]:
    """Prompt/completion pairs; a record without ``response`` is rebuilt from its steps and answer."""
    out = []
    for r in records:
        response = r.get("response") or format_response(r["steps"], r["answer"])
        out.append({"prompt": list(policy_prompt(r["preference"], r["query"])),
                    "completion": [{"role": "assistant", "content": response}]})
    return out


def read_rft(path: Path) -> list[dict]:
    return read_records(path, RFT_FIELDS)


def train_rft(rft_path: Path, start: TrainingStart, out_dir: Path, config: SFTStageConfig | None = None,
              validation: bool = True) -> SFTResult:
    """Policy SFT on a D_RFT file; ``split=validation`` records give the held-out eval loss."""
    train, val = split_records(read_rft(rft_path))
    if not train:
        from alignment.errors import CdraError

        raise CdraError(f"{rft_path}: no training records (all are split=validation)")
    return run_sft(rft_examples(train), start, out_dir, config or SFTStageConfig(),
                   rft_examples(val) if validation else ())
