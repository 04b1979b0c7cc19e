"""Search the fastest plan that fits: a dynamic program over layers inside a best-first search over steps.

Outer loop (``StepConfig``): pipeline degree, global batch size, number of micro-batches and schedule.
Inner problem, per step config: choose a contiguous stage partition (uneven allowed), a strategy per block
``(tp, dp, dp_type, checkpoint)`` and the vocab strategy, maximising samples/s under the per-GPU budget.

Within a stage the cost model is additive over blocks (plus the relayout between consecutive layouts), so a
dynamic program over blocks with memory discretised into units finds, for every block range, every
memory level and every final TP degree, the fastest assignment. A small second DP over stage boundaries
(with the TP degree at each boundary) then minimises the pipeline step ``sum(C_i) + (M - 1) max(C_i)`` by
sweeping the bottleneck ``max(C_i)`` over the candidate values. See docs/search.md.

Bounding: the search first solves every step config *relaxed* (the smallest possible transient workspace,
layout changes at stage entries free, a coarser memory grid), which over-estimates throughput; it then
solves configs exactly in order of that bound (workspace caps enumerated, every layout change priced, the
plan re-priced by :func:`estimate_plan`) and stops once no remaining bound beats the best exact plan.
Both passes round memory down to grid units and carry each kept path's exact bytes, so only paths that
truly fit are used (docs/search.md says where this is exact and where it is a close approximation).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from galvatron_hf.planner.cost_model import (
    GB,
    CostModel,
    CostReport,
    LayerCostSource,
    StepShape,
    estimate_plan,
    pipeline_step_s,
)
from galvatron_hf.planner.plan import (
    DP_TYPES,
    SCHEDULES,
    LayerStrategy,
    Plan,
    PlanError,
    VocabStrategy,
)

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec, ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

TOKENS_PER_STEP_CAP = 4 * 1024 * 1024  # default bound of a searched batch: 4M tokens (Llama 2's batch)
RELAXED_UNITS = 256  # memory resolution of the bounding pass
EXACT_UNITS = 512  # memory resolution of the exact pass (exact bytes are carried beside the units)
CAP_RESOLUTION = 0.005  # workspace caps closer than 0.5% of the budget are merged (the larger one kept)
TAU_CANDIDATES = 64  # bottleneck values the exact partition DP sweeps (all of them on small instances)
# With pp = 1, num_micro_batches > 1 means gradient accumulation inside one step: the runtime cuts the batch
# into plan.num_micro_batches (docs: training/batching.py) with gradient sync on the last one only, as
# pipelining does. Set False to search pp = 1 plans with a single micro-batch (a runtime that runs the whole
# batch in one forward/backward).
ACCUMULATE_WITHOUT_PIPELINE = True
SLOTS = tuple((dp_type, checkpoint) for dp_type in DP_TYPES for checkpoint in (False, True))

Progress = Callable[[str], None]


# Share of a device's memory the *default* budget leaves free: the caching allocator's fragmentation and
# transient buffers the cost model does not itemise. Measured on one H100 (torch 2.11, Llama-1B, batch 16 x
# 2048, bf16): a plan predicted at 82.2 GB of the card's 85.0 GB ran out of memory with 83.7 GB allocated
# (docs/cost_model.md). A budget the user gives (--memory_gb, memory_gb=) is used exactly as given.
DEFAULT_MEMORY_HEADROOM = 0.08


def default_memory_gb(hardware: HardwareProfile) -> float:
    """The budget when the user names none: the device's memory less ``DEFAULT_MEMORY_HEADROOM``."""
    return round(hardware.device.memory_gb * (1 - DEFAULT_MEMORY_HEADROOM), 2)


class ImpossibleBudgetError(ValueError):
    """No plan fits the memory budget; ``min_memory_gb`` is the smallest budget the search found a plan for."""

    def __init__(self, message: str, min_memory_gb: float | None) -> None:
        super().__init__(message)
        self.min_memory_gb = min_memory_gb


@dataclass(frozen=True)
class StepConfig:
    """One point of the outer search: how a step is cut into stages and micro-batches."""

    pp: int
    num_micro_batches: int
    global_batch_size: int
    schedule: str
    world_size: int

    @property
    def devices_per_stage(self) -> int:
        return self.world_size // self.pp

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // self.num_micro_batches

    def shape(self) -> StepShape:
        return StepShape(self.pp, self.num_micro_batches, self.micro_batch_size, self.devices_per_stage, self.schedule)


@dataclass(frozen=True)
class SearchStats:
    configs: int  # step configs in the search space
    relaxed_solves: int  # configs bounded with the relaxed DP
    exact_solves: int  # configs solved exactly
    pruned: int  # configs never solved: their bound could not beat the best plan
    seconds: float
    certified: bool  # every exact solve fit at its first (rounded-down) memory resolution
    from_uniform: bool = False  # a uniform plan beat the DP's plan (should not happen; kept visible)
    dp_samples_per_s: float = 0.0  # throughput of the DP's own plan
    complete: bool = True  # False: ``time_budget_s`` stopped the search at its best plan so far


@dataclass(frozen=True)
class Evaluated:
    """A plan with its cost report."""

    plan: Plan
    report: CostReport

    @property
    def samples_per_s(self) -> float:
        return self.report.predicted.samples_per_s


@dataclass(frozen=True)
class SearchResult:
    best: Evaluated
    best_uniform: Evaluated | None
    baselines: dict[str, Evaluated | None]  # "ddp", "zero3": plain data parallel at the best plan's batch
    stats: SearchStats
    memory_gb: float

    @property
    def plan(self) -> Plan:
        return self.best.plan


# ----- search space -------------------------------------------------------------------------------------
def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _powers_of_two_up_to(limit: int) -> list[int]:
    values, v = [], 1
    while v <= limit:
        values.append(v)
        v *= 2
    return values


def default_max_batch(spec: ModelSpec, world_size: int) -> int:
    """Largest searched global batch: a power of two with at most 4M tokens, at least one sample per GPU."""
    per_sample = max(1, spec.tokens_per_sample)
    cap = max(1, TOKENS_PER_STEP_CAP // per_sample)
    return max(_powers_of_two_up_to(max(cap, world_size))[-1], 1)


def step_configs(
    spec: ModelSpec, world_size: int, global_batch_size: int | None, max_global_batch_size: int | None = None
) -> list[StepConfig]:
    """Pipeline degrees, batches and micro-batch counts the search visits (docs/search.md)."""
    num_blocks = spec.num_blocks
    configs: set[StepConfig] = set()
    for pp in divisors(world_size):
        if pp > num_blocks:
            continue
        if global_batch_size is not None:
            pairs = [(global_batch_size, m) for m in divisors(global_batch_size)]
        else:
            cap = max_global_batch_size or default_max_batch(spec, world_size)
            pairs = []
            for mb in _powers_of_two_up_to(cap):
                pairs.append((mb, 1))  # one micro-batch: the whole batch at once
                pairs.append((cap, cap // mb))  # the largest batch made of micro-batches of mb
        for batch, m in pairs:
            if pp == 1 and m > 1 and not ACCUMULATE_WITHOUT_PIPELINE:
                continue
            schedule = "1f1b" if m >= pp else "gpipe"
            configs.add(StepConfig(pp, m, batch, schedule, world_size))
    return sorted(configs, key=lambda c: (c.pp, c.global_batch_size, c.num_micro_batches))


def tp_options(spec: ModelSpec, hardware: HardwareProfile, devices: int) -> list[int]:
    """TP degrees inside one node that divide the stage and that at least one block supports."""
    gpn = hardware.gpus_per_node
    return [t for t in divisors(devices) if t <= gpn and any(b.supports_tp(t) for b in spec.blocks)]


def vocab_supports(spec: ModelSpec, tp: int) -> bool:
    """The vocab layers split by TP must divide (the vocabulary for the embedding and LM head)."""
    if tp == 1:
        return True
    for layer in spec.layers:
        if layer.is_block:
            continue
        if layer.tp_params and layer.vocab_size and layer.vocab_size % tp:
            return False
    return True


# ----- the per-config solver ----------------------------------------------------------------------------
@dataclass
class _Run:
    """DP tables of one pass over blocks start, start+1, ...: ``tables[n]`` is (T, units+1) for n+1 blocks.

    ``memory[n]`` holds the exact bytes of the path kept in each cell; ``choices`` / ``previous`` (when
    tracked) the slot chosen per cell and the TP degree the path came from, for backtracking.
    """

    tables: list[np.ndarray]
    choices: list[np.ndarray] = field(default_factory=list)
    previous: list[np.ndarray] = field(default_factory=list)
    memory: list[np.ndarray] = field(default_factory=list)
    _stacked: np.ndarray | None = None
    _stacked_memory: np.ndarray | None = None
    _prefix: np.ndarray | None = None
    _within: dict = field(default_factory=dict)

    def within(self, avail: int, limit: int, budget_bytes: float) -> np.ndarray:
        """(limit, T): least time over cells of at most ``avail`` units whose exact bytes fit the budget.

        Memory was rounded down, so n blocks in cell m hold between m and m + n units: every cell at or
        below ``avail - limit`` fits for sure (a prefix minimum answers for them); only the top ``limit``
        cells need their exact bytes checked.
        """
        key = (avail, budget_bytes)
        cached = self._within.get(key)
        if cached is not None:
            return cached[:limit]
        if self._stacked is None:
            self._stacked = np.stack(self.tables)  # (n, T, units + 1)
            self._stacked_memory = np.stack(self.memory)
            self._prefix = np.minimum.accumulate(self._stacked, axis=2)
        requested, limit = limit, len(self.tables)  # computed once for every count; callers slice
        low = avail - limit
        top = slice(max(low + 1, 0), avail + 1)
        times = self._stacked[:, :, top]
        fits = self._stacked_memory[:, :, top] <= budget_bytes
        best = np.where(fits, times, np.inf).min(axis=2)
        if low >= 0:
            best = np.minimum(best, self._prefix[:, :, low])
        self._within[key] = best
        return best[:requested]


@dataclass(frozen=True)
class _StageChoice:
    start: int
    end: int  # exclusive
    tp_in: int | None  # index into tps (None: free entry)
    tp_out: int
    cap: float


class _Context:
    """What every step config of one search shares: the model, the budget, block signatures."""

    def __init__(self, spec: ModelSpec, hardware: HardwareProfile, model: CostModel, budget_gb: float) -> None:
        self.spec = spec
        self.hardware = hardware
        self.model = model
        self.budget = budget_gb * GB
        self.blocks = spec.blocks
        signatures: dict[tuple, int] = {}
        self.sig = []
        for block in self.blocks:
            key = _signature(block)
            self.sig.append(signatures.setdefault(key, len(signatures)))
        self.representative = {}
        for index, s in enumerate(self.sig):
            self.representative.setdefault(s, self.blocks[index])
        self.reuse = _prefix_reuse(self.sig)
        self._tp_options: dict[int, list[int]] = {}
        self._all_support: dict[int, bool] = {}

    def tp_options(self, devices: int) -> list[int]:
        if devices not in self._tp_options:
            self._tp_options[devices] = tp_options(self.spec, self.hardware, devices)
        return self._tp_options[devices]

    def all_blocks_support(self, tp: int) -> bool:
        """Uniform plans need a TP degree every block supports."""
        if tp not in self._all_support:
            self._all_support[tp] = all(block.supports_tp(tp) for block in self.blocks)
        return self._all_support[tp]


def _signature(layer: LayerSpec) -> tuple:
    """Everything that prices a block (its name and module path do not)."""
    return (
        layer.kind,
        layer.hidden_size,
        layer.num_heads,
        layer.num_kv_heads,
        layer.ffn_size,
        layer.seq_len,
        layer.kv_seq_len,
        layer.params,
        layer.tp_params,
        layer.forward_flops,
        layer.activation,
        tuple(rule.style for rule in layer.tp_rules),
    )


def _prefix_reuse(sig: list[int]) -> list[int]:
    """For each start a, an earlier start c whose pass covers a's: sig[a-1:] is a prefix of sig[c-1:]."""
    n = len(sig)
    padded = [-1] + sig  # the block before the first is the embedding (its own signature)
    reuse = []
    for a in range(n):
        chosen = a
        for c in range(a):
            length = n - a + 1
            if padded[a : a + length] == padded[c : c + length]:
                chosen = c
                break
        reuse.append(chosen)
    return reuse


class _ConfigSolver:
    """Prices one step config and solves it (relaxed bound or exact plan)."""

    def __init__(self, ctx: _Context, config: StepConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.shape = config.shape()
        model, shape = ctx.model, self.shape
        devices, mb = config.devices_per_stage, config.micro_batch_size
        self.tps = [t for t in ctx.tp_options(devices) if mb % (devices // t) == 0]
        self.feasible = bool(self.tps)
        if not self.feasible:
            return
        self.strategies = [(t, devices // t, d, c) for t in self.tps for d, c in SLOTS]
        n_t = len(self.tps)
        self.tp_of = np.repeat(np.arange(n_t), len(SLOTS))
        self.arrays: dict[int, tuple[np.ndarray, ...]] = {}
        for s, layer in ctx.representative.items():
            costs = [model.layer_cost(layer, t, d, dt, c, shape) for t, d, dt, c in self.strategies]
            usable = np.array([layer.supports_tp(t) for t, _, _, _ in self.strategies])
            self.arrays[s] = (
                np.where(usable, [x.time_s for x in costs], np.inf),
                np.array([x.static_bytes for x in costs]),
                np.array([x.activation_bytes for x in costs]),
                np.array([x.workspace_bytes for x in costs]),
            )
        self.switch = {
            s: np.array([[model.relayout_s(layer, a, b, shape) for b in self.tps] for a in self.tps])
            for s, layer in ctx.representative.items()
        }
        self.vocab_options = [
            VocabStrategy(t, devices // t, d) for t in self.tps if vocab_supports(ctx.spec, t) for d in DP_TYPES
        ]
        self.feasible = bool(self.vocab_options)
        self._vocab_cache: dict[tuple, object] = {}
        self._rows_cache: dict[tuple, np.ndarray] = {}
        self.vocab_bounds: dict[VocabStrategy, float] = {}  # relaxed step-time bound per vocab strategy

    # ----- pieces ----------------------------------------------------------------------------------------
    def stage_flags(self, stage: int) -> tuple[bool, bool]:
        return stage == 0, stage == self.config.pp - 1

    def vocab_cost(self, vocab: VocabStrategy, stage: int):
        first, last = self.stage_flags(stage)
        key = (vocab, first, last)
        if key not in self._vocab_cache:
            self._vocab_cache[key] = self.ctx.model.vocab_cost(vocab, first, last, self.shape)
        return self._vocab_cache[key]

    def fixed_bytes(self, vocab: VocabStrategy, stage: int) -> float:
        cost = self.vocab_cost(vocab, stage)
        k = self.shape.in_flight(stage)
        return self.ctx.model.reserved_bytes + cost.static_bytes + k * cost.activation_bytes

    def min_workspace(self) -> float:
        return min(float(np.min(a[3])) for a in self.arrays.values())

    def workspace_caps(self, resolution: float) -> list[float]:
        values = sorted({float(w) for a in self.arrays.values() for w in a[3]})
        caps: list[float] = []
        for w in values:
            if not caps or w - caps[-1] > resolution:
                caps.append(w)
            else:
                caps[-1] = w  # merge caps closer than one memory unit: keep the larger (safe) one
        return caps

    def _rows(self, sig: int, k: int, unit: float, units: int, rounding: str, cap: float) -> np.ndarray:
        """(S, units + 1) flat indices into ``pre`` (T, units + 2): where each (strategy, level) comes from."""
        key = (sig, k, unit, units, rounding, cap)
        rows = self._rows_cache.get(key)
        if rows is None:
            times, static, act, work = self.arrays[sig]
            mem = (static + k * act) / unit
            if rounding == "floor":
                need = np.floor(mem + 1e-9)
            elif rounding == "ceil":
                need = np.ceil(mem - 1e-9)
            else:
                need = np.round(mem)
            need = np.where(np.isfinite(times) & (work <= cap + 1e-6), need, units + 1).astype(np.int64)
            rows = np.arange(units + 1)[None, :] - np.minimum(need, units + 1)[:, None]
            rows = np.where(rows < 0, units + 1, rows)  # the padding column is all inf
            rows = rows + self.tp_of[:, None] * (units + 2)
            self._rows_cache[key] = rows
        return rows

    def run(
        self,
        start: int,
        k: int,
        init: np.ndarray | None,
        unit: float,
        units: int,
        rounding: str,
        cap: float,
        max_blocks: int,
        track: bool = False,
        exact_memory: bool = True,
    ) -> _Run:
        """DP over blocks start.. : tables[n][t, m] = least time of n+1 blocks using exactly m units, last tp t.

        Arrays are (T, units) with the memory levels last, so every reduction (over the previous tp, over the
        slots of one tp) runs over a leading axis: element-wise minima of contiguous rows, which numpy does
        fast. With ``exact_memory`` the exact bytes of the path kept in each cell are carried along.
        """
        n_t, n_slots = len(self.tps), len(SLOTS)
        sig = self.ctx.sig
        result = _Run([])
        best = best_mem = None
        pad = np.full((n_t, 1), np.inf)
        column = np.arange(units + 1)[None, :]
        first_slot = (np.arange(n_t) * n_slots)[:, None]
        for n in range(max_blocks):
            index = start + n
            if n == 0:
                pre = np.full((n_t, units + 2), np.inf)
                pre[:, 0] = 0.0 if init is None else init
                pre_mem = np.zeros((n_t, units + 2))
            else:
                through = best[:, None, :] + self.switch[sig[index - 1]][:, :, None]  # (from, to, m)
                pre = np.hstack([through.min(axis=0), pad])
                if track or exact_memory:
                    came_from = through.argmin(axis=0)  # (to, m)
                if track:
                    result.previous.append(came_from)
                if exact_memory:
                    pre_mem = np.hstack([best_mem.ravel().take(came_from * (units + 1) + column), pad])
            times, static, act, _ = self.arrays[sig[index]]
            rows = self._rows(sig[index], k, unit, units, rounding, cap)
            candidates = (pre.ravel().take(rows) + times[:, None]).reshape(n_t, n_slots, units + 1)
            best = candidates.min(axis=1)
            if track or exact_memory:
                slot = candidates.argmin(axis=1)  # (T, m)
            if track:
                result.choices.append(slot)
            if exact_memory:
                strategy = first_slot + slot  # (T, m): the strategy kept in each cell
                origin = rows.ravel().take(strategy * (units + 1) + column)
                best_mem = pre_mem.ravel().take(origin) + (static + k * act).take(strategy)
                result.memory.append(best_mem)
            result.tables.append(best)
            if not np.isfinite(best).any():
                break
        return result

    def end_costs(self, stage: int, vocab: VocabStrategy) -> np.ndarray:
        """(n + 1, T): per stage end and final tp, the relayout to the head (last stage) or the p2p send."""
        last = stage == self.config.pp - 1
        placement = None if last else self.ctx.model._p2p_placement(stage, self.shape)
        key = ("end", last, vocab.tp if last else None, placement)
        cached = self._vocab_cache.get(key)
        if cached is not None:
            return cached
        model, devices = self.ctx.model, self.config.devices_per_stage
        by_sig: dict[int, np.ndarray] = {}
        for s, layer in self.ctx.representative.items():
            if last:
                by_sig[s] = np.array([model.relayout_s(layer, t, vocab.tp, self.shape) for t in self.tps])
            else:
                by_sig[s] = np.array([model.p2p_s(layer, devices // t, stage, self.shape) for t in self.tps])
        matrix = np.full((len(self.ctx.blocks) + 1, len(self.tps)), np.inf)
        for end in range(1, len(self.ctx.blocks) + 1):
            matrix[end] = by_sig[self.ctx.sig[end - 1]]
        self._vocab_cache[key] = matrix
        return matrix

    def init_vector(self, start: int, tp_in: int) -> np.ndarray:
        boundary = self.ctx.blocks[max(start - 1, 0)]
        return np.array([self.ctx.model.relayout_s(boundary, tp_in, t, self.shape) for t in self.tps])

    def max_blocks(self, stage: int, start: int) -> int:
        """Blocks a stage may take: leave one for every later stage; the last stage takes the rest."""
        pp, n = self.config.pp, len(self.ctx.blocks)
        if stage == pp - 1:
            return n - start
        return n - start - (pp - 1 - stage)

    def starts(self, stage: int) -> list[int]:
        n = len(self.ctx.blocks)
        if stage == 0:
            return [0]
        return list(range(stage, n - (self.config.pp - 1 - stage)))


def _stage_classes(solver: _ConfigSolver) -> dict[int, int]:
    """Stages that share in-flight count and role share DP passes: stage -> in-flight micro-batches."""
    return {i: solver.shape.in_flight(i) for i in range(solver.config.pp)}


# ----- relaxed bound ------------------------------------------------------------------------------------
def relaxed_bound(solver: _ConfigSolver) -> float | None:
    """Least possible step time of a config (never above the true optimum); None when nothing can fit."""
    ctx, config = solver.ctx, solver.config
    if not solver.feasible:
        return None
    unit = ctx.budget / RELAXED_UNITS
    pp, n = config.pp, len(ctx.blocks)
    floor_work = solver.min_workspace()
    runs: dict[tuple, _Run] = {}
    tables_cache: dict[tuple, np.ndarray | None] = {}
    best_step = math.inf
    groups: dict[int, list[VocabStrategy]] = {}
    for vocab in solver.vocab_options:  # one relaxed pass per vocab tp: the dp_type only moves fixed terms
        groups.setdefault(vocab.tp, []).append(vocab)
    for tp, group in groups.items():
        tables = []
        for stage in range(pp):
            first, last = solver.stage_flags(stage)
            key = (stage, tp if (first or last) else None)
            if key not in tables_cache:
                tables_cache[key] = _relaxed_table(solver, stage, group, unit, floor_work, runs)
            if tables_cache[key] is None:
                tables = None
                break
            tables.append(tables_cache[key])
        bound = math.inf if tables is None else _partition_lower_bound(tables, config.num_micro_batches, n)
        for vocab in group:
            solver.vocab_bounds[vocab] = bound
        best_step = min(best_step, bound)
    return best_step if math.isfinite(best_step) else None


def _relaxed_table(solver, stage, group, unit, floor_work, runs) -> np.ndarray | None:
    """table[start, end] = least time of blocks start..end-1 on this stage (relaxed).

    ``group`` holds the vocab strategies of one TP degree; the least of their fixed time, bytes and
    workspace is used (a relaxation: no single strategy needs less).
    """
    ctx, pp, n = solver.ctx, solver.config.pp, len(solver.ctx.blocks)
    k = solver.shape.in_flight(stage)
    vocab = group[0]
    vocab_work = min(solver.vocab_cost(v, stage).workspace_bytes for v in group)
    work = max(floor_work, vocab_work)
    budget_bytes = ctx.budget - min(solver.fixed_bytes(v, stage) for v in group) - work
    if budget_bytes < 0:
        return None
    avail = min(int(math.floor(budget_bytes / unit + 1e-9)), RELAXED_UNITS)
    fixed_time = min(solver.vocab_cost(v, stage).time_s for v in group)
    ends = solver.end_costs(stage, vocab)
    table = np.full((n + 1, n + 1), np.inf)
    for start in solver.starts(stage):
        source = ctx.reuse[start] if stage > 0 else start
        key = (k, source)
        if key not in runs:
            runs[key] = solver.run(
                source,
                k,
                None,
                unit,
                RELAXED_UNITS,
                "floor",
                math.inf,
                solver.max_blocks(stage, source),
                exact_memory=True,
            )
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


# ----- exact solve ---------------------------------------------------------------------------------------
def exact_solve(solver: _ConfigSolver, rounding: str = "floor") -> Plan | None:
    """The best plan of one config under the exact (workspace-capped, relayout-priced) DP."""
    ctx = solver.ctx
    if not solver.feasible:
        return None
    unit = ctx.budget / EXACT_UNITS
    caps = solver.workspace_caps(max(unit, CAP_RESOLUTION * ctx.budget))
    best = None
    runs: dict[tuple, _Run] = {}
    tables: dict[tuple, tuple] = {}
    options = sorted(solver.vocab_options, key=lambda v: solver.vocab_bounds.get(v, 0.0))
    for vocab in options:
        if best is not None and solver.vocab_bounds.get(vocab, 0.0) >= best[0]:
            continue  # even the relaxed bound of this vocab strategy is slower than the plan in hand
        if vocab in solver.vocab_bounds and not math.isfinite(solver.vocab_bounds[vocab]):
            continue
        found = _exact_for_vocab(solver, vocab, caps, unit, rounding, runs, tables)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], vocab, found[1])
    if best is None:
        return None
    _, vocab, choices = best
    return _build_plan(solver, vocab, choices, unit, rounding)


def _exact_for_vocab(solver, vocab, caps, unit, rounding, runs, cache):
    config = solver.config
    pp, n = config.pp, len(solver.ctx.blocks)
    vocab_t = solver.tps.index(vocab.tp)
    tables, cap_of = [], []
    for stage in range(pp):
        first, last = solver.stage_flags(stage)
        key = (stage, vocab if (first or last) else None)  # middle stages do not see the vocab strategy
        if key not in cache:
            cache[key] = _exact_table(solver, stage, vocab, caps, unit, rounding, runs)
        table, which = cache[key]
        tables.append(table)
        cap_of.append(which)
    found = _best_partition(tables, config.num_micro_batches, n, vocab_t)
    if found is None:
        return None
    step, path = found
    choices = []
    for stage, (a, b, t_in, t_out) in enumerate(path):
        t_in = t_in if stage else vocab_t
        choices.append(_StageChoice(a, b, t_in, t_out, caps[cap_of[stage][a, b, t_in, t_out]]))
    return step, choices


def _exact_table(solver, stage, vocab, caps, unit, rounding, runs):
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

    def get_run(source, t_in, cap):
        key = (k, source, solver.tps[t_in], cap, rounding)
        if key not in runs:
            init = solver.init_vector(source, solver.tps[t_in])
            runs[key] = solver.run(
                source, k, init, unit, EXACT_UNITS, rounding, cap, solver.max_blocks(stage, source), exact_memory=True
            )
        return runs[key]

    largest = len(caps) - 1
    for ci in range(largest, -1, -1):
        cap = caps[ci]
        budget_bytes = ctx.budget - fixed - max(cap, vocab_work)
        if budget_bytes < 0:
            continue
        avail = min(int(math.floor(budget_bytes / unit + 1e-9)), EXACT_UNITS)
        for start in solver.starts(stage):
            source = ctx.reuse[start]
            for t_in in entries:
                if stage == pp - 1:
                    lo = n
                else:
                    lo = start + 1
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


def _best_partition(tables, m, n, vocab_t):
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
        total, path = _min_sum(tables, first, n, tau)
        if total is None:
            continue
        step = total + (m - 1) * max(
            tables[i][a, b, ti, to] if i else first[b, to] for i, (a, b, ti, to) in enumerate(path)
        )
        if best is None or step < best[0] - 1e-15:
            best = (step, path)
    return best


def _bottleneck(tables, first, n):
    current = first.copy()  # (end, t)
    for table in tables[1:]:
        # new[b, t_out] = min over a, t_in of max(current[a, t_in], table[a, b, t_in, t_out])
        current = np.min(np.maximum(current[:, None, :, None], table), axis=(0, 2))
    return float(np.min(current[n]))


def _min_sum(tables, first, n, tau):
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
        return None, None
    path = []
    b = n
    n_t = current.shape[1]
    for stage in range(pp - 1, 0, -1):
        a, t_in = divmod(int(back[stage - 1][b, t_out]), n_t)
        path.append((a, b, t_in, t_out))
        b, t_out = a, t_in
    path.append((0, b, -1, t_out))
    path.reverse()
    return total, path


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


def _build_plan(solver: _ConfigSolver, vocab: VocabStrategy, choices: list[_StageChoice], unit, rounding) -> Plan:
    ctx, config = solver.ctx, solver.config
    layers: list[LayerStrategy] = []
    for stage, choice in enumerate(choices):
        k = solver.shape.in_flight(stage)
        tp_in = solver.tps[choice.tp_in]
        fixed = solver.fixed_bytes(vocab, stage)
        vocab_work = solver.vocab_cost(vocab, stage).workspace_bytes
        budget_bytes = ctx.budget - fixed - max(choice.cap, vocab_work)
        avail = min(int(math.floor(budget_bytes / unit + 1e-9)), EXACT_UNITS)
        count = choice.end - choice.start
        init = solver.init_vector(choice.start, tp_in)
        run = solver.run(choice.start, k, init, unit, EXACT_UNITS, rounding, choice.cap, count, track=True)
        times = run.tables[count - 1][choice.tp_out, : avail + 1]
        fits = run.memory[count - 1][choice.tp_out, : avail + 1] <= budget_bytes
        m = int(np.argmin(np.where(fits, times, np.inf)))
        t = choice.tp_out
        picked = []
        for step in range(count - 1, -1, -1):
            slot = int(run.choices[step][t, m])
            s = t * len(SLOTS) + slot
            picked.append(s)
            rows = solver._rows(ctx.sig[choice.start + step], k, unit, EXACT_UNITS, rounding, choice.cap)
            m = int(rows[s, m]) - t * (EXACT_UNITS + 2)
            if step:
                t = int(run.previous[step - 1][t, m])
        stage_layers = []
        for s in reversed(picked):
            tp, dp, dp_type, checkpoint = solver.strategies[s]
            stage_layers.append(LayerStrategy(stage=stage, tp=tp, dp=dp, dp_type=dp_type, checkpoint=checkpoint))
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
    )


# ----- the search ----------------------------------------------------------------------------------------
def search_plan(
    spec: ModelSpec,
    hardware: HardwareProfile,
    num_gpus: int,
    memory_gb: float,
    *,
    global_batch_size: int | None = None,
    mixed_precision: str = "bf16",
    attn_impl: str = "sdpa",
    compute: LayerCostSource | None = None,
    progress: Progress | None = None,
    max_global_batch_size: int | None = None,
    time_budget_s: float | None = None,
    find_minimum_memory: bool = True,
    compare: bool = True,
) -> SearchResult:
    """The fastest plan for ``spec`` on ``num_gpus`` GPUs with ``memory_gb`` per GPU (GB = 1e9 bytes).

    ``global_batch_size`` None searches batches up to ``max_global_batch_size`` (default: 4M tokens).
    ``time_budget_s``: once spent, the search stops at the best plan found so far (``stats.complete`` is
    then False); it never stops before a plan is found or every config is ruled out.
    Raises :class:`ImpossibleBudgetError` when no plan fits, with the smallest budget that would
    (``min_memory_gb``), unless ``find_minimum_memory`` is False (then ``min_memory_gb`` is None).
    ``compare=False`` skips the comparisons (``best_uniform`` is None, ``baselines`` empty).
    """
    _check_inputs(spec, hardware, num_gpus, memory_gb, global_batch_size, mixed_precision)
    started = time.perf_counter()
    model = CostModel(spec, hardware, mixed_precision=mixed_precision, attn_impl=attn_impl, compute=compute)
    reporter = _Reporter(progress, started)
    configs = step_configs(spec, num_gpus, global_batch_size, max_global_batch_size)
    ctx = _Context(spec, hardware, model, memory_gb)
    solvers = [_ConfigSolver(ctx, c) for c in configs]
    if not any(solver.feasible for solver in solvers):
        raise ValueError(
            f"global_batch_size={global_batch_size} cannot be split over {num_gpus} GPUs by any layout of "
            f"{spec.name} (every micro-batch must divide over the data-parallel ranks); use a multiple of "
            f"{num_gpus} or leave --global_batch_size out to search it"
        )
    deadline = None if time_budget_s is None else started + time_budget_s
    found, stats = _best_first(spec, hardware, model, memory_gb, configs, reporter, solvers, deadline)
    if found is None:
        minimum = None
        hint = ""
        if find_minimum_memory:
            minimum = minimum_memory_gb(spec, hardware, num_gpus, memory_gb, model, configs, reporter)
            found_budget = f"the smallest budget with a plan is {minimum:.1f} GB per GPU" if minimum else ""
            hint = f" ({found_budget or 'no budget found'})"
        raise ImpossibleBudgetError(
            f"no plan for {spec.name} fits in {memory_gb:g} GB per GPU on {num_gpus} GPUs{hint}; raise "
            "--memory_gb, add GPUs, shorten --seq_len or lower --global_batch_size",
            minimum,
        )
    uniform, baselines = None, {}
    if compare:
        reporter("comparing with uniform plans and plain DDP / ZeRO-3")
        uniform = best_uniform_plan(spec, hardware, model, num_gpus, memory_gb, configs, solvers)
        baselines = {
            dp_type: plain_data_parallel(spec, hardware, model, memory_gb, solvers, dp_type)
            for dp_type in ("ddp", "zero3")
        }
    from_uniform = uniform is not None and uniform.samples_per_s > found.samples_per_s * (1 + 1e-9)
    best = uniform if from_uniform else found
    stats = replace(
        stats, seconds=time.perf_counter() - started, from_uniform=from_uniform, dp_samples_per_s=found.samples_per_s
    )
    return SearchResult(best=best, best_uniform=uniform, baselines=baselines, stats=stats, memory_gb=memory_gb)


def _check_inputs(spec, hardware, num_gpus, memory_gb, global_batch_size, mixed_precision) -> None:
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_gpus > hardware.world_size:
        raise ValueError(
            f"{num_gpus} GPUs do not fit in {hardware.num_nodes} node(s) of {hardware.gpus_per_node}: pass "
            f"--num_nodes {math.ceil(num_gpus / hardware.gpus_per_node)}"
        )
    if not memory_gb or memory_gb <= 0:
        raise ValueError(f"memory_gb must be > 0, got {memory_gb}")
    if global_batch_size is not None and global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if not spec.blocks:
        raise ValueError(f"{spec.name} has no transformer blocks to plan")
    if mixed_precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"mixed_precision must be bf16, fp16 or fp32, got {mixed_precision!r}")
    hardware.matmul_flops_per_s(mixed_precision)  # a clear error when the profile lacks this dtype


class _Reporter:
    """Progress lines once a search has run for more than a second."""

    def __init__(self, progress: Progress | None, started: float) -> None:
        self.progress = progress
        self.started = started
        self.last = started

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        if self.progress is None or now - self.started < 1.0 or now - self.last < 0.5:
            return
        self.last = now
        self.progress(f"[{now - self.started:5.1f}s] {message}")


def _upper_bound(solver: _ConfigSolver) -> float:
    """Samples/s no plan of this config can beat: least per-block times, no memory limit, ideal balance."""
    if not solver.feasible:
        return 0.0
    config = solver.config
    fastest = {s: float(np.min(a[0])) for s, a in solver.arrays.items()}
    blocks = sum(fastest[s] for s in solver.ctx.sig)
    vocab = min(sum(solver.vocab_cost(v, i).time_s for i in {0, config.pp - 1}) for v in solver.vocab_options)
    total = blocks + vocab
    step = total + (config.num_micro_batches - 1) * total / config.pp
    return config.global_batch_size / step if step > 0 else math.inf


def _best_first(spec, hardware, model, memory_gb, configs, reporter, solvers=None, deadline=None):
    """Bound every config, then solve exactly in order of bound until no bound beats the best plan (or, with
    a ``deadline`` (perf_counter seconds) past and a plan found, stop there)."""
    if solvers is None:
        ctx = _Context(spec, hardware, model, memory_gb)
        solvers = [_ConfigSolver(ctx, c) for c in configs]
    bounds = {id(s): _upper_bound(s) for s in solvers if s.feasible}
    order = sorted((s for s in solvers if s.feasible), key=lambda s: bounds[id(s)], reverse=True)
    heap: list[tuple[float, int, _ConfigSolver]] = []
    best: Evaluated | None = None
    relaxed = exact = 0
    certified = complete = True
    position = 0
    while True:
        if deadline is not None and best is not None and time.perf_counter() > deadline:
            complete = False
            break
        incumbent = best.samples_per_s if best else 0.0
        next_bound = bounds[id(order[position])] if position < len(order) else 0.0
        top = -heap[0][0] if heap else 0.0
        if max(next_bound, top) <= incumbent * (1 + 1e-12):
            break
        if next_bound >= top:
            solver = order[position]
            position += 1
            config = _config_text(solver.config)
            reporter(f"bounding step config {relaxed + 1} of {len(order)} ({config}); {_best_text(best)}")
            step = relaxed_bound(solver)
            relaxed += 1
            if step is not None:
                heapq.heappush(heap, (-solver.config.global_batch_size / step, relaxed, solver))
            continue
        _, _, solver = heapq.heappop(heap)
        exact += 1
        reporter(f"solving {_config_text(solver.config)} exactly; {_best_text(best)}")
        evaluated, first_try = _solve_and_verify(solver, spec, hardware, model, memory_gb)
        certified &= first_try or evaluated is None
        if evaluated is not None and (best is None or evaluated.samples_per_s > best.samples_per_s):
            best = evaluated
    stats = SearchStats(
        configs=len(configs),
        relaxed_solves=relaxed,
        exact_solves=exact,
        pruned=len(configs) - relaxed,
        seconds=0.0,
        certified=certified,
        complete=complete,
    )
    return best, stats


def _config_text(config: StepConfig) -> str:
    return f"pp={config.pp}, batch {config.global_batch_size} = {config.num_micro_batches} x {config.micro_batch_size}"


def _best_text(best: Evaluated | None) -> str:
    return f"best so far {best.samples_per_s:.2f} samples/s" if best else "no plan fits yet"


def _solve_and_verify(solver, spec, hardware, model, memory_gb) -> tuple[Evaluated | None, bool]:
    """Exact DP (memory rounded down, exact bytes carried); re-price the plan; if it still overflows (a cell
    kept a path that does not fit while a slower one would), solve again with memory rounded up."""
    for attempt, rounding in enumerate(("floor", "ceil")):
        plan = exact_solve(solver, rounding)
        if plan is None:
            return None, attempt == 0
        report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, cost_model=model)
        if report.fits(memory_gb):
            plan = plan.with_predicted(report.predicted)
            return Evaluated(plan, report), attempt == 0
    return None, False


# ----- uniform plans and baselines ------------------------------------------------------------------------
def uniform_plan(
    spec: ModelSpec,
    world_size: int,
    *,
    global_batch_size: int,
    pp: int = 1,
    tp: int = 1,
    dp_type: str = "ddp",
    checkpoint: bool = False,
    num_micro_batches: int = 1,
    schedule: str = "1f1b",
    mixed_precision: str = "bf16",
    vocab_tp: int | None = None,
) -> Plan:
    """One strategy for every block, blocks split evenly over ``pp`` stages (extra blocks on early stages).

    The vocab layers use the blocks' tp when it divides the vocabulary (else ``vocab_tp`` or 1).
    """
    if pp < 1 or world_size % pp:
        raise PlanError(f"pp={pp} must be >= 1 and divide the number of GPUs ({world_size})")
    devices = world_size // pp
    if tp < 1 or devices % tp:
        raise PlanError(f"tp={tp} must divide the GPUs per stage (world_size / pp = {devices})")
    if schedule not in SCHEDULES:
        raise PlanError(f"schedule {schedule!r} is not one of {SCHEDULES}")
    n = spec.num_blocks
    if pp > n:
        raise PlanError(f"pp={pp} is larger than the number of blocks ({n}); lower pp")
    sizes = [n // pp + (1 if i < n % pp else 0) for i in range(pp)]
    layers = [
        LayerStrategy(stage=stage, tp=tp, dp=devices // tp, dp_type=dp_type, checkpoint=checkpoint)
        for stage, size in enumerate(sizes)
        for _ in range(size)
    ]
    if vocab_tp is None:
        vocab_tp = tp if vocab_supports(spec, tp) else 1
    plan = Plan(
        world_size=world_size,
        pp=pp,
        schedule=schedule,
        global_batch_size=global_batch_size,
        num_micro_batches=num_micro_batches,
        layers=layers,
        vocab=VocabStrategy(tp=vocab_tp, dp=devices // vocab_tp, dp_type=dp_type),
        seq_len=spec.seq_len,
        mixed_precision=mixed_precision,
        model_name=spec.name,
        model_type=spec.model_type,
    )
    return plan.validate(spec=spec)


def best_uniform_plan(spec, hardware, model, num_gpus, memory_gb, configs, solvers=None) -> Evaluated | None:
    """The fastest fitting uniform plan over the same step configs (Galvatron's "global" strategies).

    Each candidate is priced from the per-config arrays first (cheap); the most promising are then priced
    by :func:`estimate_plan`, which has the last word.
    """
    if solvers is None:
        ctx = _Context(spec, hardware, model, memory_gb)
        solvers = [_ConfigSolver(ctx, c) for c in configs]
    candidates = []
    for solver in solvers:
        if solver.feasible:
            fitting = [c for c in _uniform_candidates(solver) if c[1] <= solver.ctx.budget * (1 + 1e-6)]
            candidates.extend((c[0], *c[2:]) for c in fitting)
    best: Evaluated | None = None
    for quick, config, tp, dp_type, checkpoint in sorted(candidates, key=lambda c: -c[0]):
        if best is not None and quick <= best.samples_per_s * (1 - 1e-6):
            break
        plan = uniform_plan(
            spec,
            num_gpus,
            global_batch_size=config.global_batch_size,
            pp=config.pp,
            tp=tp,
            dp_type=dp_type,
            checkpoint=checkpoint,
            num_micro_batches=config.num_micro_batches,
            schedule=config.schedule,
            mixed_precision=model.precision.name,
        )
        report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, cost_model=model)
        if report.fits(memory_gb) and (best is None or report.predicted.samples_per_s > best.samples_per_s):
            best = Evaluated(plan.with_predicted(report.predicted), report)
    return best


def _uniform_candidates(solver: _ConfigSolver) -> list[tuple]:
    """(samples/s, peak bytes, config, tp, dp_type, checkpoint) of every uniform plan of a config."""
    config, ctx = solver.config, solver.ctx
    n, pp, devices = len(ctx.blocks), config.pp, config.devices_per_stage
    sizes = [n // pp + (1 if i < n % pp else 0) for i in range(pp)]
    stages, start = [], 0
    for stage, size in enumerate(sizes):  # per-strategy sums over the stage's blocks, all strategies at once
        k = solver.shape.in_flight(stage)
        counts: dict[int, int] = {}
        for g in ctx.sig[start : start + size]:
            counts[g] = counts.get(g, 0) + 1
        time_s = sum(c * solver.arrays[g][0] for g, c in counts.items())
        memory = sum(c * (solver.arrays[g][1] + k * solver.arrays[g][2]) for g, c in counts.items())
        work = np.max([solver.arrays[g][3] for g in counts], axis=0)
        stages.append((stage, start + size, time_s, memory, work))
        start += size
    found = []
    for index, (tp, dp, dp_type, checkpoint) in enumerate(solver.strategies):
        if not ctx.all_blocks_support(tp):
            continue
        vocab_tp = tp if vocab_supports(ctx.spec, tp) else 1
        if config.micro_batch_size % (devices // vocab_tp):
            continue
        vocab = VocabStrategy(vocab_tp, devices // vocab_tp, dp_type)
        t = solver.tps.index(tp)
        times, peak = [], 0.0
        for stage, end, time_s, memory, work in stages:
            cost = solver.vocab_cost(vocab, stage)
            stage_time = float(time_s[index]) + cost.time_s + solver.end_costs(stage, vocab)[end, t]
            if stage == 0:
                stage_time += solver.init_vector(0, vocab.tp)[t]
            times.append(stage_time)
            stage_peak = solver.fixed_bytes(vocab, stage) + float(memory[index])
            peak = max(peak, stage_peak + max(cost.workspace_bytes, float(work[index])))
        step = pipeline_step_s(times, config.num_micro_batches)
        found.append((config.global_batch_size / step, peak, config, tp, dp_type, checkpoint))
    return found


def plain_data_parallel(spec, hardware, model, memory_gb, solvers, dp_type) -> Evaluated | None:
    """The fastest plain data-parallel plan (pp = 1, tp = 1, no checkpointing) over the searched batches.

    ``ddp`` replicates everything, ``zero3`` shards it. When none fits, the one needing the least memory is
    returned, so the caller can say how much it would need. None when no batch splits over the GPUs.
    """
    options = []
    for solver in solvers:
        if not solver.feasible or solver.config.pp != 1 or 1 not in solver.tps:
            continue
        for quick, peak, config, tp, kind, checkpoint in _uniform_candidates(solver):
            if tp == 1 and kind == dp_type and not checkpoint:
                options.append(
                    (
                        peak > solver.ctx.budget * (1 + 1e-6),
                        -quick if peak <= solver.ctx.budget * (1 + 1e-6) else peak,
                        config,
                    )
                )
    if not options:
        return None
    _, _, config = min(options, key=lambda o: (o[0], o[1]))
    plan = uniform_plan(
        spec,
        config.world_size,
        global_batch_size=config.global_batch_size,
        dp_type=dp_type,
        num_micro_batches=config.num_micro_batches,
        mixed_precision=model.precision.name,
        vocab_tp=1,
    )
    report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, cost_model=model)
    return Evaluated(plan.with_predicted(report.predicted), report)


def minimum_memory_gb(spec, hardware, num_gpus, memory_gb, model, configs, reporter) -> float | None:
    """The smallest per-GPU budget the search finds a plan for.

    The relaxed pass (memory rounded down, least workspace) brackets and bisects the budget cheaply, since
    one relaxed-feasible config is enough; it can only be optimistic, so the full search then confirms,
    raising the budget 1% at a time until it finds a plan. The result (rounded up to 0.1 GB) fits.
    """
    low, high = memory_gb, memory_gb
    for _ in range(16):
        high *= 2
        reporter(f"looking for the smallest budget that fits: trying {high:.1f} GB")
        if _relaxed_feasible(spec, hardware, model, high, configs):
            break
        low = high
    else:
        return None
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        reporter(f"looking for the smallest budget that fits: trying {middle:.1f} GB")
        if _relaxed_feasible(spec, hardware, model, middle, configs):
            high = middle
        else:
            low = middle
    failed, budget = low, math.ceil(high * 10) / 10
    for _ in range(40):  # the full search confirms: 2.5% steps up, then bisection back down
        reporter(f"confirming the smallest budget that fits: {budget:.1f} GB")
        if _best_first(spec, hardware, model, budget, configs, reporter)[0] is not None:
            break
        failed, budget = budget, math.ceil(budget * 1.025 * 10) / 10
    else:
        return None
    while budget - failed > max(0.005 * budget, 0.1):
        middle = math.ceil((failed + budget) / 2 * 10) / 10
        if middle >= budget:
            break
        if _best_first(spec, hardware, model, middle, configs, reporter)[0] is not None:
            budget = middle
        else:
            failed = middle
    return budget


def _relaxed_feasible(spec, hardware, model, memory_gb, configs) -> bool:
    ctx = _Context(spec, hardware, model, memory_gb)
    for config in configs:
        solver = _ConfigSolver(ctx, config)
        if solver.feasible and relaxed_bound(solver) is not None:
            return True
    return False
