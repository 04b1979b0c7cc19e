"""Uniform plans (one strategy for every block) and the comparisons every search reports beside its plan.

``uniform_plan`` builds the Plan of a given uniform layout (``galvatron-hf search --pp/--tp/...`` prices one).
The baselines are what a search result is measured against: the fastest uniform plan over the searched step
configs (Galvatron's "global" strategies) and plain data parallelism (DDP, ZeRO-3) without pipelining, TP or
checkpointing. They are priced from the search's per-config cost arrays first (cheap), and the promising ones
by :func:`estimate_plan`, which has the last word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from galvatron_hf.planner.cost_model import pipeline_step_s
from galvatron_hf.planner.plan import OFFLOAD_STATES, SCHEDULES, LayerStrategy, Plan, PlanError, VocabStrategy
from galvatron_hf.planner.search.results import Evaluated
from galvatron_hf.planner.search.solver import ConfigSolver, build_solvers
from galvatron_hf.planner.search.space import StepConfig, vocab_supports

if TYPE_CHECKING:
    from galvatron_hf.adapters.spec import ModelSpec
    from galvatron_hf.planner.search.problem import SearchProblem


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
    dp_shard: int = 0,
    sp: bool = False,
    cp: int = 1,
    offload: bool = False,
) -> Plan:
    """One strategy for every block, blocks split evenly over ``pp`` stages (extra blocks on early stages).

    The vocab layers use the blocks' tp when it divides the vocabulary (else ``vocab_tp`` or 1).
    ``dp_shard`` is the shard group of dp_type "hsdp" (blocks and vocab layers alike). ``sp`` runs every block
    sequence-parallel, ``cp`` splits the sequence over that many ranks of each stage, ``offload`` keeps
    parameters, gradients and optimizer states in host memory.
    """
    if dp_type == "hsdp" and not dp_shard:
        raise PlanError(
            "a uniform hsdp plan needs its shard-group size (dp_shard, e.g. GPUs per node / tp): write it in a "
            "plan file or let the search choose it (--auto_parallel)"
        )
    if pp < 1 or world_size % pp:
        raise PlanError(f"pp={pp} must be >= 1 and divide the number of GPUs ({world_size})")
    if cp < 1 or (world_size // pp) % cp:
        raise PlanError(f"cp={cp} must divide the GPUs per stage (world_size / pp = {world_size // pp})")
    devices = world_size // pp // cp
    if tp < 1 or devices % tp:
        where = "world_size / pp" if cp == 1 else "world_size / pp / cp"
        raise PlanError(f"tp={tp} must divide the GPUs per stage ({where} = {devices})")
    if schedule not in SCHEDULES:
        raise PlanError(f"schedule {schedule!r} is not one of {SCHEDULES}")
    if pp > spec.num_blocks:
        raise PlanError(f"pp={pp} is larger than the number of blocks ({spec.num_blocks}); lower pp")
    layers = [
        LayerStrategy(
            stage=stage, tp=tp, dp=devices // tp, dp_type=dp_type, checkpoint=checkpoint, dp_shard=dp_shard, sp=sp
        )
        for stage, size in enumerate(even_stage_sizes(spec.num_blocks, pp))
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
        vocab=VocabStrategy(tp=vocab_tp, dp=devices // vocab_tp, dp_type=dp_type, dp_shard=dp_shard),
        seq_len=spec.seq_len,
        mixed_precision=mixed_precision,
        model_name=spec.name,
        model_type=spec.model_type,
        cp=cp,
        offload=list(OFFLOAD_STATES) if offload else [],
    )
    return plan.validate(spec=spec)


def even_stage_sizes(num_blocks: int, pp: int) -> list[int]:
    """Blocks per stage of a uniform plan: as even as possible, the extra blocks on the early stages."""
    return [num_blocks // pp + (1 if i < num_blocks % pp else 0) for i in range(pp)]


class UniformCandidate(NamedTuple):
    """A uniform plan of one step config as priced from the solver's arrays (before :func:`estimate_plan`)."""

    samples_per_s: float
    peak_bytes: float
    config: StepConfig
    tp: int
    dp_type: str
    checkpoint: bool
    sp: bool = False


class _StageSums(NamedTuple):
    """Per-strategy sums over one stage's blocks of a uniform plan (arrays indexed like the strategies)."""

    stage: int
    end: int  # the stage's last block + 1
    time_s: np.ndarray
    memory_bytes: np.ndarray  # kept bytes plus activations in flight
    workspace_bytes: np.ndarray  # the largest of the stage's blocks


def compare_with_uniform(
    problem: SearchProblem, solvers: list[ConfigSolver]
) -> tuple[Evaluated | None, dict[str, Evaluated | None]]:
    """The best uniform plan and the plain DDP / ZeRO-3 baselines ("ddp", "zero3") of a search."""
    best = best_uniform_plan(problem, solvers)
    baselines = {dp_type: plain_data_parallel(problem, solvers, dp_type) for dp_type in ("ddp", "zero3")}
    return best, baselines


def best_uniform_plan(problem: SearchProblem, solvers: list[ConfigSolver] | None = None) -> Evaluated | None:
    """The fastest fitting uniform plan over the problem's step configs (Galvatron's "global" strategies).

    Each candidate is priced from the per-config arrays first (cheap); the most promising are then priced
    by :func:`estimate_plan`, which has the last word.
    """
    if solvers is None:
        solvers = build_solvers(problem)
    candidates = [
        candidate
        for solver in solvers
        if solver.feasible
        for candidate in uniform_candidates(solver)
        if candidate.peak_bytes <= solver.ctx.budget * (1 + 1e-6)
    ]
    best: Evaluated | None = None
    for candidate in sorted(candidates, key=lambda c: -c.samples_per_s):
        if best is not None and candidate.samples_per_s <= best.samples_per_s * (1 - 1e-6):
            break
        config = candidate.config
        plan = uniform_plan(
            problem.spec,
            problem.num_gpus,
            global_batch_size=config.global_batch_size,
            pp=config.pp,
            tp=candidate.tp,
            dp_type=candidate.dp_type,
            checkpoint=candidate.checkpoint,
            num_micro_batches=config.num_micro_batches,
            schedule=config.schedule,
            mixed_precision=problem.model.precision.name,
            sp=candidate.sp,
            cp=config.cp,
            offload=config.offload,
        )
        report = problem.estimate(plan)
        if report.fits(problem.memory_gb) and (best is None or report.predicted.samples_per_s > best.samples_per_s):
            best = Evaluated(plan.with_predicted(report.predicted), report)
    return best


def uniform_candidates(solver: ConfigSolver) -> list[UniformCandidate]:
    """Every uniform plan of a config, priced from the solver's arrays (all strategies at once per stage)."""
    config, ctx = solver.config, solver.ctx
    devices = config.batch_devices
    stages = _stage_sums(solver)
    found = []
    for index, strategy in enumerate(solver.strategies):
        if not ctx.all_blocks_support(strategy.tp) or strategy.dp_type == "hsdp":
            continue  # the uniform comparison is of the flat kinds (ddp, zero2, zero3)
        if not np.isfinite(strategy_times_finite(stages, index)):
            continue
        vocab_tp = strategy.tp if ctx.vocab_supports(strategy.tp) else 1
        if config.micro_batch_size % (devices // vocab_tp):
            continue
        vocab = VocabStrategy(vocab_tp, devices // vocab_tp, strategy.dp_type)
        t = solver.tps.index(strategy.tp)
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
        found.append(
            UniformCandidate(
                config.global_batch_size / step,
                peak,
                config,
                strategy.tp,
                strategy.dp_type,
                strategy.checkpoint,
                strategy.sp,
            )
        )
    return found


def strategy_times_finite(stages: list[_StageSums], index: int) -> float:
    """The strategy's block time summed over stages: infinite where a block cannot take it (e.g. sp at tp 1)."""
    return sum(float(stage.time_s[index]) for stage in stages)


def _stage_sums(solver: ConfigSolver) -> list[_StageSums]:
    ctx, config = solver.ctx, solver.config
    stages, start = [], 0
    for stage, size in enumerate(even_stage_sizes(len(ctx.blocks), config.pp)):
        k = solver.shape.in_flight(stage)
        counts: dict[int, int] = {}
        for g in ctx.sig[start : start + size]:
            counts[g] = counts.get(g, 0) + 1
        arrays = solver.arrays
        time_s = sum(c * arrays[g].time_s for g, c in counts.items())
        memory = sum(c * (arrays[g].static_bytes + k * arrays[g].activation_bytes) for g, c in counts.items())
        work = np.max([arrays[g].workspace_bytes for g in counts], axis=0)
        stages.append(_StageSums(stage, start + size, time_s, memory, work))
        start += size
    return stages


def plain_data_parallel(problem: SearchProblem, solvers: list[ConfigSolver], dp_type: str) -> Evaluated | None:
    """The fastest plain data-parallel plan (pp = 1, tp = 1, no checkpointing) over the searched batches.

    ``ddp`` replicates everything, ``zero3`` shards it. When none of the searched batches fits (they may not
    even split over the GPUs: powers of two on 3 GPUs), the baseline's own batches are tried too
    (:func:`_plain_on_own_batches`). When none fits, the one needing the least memory is returned, so the
    caller can say how much it would need. None when no batch splits over the GPUs.
    """
    options = []  # (does not fit, -samples/s when it fits else peak bytes): the least is the answer
    for solver in solvers:
        config = solver.config
        if not solver.feasible or config.pp != 1 or config.cp != 1 or 1 not in solver.tps:
            continue
        budget = solver.ctx.budget * (1 + 1e-6)
        for candidate in uniform_candidates(solver):
            if candidate.tp == 1 and candidate.dp_type == dp_type and not candidate.checkpoint and not candidate.sp:
                fits = candidate.peak_bytes <= budget
                rank = (not fits, -candidate.samples_per_s if fits else candidate.peak_bytes)
                options.append((rank, candidate.config))
    searched = None
    if options:
        _, config = min(options, key=lambda option: option[0])
        searched = _plain(problem, dp_type, config.global_batch_size, config.num_micro_batches)
        if searched.report.fits(problem.memory_gb):
            return searched
    return _plain_on_own_batches(problem, dp_type) or searched


def _plain(problem: SearchProblem, dp_type: str, global_batch_size: int, num_micro_batches: int = 1) -> Evaluated:
    plan = uniform_plan(
        problem.spec,
        problem.num_gpus,
        global_batch_size=global_batch_size,
        dp_type=dp_type,
        num_micro_batches=num_micro_batches,
        mixed_precision=problem.model.precision.name,
        vocab_tp=1,
    )
    report = problem.estimate(plan)
    return Evaluated(plan.with_predicted(report.predicted), report)


def _plain_on_own_batches(problem: SearchProblem, dp_type: str) -> Evaluated | None:
    """Plain data parallelism with 1, 2, 4, ... samples per GPU, up to the largest batch the search tried
    (only the searched batch when the batch was given): the fastest that fits, else the smallest."""
    batches = sorted({config.global_batch_size for config in problem.configs})
    if not batches:
        return None
    if len(batches) == 1:  # a given global batch: the baseline trains that one, or none
        own = batches if batches[0] % problem.num_gpus == 0 else []
    else:
        own = [problem.num_gpus * 2**k for k in range(64) if problem.num_gpus * 2**k <= max(batches[-1], problem.num_gpus)]
    priced = [_plain(problem, dp_type, batch) for batch in own]
    fitting = [evaluated for evaluated in priced if evaluated.report.fits(problem.memory_gb)]
    if fitting:
        return max(fitting, key=lambda evaluated: evaluated.report.predicted.samples_per_s)
    return priced[0] if priced else None
