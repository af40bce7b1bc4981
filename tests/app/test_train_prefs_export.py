"""`cdra train prefs … --export`: the shipped adapter's TRAINING.md reproduces it. A run that continued the
adapter it replaces keeps the earlier record below its own, headings demoted, code blocks untouched."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from app.cli.train_prefs import _export, training_record

STAGE_1 = "cdra train prefs sft --limit 160 --from base --export alignment/adapters/preference"
STAGE_2 = "cdra train prefs sft --skip 160 --limit 320 --from serving --export alignment/adapters/preference"


def _run(tmp_path: Path, name: str, weights: bytes) -> SimpleNamespace:
    adapter = tmp_path / name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    return SimpleNamespace(adapter_dir=adapter)


def test_a_continued_adapter_keeps_the_record_of_the_stage_it_continued(tmp_path):
    shipped = tmp_path / "shipped"
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n", encoding="utf-8")
    (data.parent / "data_card.md").write_text("# Data card\n", encoding="utf-8")

    _export(_run(tmp_path, "one", b"1"), shipped, data, STAGE_1, {"val_score": 0.34})
    _export(_run(tmp_path, "two", b"2"), shipped, data, STAGE_2, {"val_score": 0.58}, continued=shipped)

    text = (shipped / "TRAINING.md").read_text(encoding="utf-8")
    assert text.index(STAGE_2) < text.index(STAGE_1), "this run first, then the stage it continued"
    assert text.count("\n# ") == 0 and text.startswith("# How this adapter was trained")
    assert "## It continued this adapter: reproduce that one first" in text
    assert (shipped / "adapter_model.safetensors").read_bytes() == b"2"
    assert (shipped / "DATA_CARD.md").read_text(encoding="utf-8") == "# Data card\n"

    fresh = tmp_path / "fresh"
    _export(_run(tmp_path, "three", b"3"), fresh, data, STAGE_1, {}, continued=shipped)  # continued another dir
    assert STAGE_2 not in (fresh / "TRAINING.md").read_text(encoding="utf-8")


def test_comments_inside_the_earlier_code_blocks_are_not_demoted():
    earlier = "# How this adapter was trained\n\n```\n# a shell comment\ncdra train\n```\n## Notes\n"
    text = training_record("cdra again", {}, earlier)
    assert "\n# a shell comment\n" in text and "\n### Notes" in text
