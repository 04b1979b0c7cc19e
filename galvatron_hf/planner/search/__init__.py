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

One module per part, each importing only the ones listed before it:

* ``results``: what a search returns (``SearchResult``, ``Evaluated``, ``SearchStats``), the default budget,
  ``ImpossibleBudgetError``;
* ``space``: the step configs and the per-block strategies (``StepConfig``, ``Strategy``, ``step_configs``);
* ``problem``: ``SearchProblem``, one search's checked inputs, and ``SearchOptions``, what a caller may set;
* ``solver``: a step config's cost arrays and the DP over blocks (``ConfigSolver``);
* ``bound``: the memory-free upper bound and the relaxed DP;
* ``exact``: the exact solve of one config and the plan read back from it;
* ``driver``: ``search_plan`` (best-first order, verification, the smallest budget that fits).

The uniform plans and the baselines every result reports (best uniform, plain DDP / ZeRO-3) live in
``galvatron_hf.planner.uniform``, between ``exact`` and ``driver``. Every public name of these modules is
importable from here; they load on first use, so importing a part does not import the driver.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PARTS = {
    "results": (
        "DEFAULT_MEMORY_HEADROOM",
        "Evaluated",
        "ImpossibleBudgetError",
        "SearchResult",
        "SearchStats",
        "default_memory_gb",
    ),
    "space": (
        "SLOTS",
        "TOKENS_PER_STEP_CAP",
        "Slot",
        "StepConfig",
        "Strategy",
        "default_max_batch",
        "divisors",
        "hsdp_shard",
        "step_configs",
        "tp_options",
        "vocab_supports",
    ),
    "problem": ("SearchOptions", "SearchProblem"),
    "solver": ("BlockRun", "ConfigSolver", "MemoryGrid", "SearchContext", "StrategyCosts", "build_solvers"),
    "bound": ("RELAXED_UNITS", "relaxed_bound", "relaxed_feasible", "upper_bound"),
    "exact": ("CAP_RESOLUTION", "EXACT_UNITS", "TAU_CANDIDATES", "exact_solve"),
    "driver": ("Progress", "minimum_memory_gb", "search_plan"),
}
_UNIFORM = (
    "UniformCandidate",
    "best_uniform_plan",
    "compare_with_uniform",
    "even_stage_sizes",
    "plain_data_parallel",
    "uniform_candidates",
    "uniform_plan",
)
_EXPORTS = {name: f"{__name__}.{part}" for part, names in _PARTS.items() for name in names}
_EXPORTS.update({name: "galvatron_hf.planner.uniform" for name in _UNIFORM})
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
