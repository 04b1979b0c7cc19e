"""The per-config solver: a step config's per-strategy cost arrays and the dynamic program over blocks.

Within a stage the cost model is additive over blocks (plus the relayout between consecutive layouts), so a
dynamic program over blocks with memory discretised into units finds, for every block range, every memory
level and every final TP degree, the fastest assignment (docs/search.md, "Algorithm"). The relaxed bound
(bound.py) and the exact solve (exact.py) both run it, on different memory grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from galvatron_hf.planner.cost_model import LayerCost
from galvatron_hf.planner.plan import DP_TYPES, VocabStrategy
from galvatron_hf.planner.search.space import (
    SEQUENCE_PARALLEL_FAMILIES,
    SLOTS,
    StepConfig,
    Strategy,
    hsdp_shard,
    tp_options,
    vocab_supports,
)

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import LayerSpec
    from galvatron_hf.planner.search.problem import SearchProblem


class MemoryGrid(NamedTuple):
    """How the DP discretises a stage's memory: ``units`` cells of ``unit`` bytes, each strategy's bytes
    rounded by ``rounding`` ("floor", "ceil" or "round"); every kept path carries its exact bytes beside."""

    unit: float
    units: int
    rounding: str

    def units_within(self, budget_bytes: float) -> int:
        """The highest cell index a path may reach under ``budget_bytes``."""
        return min(int(math.floor(budget_bytes / self.unit + 1e-9)), self.units)


class StrategyCosts(NamedTuple):
    """One block signature's costs, one entry per strategy of the config (``ConfigSolver.strategies``)."""

    time_s: np.ndarray  # inf where the block does not support the strategy's tp
    static_bytes: np.ndarray  # parameters, gradients, optimizer states
    activation_bytes: np.ndarray  # per micro-batch in flight
    workspace_bytes: np.ndarray  # transient, the stage holds its largest


@dataclass
class BlockRun:
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
    _within: dict[tuple[int, float], np.ndarray] = field(default_factory=dict)

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


class SearchContext:
    """What every step config of one search shares: the problem, the budget in bytes, block signatures."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        self.spec = problem.spec
        self.hardware = problem.hardware
        self.model = problem.model
        self.budget = problem.budget_bytes
        self.blocks = problem.spec.blocks
        self.block_params = float(sum(block.params for block in self.blocks))
        self.sp_family = problem.spec.family in SEQUENCE_PARALLEL_FAMILIES
        signatures: dict[tuple, int] = {}
        self.sig = [signatures.setdefault(_signature(block), len(signatures)) for block in self.blocks]
        self.representative: dict[int, LayerSpec] = {}
        for index, s in enumerate(self.sig):
            self.representative.setdefault(s, self.blocks[index])
        self.reuse = _prefix_reuse(self.sig)
        self._tp_options: dict[int, list[int]] = {}
        self._all_support: dict[int, bool] = {}
        self._vocab_support: dict[int, bool] = {}

    def tp_options(self, devices: int) -> list[int]:
        if devices not in self._tp_options:
            self._tp_options[devices] = tp_options(self.spec, self.hardware, devices)
        return self._tp_options[devices]

    def all_blocks_support(self, tp: int) -> bool:
        """Uniform plans need a TP degree every block supports."""
        if tp not in self._all_support:
            self._all_support[tp] = all(block.supports_tp(tp) for block in self.blocks)
        return self._all_support[tp]

    def vocab_supports(self, tp: int) -> bool:
        """:func:`vocab_supports` of the model, asked once per TP degree."""
        if tp not in self._vocab_support:
            self._vocab_support[tp] = vocab_supports(self.spec, tp)
        return self._vocab_support[tp]


def build_solvers(problem: SearchProblem) -> list[ConfigSolver]:
    """One solver per step config of the problem, sharing one context."""
    ctx = SearchContext(problem)
    return [ConfigSolver(ctx, config) for config in problem.configs]


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


def _offered(strategy: Strategy) -> bool:
    """Every slot is offered but hsdp where its tp and dp leave no proper shard group (``hsdp_shard``), and
    sequence parallelism without TP."""
    return (strategy.dp_type != "hsdp" or strategy.dp_shard > 0) and (not strategy.sp or strategy.tp > 1)


NOT_OFFERED = LayerCost(time_s=float("inf"), static_bytes=0.0, activation_bytes=0.0, workspace_bytes=0.0)


class ConfigSolver:
    """Prices one step config and runs its DP passes (the relaxed bound and the exact plan use them)."""

    def __init__(self, ctx: SearchContext, config: StepConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.shape = config.shape()
        devices, mb = config.batch_devices, config.micro_batch_size
        self.tps = [t for t in ctx.tp_options(devices) if mb % (devices // t) == 0]
        self.feasible = bool(self.tps)
        if not self.feasible:
            return
        self._hsdp_sizing = (ctx.hardware.gpus_per_node, ctx.block_params / config.pp, ctx.budget)
        self.strategies = [
            Strategy(
                t, devices // t, slot.dp_type, slot.checkpoint, self._shard_of(slot.dp_type, t, devices // t), slot.sp
            )
            for t in self.tps
            for slot in SLOTS
        ]
        self.tp_of = np.repeat(np.arange(len(self.tps)), len(SLOTS))
        self.arrays = {s: self._strategy_costs(layer) for s, layer in ctx.representative.items()}
        self.switch = {s: self._relayout_matrix(layer) for s, layer in ctx.representative.items()}
        self.vocab_options = [
            VocabStrategy(t, devices // t, d, self._shard_of(d, t, devices // t))
            for t in self.tps
            if ctx.vocab_supports(t)
            for d in DP_TYPES
            if d != "hsdp" or self._shard_of(d, t, devices // t)
        ]
        self.feasible = bool(self.vocab_options)
        self._vocab_cache: dict[tuple, LayerCost] = {}
        self._ends_cache: dict[tuple, np.ndarray] = {}
        self._rows_cache: dict[tuple, np.ndarray] = {}
        self.vocab_bounds: dict[VocabStrategy, float] = {}  # relaxed step-time bound per vocab strategy

    def _shard_of(self, dp_type: str, tp: int, dp: int) -> int:
        """hsdp's shard group for this tp and dp (:func:`hsdp_shard`); 0 for the other kinds."""
        return hsdp_shard(tp, dp, *self._hsdp_sizing) if dp_type == "hsdp" else 0

    def _strategy_costs(self, layer: LayerSpec) -> StrategyCosts:
        model, shape = self.ctx.model, self.shape
        # sequence parallelism splits each rank's tokens over the TP group: tp > 1 and tp dividing them
        tokens = layer.seq_len // shape.cp
        offered = [_offered(s) and (not s.sp or (self.ctx.sp_family and tokens % s.tp == 0)) for s in self.strategies]
        costs = [
            model.layer_cost(layer, s.tp, s.dp, s.dp_type, s.checkpoint, shape, s.dp_shard, s.sp) if ok else NOT_OFFERED
            for s, ok in zip(self.strategies, offered)
        ]
        usable = np.array([layer.supports_tp(s.tp) and ok for s, ok in zip(self.strategies, offered)])
        return StrategyCosts(
            time_s=np.where(usable, [x.time_s for x in costs], np.inf),
            static_bytes=np.array([x.static_bytes for x in costs]),
            activation_bytes=np.array([x.activation_bytes for x in costs]),
            workspace_bytes=np.array([x.workspace_bytes for x in costs]),
        )

    def _relayout_matrix(self, layer: LayerSpec) -> np.ndarray:
        """(T, T): the relayout after ``layer`` from each TP degree to each other."""
        model, shape = self.ctx.model, self.shape
        return np.array([[model.relayout_s(layer, a, b, shape) for b in self.tps] for a in self.tps])

    # ----- pieces ----------------------------------------------------------------------------------------
    def stage_flags(self, stage: int) -> tuple[bool, bool]:
        return stage == 0, stage == self.config.pp - 1

    def vocab_cost(self, vocab: VocabStrategy, stage: int) -> LayerCost:
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
        return min(float(np.min(a.workspace_bytes)) for a in self.arrays.values())

    def workspace_caps(self, resolution: float) -> list[float]:
        values = sorted({float(w) for a in self.arrays.values() for w in a.workspace_bytes})
        caps: list[float] = []
        for w in values:
            if not caps or w - caps[-1] > resolution:
                caps.append(w)
            else:
                caps[-1] = w  # merge caps closer than one memory unit: keep the larger (safe) one
        return caps

    def rows(self, sig: int, k: int, grid: MemoryGrid, cap: float) -> np.ndarray:
        """(S, units + 1) flat indices into ``pre`` (T, units + 2): where each (strategy, level) comes from."""
        key = (sig, k, grid, cap)
        rows = self._rows_cache.get(key)
        if rows is None:
            rows = self._build_rows(self.arrays[sig], k, grid, cap)
            self._rows_cache[key] = rows
        return rows

    def _build_rows(self, costs: StrategyCosts, k: int, grid: MemoryGrid, cap: float) -> np.ndarray:
        units = grid.units
        mem = (costs.static_bytes + k * costs.activation_bytes) / grid.unit
        if grid.rounding == "floor":
            need = np.floor(mem + 1e-9)
        elif grid.rounding == "ceil":
            need = np.ceil(mem - 1e-9)
        else:
            need = np.round(mem)
        allowed = np.isfinite(costs.time_s) & (costs.workspace_bytes <= cap + 1e-6)
        need = np.where(allowed, need, units + 1).astype(np.int64)
        rows = np.arange(units + 1)[None, :] - np.minimum(need, units + 1)[:, None]
        rows = np.where(rows < 0, units + 1, rows)  # the padding column is all inf
        return rows + self.tp_of[:, None] * (units + 2)

    def run(
        self,
        start: int,
        k: int,
        init: np.ndarray | None,
        grid: MemoryGrid,
        cap: float,
        max_blocks: int,
        track: bool = False,
    ) -> BlockRun:
        """DP over blocks start.. : tables[n][t, m] = least time of n+1 blocks using exactly m units, last tp t.

        Arrays are (T, units) with the memory levels last, so every reduction (over the previous tp, over the
        slots of one tp) runs over a leading axis: element-wise minima of contiguous rows, which numpy does
        fast. The exact bytes of the path kept in each cell are carried along; ``track`` also keeps the
        choices for backtracking.
        """
        n_t, n_slots, units = len(self.tps), len(SLOTS), grid.units
        sig = self.ctx.sig
        result = BlockRun([])
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
                came_from = through.argmin(axis=0)  # (to, m)
                if track:
                    result.previous.append(came_from)
                pre_mem = np.hstack([best_mem.ravel().take(came_from * (units + 1) + column), pad])
            costs = self.arrays[sig[index]]
            rows = self.rows(sig[index], k, grid, cap)
            candidates = (pre.ravel().take(rows) + costs.time_s[:, None]).reshape(n_t, n_slots, units + 1)
            best = candidates.min(axis=1)
            slot = candidates.argmin(axis=1)  # (T, m)
            if track:
                result.choices.append(slot)
            strategy = first_slot + slot  # (T, m): the strategy kept in each cell
            origin = rows.ravel().take(strategy * (units + 1) + column)
            kept_bytes = (costs.static_bytes + k * costs.activation_bytes).take(strategy)
            best_mem = pre_mem.ravel().take(origin) + kept_bytes
            result.memory.append(best_mem)
            result.tables.append(best)
            if not np.isfinite(best).any():
                break
        return result

    def end_costs(self, stage: int, vocab: VocabStrategy) -> np.ndarray:
        """(n + 1, T): per stage end and final tp, the relayout to the head (last stage) or the p2p send."""
        last = stage == self.config.pp - 1
        placement = None if last else self.ctx.model._p2p_placement(stage, self.shape)
        key = (last, vocab.tp if last else None, placement)
        cached = self._ends_cache.get(key)
        if cached is not None:
            return cached
        model, devices = self.ctx.model, self.config.batch_devices
        by_sig: dict[int, np.ndarray] = {}
        for s, layer in self.ctx.representative.items():
            if last:
                by_sig[s] = np.array([model.relayout_s(layer, t, vocab.tp, self.shape) for t in self.tps])
            else:
                by_sig[s] = np.array([model.p2p_s(layer, devices // t, stage, self.shape) for t in self.tps])
        matrix = np.full((len(self.ctx.blocks) + 1, len(self.tps)), np.inf)
        for end in range(1, len(self.ctx.blocks) + 1):
            matrix[end] = by_sig[self.ctx.sig[end - 1]]
        self._ends_cache[key] = matrix
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
