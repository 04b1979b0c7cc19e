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

``auto`` (:func:`detect_node`, the trainer's default): the device this process runs on. A known GPU (H100,
H200, A100) takes its built-in figures with the memory and device count CUDA reports; an unknown GPU takes the
H100's speeds with its real memory, and says so; without CUDA, a CPU node of the launched processes sharing
the machine's memory (estimates: measure with `galvatron-hf profile hardware` for real figures).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from galvatron_hf.profiler.hardware_schema import (
    COLLECTIVES,
    CollectiveFit,
    DeviceSpec,
    HardwareProfile,
    HardwareProfileError,
    NetworkSpec,
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
# NCCL's own latency model for rings with the Simple protocol (the one bulk transfers use), NCCL
# src/graph/tuning.cc (baseLat / hwLat tables, 2.18-2.23): 8.4 us base, 3.4 us per NVLink step, 14 us per
# network step; a collective over n ranks on k nodes takes n - 1 steps per pass, k - 1 of them across nodes.
RING_BASE_LATENCY_S = 8.4e-6
NVLINK_HOP_LATENCY_S = 3.4e-6
NET_HOP_LATENCY_S = 14e-6
RING_LATENCY_SOURCE = (
    "NCCL src/graph/tuning.cc, Ring/Simple: baseLat 8.4 us, hwLat NVLink 3.4 us and NET 14 us per ring step "
    "(used for groups that span nodes: docs/cost_model.md, Topology)"
)
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
    host_device_GBps: float  # pinned host <-> device copy, one direction
    host_memory_bandwidth_GBps: float  # host RAM bandwidth per GPU (the node's sockets shared by its GPUs)
    sources: dict[str, str]
    gpus_per_node: int = 8
    nics_per_node: int = 8
    fabric: str = ""
    reserved_memory_gb: float = RESERVED_GB


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
    fabric="8x 400 Gb/s InfiniBand NDR per node (ConnectX-7, one per GPU), rail-optimised fat tree",
    # PCIe Gen5 x16: 64 GB/s each way; pinned cudaMemcpy reaches ~80% of it (estimate: 51 GB/s)
    host_device_GBps=51.0,
    # DGX H100: 2x Xeon Platinum 8480C, 8 channels of DDR5-4800 each: 2 x 307 GB/s, shared by 8 GPUs
    host_memory_bandwidth_GBps=77.0,
    sources={
        "peak_tflops": "NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1979 TFLOPS with sparsity = 989.4 dense; FP32 67",
        "memory": "NVIDIA H100 datasheet: 80 GB HBM3, 3.35 TB/s",
        "nvlink": "NVLink 4 900 GB/s per GPU bidirectional (H100 datasheet); ring busbw taken as 80% of 450 GB/s one way",
        "all_reduce_8": "nccl-tests all_reduce_perf busbw 460-480 GB/s on 8x H100 SXM5 (docs.alayanew.com nccl-tests guide, 2026)",
        "nic": "DGX H100: 8x ConnectX-7 400 Gb/s NDR InfiniBand, one per GPU (NVIDIA DGX H100 user guide)",
        "fabric": "DGX SuperPOD H100 reference architecture: compute fabric InfiniBand NDR 400 Gb/s, rail-optimised "
        "(GPU i of every node on leaf switch group i), full fat tree (NVIDIA DGX SuperPOD RA, H100)",
        "host_device": "PCIe Gen5 x16 per GPU, 64 GB/s one way (H100 SXM5 datasheet); 80% reached by pinned copies (estimate)",
        "host_memory": "DGX H100: 2x Intel Xeon Platinum 8480C, 8 DDR5-4800 channels each = 614 GB/s per node, / 8 GPUs (DGX H100 user guide; estimate)",
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
        "fabric": "HGX H200 reference: InfiniBand NDR 400 Gb/s compute fabric, rail-optimised, one NIC per GPU "
        "(NVIDIA HGX platform brief; DGX SuperPOD H200 reference architecture)",
        "host_device": "PCIe Gen5 x16 per GPU, 64 GB/s one way (H200 datasheet); 80% reached by pinned copies (estimate)",
        "host_memory": "HGX H200 hosts: 2 sockets of 8 DDR5-4800 channels = 614 GB/s per node, / 8 GPUs (estimate)",
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
    fabric="8x 200 Gb/s InfiniBand HDR per node (ConnectX-6, one per GPU), rail-optimised fat tree",
    host_device_GBps=25.6,  # PCIe Gen4 x16: 32 GB/s each way, ~80% with pinned copies (estimate)
    host_memory_bandwidth_GBps=51.0,  # DGX A100: 2x EPYC 7742, 8 DDR4-3200 channels each = 410 GB/s, / 8 GPUs
    sources={
        "peak_tflops": "NVIDIA A100 datasheet: BF16/FP16 312 TFLOPS dense, FP32 19.5",
        "memory": "NVIDIA A100 80GB datasheet: HBM2e 2,039 GB/s (SXM)",
        "nvlink": "NVLink 3 600 GB/s per GPU bidirectional = 300 one way (A100 datasheet)",
        "all_reduce_8": "nccl-tests all_reduce busbw 230-250 GB/s on 8x A100 SXM4 (docs.alayanew.com nccl-tests guide, 2026)",
        "nic": "DGX A100: 8x ConnectX-6 200 Gb/s HDR InfiniBand, one per GPU (NVIDIA DGX A100 user guide)",
        "fabric": "DGX SuperPOD A100 reference architecture: compute fabric InfiniBand HDR 200 Gb/s, rail-optimised "
        "fat tree (NVIDIA DGX SuperPOD RA, A100)",
        "host_device": "PCIe Gen4 x16 per GPU, 32 GB/s one way (A100 datasheet); 80% reached by pinned copies (estimate)",
        "host_memory": "DGX A100: 2x AMD EPYC 7742, 8 DDR4-3200 channels each = 410 GB/s per node, / 8 GPUs (DGX A100 user guide; estimate)",
    },
)

# A CPU node running gloo processes (CI, laptops): every figure an estimate, for plans in the right proportions.
CPU = NodeFigures(
    name="cpu",
    device_name="CPU",
    memory_gb=16.0,  # replaced by the machine's memory share when detected
    peak_tflops={"bf16": 0.05, "fp16": 0.05, "fp32": 0.1},  # one core's vector units, a few threads (estimate)
    memory_bandwidth_GBps=20.0,  # DDR4/DDR5 channel bandwidth shared by the processes (estimate)
    nvlink_busbw_GBps=2.0,  # gloo collectives over loopback TCP (estimate)
    nvlink_allreduce_busbw_GBps=2.0,
    nvlink_p2p_GBps=2.0,
    nic_GBps=1.0,  # 10 GbE between machines (estimate)
    host_device_GBps=20.0,  # the "device" is host memory: a copy runs at memory bandwidth (estimate)
    host_memory_bandwidth_GBps=20.0,
    nics_per_node=1,
    fabric="10 GbE between machines (estimate)",
    sources={
        "peak_tflops": "CPU estimate: ~0.1 TFLOP/s fp32 per process (a few AVX cores); measure with `galvatron-hf profile hardware`",
        "memory": "the machine's physical memory shared by the processes on it (os.sysconf)",
        "nvlink": "gloo over loopback TCP: ~2 GB/s bus bandwidth (estimate)",
        "all_reduce_8": "gloo over loopback TCP: ~2 GB/s bus bandwidth (estimate)",
        "nic": "10 GbE between machines (estimate)",
        "host_device": "CPU: device memory is host memory; copies at memory bandwidth (estimate)",
        "host_memory": "DDR4/DDR5 bandwidth shared by the processes (estimate)",
    },
    reserved_memory_gb=1.0,
)

BUILTIN_NODES: dict[str, NodeFigures] = {"h100": H100, "h200": H200, "a100": A100}
AUTO = "auto"  # the device this process runs on (detect_node)
ALIASES = {"h100-sxm": "h100", "h100_sxm": "h100", "a100-80gb": "a100", "a100_80gb": "a100", "h200-sxm": "h200"}


def builtin_names() -> list[str]:
    return sorted(BUILTIN_NODES)


def builtin_hardware(name: str, num_nodes: int = 1, gpus_per_node: int | None = None) -> HardwareProfile:
    """The built-in profile ``name`` ("h100", "h200", "a100") for a cluster of ``num_nodes`` such nodes, using
    ``gpus_per_node`` GPUs of each (default: all of them; fewer GPUs drive fewer NICs)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BUILTIN_NODES:
        raise HardwareProfileError(
            f"unknown hardware {name!r}: use one of {builtin_names()} or the path of a JSON profile written by "
            "`galvatron-hf profile hardware`"
        )
    if num_nodes < 1:
        raise HardwareProfileError(f"num_nodes must be >= 1, got {num_nodes}")
    node = BUILTIN_NODES[key]
    used = node.gpus_per_node if gpus_per_node is None else gpus_per_node
    if not 1 <= used <= node.gpus_per_node:
        raise HardwareProfileError(
            f"gpus_per_node must be between 1 and {node.gpus_per_node} (a {key} node holds {node.gpus_per_node} "
            f"GPUs), got {used}: spread the GPUs over more nodes (--num_nodes)"
        )
    return _build(node, num_nodes, used)


def load_hardware(
    name_or_path: str | Path, num_nodes: int | None = None, gpus_per_node: int | None = None
) -> HardwareProfile:
    """A built-in name, ``auto`` (this device, :func:`detect_node`) or a JSON profile path; ``num_nodes`` (when
    given) sets the cluster size and ``gpus_per_node`` the GPUs used on each node.

    A measured profile keeps its own fits; only its node count changes (inter-node fits apply to any count).
    Using fewer GPUs per node than it was measured with on several nodes is refused: its fits' layouts
    would be read wrongly.
    """
    text = str(name_or_path)
    if text.lower() == AUTO:
        node = detect_node()
        return _build(node, num_nodes or 1, node.gpus_per_node)
    key = ALIASES.get(text.lower(), text.lower())
    if key in BUILTIN_NODES:
        return builtin_hardware(key, num_nodes or 1, gpus_per_node)
    path = Path(text)
    if not path.suffix == ".json" and not path.exists():
        raise HardwareProfileError(
            f"unknown hardware {text!r}: use one of {builtin_names()} or the path of a JSON profile written by "
            "`galvatron-hf profile hardware`"
        )
    profile = HardwareProfile.load(path)
    if num_nodes is not None and num_nodes != profile.num_nodes:
        profile = replace(profile, num_nodes=num_nodes)
    if gpus_per_node is not None and gpus_per_node != profile.gpus_per_node and profile.num_nodes > 1:
        raise HardwareProfileError(
            f"{path} was measured with {profile.gpus_per_node} GPUs per node; {gpus_per_node} per node on "
            f"{profile.num_nodes} nodes needs a profile measured that way (`galvatron-hf profile hardware` on "
            "that layout) or a built-in hardware name"
        )
    return profile


def hardware_for(
    name_or_path: str | Path, world_size: int, num_nodes: int | None = None, gpus_per_node: int | None = None
) -> HardwareProfile:
    """The hardware a plan for ``world_size`` devices is priced on, for built-in and measured profiles alike.

    The devices sit ``gpus_per_node`` to a node when given, else ``world_size / num_nodes`` when ``num_nodes``
    is given (16 GPUs on 4 nodes: 4 per node, each driving its own NIC), else they fill whole nodes
    (``ceil(world_size / node size)`` nodes). What `galvatron-hf search` and ``GalvatronTrainer`` both load.
    """
    if world_size < 1:
        raise HardwareProfileError(f"the number of devices must be >= 1, got {world_size}")
    if gpus_per_node is not None and gpus_per_node < 1:
        raise HardwareProfileError(f"--gpus_per_node must be >= 1, got {gpus_per_node}")
    if str(name_or_path).lower() == AUTO:  # a CPU node holds the launched processes (one node unless told)
        local = os.environ.get("LOCAL_WORLD_SIZE")
        node = detect_node(gpus_per_node or (int(local) if local else max(1, world_size // (num_nodes or 1))))
        return _build(node, num_nodes or max(1, math.ceil(world_size / node.gpus_per_node)), node.gpus_per_node)
    if gpus_per_node is None and num_nodes is not None:
        gpus_per_node = math.ceil(world_size / num_nodes)
    if num_nodes is None and gpus_per_node is not None:
        num_nodes = math.ceil(world_size / gpus_per_node)
    hardware = load_hardware(name_or_path, num_nodes, gpus_per_node)
    needed = max(1, math.ceil(world_size / hardware.gpus_per_node))
    if num_nodes is None and needed != hardware.num_nodes:
        hardware = load_hardware(name_or_path, needed)
    return hardware


def detect_node(local_processes: int | None = None) -> NodeFigures:
    """The node this process runs on: CUDA's device name, memory and count, or a CPU node of
    ``local_processes`` (default: the launcher's ``LOCAL_WORLD_SIZE``) sharing the machine's memory. The
    figures' ``sources["detected"]`` says what was found and what was assumed."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return _detected_gpu(props.name, props.total_memory / 1e9, torch.cuda.device_count())
    processes = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    memory = round(_physical_memory_gb() / max(1, processes), 1)
    note = f"no CUDA device: a CPU node of {processes} process(es) with {memory:g} GB each (estimated speeds)"
    return replace(
        CPU, name="auto:cpu", memory_gb=memory, gpus_per_node=processes, sources={**CPU.sources, "detected": note}
    )


def _detected_gpu(device_name: str, memory_gb: float, count: int) -> NodeFigures:
    """A known GPU keeps its built-in figures with the real memory and count; an unknown one the H100's speeds."""
    memory = round(memory_gb, 1)
    key = next((k for k in BUILTIN_NODES if k in device_name.lower()), None)
    if key is not None:
        base = BUILTIN_NODES[key]
        note = f"detected {count} x {device_name} ({memory:g} GB): built-in '{key}' figures with its real memory"
    else:
        base = H100
        note = (
            f"unknown GPU {device_name} ({memory:g} GB, {count} per node): priced with the H100's speeds and its real "
            "memory; measure it with `galvatron-hf profile hardware` and pass --hardware PATH"
        )
    return replace(
        base,
        name=f"auto:{key or 'unknown'}",
        device_name=device_name,
        memory_gb=memory,
        gpus_per_node=count,
        sources={**base.sources, "memory": f"{device_name}: {memory:g} GB (CUDA device properties)", "detected": note},
    )


def _physical_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # not a POSIX system: a modest default
        return CPU.memory_gb


def _build(node: NodeFigures, num_nodes: int, gpn: int) -> HardwareProfile:
    """The profile of ``num_nodes`` nodes using ``gpn`` GPUs of each."""
    world = gpn * num_nodes
    collectives = _intra_fits(node, gpn)
    if num_nodes > 1:
        collectives += _inter_fits(node, gpn, world)
    p2p = [P2PFit("intra_node", INTRA_LATENCY_S, node.nvlink_p2p_GBps)]
    p2p.append(P2PFit("inter_node", INTER_LATENCY_S, node.nic_GBps * NIC_EFFICIENCY))
    sources = {
        **node.sources,
        "matmul_tflops": ACHIEVED_SOURCE,
        "inter_node_busbw": f"{NIC_SOURCE}; a group with g GPUs per node drives g NICs",
        "latency": LATENCY_SOURCE,
        "ring_latency": RING_LATENCY_SOURCE,
        "reserved_memory_gb": RESERVED_SOURCE,
        "overlap": OVERLAP_SOURCE,
    }
    device = DeviceSpec(
        name=node.device_name,
        memory_gb=node.memory_gb,
        matmul_tflops={k: _achieved(v) for k, v in node.peak_tflops.items()},
        peak_tflops=dict(node.peak_tflops),
        memory_bandwidth_GBps=node.memory_bandwidth_GBps,
        reserved_memory_gb=node.reserved_memory_gb,
        host_device_GBps=node.host_device_GBps,
        host_memory_bandwidth_GBps=node.host_memory_bandwidth_GBps,
    )
    network = NetworkSpec(
        nics_per_node=node.nics_per_node,
        nic_Gbps=node.nic_GBps * 8,
        ring_base_latency_s=RING_BASE_LATENCY_S,
        nvlink_hop_latency_s=NVLINK_HOP_LATENCY_S,
        net_hop_latency_s=NET_HOP_LATENCY_S,
        fabric=node.fabric,
    )
    profile = HardwareProfile(
        name=node.name if node.name.startswith(f"{AUTO}:") else f"builtin:{node.name}",
        num_nodes=num_nodes,
        gpus_per_node=gpn,
        device=device,
        collectives=collectives,
        p2p=p2p,
        overlap=OVERLAP,
        network=network,
        sources=sources,
        created="built-in (galvatron_hf/profiler/builtin_hardware.py)",
    )
    profile.check()
    return profile


def _achieved(peak_tflops: float) -> float:
    """``ACHIEVED_FRACTION`` of a datasheet rate, to 0.1 TFLOP/s (finer below 1 TFLOP/s: CPU rates)."""
    achieved = peak_tflops * ACHIEVED_FRACTION
    return round(achieved, 1) if achieved >= 1 else round(achieved, 4)


def _powers_of_two(limit: int) -> list[int]:
    sizes, n = [], 2
    while n <= limit:
        sizes.append(n)
        n *= 2
    return sizes


def _intra_fits(node: NodeFigures, gpn: int) -> list[CollectiveFit]:
    fits = []
    for op in COLLECTIVES:
        for n in _powers_of_two(gpn):
            busbw = node.nvlink_busbw_GBps
            if op == "all_reduce" and n == node.gpus_per_node:
                busbw = node.nvlink_allreduce_busbw_GBps
            for ranks in ("consecutive", "strided"):
                fits.append(CollectiveFit(op, n, "intra_node", INTRA_LATENCY_S, busbw, ranks))
    return fits


def _inter_fits(node: NodeFigures, gpn: int, world: int) -> list[CollectiveFit]:
    """Fits for groups spanning nodes, in the profiler's two layouts (consecutive, stride world / n); a group
    with g GPUs on each node drives min(g, NICs per node) NICs."""
    fits = []
    for op in COLLECTIVES:
        for n in _powers_of_two(world):
            layouts = {"consecutive": min(n, gpn), "strided": max(1, gpn // (world // n))}
            for ranks, gpus_in_node in layouts.items():
                span = n if ranks == "consecutive" else (n - 1) * (world // n) + 1
                if span <= gpn:
                    continue  # stays in one node: covered by the intra-node fits
                nics = min(gpus_in_node, node.nics_per_node)
                busbw = min(nics * node.nic_GBps * NIC_EFFICIENCY, node.nvlink_busbw_GBps)
                fits.append(CollectiveFit(op, n, "inter_node", INTER_LATENCY_S, busbw, ranks))
    return fits
