"""Checkpoints without the frozen parameters: a fine-tune's base model (LoRA) is not written at every save.

Frozen parameters (``requires_grad=False``) never change while training, so a training checkpoint need not
hold them: a resume builds the model from the same source (``from_pretrained`` of the same weights, then the
same ``get_peft_model``) and loads only what trained, with the optimizer. A LoRA checkpoint of a 70B base is
then megabytes of adapters and their AdamW states instead of the whole base, at every save.

What the resume would get wrong is a different base (another model, or a randomly initialised one): the
manifest records a fingerprint of every frozen parameter (the sum and the sum of squares of its values, in
float64, over the whole tensor whatever the layout), and a load compares it with the model it loads into.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate

from galvatron_hf.checkpoint.collective import distributed
from galvatron_hf.checkpoint.hf_weights import tied_weight_sources
from galvatron_hf.checkpoint.manifest import CheckpointError

RTOL = 1e-6  # float64 sums of the same values in another order agree far closer; another weight does not


def frozen_names(model: nn.Module) -> set[str]:
    """Names (every alias of a tied weight) of the parameters that do not train."""
    return {name for name, param in model.named_parameters(remove_duplicate=False) if not param.requires_grad}


@torch.no_grad()
def frozen_fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """``{name: [sum, sum of squares]}`` of every frozen parameter of the whole model, on every rank.

    Collective (one ``all_gather_object``). A DTensor's shards are added over its device mesh, each counted once
    over the mesh dimensions it is replicated on; the same parameter may live on several meshes (a norm under
    TP x ZeRO-3 is sharded over each TP rank's data-parallel mesh), which hold copies, so one mesh's ranks are
    added. A parameter that is not a DTensor is whole on each rank holding it (pipeline stages hold different
    ones): one holder's values are kept.
    """
    ties = tied_weight_sources(model)  # a tied weight under its source's name, whichever side a stage holds
    local: dict[str, tuple[float, float, tuple[int, ...]]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            local[ties.get(name, name)] = _local_sums(param)
    parts: list[Any] = [local]
    if distributed():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    chosen: dict[str, tuple[int, ...]] = {}  # name -> the mesh (its ranks) whose shards are added
    merged: dict[str, list[float]] = {}
    for part in parts:
        for name, (total, squares, mesh) in part.items():
            if name not in chosen or (mesh and mesh < chosen[name]):
                chosen[name], merged[name] = mesh, [total, squares]
            elif mesh and mesh == chosen[name]:
                merged[name] = [merged[name][0] + total, merged[name][1] + squares]
    return dict(sorted(merged.items()))


def _local_sums(param: torch.Tensor) -> tuple[float, float, tuple[int, ...]]:
    """(sum, sum of squares, the ranks of its mesh; () for a whole tensor) of this rank's share of ``param``."""
    if not isinstance(param, DTensor):
        values = param.detach().double()
        return float(values.sum()), float((values * values).sum()), ()
    values = param.to_local().detach().double()
    mesh = param.device_mesh
    replicated = [dim for dim, placement in enumerate(param.placements) if isinstance(placement, Replicate)]
    replicas = math.prod(mesh.size(dim) for dim in replicated)
    ranks = tuple(int(rank) for rank in mesh.mesh.flatten().tolist())
    return float(values.sum()) / replicas, float((values * values).sum()) / replicas, ranks


def check_same_frozen_parameters(saved: dict[str, list[float]], model: nn.Module, where: str) -> None:
    """Raise ``CheckpointError`` (on every rank: all see the same fingerprints) unless ``model``'s frozen
    parameters are those the checkpoint at ``where`` trained with."""
    current = frozen_fingerprint(model)
    if set(saved) != set(current):
        only_saved, only_here = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
        raise CheckpointError(
            f"{where} holds the trainable parameters only and was trained with other frozen parameters than this "
            f"model's (frozen there only: {only_saved[:4]}, here only: {only_here[:4]}); build the model as that "
            "run did (the same base and the same adapters)"
        )
    differing = [name for name, sums in saved.items() if not _close(sums, current[name])]
    if differing:
        raise CheckpointError(
            f"{where} holds the trainable parameters only; the frozen ones come from the model it is loaded into, "
            f"and {len(differing)} of this model's differ from those it trained with (e.g. {differing[:4]}): load "
            "the same base weights (from_pretrained of the same checkpoint) before wrapping and resuming"
        )


def _close(saved: list[float], current: list[float]) -> bool:
    return all(math.isclose(a, b, rel_tol=RTOL, abs_tol=RTOL) for a, b in zip(saved, current))
