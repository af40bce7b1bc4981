"""`cdra bench data`: the council's tree search, batched (one generation per tree level) against one
call per node, on the same scenarios and engine; nodes per second, model calls per tree, and their ratio."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from alignment.engines.base import Engine
from training.council import CouncilConfig, grow_tree
from training.scenarios import Scenario


def bench_council(engine: Engine, scenarios: Sequence[Scenario], config: CouncilConfig,
                  seed: int = 0) -> tuple[list[dict], float]:
    """Rows (mode, trees, nodes, calls_per_tree, seconds, cpu_seconds, nodes_per_s) and the batched/unbatched
    ratio of nodes per wall-clock second. CPU seconds of this process are shown too: on a shared machine
    they say more than the wall clock.

    A node is a proposed thought (pruned ones included): each costs a proposal and a value either way.
    One short tree is grown first so that neither mode pays for warm-up.
    """
    grow_tree(engine, scenarios[0], replace(config, depth=1, personas=config.personas[:1]), seed=seed)
    rows = []
    for batched in (True, False):
        mode_config = replace(config, batched=batched)
        nodes = calls = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for scenario in scenarios:
            tree = grow_tree(engine, scenario, mode_config, seed=seed)
            nodes += tree.stats.proposed
            calls += tree.stats.model_calls
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rows.append({
            "mode": "batched (one call per level)" if batched else "one call per node",
            "trees": len(scenarios), "nodes": nodes, "calls_per_tree": calls / len(scenarios),
            "seconds": seconds, "cpu_seconds": cpu, "nodes_per_s": nodes / seconds if seconds else 0.0,
        })
    ratio = rows[0]["nodes_per_s"] / rows[1]["nodes_per_s"] if rows[1]["nodes_per_s"] else float("inf")
    return rows, ratio
