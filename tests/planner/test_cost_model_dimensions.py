"""Sequence parallelism, context parallelism and CPU offload as the cost model prices them."""

from __future__ import annotations

import pytest

from galvatron_hf.planner.cost_model import ADAM_BYTES, GRAD_BYTES, CostModel, StepShape
from galvatron_hf.profiler.builtin_hardware import builtin_hardware


def shapes(**extra):
    return StepShape(pp=1, num_micro_batches=1, micro_batch_size=8, devices_per_stage=8, **extra)


def test_sp_trades_all_reduces_for_gathers_and_splits_the_replicated_activations(spec_factory):
    spec = spec_factory()
    layer, model = spec.blocks[0], CostModel(spec, builtin_hardware("h100", 1))
    plain = model.layer_cost(layer, 4, 2, "zero3", False, shapes())
    sp = model.layer_cost(layer, 4, 2, "zero3", False, shapes(), sp=True)
    act = layer.activation
    # replicated elements (norm inputs, residuals) per token drop from whole to 1 / tp; the rest is unchanged
    saved = (act.replicated - act.replicated / 4) * layer.seq_len * 4 * 2  # 4 samples per rank, bf16
    assert plain.activation_bytes - sp.activation_bytes == pytest.approx(saved)
    assert sp.static_bytes == plain.static_bytes
    assert sp.communication_s > 0 and plain.communication_s > 0
    assert model.layer_cost(layer, 1, 8, "zero3", False, shapes(), sp=True) == model.layer_cost(
        layer, 1, 8, "zero3", False, shapes()
    )  # tp 1: nothing to split over


def test_cp_splits_tokens_and_shards_state_over_dp_times_cp(spec_factory):
    spec = spec_factory()
    layer, model = spec.blocks[0], CostModel(spec, builtin_hardware("h100", 1))
    dp8 = model.layer_cost(layer, 1, 8, "zero3", False, shapes())
    cp2 = model.layer_cost(layer, 1, 4, "zero3", False, shapes(cp=2))
    # the same tokens per rank (8 samples / 8 ranks = 4 samples / 4 ranks / 2 halves), the same state shard
    assert cp2.activation_bytes == pytest.approx(dp8.activation_bytes)
    assert cp2.static_bytes == pytest.approx(dp8.static_bytes)
    ring_forward, ring_backward = model.ring_exchange_s(layer, 1, 1.0, shapes(cp=2), 1.0, 2.0)
    assert ring_forward >= 0 and ring_backward >= ring_forward
    assert cp2.time_s > dp8.time_s  # the ring exchange is on top (here the step is tiny: little to hide behind)


def test_offload_moves_state_to_the_host_and_prices_the_copies(spec_factory):
    spec = spec_factory()
    layer, model = spec.blocks[0], CostModel(spec, builtin_hardware("h100", 1))
    on_device = model.layer_cost(layer, 1, 8, "zero3", False, shapes())
    offloaded = model.layer_cost(layer, 1, 8, "zero3", False, shapes(offload=True))
    p = layer.params / 8
    assert on_device.static_bytes - offloaded.static_bytes == pytest.approx(12 * p)  # fp32 weights + AdamW
    assert offloaded.grad_bytes == 0 and on_device.grad_bytes == pytest.approx(GRAD_BYTES * p)
    assert offloaded.optimizer_bytes == 0 and on_device.optimizer_bytes == pytest.approx(ADAM_BYTES * p)
    host = builtin_hardware("h100", 1).device.host_memory_bandwidth_GBps * 1e9
    assert offloaded.offload_s >= 40 * p / host - 1e-12  # host AdamW + clipping at least
    assert offloaded.time_s > on_device.time_s
