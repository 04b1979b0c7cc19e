"""Megatron-style sequence parallelism inside a TP block (``LayerStrategy.sp``), with DTensor.

Between blocks the hidden states stay whole on every TP rank, as without SP (HF builds position ids and masks
from the embeddings' shape, and the relayout between blocks of different layouts is unchanged). Inside a block:

- on entry, each TP rank keeps its ``1 / tp`` of the sequence (no communication; backward all-gathers);
- the block's norms run on that slice (``SequenceParallel``: their weights replicated over TP, weight
  gradients summed over it), and so do the residual adds: these are the activations SP divides by ``tp``;
- before each sub-module whose column-split linears read the norm's output (attention, MLP) the slices are
  all-gathered along the sequence, and the row-split linears leaving it reduce-scatter their partial sums along
  the sequence (``RowwiseParallel(output_layouts=Shard(1))``, set by ``tensor_parallel.py``) in place of TP's
  all-reduce;
- on exit the slices are all-gathered back into the whole sequence.

This needs a pre-norm block where everything between the norms and those sub-modules works token by token:
the families of ``SEQUENCE_PARALLEL_FAMILIES`` (planner/search/space.py: the search offers sp there only); any
other is refused by the plan check.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import SequenceParallel, parallelize_module

from galvatron_hf.adapters.spec import LayerSpec
from galvatron_hf.planner.search.space import SEQUENCE_PARALLEL_FAMILIES

__all__ = ["SEQUENCE_PARALLEL_FAMILIES", "apply_sequence_parallel"]
SEQUENCE_DIM = 1  # hidden states are (batch, sequence, hidden)


def apply_sequence_parallel(block: nn.Module, layer: LayerSpec, tp_mesh: DeviceMesh) -> None:
    """Run ``block`` (already split by TP with sequence-sharded row outputs) sequence-parallel over ``tp_mesh``."""
    norms = [name for name, child in block.named_children() if _is_norm(child)]
    entries = sorted({rule.module.rpartition(".")[0] for rule in layer.tp_rules if rule.style == "colwise"})
    if not norms or not entries or "" in entries:
        raise ValueError(
            f"{layer.root}: sequence parallelism needs norms directly in the block and the column-split linears "
            f"inside sub-modules; found norms {norms}, column-split modules under {entries}"
        )
    parallelize_module(
        block, tp_mesh, {name: SequenceParallel(sequence_dim=SEQUENCE_DIM, use_local_output=True) for name in norms}
    )
    for name in entries:
        block.get_submodule(name).register_forward_pre_hook(_on_hidden(_gather, tp_mesh), with_kwargs=True)
    block.register_forward_pre_hook(_on_hidden(_split, tp_mesh), with_kwargs=True)
    block.register_forward_hook(_gather_output(tp_mesh))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def _split(hidden: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """This rank's slice of the whole sequence (backward: the slices' gradients all-gathered)."""
    whole = DTensor.from_local(hidden, mesh, [Replicate()], run_check=False)
    return whole.redistribute(mesh, [Shard(SEQUENCE_DIM)]).to_local()


def _gather(hidden: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """The whole sequence from every rank's slice (backward: each rank keeps its slice of the gradient)."""
    sliced = DTensor.from_local(hidden, mesh, [Shard(SEQUENCE_DIM)], run_check=False)
    return sliced.redistribute(mesh, [Replicate()]).to_local()


def _on_hidden(transform, mesh: DeviceMesh):
    """A forward pre-hook applying ``transform`` to the hidden states, passed first or as ``hidden_states``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": transform(kwargs["hidden_states"], mesh)}
        return (transform(args[0], mesh), *args[1:]), kwargs

    return hook


def _gather_output(mesh: DeviceMesh):
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (_gather(output[0], mesh), *output[1:])
        return _gather(output, mesh)

    return hook
