"""The planner prices layers from a model profile, says so, and warns when the profile does not fit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from galvatron_hf.adapters import config_from_dict, describe_model
from galvatron_hf.planner.cost_model import AnalyticCompute, estimate_plan
from galvatron_hf.planner.plan import LayerStrategy, Plan
from galvatron_hf.planner.profiled_costs import ProfileMismatchWarning, profile_warnings, profiled_compute
from galvatron_hf.profiler.hardware_schema import CollectiveFit, DeviceSpec, HardwareProfile, P2PFit
from galvatron_hf.profiler.model_schema import LayerProfile, ModelProfile, ProfileKey, TokenFit, config_hash

LLAMA = dict(
    model_type="llama",
    vocab_size=300,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def llama_spec(seq_len: int = 32):
    config = config_from_dict(dict(LLAMA))
    return config, describe_model(config, seq_len=seq_len)


def hardware(world: int = 1) -> HardwareProfile:
    fits = [
        CollectiveFit(op, n, "intra_node", 1e-5, 10.0)
        for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
        for n in (2, 4)
        if n <= world
    ]
    return HardwareProfile(
        name="cpu",
        num_nodes=1,
        gpus_per_node=world,
        device=DeviceSpec("cpu", 16.0, {"fp32": 0.1, "bf16": 0.1}, {"fp32": 0.1, "bf16": 0.1}),
        collectives=fits,
        p2p=[P2PFit("intra_node", 1e-5, 5.0)] if world > 1 else [],
    )


def hand_profile(spec, dtype: str = "fp32", device: str = "cpu") -> ModelProfile:
    """A profile with known numbers, so the priced figures can be checked exactly."""
    layers = {}
    for kind in ("embedding", "decoder_block", "final_norm", "head"):
        layers[kind] = LayerProfile(
            kind=kind,
            name=kind,
            modules=[],
            param_bytes=0,
            params=0,
            seq_len=32,
            kv_seq_len=32,
            forward=TokenFit(1e-4, 1e-6, 1e-9),
            backward=TokenFit(2e-4, 2e-6, 2e-9),
            recompute=TokenFit(1e-4, 1e-6, 1e-9),
            activation_bytes_per_sample=1000.0,
            checkpointed_bytes_per_sample=100.0,
        )
    key = ProfileKey(config_hash(spec.config), spec.model_type, dtype, device, "sdpa")
    return ModelProfile(key, spec.name, spec.architecture, 32, [1, 2], [16, 32], layers)


def test_profiled_times_and_memory_follow_the_fit():
    _, spec = llama_spec()
    compute = profiled_compute(hand_profile(spec), spec, hardware(), "fp32", "sdpa")
    block = spec.blocks[0]
    assert compute.forward_time_s(block, 2, 1) == pytest.approx(1e-4 + 1e-6 * 64 + 1e-9 * 64 * 32)
    assert compute.backward_time_s(block, 2, 2) == pytest.approx((2e-4 + 2e-6 * 64 + 2e-9 * 64 * 32) / 2)
    # at TP 1 and the profiled length the measured bytes are used as they are
    assert compute.activation_bytes(block, 3, 1, False) == pytest.approx(3000.0)
    assert compute.activation_bytes(block, 3, 1, True) == pytest.approx(300.0)
    # at TP 2 they shrink by the adapter's own TP ratio
    ratio = block.activation_bytes(2, 4, False, "sdpa") / block.activation_bytes(1, 4, False, "sdpa")
    assert 0.4 < ratio < 1.0
    assert compute.activation_bytes(block, 1, 2, False) == pytest.approx(1000.0 * ratio)
    # a longer sequence than measured is priced by the fit, not by the measured point
    longer = replace(block, seq_len=64)
    assert compute.forward_time_s(longer, 1, 1) == pytest.approx(1e-4 + 1e-6 * 64 + 1e-9 * 64 * 64)
    assert compute.source == "profiled" and "profiled" in compute.figure_sources()["compute time"]


def test_unprofiled_kinds_fall_back_to_analytic_and_say_so():
    _, spec = llama_spec()
    profile = hand_profile(spec)
    partial = replace(profile, layers={"decoder_block": profile.layers["decoder_block"]})
    with pytest.warns(ProfileMismatchWarning, match="no embedding, final_norm, head layer"):
        compute = profiled_compute(partial, spec, hardware(), "fp32", "sdpa")
    head = spec.layers[-1]
    analytic = AnalyticCompute(hardware(), "fp32", "sdpa")
    assert compute.forward_time_s(head, 2, 1) == analytic.forward_time_s(head, 2, 1)
    assert "analytic for embedding, final_norm, head" in compute.figure_sources()["compute time"]


def test_mismatches_are_named():
    _, spec = llama_spec()
    profile = hand_profile(spec, dtype="bf16", device="NVIDIA H100 80GB HBM3")
    problems = profile_warnings(profile, spec, "fp32", "eager", hardware())
    assert any("measured bf16, the plan uses fp32" in p for p in problems)
    assert any("attention 'sdpa', the plan uses 'eager'" in p for p in problems)
    assert any("measured on 'NVIDIA H100 80GB HBM3'" in p for p in problems)
    other_spec = describe_model(config_from_dict({**LLAMA, "hidden_size": 128}), seq_len=32)
    assert any("different config" in p for p in profile_warnings(profile, other_spec, "bf16", "sdpa"))
    assert profile_warnings(hand_profile(spec), spec, "fp32", "sdpa", hardware()) == []
    deeper = describe_model(config_from_dict({**LLAMA, "num_hidden_layers": 12}), seq_len=32)
    assert profile_warnings(hand_profile(spec), deeper, "fp32", "sdpa") == []  # layer count does not matter


def test_plan_estimate_uses_the_profile():
    _, spec = llama_spec()
    plan = Plan(
        world_size=1,
        pp=1,
        schedule="1f1b",
        global_batch_size=4,
        num_micro_batches=2,
        layers=[LayerStrategy(0, 1, 1)] * spec.num_blocks,
        seq_len=32,
        mixed_precision="fp32",
    )
    compute = profiled_compute(hand_profile(spec), spec, hardware(), "fp32", "sdpa")
    profiled = estimate_plan(plan, spec, hardware(), compute=compute)
    analytic = estimate_plan(plan, spec, hardware())
    assert profiled.predicted.source == "profiled" and analytic.predicted.source == "analytic"
    assert profiled.step_time_s != pytest.approx(analytic.step_time_s)


def test_source_lines_for_the_search_command(tmp_path):
    from galvatron_hf.planner.profiled_costs import profiled_source_for

    _, spec = llama_spec()
    compute, lines = profiled_source_for(None, spec, hardware(), "fp32", "sdpa")
    assert compute is None and any(line.startswith("compute time, activation memory: analytic") for line in lines)
    path = hand_profile(spec, dtype="bf16").save(tmp_path / "model.json")
    compute, lines = profiled_source_for(path, spec, hardware(), "fp32", "sdpa")
    assert compute is not None and compute.source == "profiled"
    assert any(line.startswith("compute time: profiled: " + str(path)) for line in lines)
    assert any(line.startswith("warning:") and "measured bf16, the plan uses fp32" in line for line in lines)
