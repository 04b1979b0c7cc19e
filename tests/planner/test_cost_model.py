"""The cost model prices what the runtime runs: memory per dp_type, pipeline schedules, collectives."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from galvatron_hf.planner.cost_model import (
    GB,
    AnalyticCompute,
    CostModel,
    LayerCostSource,
    StepShape,
    estimate_plan,
    pipeline_step_s,
)
from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy
from galvatron_hf.planner.search import uniform_plan
from galvatron_hf.planner.cost_model.topology import GroupLayout, ring_latency_s
from galvatron_hf.profiler.builtin_hardware import builtin_hardware


def model_for(spec, hardware=None):
    return CostModel(spec, hardware or builtin_hardware("h100", 1))


def test_static_memory_follows_fsdp2_per_dp_type(spec_factory):
    spec = spec_factory()
    layer = spec.blocks[0]
    model = model_for(spec)
    p = layer.params  # tp=1: every parameter is local
    one = StepShape(pp=1, num_micro_batches=1, micro_batch_size=8, devices_per_stage=8)
    cost = {t: model.layer_cost(layer, 1, 8, t, False, one).static_bytes for t in ("ddp", "zero2", "zero3")}
    assert cost["ddp"] == pytest.approx(14 * p)  # fp32 param + 2 Adam states, bf16 copy kept fwd->bwd
    assert cost["zero2"] == pytest.approx(12 * p / 8 + 2 * p)  # sharded state, unsharded bf16 params kept
    assert cost["zero3"] == pytest.approx(12 * p / 8)
    # the sharded fp32 gradients exist from the reduce to the optimizer step: a separate term
    grads = {t: model.layer_cost(layer, 1, 8, t, False, one).grad_bytes for t in ("ddp", "zero2", "zero3")}
    assert grads == pytest.approx({"ddp": 4 * p, "zero2": 4 * p / 8, "zero3": 4 * p / 8})
    accumulating = StepShape(pp=1, num_micro_batches=4, micro_batch_size=8, devices_per_stage=8)
    assert model.layer_cost(layer, 1, 8, "zero3", False, accumulating).static_bytes == pytest.approx(12 * p / 8 + 4 * p)
    pipelined = StepShape(pp=2, num_micro_batches=4, micro_batch_size=8, devices_per_stage=4)
    # pipelining keeps zero3 parameters gathered between micro-batches (reshard_after_backward off)
    assert model.layer_cost(layer, 1, 4, "zero3", False, pipelined).static_bytes == pytest.approx(12 * p / 4 + 6 * p)


def test_stage_peak_is_the_larger_of_backward_start_and_optimizer_step():
    from galvatron_hf.planner.cost_model import StageCost

    def stage(activation, grads):
        return StageCost(0, (0, 0), 0.1, 1, static_gb=10, activation_gb=activation, workspace_gb=2,
                         reserved_gb=1, grad_gb=grads)

    assert stage(activation=20, grads=5).peak_memory_gb == pytest.approx(10 + 1 + 22)  # backward start
    assert stage(activation=1, grads=5).peak_memory_gb == pytest.approx(10 + 1 + 5)  # optimizer step


def test_tp_splits_parameters_and_adds_megatron_all_reduces(spec_factory):
    spec = spec_factory()
    layer = spec.blocks[0]
    model = model_for(spec)
    shape = StepShape(pp=1, num_micro_batches=1, micro_batch_size=4, devices_per_stage=4)
    plain = model.layer_cost(layer, 1, 4, "zero3", False, shape)
    split = model.layer_cost(layer, 2, 2, "zero3", False, shape)
    assert model.local_params(layer, 2) == pytest.approx(layer.params - layer.tp_params / 2)
    samples = 4 / 2
    compute = AnalyticCompute(model.hardware)
    forward = compute.forward_time_s(layer, samples, 2)
    all_reduce = model.collective_s("all_reduce", samples * layer.seq_len * layer.hidden_size * 2, 2)
    dp_part = split.time_s - 3 * forward - 4 * all_reduce  # 2 all-reduces forward + 2 backward
    params = model.local_params(layer, 2)
    per_step = model._dp_comm_exposed_s(params, 2, 2, "zero3", forward, 2 * forward, shape)
    per_step += model.optimizer_step_s(params / 2) + model.clip_s(params / 2) + model.fsdp_copy_s(params, 2, "zero3", shape)
    assert dp_part == pytest.approx(per_step)
    assert 0 < dp_part < 0.3 * split.time_s
    recomputed = model.layer_cost(layer, 2, 2, "zero3", True, shape)
    assert recomputed.time_s == pytest.approx(split.time_s + forward + 2 * all_reduce)
    # tp=2 x dp=2 gives each rank twice the samples of tp=1 x dp=4, with its sharded activations halved
    assert split.activation_bytes == pytest.approx(samples * layer.activation_bytes(tp=2))
    assert plain.activation_bytes < split.activation_bytes < 2 * plain.activation_bytes
    assert recomputed.activation_bytes < split.activation_bytes


def test_checkpointing_trades_activations_for_recomputation(spec_factory):
    spec = spec_factory()
    model = model_for(spec)
    shape = StepShape(pp=1, num_micro_batches=1, micro_batch_size=8, devices_per_stage=8)
    kept = model.layer_cost(spec.blocks[0], 1, 8, "ddp", False, shape)
    recomputed = model.layer_cost(spec.blocks[0], 1, 8, "ddp", True, shape)
    assert recomputed.activation_bytes < 0.1 * kept.activation_bytes
    forward = AnalyticCompute(model.hardware).forward_time_s(spec.blocks[0], 1, 1)
    assert recomputed.time_s == pytest.approx(kept.time_s + forward)  # one more forward per micro-batch
    # backward re-materialises the whole layer for one micro-batch: transient, not kept
    assert recomputed.workspace_bytes - kept.workspace_bytes == pytest.approx(
        kept.activation_bytes - recomputed.activation_bytes
    )


def test_schedules_differ_in_memory_not_time(spec_factory):
    spec = spec_factory(num_blocks=8)
    hw = builtin_hardware("h100", 1)
    plans = {
        s: uniform_plan(spec, 8, global_batch_size=32, pp=4, tp=1, num_micro_batches=8, schedule=s)
        for s in ("gpipe", "1f1b")
    }
    reports = {s: estimate_plan(p, spec, hw) for s, p in plans.items()}
    assert [st.in_flight for st in reports["1f1b"].stages] == [4, 3, 2, 1]
    assert [st.in_flight for st in reports["gpipe"].stages] == [8, 8, 8, 8]
    assert reports["gpipe"].step_time_s == pytest.approx(reports["1f1b"].step_time_s)
    assert reports["gpipe"].stages[0].activation_gb == pytest.approx(2 * reports["1f1b"].stages[0].activation_gb)


def test_pipeline_step_is_paced_by_the_slowest_stage_not_the_last(spec_factory):
    spec = spec_factory(num_blocks=6)
    hw = builtin_hardware("h100", 1)
    layers = [LayerStrategy(stage=0 if i < 5 else 1, tp=1, dp=4) for i in range(6)]
    plan = Plan(
        world_size=8,
        pp=2,
        schedule="1f1b",
        global_batch_size=32,
        num_micro_batches=8,
        layers=layers,
        vocab=VocabStrategy(1, 4),
        seq_len=spec.seq_len,
    )
    report = estimate_plan(plan, spec, hw)
    first, last = (s.time_per_micro_batch_s for s in report.stages)
    assert first > last
    assert report.step_time_s == pytest.approx(first + last + 7 * first)
    assert pipeline_step_s([1.0, 3.0, 2.0], 5) == pytest.approx(6.0 + 4 * 3.0)
    assert report.bubble_time_s == pytest.approx(report.step_time_s - 8 * first)


def test_layout_changes_cost_one_all_gather_either_way(spec_factory):
    spec = spec_factory()
    model = model_for(spec)
    shape = StepShape(pp=1, num_micro_batches=1, micro_batch_size=8, devices_per_stage=8)
    boundary = spec.blocks[0]
    grow, shrink = model.relayout_s(boundary, 1, 4, shape), model.relayout_s(boundary, 4, 1, shape)
    assert grow == shrink > 0
    assert model.relayout_s(boundary, 2, 2, shape) == 0.0
    nbytes = 8 / 2 * boundary.seq_len * boundary.hidden_size * 2  # the larger part: dp=2 under tp=4
    assert grow == pytest.approx(model.collective_s("all_gather", nbytes, 4))
    hw = model.hardware
    same = uniform_plan(spec, 8, global_batch_size=8, tp=2)
    mixed = Plan(
        **{
            **same.__dict__,
            "layers": [LayerStrategy(0, 2 if i % 2 else 1, 4 if i % 2 else 8) for i in range(spec.num_blocks)],
        }
    )
    assert estimate_plan(mixed, spec, hw).stages[0].time_per_micro_batch_s > 0


def test_overlap_and_inter_node_bandwidth(spec_factory):
    spec = spec_factory()
    hw = builtin_hardware("h100", 8)
    model = model_for(spec, hw)
    # comm shorter than the window: only the compute slowdown (x1.1) over the overlapped part shows
    assert model.overlapped_s(1.0, 0.5) == pytest.approx(0.6 * 0.1)
    assert model.overlapped_s(1.0, 2.0) == pytest.approx(2.4 - 1.0 + 1.0 * 0.1)
    nbytes = 1e9
    # 8 ranks, one per node (stride 8) drive one NIC each; 64 consecutive ranks drive all eight per node
    latency = lambda n, stride: ring_latency_s("all_reduce", GroupLayout(n, stride, 8), hw.network)  # noqa: E731
    one_nic = model.collective_s("all_reduce", nbytes, 8, stride=8) - latency(8, 8)
    all_nics = model.collective_s("all_reduce", nbytes, 64, stride=1) - latency(64, 1)
    factor = lambda n: 2 * (n - 1) / n  # noqa: E731
    assert one_nic / factor(8) == pytest.approx(8 * all_nics / factor(64), rel=1e-6)
    assert model.collective_s("all_reduce", nbytes, 8) < one_nic  # NVLink inside a node is faster


@dataclass(frozen=True)
class HalfSpeedCompute:
    """A second compute source (as a profiled one would be): the analytic times doubled."""

    inner: LayerCostSource
    source: str = "half-speed"

    def forward_time_s(self, layer, samples, tp):
        return 2 * self.inner.forward_time_s(layer, samples, tp)

    def backward_time_s(self, layer, samples, tp):
        return 2 * self.inner.backward_time_s(layer, samples, tp)

    def activation_bytes(self, layer, samples, tp, checkpoint):
        return self.inner.activation_bytes(layer, samples, tp, checkpoint)


def test_compute_source_is_pluggable(spec_factory):
    spec = spec_factory(num_blocks=2)
    hw = builtin_hardware("h100", 1)
    plan = uniform_plan(spec, 1, global_batch_size=2)  # one GPU: no communication at all
    analytic = estimate_plan(plan, spec, hw)
    slower = estimate_plan(plan, spec, hw, compute=HalfSpeedCompute(AnalyticCompute(hw)))
    assert isinstance(HalfSpeedCompute(AnalyticCompute(hw)), LayerCostSource)
    model = CostModel(spec, hw)
    one_gpu = StepShape(pp=1, num_micro_batches=1, micro_batch_size=2, devices_per_stage=1)
    params = spec.total_params  # on 1 GPU the only non-compute time: AdamW, clipping, FSDP2's casts
    optimizer = model.optimizer_step_s(params) + model.clip_s(params) + model.fsdp_copy_s(params, 1, "ddp", one_gpu)
    assert optimizer > 0
    assert slower.step_time_s - optimizer == pytest.approx(2 * (analytic.step_time_s - optimizer))
    assert slower.predicted.source == "half-speed"
    assert slower.peak_memory_gb == pytest.approx(analytic.peak_memory_gb)


def test_prediction_fields(spec_factory):
    spec = spec_factory(num_blocks=4)
    hw = builtin_hardware("h100", 1)
    plan = uniform_plan(spec, 8, global_batch_size=16, dp_type="zero2")
    report = estimate_plan(plan, spec, hw, memory_gb=80)
    p = report.predicted
    assert p.samples_per_s == pytest.approx(16 / p.step_time_s)
    assert p.tokens_per_s == pytest.approx(p.samples_per_s * spec.seq_len)
    assert p.mfu == pytest.approx(3 * spec.forward_flops * 16 / p.step_time_s / (8 * 989.4e12))
    assert p.memory_budget_gb == 80 and len(p.peak_memory_gb) == 1
    stage = report.stages[0]
    assert stage.reserved_gb == hw.device.reserved_memory_gb
    assert stage.peak_memory_gb == pytest.approx(stage.static_gb + stage.activation_gb + stage.workspace_gb + 3.0)
    assert report.peak_memory_gb * GB > 0


def test_per_step_memory_traffic_terms(spec_factory):
    """Clipping, AdamW and FSDP2's casts/copies are priced as HBM traffic at the profile's bandwidth."""
    spec = spec_factory()
    model = model_for(spec)
    bandwidth = model.hardware.device.memory_bandwidth_GBps * 1e9
    p = 1e8
    assert model.clip_s(p) == pytest.approx(12 * p / bandwidth)
    assert model.optimizer_step_s(p) == pytest.approx(28 * p / bandwidth)
    one = StepShape(pp=1, num_micro_batches=1, micro_batch_size=8, devices_per_stage=1)
    # dp = 1 still casts: gather copy-in 6 + copy-out 4, reduce copy-in 6 + shard accumulate 8 (bytes/param)
    assert model.fsdp_copy_s(p, 1, "ddp", one) == pytest.approx(24 * p / bandwidth)
    four = StepShape(pp=1, num_micro_batches=4, micro_batch_size=8, devices_per_stage=8)
    # zero3 with 4 micro-batches gathers 4 times forward and 4 backward; 3 unsynchronised accumulations
    expected = 8 * (6 * p / 8 + 4 * p) + (6 * p + 8 * p / 8) + 3 * 10 * p
    assert model.fsdp_copy_s(p, 8, "zero3", four) == pytest.approx(expected / bandwidth)


def test_stage_parts_split_the_totals_reports_draw(spec_factory):
    """Time splits into compute, communication and memory-bound work; static memory into weights, AdamW
    states and accumulated gradients (what the plan report draws)."""
    spec = spec_factory(num_blocks=8)
    hw = builtin_hardware("h100", 1)
    plan = uniform_plan(spec, 8, global_batch_size=32, pp=2, tp=2, dp_type="zero3", num_micro_batches=4)
    for stage in estimate_plan(plan, spec, hw).stages:
        assert stage.compute_s > 0 and stage.communication_s > 0 and stage.memory_bound_s > 0
        assert stage.compute_s + stage.communication_s + stage.memory_bound_s == pytest.approx(
            stage.time_per_micro_batch_s
        )
        assert stage.param_gb > 0 and stage.accumulated_grad_gb > 0  # M = 4 accumulates unsharded gradients
        assert stage.optimizer_gb == pytest.approx(2 * stage.grad_gb)  # 8 bytes of AdamW per 4 of gradient
        assert stage.peak_memory_gb == max(stage.backward_start_gb, stage.optimizer_step_gb)
    alone = uniform_plan(spec, 1, global_batch_size=4)
    stage = estimate_plan(alone, spec, hw).stages[0]
    assert stage.communication_s == 0 and stage.accumulated_grad_gb == 0  # one GPU, one micro-batch
    assert stage.param_gb * GB == pytest.approx(6 * sum(layer.params for layer in spec.layers))  # fp32 + bf16 copy
