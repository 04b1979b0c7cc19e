"""Bounds that let the search skip step configs: a memory-free upper bound on throughput and the relaxed DP.

The relaxed pass (the smallest possible transient workspace, layout changes at stage entries free, a coarser
memory grid, the least fixed cost over the vocab ``dp_type``s) only over-estimates a config's throughput, so
configs whose relaxed value cannot beat the best exact plan are never solved exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from galvatron_hf.planner.plan import VocabStrategy
from galvatron_hf.planner.search.solver import BlockRun, ConfigSolver, MemoryGrid, SearchContext

if TYPE_CHECKING:
    from galvatron_hf.planner.search.problem import SearchProblem

RELAXED_UNITS = 256  # memory resolution of the bounding pass


def upper_bound(solver: ConfigSolver) -> float:
    """Samples/s no plan of this config can beat: least per-block times, no memory limit, ideal balance."""
    if not solver.feasible:
        return 0.0
    config = solver.config
    fastest = {s: float(np.min(costs.time_s)) for s, costs in solver.arrays.items()}
    blocks = sum(fastest[s] for s in solver.ctx.sig)
    vocab = min(sum(solver.vocab_cost(v, i).time_s for i in {0, config.pp - 1}) for v in solver.vocab_options)
    total = blocks + vocab
    step = total + (config.num_micro_batches - 1) * total / config.pp
    return config.global_batch_size / step if step > 0 else math.inf


def relaxed_bound(solver: ConfigSolver) -> float | None:
    """Least possible step time of a config (never above the true optimum); None when nothing can fit.

    Records the bound of each vocab strategy in ``solver.vocab_bounds`` (the exact solve skips those that
    cannot beat the plan in hand).
    """
    ctx, config = solver.ctx, solver.config
    if not solver.feasible:
        return None
    grid = MemoryGrid(ctx.budget / RELAXED_UNITS, RELAXED_UNITS, "floor")
    floor_work = solver.min_workspace()
    runs: dict[tuple[int, int], BlockRun] = {}
    tables_cache: dict[tuple[int, int | None], np.ndarray | None] = {}
    best_step = math.inf
    groups: dict[int, list[VocabStrategy]] = {}
    for vocab in solver.vocab_options:  # one relaxed pass per vocab tp: the dp_type only moves fixed terms
        groups.setdefault(vocab.tp, []).append(vocab)
    for tp, group in groups.items():
        tables = []
        for stage in range(config.pp):
            first, last = solver.stage_flags(stage)
            key = (stage, tp if (first or last) else None)
            if key not in tables_cache:
                tables_cache[key] = _relaxed_table(solver, stage, group, grid, floor_work, runs)
            if tables_cache[key] is None:
                tables = None
                break
            tables.append(tables_cache[key])
        n = len(ctx.blocks)
        bound = math.inf if tables is None else _partition_lower_bound(tables, config.num_micro_batches, n)
        for vocab in group:
            solver.vocab_bounds[vocab] = bound
        best_step = min(best_step, bound)
    return best_step if math.isfinite(best_step) else None


def _relaxed_table(
    solver: ConfigSolver,
    stage: int,
    group: list[VocabStrategy],
    grid: MemoryGrid,
    floor_work: float,
    runs: dict[tuple[int, int], BlockRun],
) -> np.ndarray | None:
    """table[start, end] = least time of blocks start..end-1 on this stage (relaxed).

    ``group`` holds the vocab strategies of one TP degree; the least of their fixed time, bytes and
    workspace is used (a relaxation: no single strategy needs less).
    """
    ctx, pp, n = solver.ctx, solver.config.pp, len(solver.ctx.blocks)
    k = solver.shape.in_flight(stage)
    vocab_work = min(solver.vocab_cost(v, stage).workspace_bytes for v in group)
    work = max(floor_work, vocab_work)
    budget_bytes = ctx.budget - min(solver.fixed_bytes(v, stage) for v in group) - work
    if budget_bytes < 0:
        return None
    avail = grid.units_within(budget_bytes)
    fixed_time = min(solver.vocab_cost(v, stage).time_s for v in group)
    ends = solver.end_costs(stage, group[0])
    table = np.full((n + 1, n + 1), np.inf)
    for start in solver.starts(stage):
        source = ctx.reuse[start] if stage > 0 else start
        key = (k, source)
        if key not in runs:
            runs[key] = solver.run(source, k, None, grid, math.inf, solver.max_blocks(stage, source))
        run = runs[key]
        limit = min(len(run.tables), solver.max_blocks(stage, start))
        values = (run.within(avail, limit, budget_bytes) + ends[start + 1 : start + limit + 1]).min(axis=1)
        values = values + fixed_time
        if stage == pp - 1:
            if start + limit == n:
                table[start, n] = values[-1]
        else:
            table[start, start + 1 : start + limit + 1] = values
    return table


def _partition_lower_bound(tables: list[np.ndarray], m: int, n: int) -> float:
    """(M - 1) x least bottleneck + least sum: both over all partitions, so below the best partition."""
    bottleneck = tables[0][0].copy()
    total = tables[0][0].copy()
    for table in tables[1:]:
        bottleneck = np.min(np.maximum(bottleneck[:, None], table), axis=0)
        total = np.min(total[:, None] + table, axis=0)
    if not math.isfinite(total[n]):
        return math.inf
    return (m - 1) * bottleneck[n] + total[n]


def relaxed_feasible(problem: SearchProblem) -> bool:
    """Whether some step config fits under the relaxed pass (cheap; it can only be optimistic)."""
    ctx = SearchContext(problem)
    for config in problem.configs:
        solver = ConfigSolver(ctx, config)
        if solver.feasible and relaxed_bound(solver) is not None:
            return True
    return False
