"""Topology-aware collective prices (planner/cost_model/topology.py) and the node layout flags."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from galvatron_hf.planner.cost_model import CostModel, StepShape, estimate_plan
from galvatron_hf.planner.cost_model.topology import GroupLayout, ring_latency_s, ring_steps
from galvatron_hf.planner.plan import LayerStrategy, Plan, PlanError, VocabStrategy
from galvatron_hf.planner.search import hsdp_shard, search_plan, uniform_plan
from galvatron_hf.profiler.builtin_hardware import builtin_hardware, hardware_for
from galvatron_hf.profiler.hardware_schema import HardwareProfile, HardwareProfileError


def test_group_layout_counts_ranks_per_node_and_nodes():
    assert (GroupLayout(8, 1, 8).nodes, GroupLayout(8, 1, 8).ranks_per_node) == (1, 8)
    assert (GroupLayout(16, 1, 8).nodes, GroupLayout(16, 1, 8).ranks_per_node) == (2, 8)
    dp_of_tp2 = GroupLayout(512, 2, 8)  # the DP group of tp=2 on 1,024 GPUs: 4 ranks on each of 128 nodes
    assert (dp_of_tp2.nodes, dp_of_tp2.ranks_per_node, dp_of_tp2.placement) == (128, 4, "inter_node")
    assert GroupLayout(3, 3, 8).placement == "intra_node"  # ranks 0, 3, 6
    # NCCL's ring: n - 1 steps per pass, nodes - 1 of them across nodes; all-reduce makes two passes
    assert ring_steps("all_gather", dp_of_tp2) == (511 - 127, 127)
    assert ring_steps("all_reduce", GroupLayout(16, 1, 8)) == (2 * 14, 2 * 1)


def test_sixteen_gpus_on_two_four_and_sixteen_nodes_predict_different_steps(spec_factory):
    spec = spec_factory(num_blocks=4, hidden=2048, seq=2048)
    plan = uniform_plan(spec, 16, global_batch_size=16, dp_type="zero3")
    steps = {}
    for nodes in (2, 4, 16):
        hw = hardware_for("h100", 16, num_nodes=nodes)
        assert (hw.num_nodes, hw.gpus_per_node) == (nodes, 16 // nodes)
        steps[nodes] = estimate_plan(plan, spec, hw).step_time_s
    assert steps[2] < steps[4] < steps[16]  # fewer NICs per group, more ring steps across nodes
    assert hardware_for("h100", 16, gpus_per_node=4).num_nodes == 4


def test_inter_node_busbw_follows_nics_and_never_beats_nvlink():
    hw = builtin_hardware("h100", 16, 4)  # 64 GPUs, 4 per node
    model = CostModel.__new__(CostModel)
    model.hardware, model._fits = hw, {}
    nic = hw.network.nic_GBps * 0.9
    assert model._collective_fit("reduce_scatter", 16, 4)[1] == pytest.approx(nic)  # one rank per node
    assert model._collective_fit("reduce_scatter", 16, 1)[1] == pytest.approx(4 * nic)  # four per node
    full = builtin_hardware("h100", 4)
    model.hardware, model._fits = full, {}
    latency, busbw = model._collective_fit("all_gather", 32, 1)
    assert busbw <= max(c.busbw_GBps for c in full.collectives if c.placement == "intra_node")
    assert latency == pytest.approx(ring_latency_s("all_gather", GroupLayout(32, 1, 8), full.network))
    assert latency == pytest.approx(8.4e-6 + 28 * 3.4e-6 + 3 * 14e-6)


def test_builtin_network_has_sources_and_refuses_too_many_gpus_per_node():
    hw = builtin_hardware("h100", 2)
    assert hw.network is not None and hw.network.nic_Gbps == 400 and hw.network.nics_per_node == 8
    assert "rail-optimised" in hw.network.fabric and "rail-optimised" in hw.sources["fabric"]
    assert "tuning.cc" in hw.sources["ring_latency"]
    with pytest.raises(HardwareProfileError, match="gpus_per_node must be between 1 and 8"):
        builtin_hardware("h100", 2, 16)


def test_version_1_hardware_files_still_read(tmp_path):
    data = builtin_hardware("a100", 2).to_dict()
    del data["network"]
    del data["device"]["host_device_GBps"], data["device"]["host_memory_bandwidth_GBps"]
    data["version"] = 1
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data))
    profile = HardwareProfile.load(path)
    assert profile.network is None and profile.version == 2
    data["network"] = None  # a version-1 file with a version-2 key is refused, not half-read
    path.write_text(json.dumps(data))
    with pytest.raises(HardwareProfileError, match="version 1"):
        HardwareProfile.load(path)


# ----- HSDP: priced as ZeRO-3 inside the shard group plus an all-reduce across replicas ----------------------
def test_hsdp_keeps_zero3_state_of_its_shard_group_and_adds_the_replica_all_reduce(spec_factory):
    spec = spec_factory(num_blocks=2, hidden=4096, seq=2048)
    hw = builtin_hardware("h100", 4)  # 32 GPUs
    model = CostModel(spec, hw)
    shape = StepShape(pp=1, num_micro_batches=1, micro_batch_size=32, devices_per_stage=32)
    block = spec.blocks[0]
    hsdp = model.layer_cost(block, 1, 32, "hsdp", False, shape, dp_shard=8)
    zero3_node = model.layer_cost(block, 1, 8, "zero3", False, replace(shape, micro_batch_size=8, devices_per_stage=8))
    assert hsdp.static_bytes == pytest.approx(zero3_node.static_bytes)
    assert hsdp.grad_bytes == pytest.approx(zero3_node.grad_bytes)
    grads = model.local_params(block, 1) * 4
    sync = model.collective_s("reduce_scatter", grads, 8) + model.collective_s("all_reduce", grads / 8, 4, stride=8)
    one = lambda s: model._dp_comm_exposed_s(model.local_params(block, 1), 1, 32, "hsdp", 0.0, 0.0, shape, 8) - s  # noqa: E731
    gathers = 2 * model.collective_s("all_gather", model.local_params(block, 1) * 2, 8)
    assert one(0.0) == pytest.approx(1.2 * (sync + gathers))  # nothing to hide behind: comm x slowdown 1.2
    with pytest.raises(PlanError, match="dp_shard"):
        model.layer_cost(block, 1, 32, "hsdp", False, shape, dp_shard=32)


def test_plans_check_the_shard_group():
    layers = [LayerStrategy(0, 1, 8, "hsdp", dp_shard=4)]
    Plan(world_size=8, pp=1, schedule="gpipe", global_batch_size=8, num_micro_batches=1, layers=layers,
         vocab=VocabStrategy(1, 8, "zero3")).validate()  # fmt: skip
    for bad in (LayerStrategy(0, 1, 8, "hsdp", dp_shard=3), LayerStrategy(0, 1, 8, "zero3", dp_shard=4)):
        with pytest.raises(PlanError, match="dp_shard"):
            Plan(world_size=8, pp=1, schedule="gpipe", global_batch_size=8, num_micro_batches=1, layers=[bad],
                 vocab=VocabStrategy(1, 8, "zero3")).validate()  # fmt: skip
    assert hsdp_shard(tp=2, dp=64, gpus_per_node=8) == 4  # the DP ranks of one node
    assert hsdp_shard(tp=1, dp=8, gpus_per_node=8) == 0  # one node holds all of dp: that is zero3
    # a 69B stage at tp 2 under 80 GB: 16 B x 69e9 / 2 / s <= 40 GB needs s >= 14: four nodes' 4 DP ranks each
    assert hsdp_shard(tp=2, dp=512, gpus_per_node=8, stage_params=69e9, budget_bytes=80e9) == 16


def test_search_picks_hsdp_where_it_wins(spec_factory):
    """16 GPUs on 2 nodes, a network 20x slower, one wide block (no pipeline): the large vocabulary layers
    are sharded inside each node and all-reduced across the two, and the plan is priced as searched."""
    spec = spec_factory(num_blocks=1, hidden=8192, seq=2048)
    hw = builtin_hardware("h100", 2)
    slow = replace(
        hw,
        collectives=[
            replace(c, busbw_GBps=c.busbw_GBps / 20) if c.placement == "inter_node" else c for c in hw.collectives
        ],
    )
    result = search_plan(spec, slow, 16, 12.0, global_batch_size=64)
    strategies = [*result.plan.layers, result.plan.vocab]
    hsdp = [s for s in strategies if s.dp_type == "hsdp"]
    assert hsdp and all(s.dp_shard % (8 // s.tp) == 0 for s in hsdp), strategies  # whole nodes
    report = estimate_plan(result.plan, spec, slow, memory_gb=12.0)
    assert report.predicted.samples_per_s == pytest.approx(result.best.samples_per_s, rel=1e-9)
