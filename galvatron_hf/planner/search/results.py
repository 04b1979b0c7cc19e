"""What a search returns (the best plan, the comparisons, statistics) and how it says that nothing fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model import CostReport
from galvatron_hf.planner.plan import Plan

if TYPE_CHECKING:
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

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
    notes: tuple[str, ...] = ()  # what the user should know about how the plan was found (e.g. why offload)

    @property
    def plan(self) -> Plan:
        return self.best.plan
