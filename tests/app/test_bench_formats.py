"""`cdra bench formats` end to end on llama.cpp and the packaged model: the constrained outputs all parse, the
rows are saved after each format, and a rerun resumes from them instead of decoding again."""

from __future__ import annotations

import json


def test_bench_formats_measures_saves_and_resumes(cdra_main, tmp_path):
    out = tmp_path / "formats.json"
    args = ("bench", "formats", "--n", "2", "--timing", "1", "--engines", "llamacpp",
            "--formats", "step_judgment,verdict_yesno", "--out", str(out))
    code, stdout, _ = cdra_main(*args)
    assert code == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert [(r["engine"], r["format"]) for r in rows] == [("llamacpp", "step_judgment"), ("llamacpp", "verdict_yesno")]
    assert all(r["inputs"] == 2 and r["constrained_parsed"] == 2 for r in rows)
    assert all(r["free_ms_per_token"] > 0 and r["constrained_ms_per_token"] > 0 for r in rows)
    # llama.cpp's sampling clock ran in both modes; the grammar mask makes choosing a token dearer, never free
    assert all(0 < r["free_sampling_ms"] < r["constrained_sampling_ms"] for r in rows)
    assert "| constraint ms/token | overhead |" in stdout
    assert "| llamacpp | step_judgment | 2 | " in stdout and "2/2 (100 %)" in stdout

    out.write_text(json.dumps(rows[:1]), encoding="utf-8")  # as if interrupted after the first format
    code, stdout, stderr = cdra_main(*args)
    assert code == 0 and "resuming: 1 rows" in stderr
    again = json.loads(out.read_text(encoding="utf-8"))
    assert again[0] == rows[0]  # kept, not decoded again
    assert [r["format"] for r in again] == ["step_judgment", "verdict_yesno"]


def test_bench_formats_refuses_a_file_that_is_not_its_result(cdra_main, tmp_path):
    out = tmp_path / "formats.json"
    out.write_bytes(b"\xff\xfe not json")
    code, _, stderr = cdra_main("bench", "formats", "--n", "1", "--engines", "llamacpp", "--formats", "scenario",
                                "--out", str(out))
    assert code == 2 and "is not a saved `cdra bench formats` result" in stderr
    assert out.read_bytes() == b"\xff\xfe not json"  # nothing lost
