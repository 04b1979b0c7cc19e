"""Built-in hardware profiles for common GPU nodes, built by code from a few cited figures.

A real cluster should be measured (`galvatron-hf profile hardware`); these defaults let `galvatron-hf search`
run anywhere (a laptop, CI) and give plans that are right in their proportions. Every number below comes
from a datasheet or a published measurement named beside it, and the same citation is stored in the
profile's ``sources`` dict, so a plan can be traced back to its inputs.

Derived figures (how the few cited numbers become a :class:`HardwareProfile`):

* ``matmul_tflops`` (the rate large matmuls reach, as the profiler measures it) = ``ACHIEVED_FRACTION`` x the
  datasheet dense rate;
* intra-node collectives use the nccl-tests bus bandwidth published for the node (NVSwitch: every group
  size gets the same busbw, since each GPU drives its own NVLink ports);
* inter-node collectives: a ring crossing nodes is bounded by the NICs its GPUs drive (one NIC per GPU on
  these nodes), so a group with ``g`` GPUs per node gets ``g x NIC rate x NIC_EFFICIENCY`` of bus bandwidth.
  Entries follow the profiler's layouts (consecutive ranks, and ranks strided by ``world / n``) so measured
  and built-in profiles read the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from galvatron_hf.profiler.hardware_schema import (
    COLLECTIVES,
    CollectiveFit,
    DeviceSpec,
    HardwareProfile,
    HardwareProfileError,
    OverlapSpec,
    P2PFit,
)

# Share of the datasheet dense rate large bf16 matmuls reach: `galvatron-hf profile hardware` measured 774.7 of
# 989.4 TFLOP/s (4096^3 GEMM, torch 2.11) on one H100 SXM (benchmarks/profiles/h100/hardware-1gpu.json).
# The same share is assumed for H200 (same die) and A100 (an estimate). The planner's analytic compute then
# applies its own layer efficiency (planner/cost_model/compute.py: LAYER_EFFICIENCY) for the non-matmul work.
ACHIEVED_FRACTION = 0.78
ACHIEVED_SOURCE = (
    "0.78 x datasheet dense rate: 774.7 of 989.4 TFLOP/s measured for a 4096^3 bf16 GEMM on one H100 SXM "
    "(benchmarks/profiles/h100/hardware-1gpu.json, torch 2.11); same share assumed for H200 / A100 (estimate)"
)
# nccl-tests bus bandwidth over InfiniBand reaches about 90% of the NIC line rate for large messages
# (NVIDIA nccl-tests PERFORMANCE.md: busbw is comparable to the hardware peak; RDMA header overhead ~5-10%).
NIC_EFFICIENCY = 0.9
NIC_SOURCE = "busbw ~ 0.9 x NIC line rate for large messages (nccl-tests PERFORMANCE.md definition of busbw). Estimate."
# Small-message latencies: nccl-tests all_reduce_perf reports ~10-20 us on one NVSwitch node and a few
# tens of us across InfiniBand for 8-byte messages (NCCL team GTC talks); estimates.
INTRA_LATENCY_S = 15e-6
INTER_LATENCY_S = 40e-6
LATENCY_SOURCE = "nccl-tests small-message times: ~15 us in a node, ~40 us across InfiniBand (estimates)"
# CUDA context (~0.5-1 GB), NCCL communicator buffers and allocator fragmentation; an estimate that a
# profile measured on the target machine replaces (the profiler records reserved memory).
RESERVED_GB = 3.0
RESERVED_SOURCE = "CUDA context + NCCL buffers + allocator slack: 3 GB per GPU (estimate)"
# Overlap slowdowns: compute and NCCL kernels share SMs and HBM. Galvatron's profiler measures ~1.1-1.3;
# these middle values are estimates.
OVERLAP = OverlapSpec(compute_slowdown=1.1, comm_slowdown=1.2)
OVERLAP_SOURCE = "compute x1.1, communication x1.2 when overlapped (Galvatron-style overlap coefficients; estimate)"


@dataclass(frozen=True)
class NodeFigures:
    """The few cited numbers a node profile is built from."""

    name: str
    device_name: str
    memory_gb: float
    peak_tflops: dict[str, float]  # datasheet dense (no sparsity)
    memory_bandwidth_GBps: float
    nvlink_busbw_GBps: float  # nccl-tests busbw on one node (all-gather / reduce-scatter, ring)
    nvlink_allreduce_busbw_GBps: float  # nccl-tests all_reduce busbw on 8 GPUs (NVLS where available)
    nvlink_p2p_GBps: float  # one direction between two GPUs
    nic_GBps: float  # one NIC per GPU, line rate in GB/s
    sources: dict[str, str]
    gpus_per_node: int = 8


H100 = NodeFigures(
    name="h100",
    device_name="NVIDIA H100 80GB HBM3 (SXM5)",
    memory_gb=80.0,
    # H100 SXM5 datasheet: BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.4 dense; FP32 67 TFLOPS
    peak_tflops={"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    memory_bandwidth_GBps=3350.0,  # H100 SXM5 datasheet: 3.35 TB/s HBM3
    # NVLink 4: 900 GB/s bidirectional per GPU = 450 GB/s each way; nccl-tests ring busbw ~360 (80%)
    nvlink_busbw_GBps=360.0,
    # published nccl-tests all_reduce busbw on 8x H100 SXM5 with NVLink SHARP: 460-480 GB/s
    nvlink_allreduce_busbw_GBps=460.0,
    nvlink_p2p_GBps=360.0,  # 80% of 450 GB/s one way (same ring efficiency as above)
    nic_GBps=50.0,  # 8x ConnectX-7 NDR 400 Gb/s per node, one per GPU: 400 Gb/s = 50 GB/s
    sources={
        "peak_tflops": "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1979 TFLOPS with sparsity = 989.4 dense; FP32 67",
        "memory": "NVIDIA H100 datasheet: 80 GB HBM3, 3.35 TB/s",
        "nvlink": "NVLink 4 900 GB/s per GPU bidirectional (H100 datasheet); ring busbw taken as 80% of 450 GB/s one way",
        "all_reduce_8": "nccl-tests all_reduce_perf busbw 460-480 GB/s on 8x H100 SXM5 (docs.alayanew.com nccl-tests guide, 2026)",
        "nic": "DGX H100: 8x ConnectX-7 400 Gb/s NDR InfiniBand, one per GPU (NVIDIA DGX H100 user guide)",
    },
)

H200 = replace(
    H100,
    name="h200",
    device_name="NVIDIA H200 141GB HBM3e (SXM)",
    memory_gb=141.0,  # H200 datasheet: 141 GB HBM3e
    memory_bandwidth_GBps=4800.0,  # H200 datasheet: 4.8 TB/s
    sources={
        **H100.sources,
        "peak_tflops": "NVIDIA H200 datasheet (SXM): BF16 1979 TFLOPS with sparsity = 989.4 dense (same Hopper die as H100); FP32 67",
        "memory": "NVIDIA H200 datasheet: 141 GB HBM3e, 4.8 TB/s",
        "nvlink": "NVLink 4 900 GB/s per GPU bidirectional (H200 datasheet); ring busbw taken as 80% of 450 GB/s one way",
        "all_reduce_8": "same NVSwitch fabric as DGX H100: nccl-tests all_reduce busbw 460 GB/s (docs.alayanew.com nccl-tests guide)",
        "nic": "HGX H200 reference: 8x ConnectX-7 400 Gb/s NDR, one per GPU (NVIDIA HGX platform brief)",
    },
)

A100 = NodeFigures(
    name="a100",
    device_name="NVIDIA A100 80GB (SXM4)",
    memory_gb=80.0,
    peak_tflops={"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},  # A100 datasheet: BF16 312 dense, FP32 19.5
    memory_bandwidth_GBps=2039.0,  # A100 80GB SXM datasheet: 2,039 GB/s HBM2e
    nvlink_busbw_GBps=230.0,  # nccl-tests busbw 230-250 GB/s on 8x A100 SXM4 (NVLink 3, 300 GB/s one way)
    nvlink_allreduce_busbw_GBps=230.0,  # no NVLS on A100: same ring busbw
    nvlink_p2p_GBps=240.0,  # 80% of 300 GB/s one way
    nic_GBps=25.0,  # DGX A100: 8x ConnectX-6 HDR 200 Gb/s, one per GPU: 25 GB/s
    sources={
        "peak_tflops": "NVIDIA A100 datasheet: BF16/FP16 312 TFLOPS dense, FP32 19.5",
        "memory": "NVIDIA A100 80GB datasheet: HBM2e 2,039 GB/s (SXM)",
        "nvlink": "NVLink 3 600 GB/s per GPU bidirectional = 300 one way (A100 datasheet)",
        "all_reduce_8": "nccl-tests all_reduce busbw 230-250 GB/s on 8x A100 SXM4 (docs.alayanew.com nccl-tests guide, 2026)",
        "nic": "DGX A100: 8x ConnectX-6 200 Gb/s HDR InfiniBand, one per GPU (NVIDIA DGX A100 user guide)",
    },
)

BUILTIN_NODES: dict[str, NodeFigures] = {"h100": H100, "h200": H200, "a100": A100}
ALIASES = {"h100-sxm": "h100", "h100_sxm": "h100", "a100-80gb": "a100", "a100_80gb": "a100", "h200-sxm": "h200"}


def builtin_names() -> list[str]:
    return sorted(BUILTIN_NODES)


def builtin_hardware(name: str, num_nodes: int = 1) -> HardwareProfile:
    """The built-in profile ``name`` ("h100", "h200", "a100") for a cluster of ``num_nodes`` such nodes."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BUILTIN_NODES:
        raise HardwareProfileError(
            f"unknown hardware {name!r}: use one of {builtin_names()} or the path of a JSON profile written by "
            "`galvatron-hf profile hardware`"
        )
    if num_nodes < 1:
        raise HardwareProfileError(f"num_nodes must be >= 1, got {num_nodes}")
    return _build(BUILTIN_NODES[key], num_nodes)


def load_hardware(name_or_path: str | Path, num_nodes: int | None = None) -> HardwareProfile:
    """A built-in name or a JSON profile path; ``num_nodes`` (when given) sets the cluster size.

    A measured profile keeps its own fits; only its node count changes (inter-node fits apply to any count).
    """
    text = str(name_or_path)
    key = ALIASES.get(text.lower(), text.lower())
    if key in BUILTIN_NODES:
        return builtin_hardware(key, num_nodes or 1)
    path = Path(text)
    if not path.suffix == ".json" and not path.exists():
        raise HardwareProfileError(
            f"unknown hardware {text!r}: use one of {builtin_names()} or the path of a JSON profile written by "
            "`galvatron-hf profile hardware`"
        )
    profile = HardwareProfile.load(path)
    if num_nodes is not None and num_nodes != profile.num_nodes:
        profile = replace(profile, num_nodes=num_nodes)
    return profile


def hardware_for(name_or_path: str | Path, world_size: int, num_nodes: int | None = None) -> HardwareProfile:
    """The hardware a plan for ``world_size`` devices is priced on: ``num_nodes`` nodes when given, else as
    many nodes as the devices fill (``ceil(world_size / gpus_per_node)``), for built-in and measured profiles
    alike. What `galvatron-hf search` and ``GalvatronTrainer`` both load."""
    if world_size < 1:
        raise HardwareProfileError(f"the number of devices must be >= 1, got {world_size}")
    hardware = load_hardware(name_or_path, num_nodes)
    needed = max(1, math.ceil(world_size / hardware.gpus_per_node))
    if num_nodes is None and needed != hardware.num_nodes:
        hardware = load_hardware(name_or_path, needed)
    return hardware


def _build(node: NodeFigures, num_nodes: int) -> HardwareProfile:
    gpn = node.gpus_per_node
    world = gpn * num_nodes
    collectives = _intra_fits(node)
    if num_nodes > 1:
        collectives += _inter_fits(node, world)
    p2p = [P2PFit("intra_node", INTRA_LATENCY_S, node.nvlink_p2p_GBps)]
    p2p.append(P2PFit("inter_node", INTER_LATENCY_S, node.nic_GBps * NIC_EFFICIENCY))
    sources = {
        **node.sources,
        "matmul_tflops": ACHIEVED_SOURCE,
        "inter_node_busbw": f"{NIC_SOURCE}; a group with g GPUs per node drives g NICs",
        "latency": LATENCY_SOURCE,
        "reserved_memory_gb": RESERVED_SOURCE,
        "overlap": OVERLAP_SOURCE,
    }
    device = DeviceSpec(
        name=node.device_name,
        memory_gb=node.memory_gb,
        matmul_tflops={k: round(v * ACHIEVED_FRACTION, 1) for k, v in node.peak_tflops.items()},
        peak_tflops=dict(node.peak_tflops),
        memory_bandwidth_GBps=node.memory_bandwidth_GBps,
        reserved_memory_gb=RESERVED_GB,
    )
    profile = HardwareProfile(
        name=f"builtin:{node.name}",
        num_nodes=num_nodes,
        gpus_per_node=gpn,
        device=device,
        collectives=collectives,
        p2p=p2p,
        overlap=OVERLAP,
        sources=sources,
        created="built-in (galvatron_hf/profiler/builtin_hardware.py)",
    )
    profile.check()
    return profile


def _powers_of_two(limit: int) -> list[int]:
    sizes, n = [], 2
    while n <= limit:
        sizes.append(n)
        n *= 2
    return sizes


def _intra_fits(node: NodeFigures) -> list[CollectiveFit]:
    fits = []
    for op in COLLECTIVES:
        for n in _powers_of_two(node.gpus_per_node):
            busbw = node.nvlink_busbw_GBps
            if op == "all_reduce" and n == node.gpus_per_node:
                busbw = node.nvlink_allreduce_busbw_GBps
            for ranks in ("consecutive", "strided"):
                fits.append(CollectiveFit(op, n, "intra_node", INTRA_LATENCY_S, busbw, ranks))
    return fits


def _inter_fits(node: NodeFigures, world: int) -> list[CollectiveFit]:
    """Fits for groups spanning nodes, in the profiler's two layouts (consecutive, stride world / n)."""
    gpn = node.gpus_per_node
    fits = []
    for op in COLLECTIVES:
        for n in _powers_of_two(world):
            layouts = {"consecutive": min(n, gpn), "strided": max(1, gpn // (world // n))}
            for ranks, gpus_in_node in layouts.items():
                span = n if ranks == "consecutive" else (n - 1) * (world // n) + 1
                if span <= gpn:
                    continue  # stays in one node: covered by the intra-node fits
                busbw = min(gpus_in_node * node.nic_GBps * NIC_EFFICIENCY, node.nvlink_busbw_GBps)
                fits.append(CollectiveFit(op, n, "inter_node", INTER_LATENCY_S, busbw, ranks))
    return fits
