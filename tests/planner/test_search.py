"""The search: same optimum as exhaustive search on small cases, never worse than uniform plans, clear errors."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from galvatron_hf.planner.cost_model import CostModel, estimate_plan
from galvatron_hf.planner.plan import (
    DP_TYPES,
    SCHEDULES,
    LayerStrategy,
    Plan,
    VocabStrategy,
)
from galvatron_hf.planner.search import (
    ImpossibleBudgetError,
    divisors,
    hsdp_shard,
    search_plan,
    vocab_supports,
)


def compositions(total: int, parts: int):
    """Every way to cut ``total`` blocks into ``parts`` non-empty contiguous stages."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield [bounds[i + 1] - bounds[i] for i in range(parts)]


def brute_force(spec, hardware, world, memory_gb, batch):
    """Price every plan of the search space (both schedules, sequence parallelism wherever TP allows it) and
    keep the fastest that fits."""
    model = CostModel(spec, hardware)
    n, best = spec.num_blocks, None
    for pp in divisors(world):
        if pp > n:
            continue
        devices = world // pp
        for m in divisors(batch):
            mb = batch // m
            tps = [t for t in divisors(devices) if mb % (devices // t) == 0]
            gpn = hardware.gpus_per_node  # hsdp is offered with one node's DP ranks as its shard group
            kinds = [(t, d, hsdp_shard(t, devices // t, gpn) if d == "hsdp" else 0) for t in tps for d in DP_TYPES]
            kinds = [(t, d, shard) for t, d, shard in kinds if d != "hsdp" or shard]
            strategies = [
                (t, devices // t, d, c, sp, shard)
                for t, d, shard in kinds
                for c in (False, True)
                for sp in ((False, True) if t > 1 and spec.seq_len % t == 0 else (False,))
            ]
            vocabs = [VocabStrategy(t, devices // t, d, shard) for t, d, shard in kinds if vocab_supports(spec, t)]
            for schedule in SCHEDULES:
                if schedule == "1f1b" and m < pp:
                    continue  # the runtime refuses 1F1B with fewer micro-batches than stages
                for sizes in compositions(n, pp):
                    stages = [i for i, size in enumerate(sizes) for _ in range(size)]
                    for combo in itertools.product(strategies, repeat=n):
                        if any(not b.supports_tp(s[0]) for b, s in zip(spec.blocks, combo)):
                            continue
                        layers = [LayerStrategy(st, *s) for st, s in zip(stages, combo)]
                        for vocab in vocabs:
                            plan = Plan(
                                world_size=world,
                                pp=pp,
                                schedule=schedule,
                                global_batch_size=batch,
                                num_micro_batches=m,
                                layers=layers,
                                vocab=vocab,
                                seq_len=spec.seq_len,
                            )
                            report = estimate_plan(plan, spec, hardware, memory_gb=memory_gb, cost_model=model)
                            if report.fits(memory_gb):
                                value = report.predicted.samples_per_s
                                if best is None or value > best[0]:
                                    best = (value, plan)
    return best


@pytest.mark.parametrize(
    "ffn_pattern, memory_gb",
    [((11008,), 11.0), ((11008,), 16.0), ((11008, 5504, 11008), 12.0)],
)
def test_dp_search_equals_brute_force(spec_factory, h100, ffn_pattern, memory_gb):
    spec = spec_factory(num_blocks=3, hidden=4096, heads=32, seq=2048, ffn_pattern=ffn_pattern)
    expected = brute_force(spec, h100, 2, memory_gb, batch=2)
    result = search_plan(spec, h100, 2, memory_gb, global_batch_size=2)
    assert expected is not None
    assert result.stats.dp_samples_per_s == pytest.approx(expected[0], rel=1e-9)
    assert result.best.samples_per_s == pytest.approx(expected[0], rel=1e-9)
    assert result.stats.certified
    result.plan.validate(world_size=2, spec=spec)


@pytest.mark.parametrize("memory_gb, batch", [(7.0, 4), (10.0, 4), (10.0, 8)])
def test_dp_search_equals_brute_force_with_pipelines(spec_factory, h100, memory_gb, batch):
    """4 GPUs, 2 blocks, collectives 100x slower: pipelining wins, stages of 2 GPUs each pick their layout."""
    slow = replace(h100, collectives=[replace(c, busbw_GBps=c.busbw_GBps / 100) for c in h100.collectives])
    spec = spec_factory(num_blocks=2, hidden=4096, heads=32, seq=2048, ffn_pattern=(11008, 5504))
    expected = brute_force(spec, slow, 4, memory_gb, batch=batch)
    result = search_plan(spec, slow, 4, memory_gb, global_batch_size=batch)
    assert expected is not None and expected[1].pp == 2
    assert result.stats.dp_samples_per_s == pytest.approx(expected[0], rel=1e-9)
    assert result.plan.pp == 2


@pytest.mark.parametrize(
    "num_blocks, world, memory_gb, batch",
    [(8, 8, 40.0, None), (8, 8, 12.0, 64), (12, 16, 30.0, 128), (6, 4, 10.5, 16)],
)
def test_search_never_worse_than_best_uniform(spec_factory, num_blocks, world, memory_gb, batch):
    from galvatron_hf.profiler.builtin_hardware import builtin_hardware

    hardware = builtin_hardware("h100", max(1, world // 8))
    spec = spec_factory(num_blocks=num_blocks, hidden=4096, heads=32, ffn=11008, seq=2048)
    result = search_plan(spec, hardware, world, memory_gb, global_batch_size=batch)
    assert result.best_uniform is not None
    assert not result.stats.from_uniform, "the DP must find at least what a uniform plan reaches"
    assert result.stats.dp_samples_per_s >= result.best_uniform.samples_per_s * (1 - 1e-9)
    assert result.best.report.fits(memory_gb)
    assert result.best.report.predicted.peak_memory_gb == result.plan.predicted.peak_memory_gb
    result.plan.validate(world_size=world, spec=spec)


def test_impossible_budget_reports_a_budget_that_fits(spec_factory, h100):
    spec = spec_factory(num_blocks=4, hidden=4096, heads=32, ffn=11008, seq=2048)
    with pytest.raises(ImpossibleBudgetError) as info:
        search_plan(spec, h100, 2, 4.0, global_batch_size=4)
    minimum = info.value.min_memory_gb
    assert minimum is not None and minimum > 4.0
    assert f"{minimum:.1f} GB" in str(info.value)
    fitted = search_plan(spec, h100, 2, minimum, global_batch_size=4)
    assert fitted.best.report.fits(minimum)
    with pytest.raises(ImpossibleBudgetError):  # and it is (nearly) the smallest: 3% less does not fit
        search_plan(spec, h100, 2, minimum * 0.97, global_batch_size=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_gpus=0, memory_gb=80), "num_gpus"),
        (dict(num_gpus=16, memory_gb=80), "--num_nodes 2"),
        (dict(num_gpus=8, memory_gb=0), "memory_gb"),
        (dict(num_gpus=8, memory_gb=80, global_batch_size=0), "global_batch_size"),
        (dict(num_gpus=8, memory_gb=80, mixed_precision="int8"), "mixed_precision"),
    ],
)
def test_invalid_inputs_are_named(spec_factory, h100, kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_plan(spec_factory(), h100, **kwargs)


def test_search_balances_uneven_stages(spec_factory, h100):
    """A 256k-vocabulary head outweighs a block: with slow collectives the search pipelines and gives the
    last stage the fewest blocks; the step is paced by the slowest stage."""
    slow = replace(h100, collectives=[replace(c, busbw_GBps=c.busbw_GBps / 100) for c in h100.collectives])
    spec = spec_factory(num_blocks=8, hidden=2048, heads=16, ffn=5504, seq=2048, vocab=256000)
    result = search_plan(spec, slow, 8, 20.0, global_batch_size=64)
    plan = result.plan
    assert plan.pp > 1
    assert plan.stage_sizes[-1] == min(plan.stage_sizes) < max(plan.stage_sizes)
    times = [s.time_per_micro_batch_s for s in result.best.report.stages]
    assert result.best.report.step_time_s == pytest.approx(sum(times) + (plan.num_micro_batches - 1) * max(times))


def test_progress_lines_start_after_one_second():
    import time

    from galvatron_hf.planner.search.driver import _Reporter

    quiet, chatty = [], []
    _Reporter(quiet.append, time.perf_counter())("fresh search")
    late = _Reporter(chatty.append, time.perf_counter() - 2.0)
    late.last = time.perf_counter() - 1.0
    late("bounded 3 of 9 step configs")
    assert quiet == [] and len(chatty) == 1 and "bounded 3 of 9" in chatty[0]


def test_batch_that_no_layout_can_split_is_named(spec_factory, h100):
    spec = spec_factory(num_blocks=2, heads=6, hidden=768)  # tp 4 and 8 do not divide 6 heads
    with pytest.raises(ValueError, match="cannot be split over 8 GPUs"):
        search_plan(spec, h100, 8, 80, global_batch_size=3)
