"""The search: best-first over step configs, exact solves verified by the cost model, the comparisons, and
the smallest budget when nothing fits (docs/search.md, "Algorithm", steps 4 to 6)."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from galvatron_hf.planner.search.bound import relaxed_bound, relaxed_feasible, upper_bound
from galvatron_hf.planner.search.exact import exact_solve
from galvatron_hf.planner.search.infeasible import StateFloor, state_floor
from galvatron_hf.planner.search.problem import SearchOptions, SearchProblem
from galvatron_hf.planner.search.results import Evaluated, ImpossibleBudgetError, SearchResult, SearchStats
from galvatron_hf.planner.search.solver import ConfigSolver, build_solvers
from galvatron_hf.planner.uniform import compare_with_uniform

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

Progress = Callable[[str], None]


def search_plan(
    spec: ModelSpec,
    hardware: HardwareProfile,
    num_gpus: int,
    memory_gb: float,
    *,
    progress: Progress | None = None,
    time_budget_s: float | None = None,
    find_minimum_memory: bool = True,
    compare: bool = True,
    offload: bool | None = None,
    **options: Any,
) -> SearchResult:
    """The fastest plan for ``spec`` on ``num_gpus`` GPUs with ``memory_gb`` per GPU (GB = 1e9 bytes).

    ``options`` are the fields of :class:`SearchOptions` (an unknown name is a TypeError):
    ``global_batch_size`` None searches batches up to ``max_global_batch_size`` (default: 4M tokens).
    ``mixed_precision`` (bf16, fp16, fp32) and ``attn_impl`` price the layers; ``compute`` replaces the
    analytic layer costs (a ``ProfiledCompute`` from measurements).
    ``accumulate_without_pipeline=False`` searches pp = 1 plans with one micro-batch only (for a runtime that
    runs a pp = 1 batch in one pass; by default pp = 1 plans may accumulate gradients over micro-batches).
    ``max_pp``: the largest pipeline degree searched (1 when the runtime cannot pipeline the model's head).
    ``cp_degrees``: the context-parallel degrees to try (default: ``space.default_cp_degrees``).

    ``time_budget_s``: once spent, the search stops at the best plan found so far (``stats.complete`` is
    then False); it never stops before a plan is found or every config is ruled out.
    Raises :class:`ImpossibleBudgetError` when no plan fits, with the smallest budget that would
    (``min_memory_gb``), unless ``find_minimum_memory`` is False (then ``min_memory_gb`` is None).
    ``compare=False`` skips the comparisons (``best_uniform`` is None, ``baselines`` empty).
    ``offload``: None decides: device-memory plans first; when none fits (proven at once when the training state
    alone exceeds the budget, ``infeasible.py``, else found by the search) the search offloads, if the hardware
    profile prices it, and the smallest budget of an error is then the smallest with offload. True searches
    offloaded plans only; False never offloads, and a proven misfit is reported at once with the cheapest ways
    out.
    """
    started = time.perf_counter()
    settings = SearchOptions(**options)
    problem = SearchProblem.create(spec, hardware, num_gpus, memory_gb, settings, offload=bool(offload))
    reporter = _Reporter(progress, started)
    floor = state_floor(problem)
    solvers = build_solvers(problem)
    if not any(solver.feasible for solver in solvers):
        raise ValueError(
            f"global_batch_size={settings.global_batch_size} cannot be split over {num_gpus} GPUs by any layout of "
            f"{spec.name} (every micro-batch must divide over the data-parallel ranks); use a multiple of "
            f"{num_gpus} or leave --global_batch_size out to search it"
        )
    deadline = None if time_budget_s is None else started + time_budget_s
    found, stats, notes = None, None, []
    if problem.offloads or not floor.proves_no_fit:  # else proven at once: no device-memory plan fits
        found, stats = _best_first(problem, reporter, solvers, deadline)
    if found is None and offload is None and _prices_offload(problem):
        notes.append(_why_offload(problem, floor, time.perf_counter() - started))
        problem = problem.with_offload()
        solvers = build_solvers(problem)
        found, stats = _best_first(problem, reporter, solvers, deadline)
    if found is None:
        proven = floor.proves_no_fit and not problem.offloads
        raise _impossible(problem, reporter, find_minimum_memory and not proven, floor)
    if problem.offloads and floor.proves_no_fit and offload is None:
        notes.append("ways out without offload: " + floor.ways_out(None))
    uniform, baselines = None, {}
    if compare:
        reporter("comparing with uniform plans and plain DDP / ZeRO-3")
        uniform, baselines = compare_with_uniform(problem, solvers)
    from_uniform = uniform is not None and uniform.samples_per_s > found.samples_per_s * (1 + 1e-9)
    stats = replace(
        stats, seconds=time.perf_counter() - started, from_uniform=from_uniform, dp_samples_per_s=found.samples_per_s
    )
    best = uniform if from_uniform else found
    return SearchResult(
        best=best, best_uniform=uniform, baselines=baselines, stats=stats, memory_gb=memory_gb, notes=tuple(notes)
    )


def _why_offload(problem: SearchProblem, floor: StateFloor, seconds: float) -> str:
    if floor.proves_no_fit:
        return f"no plan fits in device memory ({floor.reason()}; proven in {seconds:.3f} s): CPU offload"
    return f"no plan fits in {problem.memory_gb:g} GB of device memory (searched in {seconds:.1f} s): CPU offload"


def _prices_offload(problem: SearchProblem) -> bool:
    device = problem.hardware.device
    return device.host_device_GBps > 0 and device.host_memory_bandwidth_GBps > 0


def _impossible(
    problem: SearchProblem, reporter: Progress, find_minimum_memory: bool, floor: StateFloor
) -> ImpossibleBudgetError:
    where = f"{problem.memory_gb:g} GB per GPU on {problem.num_gpus} GPUs"
    tried = " even with CPU offload" if problem.offloads else ""
    if floor.proves_no_fit and not problem.offloads:
        offload = "CPU offload (--offload: the state then lives in host memory"
        offload += ")" if _prices_offload(problem) else "; the hardware profile must give its host bandwidths)"
        return ImpossibleBudgetError(
            f"no plan for {problem.spec.name} fits in {where}: {floor.reason()}; cheapest ways out: "
            f"{floor.ways_out(offload)}",
            None,
        )
    minimum, hint = None, ""
    if find_minimum_memory:
        minimum = minimum_memory_gb(problem, reporter)
        found_budget = f"the smallest budget with a plan is {minimum:.1f} GB per GPU{tried}" if minimum else ""
        hint = f" ({found_budget or 'no budget found'})"
    return ImpossibleBudgetError(
        f"no plan for {problem.spec.name} fits in {where}{tried}{hint}; raise --memory_gb, add GPUs, shorten "
        "--seq_len or lower --global_batch_size",
        minimum,
    )


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


def _best_first(
    problem: SearchProblem,
    reporter: Progress,
    solvers: list[ConfigSolver] | None = None,
    deadline: float | None = None,
) -> tuple[Evaluated | None, SearchStats]:
    """Bound every config, then solve exactly in order of bound until no bound beats the best plan (or, with
    a ``deadline`` (perf_counter seconds) past and a plan found, stop there)."""
    if solvers is None:
        solvers = build_solvers(problem)
    bounds = {id(s): upper_bound(s) for s in solvers if s.feasible}
    order = sorted((s for s in solvers if s.feasible), key=lambda s: bounds[id(s)], reverse=True)
    heap: list[tuple[float, int, ConfigSolver]] = []
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
            reporter(f"bounding step config {relaxed + 1} of {len(order)} ({_config_text(solver)}); {_best_text(best)}")
            step = relaxed_bound(solver)
            relaxed += 1
            if step is not None:
                heapq.heappush(heap, (-solver.config.global_batch_size / step, relaxed, solver))
            continue
        _, _, solver = heapq.heappop(heap)
        exact += 1
        reporter(f"solving {_config_text(solver)} exactly; {_best_text(best)}")
        evaluated, first_try = _solve_and_verify(solver, problem)
        certified &= first_try or evaluated is None
        if evaluated is not None and (best is None or evaluated.samples_per_s > best.samples_per_s):
            best = evaluated
    configs = len(problem.configs)
    stats = SearchStats(
        configs=configs,
        relaxed_solves=relaxed,
        exact_solves=exact,
        pruned=configs - relaxed,
        seconds=0.0,
        certified=certified,
        complete=complete,
    )
    return best, stats


def _config_text(solver: ConfigSolver) -> str:
    config = solver.config
    return f"pp={config.pp}, batch {config.global_batch_size} = {config.num_micro_batches} x {config.micro_batch_size}"


def _best_text(best: Evaluated | None) -> str:
    return f"best so far {best.samples_per_s:.2f} samples/s" if best else "no plan fits yet"


def _solve_and_verify(solver: ConfigSolver, problem: SearchProblem) -> tuple[Evaluated | None, bool]:
    """Exact DP (memory rounded down, exact bytes carried); re-price the plan; if it still overflows (a cell
    kept a path that does not fit while a slower one would), solve again with memory rounded up."""
    for attempt, rounding in enumerate(("floor", "ceil")):
        plan = exact_solve(solver, rounding)
        if plan is None:
            return None, attempt == 0
        report = problem.estimate(plan)
        if report.fits(problem.memory_gb):
            plan = plan.with_predicted(report.predicted)
            return Evaluated(plan, report), attempt == 0
    return None, False


def minimum_memory_gb(problem: SearchProblem, reporter: Progress) -> float | None:
    """The smallest per-GPU budget the search finds a plan for (above ``problem.memory_gb``).

    The relaxed pass (memory rounded down, least workspace) brackets and bisects the budget cheaply, since
    one relaxed-feasible config is enough; it can only be optimistic, so the full search then confirms,
    raising the budget 2.5% at a time until it finds a plan. The result (rounded up to 0.1 GB) fits.
    """
    high = _relaxed_minimum(problem, reporter)
    if high is None:
        return None
    failed, budget = high
    for _ in range(40):  # the full search confirms: 2.5% steps up, then bisection back down
        reporter(f"confirming the smallest budget that fits: {budget:.1f} GB")
        if _best_first(problem.with_budget(budget), reporter)[0] is not None:
            break
        failed, budget = budget, math.ceil(budget * 1.025 * 10) / 10
    else:
        return None
    while budget - failed > max(0.005 * budget, 0.1):
        middle = math.ceil((failed + budget) / 2 * 10) / 10
        if middle >= budget:
            break
        if _best_first(problem.with_budget(middle), reporter)[0] is not None:
            budget = middle
        else:
            failed = middle
    return budget


def _relaxed_minimum(problem: SearchProblem, reporter: Progress) -> tuple[float, float] | None:
    """(a budget the relaxed pass refuses, the first candidate budget rounded up to 0.1 GB): doubling, then
    bisection to 0.5%; None when even 65,536 times the problem's budget is refused."""
    low = high = problem.memory_gb
    for _ in range(16):
        high *= 2
        reporter(f"looking for the smallest budget that fits: trying {high:.1f} GB")
        if relaxed_feasible(problem.with_budget(high)):
            break
        low = high
    else:
        return None
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        reporter(f"looking for the smallest budget that fits: trying {middle:.1f} GB")
        if relaxed_feasible(problem.with_budget(middle)):
            high = middle
        else:
            low = middle
    return low, math.ceil(high * 10) / 10
