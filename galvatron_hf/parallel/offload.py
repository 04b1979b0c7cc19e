"""CPU offload (``plan.offload``): FSDP2's ``CPUOffloadPolicy`` on every ``fully_shard`` call of the plan.

With the policy, each rank's sharded fp32 parameters and their reduced gradients live in host memory: FSDP2
copies a shard to the device just before its all-gather and the reduced gradient shard back after its
reduce-scatter, so the optimizer (built on ``parameters()``, which are then host tensors) keeps its states in
host memory and steps there. The policy moves the three together, which is why a plan offloads all of
params/grads/optimizer or nothing (planner/plan.py). Every block and the root are sharded by ``fully_shard``
(``data_parallel.py``; DDP layers are FSDP2 with a shard of 1), so every parameter is covered.

Pinned host memory needs an accelerator: on a CPU-only device the shards are plain host tensors and the copies
are no-ops, which still runs FSDP2's offload path (the host shards, the gradient hand-off, the CPU step).
A meta-device model is materialised in host memory (FSDP2 requires offloaded shards there) and its buffers,
which FSDP2 does not manage, are moved to the device afterwards.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

from galvatron_hf.planner.plan import Plan


def offload_policy(plan: Plan, device_type: str) -> OffloadPolicy:
    """The FSDP2 offload policy for ``plan`` on ``device_type`` (the default policy keeps everything on device)."""
    if not plan.offloaded:
        return OffloadPolicy()
    return CPUOffloadPolicy(pin_memory=device_type != "cpu")


def materialize_device(plan: Plan, device: torch.device) -> torch.device:
    """Where a meta-device model's shards are allocated: host memory when the plan offloads them."""
    return torch.device("cpu") if plan.offloaded else device


def move_buffers(module: nn.Module, device: torch.device) -> None:
    """Move every buffer (rotary ``inv_freq``, position ids) to ``device``: FSDP2 manages parameters only."""
    for sub in module.modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.device != device:
                sub.register_buffer(name, buffer.to(device), persistent=name not in sub._non_persistent_buffers_set)
