"""Pers-GenPRM SFT: D_Rea reading, Eq. 2 examples (loss on critique + score only), a real short run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from alignment.critique import format_step_judgment
from alignment.errors import FormatError
from alignment.prm import segment_texts, step_conversations
from training.prm_trainer import (
    SFTStageConfig,
    evaluate_prm,
    prm_examples,
    read_rea,
    sft_trainer,
    spearman,
    split_records,
    train_prm,
)
from training.registry import TrainingStart

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "deeppref" / "rea.jsonl"


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_fixture_reads_and_splits():
    rows = read_rea(FIXTURE)
    train, val = split_records(rows)
    assert len(rows) == 36 and len(val) == 9 and {r["scenario_id"] for r in train}.isdisjoint(r["scenario_id"] for r in val)


@pytest.mark.parametrize("mutate,message", [
    (lambda r: "{not json", ":2: not valid JSON"),
    (lambda r: {k: v for k, v in r.items() if k != "critiques"}, ":2: missing required key(s) critiques"),
    (lambda r: {**r, "scores": r["scores"][:-1]}, ":2: 4 segments (steps + answer) but 4 critiques and 3 scores"),
    (lambda r: {**r, "scores": [2.0] + r["scores"][1:]}, ":2: score 2.0 is not a number in [-1.0, 1.0]"),
])
def test_bad_records_name_file_and_line(tmp_path, mutate, message):
    good = read_rea(FIXTURE)[0]
    path = _write(tmp_path / "rea.jsonl", [good, mutate(dict(good))])
    with pytest.raises(FormatError, match=re.escape(message)):
        read_rea(path)


def test_examples_are_prompt_then_critique_and_score():
    record = read_rea(FIXTURE)[0]
    examples = prm_examples([record])
    segments = segment_texts(record["steps"], record["answer"])
    assert len(examples) == len(segments) == 4
    assert examples[3]["prompt"] == list(step_conversations(record["preference"], record["query"], segments)[3])
    assert examples[3]["completion"] == [{"role": "assistant",
                                          "content": format_step_judgment(record["critiques"][3], record["scores"][3])}]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [1, 2]))


@pytest.mark.slow
def test_loss_covers_exactly_the_critique_and_score(tmp_path, model_cache):
    """Eq. 2: trl's labels keep the judgment (critique, SCORE line, end of turn) and mask the whole prompt."""
    from alignment.engines.default_model import ensure_default_model

    record = read_rea(FIXTURE)[0]
    start = TrainingStart("default", ensure_default_model(model_cache))
    trainer = sft_trainer(prm_examples([record])[:1], start, tmp_path, SFTStageConfig(lora_r=4, max_steps=1, batch_size=1))
    row = trainer.train_dataset[0]
    ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]  # trl's labels: -100 = no loss
    completion = trainer.processing_class.decode([t for t, m in zip(ids, mask) if m])
    judgment = format_step_judgment(record["critiques"][0], record["scores"][0])
    assert completion.startswith(judgment) and completion[len(judgment):].strip() == "<|im_end|>"
    assert record["preference"] in trainer.processing_class.decode([t for t, m in zip(ids, mask) if not m])


@pytest.mark.slow
def test_short_real_run_writes_an_adapter_the_engine_serves(tmp_path, model_cache):
    from alignment.engines import ModelSpec, build_engine
    from alignment.engines.default_model import ensure_default_model

    rows = read_rea(FIXTURE)
    train, val = split_records(rows)
    data = _write(tmp_path / "rea.jsonl", train[:1] + val[:1])
    start = TrainingStart("default", ensure_default_model(model_cache))
    result = train_prm(data, start, tmp_path / "prm", SFTStageConfig(lora_r=4, max_steps=2, batch_size=1, max_length=512))
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["train_loss"])
    assert result.metrics["eval_examples"] == 4 and math.isfinite(result.metrics["eval_loss_after"])
    assert (result.artifact_dir / "adapter_config.json").is_file()
    assert not list(tmp_path.glob(".prm.*"))  # the temporary directory was renamed into place
    engine = build_engine(ModelSpec(backend="default", adapter=str(result.artifact_dir)), model_cache, cache=False)
    agreement = evaluate_prm(engine, val[:1], max_new_tokens=8)
    assert agreement.segments == 4 and 0.0 <= agreement.parse_rate <= 1.0 and agreement.mae >= 0.0
