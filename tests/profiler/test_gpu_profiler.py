"""GPU runs of both profilers (skipped without CUDA): CUDA-event timing, allocator memory, NCCL."""

from __future__ import annotations

import pytest
import torch

from galvatron_hf.adapters import config_from_dict, describe_model
from galvatron_hf.profiler.timing import Repeats
from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.gpu

LLAMA = dict(
    model_type="llama",
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def test_model_profile_on_gpu_measures_allocator_memory():
    from galvatron_hf.profiler.model_profiler import ModelProfileOptions, profile_model

    config = config_from_dict(dict(LLAMA))
    spec = describe_model(config, seq_len=256)
    options = ModelProfileOptions(
        seq_len=256, micro_batch_sizes=(1, 2), dtype="bf16", repeats=Repeats(1, 3), progress=False
    )
    profile = profile_model(config, spec, options)
    assert profile.timer == "cuda events, host queued ahead" and profile.key.device == torch.cuda.get_device_name()
    assert profile.key.timing == profile.timer  # a cache never mixes timing methods
    block = profile.layers["decoder_block"]
    assert block.backward_peak_bytes_per_sample is not None and block.backward_peak_bytes_per_sample > 0
    assert all(m.forward_held_bytes and m.forward_held_bytes > 0 for m in block.measurements)
    # checkpointing holds less after forward and recomputes during backward
    assert all(m.checkpointed_forward_held_bytes < m.forward_held_bytes for m in block.measurements)
    assert block.checkpointed_backward_peak_bytes_per_sample is not None
    assert block.activation_bytes_per_sample == pytest.approx(
        spec.blocks[0].activation_bytes(1, 2, False, "sdpa"), rel=0.15
    )


def test_single_gpu_hardware_profile():
    from galvatron_hf.profiler.hardware import HardwareOptions, profile_hardware

    profile = profile_hardware(HardwareOptions(quick=True, progress=False))
    assert profile.world_size == 1 and profile.collectives == []
    assert profile.device.matmul_tflops["bf16"] > 1.0 and profile.device.memory_gb > 1.0
    assert profile.device.memory_bandwidth_GBps > 10.0


def _nccl_profile(rank: int, world_size: int) -> dict:
    from galvatron_hf.profiler.hardware import HardwareOptions, profile_hardware

    return profile_hardware(HardwareOptions(quick=True, progress=rank == 0)).to_dict()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_nccl_profile():
    result = run_distributed(_nccl_profile, 2, backend="nccl")[0]
    assert {c["op"] for c in result["collectives"]} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}
    assert all(c["busbw_GBps"] > 0 for c in result["collectives"])


@pytest.mark.gpu
def test_queue_ahead_keeps_the_gpu_busy_for_the_time_it_asks():
    """The sleep before a timed region must outlast the host's enqueueing, so its length must be right."""
    from galvatron_hf.profiler.timing import QueueAhead

    device = torch.device("cuda", 0)
    queue = QueueAhead(device)
    queue.after("region", queue.before("region") - 0.010)  # pretend the host took 10 ms to enqueue it
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    queue.before("region")  # sleeps 1.5 x 10 ms
    end.record()
    end.synchronize()
    assert start.elapsed_time(end) == pytest.approx(15.0, rel=0.3)
    assert not QueueAhead(torch.device("cpu")).enabled
