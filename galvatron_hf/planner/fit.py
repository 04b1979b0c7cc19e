"""Will it fit? The best plan for one model over GPU counts and per-GPU memory sizes, before renting anything.

Each cell of the table is one search (``search_plan``) with a time budget: once the budget is spent the
search stops at the best plan found so far (the cell says so), and a cell where nothing fits is answered as
soon as the search's optimistic bound rules every step config out (the smallest budget that would fit is not
searched for). Pure Python, offline: the table for a 7B model takes seconds to a minute on a laptop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from galvatron_hf.planner.plan import DP_TYPE_NAMES
from galvatron_hf.planner.search import DEFAULT_MEMORY_HEADROOM, ImpossibleBudgetError, search_plan

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.planner.plan import Plan
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
# Common per-GPU memory sizes: L4 / A10 / RTX 4090 (24), A100 40GB (40), L40S / RTX 6000 Ada (48),
# A100 / H100 80GB (80), H200 (141).
CARD_MEMORY_GB = (24.0, 40.0, 48.0, 80.0, 141.0)
DEFAULT_TIME_BUDGET_S = 2.0


@dataclass(frozen=True)
class MemoryColumn:
    """One per-GPU memory size: a card (its budget leaves the default headroom) or a budget given as is."""

    label: str
    memory_gb: float  # what a GPU has (ranks configurations by total memory)
    budget_gb: float  # what the search may plan for

    @classmethod
    def card(cls, memory_gb: float) -> MemoryColumn:
        budget = round(memory_gb * (1 - DEFAULT_MEMORY_HEADROOM), 2)
        return cls(f"{memory_gb:g} GB card", memory_gb, budget)

    @classmethod
    def budget(cls, budget_gb: float) -> MemoryColumn:
        return cls(f"{budget_gb:g} GB budget", budget_gb, budget_gb)


@dataclass(frozen=True)
class FitCell:
    """The best plan the search found for ``num_gpus`` GPUs of one memory size (or that none fits)."""

    num_gpus: int
    memory_gb: float
    budget_gb: float
    fits: bool
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gb: float | None = None
    layout: str | None = None
    complete: bool = True  # False: the time budget stopped the search at this plan (a faster one may exist)
    seconds: float = 0.0

    @property
    def total_memory_gb(self) -> float:
        return self.num_gpus * self.memory_gb


@dataclass(frozen=True)
class FitTable:
    model: str
    params: int
    tokens_per_sample: int
    hardware: str
    mixed_precision: str
    gpu_counts: tuple[int, ...]
    columns: tuple[MemoryColumn, ...]
    cells: tuple[FitCell, ...]
    time_budget_s: float | None
    seconds: float

    def cell(self, num_gpus: int, column: MemoryColumn) -> FitCell:
        return next(c for c in self.cells if c.num_gpus == num_gpus and c.budget_gb == column.budget_gb)

    @property
    def cheapest(self) -> FitCell | None:
        """The fitting configuration with the least memory in all (GPUs x memory), then the fastest."""
        fitting = [cell for cell in self.cells if cell.fits]
        return min(fitting, key=lambda c: (c.total_memory_gb, -(c.tokens_per_s or 0.0)), default=None)

    def to_dict(self) -> dict[str, Any]:
        cheapest = self.cheapest
        return {
            **{key: value for key, value in asdict(self).items() if key not in ("cells", "columns")},
            "columns": [asdict(column) for column in self.columns],
            "cells": [asdict(cell) for cell in self.cells],
            "cheapest": asdict(cheapest) if cheapest else None,
        }


def fit_table(
    spec: ModelSpec,
    hardware_for: Callable[[int], HardwareProfile],
    *,
    gpu_counts: tuple[int, ...] = GPU_COUNTS,
    columns: tuple[MemoryColumn, ...] = tuple(MemoryColumn.card(gb) for gb in CARD_MEMORY_GB),
    mixed_precision: str = "bf16",
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> FitTable:
    """Search every (GPU count, memory) cell. ``hardware_for(num_gpus)`` gives the profile of a cluster of that
    many GPUs (its speeds; the memory comes from the column). ``time_budget_s`` None searches each cell to the
    end."""
    started = time.perf_counter()
    cells = []
    for num_gpus in gpu_counts:
        hardware = hardware_for(num_gpus)
        for column in columns:
            if progress is not None:
                progress(f"searching {spec.name} on {num_gpus} GPU(s) with {column.label}")
            cells.append(_fit_cell(spec, hardware, num_gpus, column, mixed_precision, time_budget_s))
    return FitTable(
        model=spec.name,
        params=spec.total_params,
        tokens_per_sample=spec.tokens_per_sample,
        hardware=hardware_for(1).name,
        mixed_precision=mixed_precision,
        gpu_counts=tuple(gpu_counts),
        columns=tuple(columns),
        cells=tuple(cells),
        time_budget_s=time_budget_s,
        seconds=time.perf_counter() - started,
    )


def _fit_cell(spec, hardware, num_gpus: int, column: MemoryColumn, mixed_precision: str, time_budget_s) -> FitCell:
    started = time.perf_counter()
    try:
        result = search_plan(
            spec,
            hardware,
            num_gpus,
            column.budget_gb,
            mixed_precision=mixed_precision,
            time_budget_s=time_budget_s,
            find_minimum_memory=False,
            compare=False,
        )
    except ImpossibleBudgetError:
        return FitCell(num_gpus, column.memory_gb, column.budget_gb, False, seconds=time.perf_counter() - started)
    predicted = result.best.report.predicted
    return FitCell(
        num_gpus=num_gpus,
        memory_gb=column.memory_gb,
        budget_gb=column.budget_gb,
        fits=True,
        tokens_per_s=predicted.tokens_per_s,
        samples_per_s=predicted.samples_per_s,
        mfu=predicted.mfu,
        peak_memory_gb=result.best.report.peak_memory_gb,
        layout=describe_layout(result.best.plan),
        complete=result.stats.complete,
        seconds=time.perf_counter() - started,
    )


def describe_layout(plan: Plan) -> str:
    """A plan in a few words: pipeline, TP degrees, data-parallel flavours, checkpointed blocks, batch."""
    tps = "/".join(str(t) for t in sorted({layer.tp for layer in plan.layers}))
    kinds = "/".join(DP_TYPE_NAMES[k] for k in sorted({layer.dp_type for layer in plan.layers}))
    checkpointed = sum(layer.checkpoint for layer in plan.layers)
    text = f"pp {plan.pp}, tp {tps}, {kinds}"
    if checkpointed:
        text += f", checkpointing {checkpointed}/{len(plan.layers)} blocks"
    return text + f", batch {plan.global_batch_size} = {plan.num_micro_batches} x {plan.micro_batch_size}"
