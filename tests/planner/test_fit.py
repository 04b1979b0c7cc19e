"""`fit`: the best plan per (GPU count, memory) cell; more GPUs or more memory never predict less."""

from __future__ import annotations

from functools import partial

import pytest

from galvatron_hf.adapters import describe_model
from galvatron_hf.planner.fit import FitTable, MemoryColumn, describe_layout, fit_table
from galvatron_hf.planner.search import ImpossibleBudgetError, search_plan
from galvatron_hf.profiler.builtin_hardware import builtin_hardware, hardware_for

GPU_COUNTS = (1, 2, 4, 8, 16)
BUDGETS = (3.0, 6.0, 12.0, 24.0)


def assert_monotone(table: FitTable) -> None:
    """Along every row (more memory) and column (more GPUs): fitting stays fitting, tokens/s never drops."""
    for num_gpus in table.gpu_counts:
        row = [table.cell(num_gpus, column) for column in table.columns]
        _assert_non_decreasing(row, f"{num_gpus} GPUs, more memory")
    for column in table.columns:
        cells = [table.cell(num_gpus, column) for num_gpus in table.gpu_counts]
        _assert_non_decreasing(cells, f"{column.label}, more GPUs")


def _assert_non_decreasing(cells, where: str) -> None:
    for smaller, larger in zip(cells, cells[1:]):
        assert larger.fits or not smaller.fits, f"{where}: {smaller} fits, {larger} does not"
        if smaller.fits:
            assert larger.tokens_per_s >= smaller.tokens_per_s * (1 - 1e-9), f"{where}: {larger} < {smaller}"


@pytest.fixture(scope="module")
def toy_table():
    spec = describe_model("gpt2")
    columns = tuple(MemoryColumn.budget(gb) for gb in BUDGETS)
    table = fit_table(spec, partial(hardware_for, "h100"), gpu_counts=GPU_COUNTS, columns=columns, time_budget_s=None)
    return spec, table


def test_table_is_monotone_in_gpus_and_memory(toy_table):
    _, table = toy_table
    assert len(table.cells) == len(GPU_COUNTS) * len(BUDGETS)
    assert any(not cell.fits for cell in table.cells) and any(cell.fits for cell in table.cells)
    assert all(cell.complete for cell in table.cells)  # no time budget: every search ran to the end
    assert_monotone(table)


def test_cells_are_the_searchs_best_plans(toy_table):
    spec, table = toy_table
    cell = next(c for c in table.cells if c.fits and c.num_gpus == 4)
    result = search_plan(spec, builtin_hardware("h100", 1), 4, cell.budget_gb, compare=False)
    assert cell.tokens_per_s == result.best.report.predicted.tokens_per_s
    assert cell.layout == describe_layout(result.best.plan)
    assert cell.peak_memory_gb <= cell.budget_gb
    missing = next(c for c in table.cells if not c.fits)
    with pytest.raises(ImpossibleBudgetError) as err:
        search_plan(spec, builtin_hardware("h100", 2), missing.num_gpus, missing.budget_gb, find_minimum_memory=False)
    assert err.value.min_memory_gb is None


def test_cheapest_is_the_least_memory_in_all(toy_table):
    _, table = toy_table
    cheapest = table.cheapest
    assert cheapest is not None and cheapest.fits
    assert all(cheapest.total_memory_gb <= c.total_memory_gb for c in table.cells if c.fits)
    data = table.to_dict()
    assert data["cheapest"]["num_gpus"] == cheapest.num_gpus and len(data["cells"]) == len(table.cells)


def test_cards_leave_the_default_headroom():
    card = MemoryColumn.card(80)
    assert (card.label, card.memory_gb, card.budget_gb) == ("80 GB card", 80, 73.6)
    assert MemoryColumn.budget(40).budget_gb == 40


def test_time_budget_stops_at_a_fitting_plan(toy_table):
    spec, table = toy_table
    cell = next(c for c in table.cells if c.fits and c.num_gpus == 16)
    result = search_plan(spec, builtin_hardware("h100", 2), 16, cell.budget_gb, time_budget_s=0.0, compare=False)
    assert result.stats.exact_solves == 1 and result.best.report.fits(cell.budget_gb)
    assert result.best_uniform is None and result.baselines == {}
    found = result.best.report.predicted.tokens_per_s
    assert found <= cell.tokens_per_s * (1 + 1e-9)  # the full search's plan is at least as fast
    assert found == cell.tokens_per_s or not result.stats.complete  # a slower plan is marked as cut short
