"""Data parallelism per layer with FSDP2 ``fully_shard``: ddp, zero2, zero3 and hsdp are four mesh settings.

- ``zero3``: ``fully_shard`` on the DP mesh, parameters resharded after forward.
- ``hsdp``: ``fully_shard`` on a 2-D (replicate = dp / dp_shard, shard = dp_shard) mesh, resharded after
  forward: ZeRO-3 inside each shard group (e.g. one node), gradients all-reduced across the groups.
- ``zero2``: the same with ``reshard_after_forward=False`` (parameters stay gathered until backward ends).
- ``ddp``: ``fully_shard`` on a 2-D (replicate = dp, shard = 1) mesh, i.e. HSDP with shard size 1: every
  rank keeps whole parameters and gradients are all-reduced per layer. This composes with DTensor TP
  (the meshes share one root) and with the other layers' FSDP states, which ``replicate`` does not.

Gradient reductions **sum** (divide factor 1): the loss each data-loading rank back-propagates is already
weighted by its share of the global batch (see ``docs/runtime.md``), and layers with different DP degrees
must all end with the single-process gradient.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.constants import torch_dtype
from galvatron_hf.parallel.model_parts import present_blocks
from galvatron_hf.parallel.offload import offload_policy
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.planner.plan import Plan


def apply_fsdp(module: nn.Module, spec: ModelSpec, plan: Plan, dims: ParallelDims, mixed_precision: str) -> None:
    """``fully_shard`` every block of ``module`` (a model or a pipeline stage) by its strategy, then the root
    (the parameters no block owns: embedding, norms, head) by ``plan.vocab``; all with the plan's CPU offload."""
    policy = mixed_precision_policy(mixed_precision)
    offload = offload_policy(plan, dims.device_type)
    for index, _layer, block in present_blocks(module, spec):
        strategy = plan.layers[index]
        apply_data_parallel(block, dims.fsdp_mesh(Layout.of(strategy)), strategy.dp_type, policy, offload)
    apply_data_parallel(module, dims.fsdp_mesh(Layout.of(plan.vocab)), plan.vocab.dp_type, policy, offload)


def mixed_precision_policy(mixed_precision: str, reduce_in_fp32: bool = True) -> MixedPrecisionPolicy:
    """Compute in bf16/fp16 with fp32 master weights; reduce gradients in fp32 unless told otherwise."""
    compute = torch_dtype(mixed_precision)
    if compute == torch.float32:
        return MixedPrecisionPolicy()
    reduce = torch.float32 if reduce_in_fp32 else compute
    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=reduce)


def apply_data_parallel(
    module: nn.Module,
    fsdp_mesh: DeviceMesh,
    dp_type: str,
    mp_policy: MixedPrecisionPolicy,
    offload: OffloadPolicy | None = None,
) -> FSDPModule:
    """``fully_shard`` one layer (or the root, for the parameters no block owns) as ``dp_type`` says."""
    fully_shard(
        module,
        mesh=fsdp_mesh,
        reshard_after_forward=(dp_type in ("zero3", "hsdp")),
        mp_policy=mp_policy,
        offload_policy=offload or OffloadPolicy(),
    )
    module.set_gradient_divide_factor(1.0)
    if fsdp_mesh.device_type == "cpu" and hasattr(module, "set_force_sum_reduction_for_comms"):
        module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; a factor of 1 needs no scaling
    return module
