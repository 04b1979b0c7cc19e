"""The exact solve of one step config: workspace caps enumerated, every layout change priced, then the best
stage partition and the plan read back from the DP tables (docs/search.md, "Algorithm", steps 2 and 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from galvatron_hf.planner.plan import DP_TYPES, OFFLOAD_STATES, LayerStrategy, Plan, VocabStrategy
from galvatron_hf.planner.search.solver import BlockRun, ConfigSolver, MemoryGrid
from galvatron_hf.planner.search.space import SLOTS

EXACT_UNITS = 512  # memory resolution of the exact pass (exact bytes are carried beside the units)
CAP_RESOLUTION = 0.005  # workspace caps closer than 0.5% of the budget are merged (the larger one kept)
TAU_CANDIDATES = 64  # bottleneck values the exact partition DP sweeps (all of them on small instances)


@dataclass(frozen=True)
class _StageChoice:
    start: int
    end: int  # exclusive
    tp_in: int  # index into tps
    tp_out: int
    cap: float


class _Segment(NamedTuple):
    """One stage of a partition: blocks start..end-1, entered at TP index tp_in (-1 on stage 0: the vocab's),
    left at tp_out."""

    start: int
    end: int
    tp_in: int
    tp_out: int


class _Partition(NamedTuple):
    step_s: float
    segments: list[_Segment]


class _Solved(NamedTuple):
    step_s: float
    vocab: VocabStrategy
    choices: list[_StageChoice]


# table[start, end, t_in, t_out] of least stage times, and which[...] the workspace cap index achieving it
_StageTable = tuple[np.ndarray, np.ndarray]
_Runs = dict[tuple[int, int, int, float, str], BlockRun]


def exact_solve(solver: ConfigSolver, rounding: str = "floor") -> Plan | None:
    """The best plan of one config under the exact (workspace-capped, relayout-priced) DP."""
    ctx = solver.ctx
    if not solver.feasible:
        return None
    grid = MemoryGrid(ctx.budget / EXACT_UNITS, EXACT_UNITS, rounding)
    caps = solver.workspace_caps(max(grid.unit, CAP_RESOLUTION * ctx.budget))
    best: _Solved | None = None
    runs: _Runs = {}
    tables: dict[tuple[int, VocabStrategy | None], _StageTable] = {}
    options = sorted(solver.vocab_options, key=lambda v: solver.vocab_bounds.get(v, 0.0))
    for vocab in options:
        if best is not None and solver.vocab_bounds.get(vocab, 0.0) >= best.step_s:
            continue  # even the relaxed bound of this vocab strategy is slower than the plan in hand
        if vocab in solver.vocab_bounds and not math.isfinite(solver.vocab_bounds[vocab]):
            continue
        found = _exact_for_vocab(solver, vocab, caps, grid, runs, tables)
        if found is not None and (best is None or found.step_s < best.step_s):
            best = found
    if best is None:
        return None
    return _build_plan(solver, best.vocab, best.choices, grid)


def _exact_for_vocab(
    solver: ConfigSolver,
    vocab: VocabStrategy,
    caps: list[float],
    grid: MemoryGrid,
    runs: _Runs,
    cache: dict[tuple[int, VocabStrategy | None], _StageTable],
) -> _Solved | None:
    config = solver.config
    vocab_t = solver.tps.index(vocab.tp)
    tables, cap_of = [], []
    for stage in range(config.pp):
        first, last = solver.stage_flags(stage)
        key = (stage, vocab if (first or last) else None)  # middle stages do not see the vocab strategy
        if key not in cache:
            cache[key] = _exact_table(solver, stage, vocab, caps, grid, runs)
        table, which = cache[key]
        tables.append(table)
        cap_of.append(which)
    found = _best_partition(tables, config.num_micro_batches, len(solver.ctx.blocks), vocab_t)
    if found is None:
        return None
    choices = []
    for stage, (a, b, t_in, t_out) in enumerate(found.segments):
        t_in = t_in if stage else vocab_t
        choices.append(_StageChoice(a, b, t_in, t_out, caps[cap_of[stage][a, b, t_in, t_out]]))
    return _Solved(found.step_s, vocab, choices)


def _exact_table(
    solver: ConfigSolver,
    stage: int,
    vocab: VocabStrategy,
    caps: list[float],
    grid: MemoryGrid,
    runs: _Runs,
) -> _StageTable:
    """table[start, end, t_in, t_out]: least stage time; which[...]: the workspace cap that achieved it.

    Caps are visited from the largest (every strategy allowed, least memory left): a smaller cap leaves more
    memory but allows fewer strategies, and its DP pass is skipped when even the unrestricted pass at that
    larger budget cannot improve any entry.
    """
    ctx, pp, n, n_t = solver.ctx, solver.config.pp, len(solver.ctx.blocks), len(solver.tps)
    k = solver.shape.in_flight(stage)
    fixed = solver.fixed_bytes(vocab, stage)
    vocab_work = solver.vocab_cost(vocab, stage).workspace_bytes
    fixed_time = solver.vocab_cost(vocab, stage).time_s
    ends = solver.end_costs(stage, vocab)
    table = np.full((n + 1, n + 1, n_t, n_t), np.inf)
    which = np.zeros((n + 1, n + 1, n_t, n_t), dtype=np.int64)
    entries = [solver.tps.index(vocab.tp)] if stage == 0 else list(range(n_t))

    def get_run(source: int, t_in: int, cap: float) -> BlockRun:
        key = (k, source, solver.tps[t_in], cap, grid.rounding)
        if key not in runs:
            init = solver.init_vector(source, solver.tps[t_in])
            runs[key] = solver.run(source, k, init, grid, cap, solver.max_blocks(stage, source))
        return runs[key]

    largest = len(caps) - 1
    for ci in range(largest, -1, -1):
        cap = caps[ci]
        budget_bytes = ctx.budget - fixed - max(cap, vocab_work)
        if budget_bytes < 0:
            continue
        avail = grid.units_within(budget_bytes)
        for start in solver.starts(stage):
            source = ctx.reuse[start]
            lo = n if stage == pp - 1 else start + 1
            for t_in in entries:
                if ci != largest:  # skip when the unrestricted pass at this budget improves nothing
                    everything = get_run(source, t_in, caps[largest])
                    limit = min(len(everything.tables), solver.max_blocks(stage, start))
                    if stage == pp - 1 and start + limit != n:
                        continue
                    bound = everything.within(avail, limit, budget_bytes) + ends[start + 1 : start + limit + 1]
                    bound = bound[-1:] if stage == pp - 1 else bound
                    if not (bound + fixed_time < table[start, lo : lo + len(bound), t_in]).any():
                        continue
                run = get_run(source, t_in, cap)
                limit = min(len(run.tables), solver.max_blocks(stage, start))
                if stage == pp - 1 and start + limit != n:
                    continue
                values = run.within(avail, limit, budget_bytes) + ends[start + 1 : start + limit + 1] + fixed_time
                if stage == pp - 1:
                    values = values[-1:]
                hi = lo + len(values)
                current = table[start, lo:hi, t_in]
                better = values < current
                table[start, lo:hi, t_in] = np.where(better, values, current)
                which[start, lo:hi, t_in] = np.where(better, ci, which[start, lo:hi, t_in])
    return table, which


def _best_partition(tables: list[np.ndarray], m: int, n: int, vocab_t: int) -> _Partition | None:
    """min over partitions and boundary tp of sum(C) + (M - 1) max(C), sweeping the bottleneck value."""
    first = tables[0][0, :, vocab_t, :]  # (end, t_out)
    finite = [t[np.isfinite(t)] for t in tables]
    if any(v.size == 0 for v in finite):
        return None
    bottleneck = _bottleneck(tables, first, n)
    if not math.isfinite(bottleneck):
        return None
    values = np.unique(np.concatenate(finite))
    values = values[values >= bottleneck - 1e-15][:TAU_CANDIDATES]
    best = None
    for tau in values:
        found = _min_sum(tables, first, n, tau)
        if found is None:
            continue
        total, path = found
        step = total + (m - 1) * max(
            tables[i][a, b, ti, to] if i else first[b, to] for i, (a, b, ti, to) in enumerate(path)
        )
        if best is None or step < best.step_s - 1e-15:
            best = _Partition(step, path)
    return best


def _bottleneck(tables: list[np.ndarray], first: np.ndarray, n: int) -> float:
    current = first.copy()  # (end, t)
    for table in tables[1:]:
        # new[b, t_out] = min over a, t_in of max(current[a, t_in], table[a, b, t_in, t_out])
        current = np.min(np.maximum(current[:, None, :, None], table), axis=(0, 2))
    return float(np.min(current[n]))


def _min_sum(tables: list[np.ndarray], first: np.ndarray, n: int, tau: float) -> _Partition | None:
    """Least sum of stage times with every stage at most tau, and the stage path that reaches it."""
    pp = len(tables)
    current = np.where(first <= tau, first, np.inf)
    back = []
    for table in tables[1:]:
        masked = np.where(table <= tau, table, np.inf)
        through = current[:, None, :, None] + masked  # (a, b, t_in, t_out)
        n1, _, n_t, _ = through.shape
        flat = through.transpose(1, 3, 0, 2).reshape(n1, n_t, -1)
        arg = flat.argmin(axis=2)
        current = np.take_along_axis(flat, arg[:, :, None], axis=2)[:, :, 0]
        back.append(arg)
    t_out = int(np.argmin(current[n]))
    total = float(current[n, t_out])
    if not math.isfinite(total):
        return None
    path = []
    b = n
    n_t = current.shape[1]
    for stage in range(pp - 1, 0, -1):
        a, t_in = divmod(int(back[stage - 1][b, t_out]), n_t)
        path.append(_Segment(a, b, t_in, t_out))
        b, t_out = a, t_in
    path.append(_Segment(0, b, -1, t_out))
    path.reverse()
    return _Partition(total, path)


def _grouped(layers: list[LayerStrategy], signatures: list[int]) -> list[LayerStrategy]:
    """Sort strategies inside each run of equal blocks with equal tp, so identical strategies sit together.

    Costs are unchanged: the blocks are copies, the TP sequence (hence every relayout) is the same, and
    sums and maxima do not depend on order. The plan just reads (and runs) with fewer layout changes.
    """
    result = list(layers)
    start = 0
    for index in range(1, len(layers) + 1):
        if index == len(layers) or signatures[index] != signatures[start] or layers[index].tp != layers[start].tp:
            result[start:index] = sorted(layers[start:index], key=lambda x: (DP_TYPES.index(x.dp_type), x.checkpoint))
            start = index
    return result


def _build_plan(solver: ConfigSolver, vocab: VocabStrategy, choices: list[_StageChoice], grid: MemoryGrid) -> Plan:
    ctx, config = solver.ctx, solver.config
    layers: list[LayerStrategy] = []
    for stage, choice in enumerate(choices):
        picked = _stage_strategies(solver, vocab, stage, choice, grid)
        stage_layers = [solver.strategies[s].on_stage(stage) for s in picked]
        layers.extend(_grouped(stage_layers, ctx.sig[choice.start : choice.end]))
    return Plan(
        world_size=config.world_size,
        pp=config.pp,
        schedule=config.schedule,
        global_batch_size=config.global_batch_size,
        num_micro_batches=config.num_micro_batches,
        layers=layers,
        vocab=vocab,
        seq_len=ctx.spec.seq_len,
        mixed_precision=ctx.model.precision.name,
        model_name=ctx.spec.name,
        model_type=ctx.spec.model_type,
        cp=config.cp,
        offload=list(OFFLOAD_STATES) if config.offload else [],
    )


def _stage_strategies(
    solver: ConfigSolver, vocab: VocabStrategy, stage: int, choice: _StageChoice, grid: MemoryGrid
) -> list[int]:
    """The strategy index of each block of a stage: re-run its DP with tracking and backtrack from the best
    cell whose exact bytes fit."""
    ctx = solver.ctx
    k = solver.shape.in_flight(stage)
    fixed = solver.fixed_bytes(vocab, stage)
    vocab_work = solver.vocab_cost(vocab, stage).workspace_bytes
    budget_bytes = ctx.budget - fixed - max(choice.cap, vocab_work)
    avail = grid.units_within(budget_bytes)
    count = choice.end - choice.start
    init = solver.init_vector(choice.start, solver.tps[choice.tp_in])
    run = solver.run(choice.start, k, init, grid, choice.cap, count, track=True)
    times = run.tables[count - 1][choice.tp_out, : avail + 1]
    fits = run.memory[count - 1][choice.tp_out, : avail + 1] <= budget_bytes
    m = int(np.argmin(np.where(fits, times, np.inf)))
    t = choice.tp_out
    picked = []
    for step in range(count - 1, -1, -1):
        s = t * len(SLOTS) + int(run.choices[step][t, m])
        picked.append(s)
        rows = solver.rows(ctx.sig[choice.start + step], k, grid, choice.cap)
        m = int(rows[s, m]) - t * (grid.units + 2)
        if step:
            t = int(run.previous[step - 1][t, m])
    return picked[::-1]
