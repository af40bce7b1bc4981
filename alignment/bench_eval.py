"""`cdra bench eval`: judgments per second with batched judging vs one engine call per judgment.

Both modes judge the same requests (the dev set's items, each item's reviewer notes standing in for a
reply, rubrics in turn) on the same loaded judge, without the cache; the table prints the speed ratio
and how many verdicts the two modes share (padding in a batch may change a greedy decode slightly).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from alignment.engines.base import Engine
from alignment.judges import Judge, JudgeConfig, JudgeRequest, rubric_request
from alignment.methods import read_alignment_testset
from alignment.prompts.judge import YES_NO_RUBRICS


@dataclass
class BenchRow:
    mode: str
    judgments: int
    seconds: float
    per_second: float
    ratio: float  # speed relative to one call per judgment
    same_verdicts: int


def bench_requests(testset: Path, n: int) -> list[JudgeRequest]:
    items = read_alignment_testset(testset)
    rubrics = list(YES_NO_RUBRICS)
    requests = []
    for i in range(n):
        item = items[i % len(items)]
        reply = item.notes or f"Here are some ideas for: {item.query}"
        requests.append(rubric_request(rubrics[i % len(rubrics)], preference=item.preference, query=item.query,
                                       response=reply, meta={"i": i}))
    return requests


def run_bench(engine: Engine, judge_key: str, testset: Path, n: int = 16, max_new_tokens: int = 32,
              batch_size: int = 16) -> list[BenchRow]:
    requests = bench_requests(testset, n)
    Judge(engine, judge_key, JudgeConfig(max_new_tokens=4, batch_size=1)).run(requests[:1])  # warm-up
    timings, verdicts = {}, {}
    for mode, size in (("one call per judgment", 1), (f"batched ({batch_size} per call)", batch_size)):
        judge = Judge(engine, judge_key, JudgeConfig(max_new_tokens=max_new_tokens, batch_size=size))
        start = time.perf_counter()
        judged = judge.run(requests)
        timings[mode] = time.perf_counter() - start
        verdicts[mode] = [j.verdict for j in judged]
    base_mode = next(iter(timings))
    base_rate = n / timings[base_mode]
    rows = []
    for mode, seconds in timings.items():
        same = sum(a == b for a, b in zip(verdicts[mode], verdicts[base_mode]))
        rows.append(BenchRow(mode, n, seconds, n / seconds, (n / seconds) / base_rate, same))
    return rows


def format_bench(rows: list[BenchRow]) -> str:
    lines = ["| mode | judgments | seconds | judgments/s | ratio | same verdicts |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.judgments} | {r.seconds:.1f} | {r.per_second:.2f} | {r.ratio:.2f}x | "
                     f"{r.same_verdicts}/{r.judgments} |")
    return "\n".join(lines) + "\n"
