"""The hardware profiler on 4 gloo ranks (quick mode) and on one process."""

from __future__ import annotations

import pytest

from galvatron_hf.profiler.hardware_schema import COLLECTIVES, HardwareProfile
from galvatron_hf.testing.distributed import run_distributed


def _profile_on_rank(rank: int, world_size: int, output: str) -> dict:
    from galvatron_hf.profiler.hardware import HardwareOptions, profile_hardware
    from galvatron_hf.profiler.timing import Repeats

    options = HardwareOptions(name="cpu-test", quick=True, repeats=Repeats(warmup=1, repeats=3), progress=rank == 0)
    profile = profile_hardware(options)
    if rank == 0:
        profile.save(output)
    return profile.to_dict()


@pytest.mark.distributed
def test_four_rank_profile_is_valid_and_sane(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two "nodes" of two ranks: both placements appear
    output = tmp_path / "hw.json"
    results = run_distributed(_profile_on_rank, 4, str(output), timeout_s=240)
    profile = HardwareProfile.load(output)
    for result in results:  # every rank returns the same numbers (the slowest rank's), whatever its own
        assert result["collectives"] == results[0]["collectives"] and result["p2p"] == results[0]["p2p"]
    assert (profile.num_nodes, profile.gpus_per_node, profile.backend) == (2, 2, "gloo")
    measured = {(c.op, c.group_size, c.ranks) for c in profile.collectives}
    for op in COLLECTIVES:
        assert {(op, 2, "consecutive"), (op, 2, "strided"), (op, 4, "consecutive")} <= measured
    placements = {(c.group_size, c.ranks): c.placement for c in profile.collectives}
    assert placements[(2, "consecutive")] == "intra_node"  # ranks {0,1}: one node
    assert placements[(2, "strided")] == "inter_node"  # ranks {0,2}: two nodes
    assert placements[(4, "consecutive")] == "inter_node"
    for fit in profile.collectives:
        assert fit.busbw_GBps > 0 and fit.latency_s >= 0
        assert fit.time_s(4 * 2**20) > fit.time_s(4 * 2**10)  # more bytes take longer
    assert {p.placement for p in profile.p2p} == {"intra_node", "inter_node"}
    assert all(p.bandwidth_GBps > 0 for p in profile.p2p)
    assert profile.device.matmul_tflops["fp32"] > 0
    assert profile.overlap.compute_slowdown >= 1.0 and profile.overlap.comm_slowdown >= 1.0
    assert "torch" in profile.library_versions and profile.created
    # the planner-facing lookups answer for every layout a 4-rank plan may use
    assert profile.collective_time("all_reduce", 2**20, 4) > profile.collective_time("all_reduce", 2**10, 4)
    assert profile.collective_time("all_gather", 2**20, 2, stride=2) > 0
    assert profile.p2p_time(2**20, "inter_node") > 0
    _assert_planner_plans_from(profile, gpus=4)


def test_single_process_profile_has_device_only(tmp_path):
    from galvatron_hf.profiler.hardware import HardwareOptions, profile_hardware
    from galvatron_hf.profiler.timing import Repeats

    profile = profile_hardware(HardwareOptions(quick=True, repeats=Repeats(warmup=0, repeats=2), progress=False))
    assert (profile.world_size, profile.collectives, profile.p2p) == (1, [], [])
    assert profile.device.memory_gb > 0 and profile.device.matmul_tflops["fp32"] > 0
    assert "world size 1" in profile.sources["collectives"]
    # a 1-device plan communicates nothing: lookups for a group of one answer 0 without any measurement
    assert profile.collective_time("all_reduce", 1e9, 1) == 0.0
    reloaded = HardwareProfile.load(profile.save(tmp_path / "hw1.json"))
    assert reloaded == profile
    _assert_planner_plans_from(reloaded, gpus=1)


def _tiny_llama_profile():
    from galvatron_hf.adapters import config_from_dict, describe_model
    from galvatron_hf.profiler.model_profiler import ModelProfileOptions, profile_model
    from galvatron_hf.profiler.timing import Repeats

    config = config_from_dict(
        dict(
            model_type="llama",
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
    )
    spec = describe_model(config, seq_len=32)
    options = ModelProfileOptions(
        seq_len=32, micro_batch_sizes=(1, 2), dtype="fp32", repeats=Repeats(0, 2), device="cpu", progress=False
    )
    return spec, profile_model(config, spec, options)


def _assert_planner_plans_from(hardware: HardwareProfile, gpus: int) -> None:
    """The measured hardware file and a measured model profile feed the search and give a valid plan."""
    from galvatron_hf.planner.profiled_costs import profiled_compute
    from galvatron_hf.planner.search import search_plan

    spec, model_profile = _tiny_llama_profile()
    compute = profiled_compute(model_profile, spec, hardware, "fp32", "sdpa")
    result = search_plan(
        spec, hardware, gpus, hardware.device.memory_gb, global_batch_size=8, mixed_precision="fp32", compute=compute
    )
    plan = result.best.plan
    plan.validate(world_size=gpus, spec=spec)
    assert plan.predicted is not None and plan.predicted.source == "profiled"
    assert plan.predicted.step_time_s > 0


@pytest.mark.distributed
def test_cli_under_torchrun_writes_one_file(tmp_path):
    """The launcher path: torchrun starts the ranks, the command builds the process group, rank 0 writes."""
    import os
    import subprocess
    import sys

    output = tmp_path / "hw2.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "galvatron_hf.cli", "profile", "hardware", "--quick", "--no_overlap",
               "--message_sizes", "4096", "65536", "--output", str(output)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    profile = HardwareProfile.load(output)
    assert (profile.world_size, profile.backend) == (2, "gloo")
    assert {c.op for c in profile.collectives} == set(COLLECTIVES)
    assert "wrote" in done.stderr and "profile hardware:" in done.stderr


def test_layouts_and_pairs_of_a_two_node_cluster():
    """Which groups a 2 x 8 cluster measures, and where each lands (no processes needed)."""
    from galvatron_hf.profiler.hardware import WorldLayout, _layouts, _p2p_distances, _partner, group_sizes

    layout = WorldLayout(rank=0, world_size=16, gpus_per_node=8)
    assert group_sizes(16) == [2, 4, 8, 16] and group_sizes(6) == [2, 4, 6]
    placements = {
        (n, kind): {layout.placement(g) for g in groups} for n in group_sizes(16) for kind, groups in _layouts(16, n)
    }
    assert placements[(8, "consecutive")] == {"intra_node"}  # one node each: a TP group
    assert placements[(8, "strided")] == {"inter_node"}  # ranks 0, 2, ..., 14: both nodes
    assert placements[(2, "strided")] == {"inter_node"}  # ranks r and r + 8: a DP pair across nodes
    assert placements[(16, "consecutive")] == {"inter_node"} and (16, "strided") not in placements
    for n in group_sizes(16):
        for _, groups in _layouts(16, n):
            assert sorted(r for g in groups for r in g) == list(range(16))  # every rank in exactly one group
    assert _p2p_distances(layout) == {"intra_node": 1, "inter_node": 8}
    assert [_partner(r, 8, 16) for r in (0, 7, 8, 15)] == [(8, True), (15, True), (0, False), (7, False)]
    assert _partner(4, 4, 6) == (0, False) and _partner(2, 4, 6) == (None, True)  # rank 2 has no partner: it sits out
