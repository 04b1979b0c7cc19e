"""Tensor parallelism with DTensor, driven by the adapter's ``tp_rules`` and ``tp_attributes``.

``nn.Linear`` uses PyTorch's ``ColwiseParallel`` / ``RowwiseParallel``; the vocabulary embedding is
``RowwiseParallel(input_layouts=Replicate())`` and the LM head ``ColwiseParallel(output_layouts=Replicate())``.
GPT-2's ``Conv1D`` stores its weight as (in, out), so it gets two small ``ParallelStyle`` subclasses; a
fused output (``c_attn`` = q|k|v) is split part by part with ``_StridedShard`` so that every rank holds
``q_r | k_r | v_r`` while the DTensor still describes HF's global layout (state dicts keep HF's values).
Modules compute on their local shards and the HF forward (which reshapes with ``-1`` heads, or with the
head counts the ``tp_attributes`` divide) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import (
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_tensor,
)
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard

from galvatron_hf.adapters.spec import ModelSpec, TPAttribute, TPRule
from galvatron_hf.adapters.trainable import is_tuner_layer
from galvatron_hf.parallel.model_parts import find_module, present_blocks
from galvatron_hf.parallel.peft import lora_tp_styles
from galvatron_hf.parallel.parallel_dims import Layout, ParallelDims
from galvatron_hf.parallel.sequence_parallel import apply_sequence_parallel
from galvatron_hf.planner.plan import Plan


class TPConfigError(ValueError):
    """The adapter's TP description does not fit the model or the TP degree."""


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _strided_local(tensor: torch.Tensor, dim: int, parts: int, mesh: DeviceMesh) -> torch.Tensor:
    """This rank's ``q_r | k_r | v_r``: split ``dim`` into ``parts`` equal parts, then each over the mesh."""
    size, index = mesh.size(), mesh.get_local_rank()
    pieces = [part.chunk(size, dim=dim)[index] for part in tensor.chunk(parts, dim=dim)]
    return torch.cat(pieces, dim=dim).contiguous()


def _shard_fused(tensor: torch.Tensor, dim: int, parts: int, mesh: DeviceMesh) -> nn.Parameter:
    if parts == 1:
        return nn.Parameter(distribute_tensor(tensor.detach(), mesh, [Shard(dim)]))
    local = _strided_local(tensor.detach(), dim, parts, mesh)
    placement = _StridedShard(dim, split_factor=parts)
    dtensor = DTensor.from_local(
        local,
        mesh,
        [placement],
        run_check=False,
        shape=tensor.shape,
        stride=tensor.stride(),
    )
    return nn.Parameter(dtensor)


def _replicated_input(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; backward all-reduces the partial input gradients of a column split."""
    return DTensor.from_local(tensor, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def _sum_partial(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """All-reduce partial outputs of a row split (backward passes the replicated gradient through)."""
    summed = DTensor.from_local(tensor, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()])
    return summed.to_local()


def _scatter_partial(tensor: torch.Tensor, mesh: DeviceMesh, dim: int) -> torch.Tensor:
    """Reduce-scatter partial outputs of a row split along ``dim`` (backward all-gathers the gradient)."""
    scattered = DTensor.from_local(tensor, mesh, [Partial()], run_check=False).redistribute(mesh, [Shard(dim)])
    return scattered.to_local()


def _contiguous(placements) -> list:
    return [Shard(p.dim) if isinstance(p, _StridedShard) else p for p in placements]


def is_strided(value: object) -> bool:
    """A DTensor split part by part (GPT-2's fused q|k|v): DCP cannot store it as it is."""
    return isinstance(value, DTensor) and any(isinstance(p, _StridedShard) for p in value.placements)


def to_contiguous(value: DTensor) -> DTensor:
    """The same values as one contiguous chunk per rank (``Shard``), the layout DCP stores."""
    return value.redistribute(value.device_mesh, _contiguous(value.placements))


def _checkpoint_contiguous(module: nn.Module, name: str) -> None:
    """State dicts see the strided-split parameter as a plain ``Shard`` DTensor (same values).

    torch.distributed.checkpoint stores one contiguous chunk per rank and rejects a strided shard
    ("overlapping chunks"); on save we redistribute to the contiguous layout, on load back to the strided one.
    """

    def on_save(mod, state_dict, prefix, local_metadata):
        key = prefix + name
        value = state_dict.get(key)
        if is_strided(value):
            state_dict[key] = to_contiguous(value)

    def on_load(mod, state_dict, prefix, *args):
        key, param = prefix + name, getattr(mod, name)
        value = state_dict.get(key)
        if isinstance(value, DTensor) and isinstance(param, DTensor) and value.placements != param.placements:
            state_dict[key] = value.redistribute(param.device_mesh, param.placements)

    module.register_state_dict_post_hook(on_save)
    module._register_load_state_dict_pre_hook(on_load, with_module=True)


class Conv1DColwiseParallel(ParallelStyle):
    """Column split of GPT-2's ``Conv1D`` (weight (in, out)); ``fused`` equal output parts split one by one."""

    def __init__(self, fused: int = 1):
        super().__init__()
        self.fused = fused

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        module.weight = _shard_fused(module.weight, 1, self.fused, device_mesh)
        if module.bias is not None:
            module.bias = self._bias(module.bias, device_mesh)
        module.nf = module.nf // device_mesh.size()
        if self.fused > 1:
            _checkpoint_contiguous(module, "weight")

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            hidden = _replicated_input(hidden, device_mesh)
            weight = module.weight.to_local()
            out = hidden.reshape(-1, hidden.shape[-1]) @ weight
            if module.bias is not None:
                out = out + self._local_bias(module.bias, device_mesh)
            return out.view(*hidden.shape[:-1], weight.shape[1])

        module.forward = forward
        return module

    def _bias(self, bias: torch.Tensor, mesh: DeviceMesh) -> nn.Parameter:
        """A fused bias stays replicated (it is small): FSDP would shard its only dim on top of a strided TP
        split, a layout DTensor cannot gather back. Unfused biases are split like the weight's columns."""
        placement = Replicate() if self.fused > 1 else Shard(0)
        return nn.Parameter(distribute_tensor(bias.detach(), mesh, [placement]))

    def _local_bias(self, bias: DTensor, mesh: DeviceMesh) -> torch.Tensor:
        if self.fused == 1:
            return bias.to_local()
        # this rank's parts of the replicated bias; backward sums the part gradients over the TP group
        return _strided_local(_replicated_input(bias.to_local(), mesh), 0, self.fused, mesh)


class Conv1DRowwiseParallel(ParallelStyle):
    """Row split of GPT-2's ``Conv1D``: local input features, partial sums all-reduced, bias replicated.
    ``sequence_output``: the partial sums are reduce-scattered along the sequence instead (sequence parallelism)."""

    def __init__(self, sequence_output: bool = False):
        super().__init__()
        self.sequence_output = sequence_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), device_mesh, [Shard(0)]))
        if module.bias is not None:
            module.bias = nn.Parameter(distribute_tensor(module.bias.detach(), device_mesh, [Replicate()]))

        def forward(hidden: torch.Tensor) -> torch.Tensor:
            weight = module.weight.to_local()
            partial = (hidden.reshape(-1, hidden.shape[-1]) @ weight).view(*hidden.shape[:-1], weight.shape[1])
            if not self.sequence_output:
                out = _sum_partial(partial, device_mesh)
                return out if module.bias is None else out + module.bias.to_local()
            out = _scatter_partial(partial, device_mesh, 1)
            if module.bias is None:
                return out
            # each rank adds the bias to its slice of the sequence only: the bias gradient is summed over TP
            return out + _replicated_input(module.bias.to_local(), device_mesh)

        module.forward = forward
        return module


def style_for(rule: TPRule, module: nn.Module, vocab: bool = False, sequence_parallel: bool = False) -> ParallelStyle:
    """The PyTorch parallel style for one rule (``vocab``: embedding / LM head of the vocabulary layer;
    ``sequence_parallel``: row splits reduce-scatter along the sequence, ``sequence_parallel.py``)."""
    if rule.conv1d or _is_conv1d(module):
        if rule.style == "colwise":
            return Conv1DColwiseParallel(rule.fused)
        return Conv1DRowwiseParallel(sequence_output=sequence_parallel)
    if rule.fused > 1:
        raise TPConfigError(f"{rule.module}: fused outputs are only supported on GPT-2 Conv1D modules")
    if isinstance(module, nn.Embedding):
        if rule.style == "rowwise":  # vocabulary-parallel embedding: rows = tokens
            return RowwiseParallel(input_layouts=Replicate())
        return ColwiseParallel(input_layouts=Replicate())  # split the embedding dim (T5 relative bias heads)
    if rule.style == "colwise":
        return ColwiseParallel(output_layouts=Replicate()) if vocab else ColwiseParallel()
    return RowwiseParallel(output_layouts=Shard(1)) if sequence_parallel else RowwiseParallel()


def apply_tensor_parallel(
    root: nn.Module,
    rules: Sequence[TPRule],
    attributes: Sequence[TPAttribute],
    tp_mesh: DeviceMesh,
    vocab: bool = False,
    where: str = "",
    sequence_parallel: bool = False,
) -> None:
    """Split the modules under ``root`` named by ``rules`` over ``tp_mesh``; divide the head-count attributes."""
    tp = tp_mesh.size()
    if tp == 1:
        return
    plan = {}
    for rule in rules:
        module = _get(root, rule.module, where)
        base = module.base_layer if is_tuner_layer(module) else module  # a PEFT (LoRA) layer: its base module
        _check_divisible(rule, base, tp, where)
        styles = lora_tp_styles(rule.module, module, style_for(rule, base, vocab, sequence_parallel), sequence_parallel)
        plan.update(styles)
    if plan:
        frozen = {name for name, param in root.named_parameters() if not param.requires_grad}
        parallelize_module(root, tp_mesh, plan)
        for name, param in root.named_parameters():  # the split parameters are new: keep them frozen
            param.requires_grad_(name not in frozen)
    for attribute in attributes:
        _divide_attribute(_get(root, attribute.module, where), attribute, tp, where)


def _get(root: nn.Module, path: str, where: str) -> nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as err:
        raise TPConfigError(f"{where}: the adapter names module {path!r}, which the model does not have") from err


def _split_width(rule: TPRule, module: nn.Module) -> int:
    """The size TP divides: output features for colwise, input features for rowwise."""
    if rule.conv1d or _is_conv1d(module):
        in_f, out_f = module.weight.shape
    elif isinstance(module, nn.Embedding):
        return module.weight.shape[0] if rule.style == "rowwise" else module.weight.shape[1]
    else:
        out_f, in_f = module.weight.shape
    return (out_f // rule.fused) if rule.style == "colwise" else in_f


def _check_divisible(rule: TPRule, module: nn.Module, tp: int, where: str) -> None:
    width = _split_width(rule, module)
    if width % tp:
        raise TPConfigError(
            f"{where}: tp={tp} does not divide {rule.module}'s split width {width}; use a tp dividing it"
        )


def _divide_attribute(module: nn.Module, attribute: TPAttribute, tp: int, where: str) -> None:
    value = getattr(module, attribute.attribute, None)
    if not isinstance(value, int):
        raise TPConfigError(
            f"{where}: {attribute.module}.{attribute.attribute} is {value!r}, not an integer head count or width"
        )
    if value % tp:
        raise TPConfigError(f"{where}: tp={tp} does not divide {attribute.module}.{attribute.attribute}={value}")
    setattr(module, attribute.attribute, value // tp)


def tie_output_embeddings(model: nn.Module, tied: bool) -> None:
    """Re-tie the LM head to the (possibly vocabulary-parallel) input embedding after TP replaced it."""
    if not tied:
        return
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or outputs.weight is inputs.weight:
        return
    if type(inputs.weight) is not type(outputs.weight) or (
        isinstance(inputs.weight, DTensor) and inputs.weight.placements != outputs.weight.placements
    ):
        raise TPConfigError(
            "the input embedding and LM head are tied but were split differently; the adapter must give the "
            "embedding a 'rowwise' and the head a 'colwise' rule (both split the vocabulary)"
        )
    outputs.weight = inputs.weight


# ----------------------------------------------------------------------------------------------------------
# The whole (stage) module by the plan
# ----------------------------------------------------------------------------------------------------------


def apply_tp(module: nn.Module, spec: ModelSpec, plan: Plan, dims: ParallelDims) -> None:
    """Split every block of ``module`` (a model or a pipeline stage) by its strategy's TP degree (sequence-parallel
    where the strategy says ``sp``) and the vocabulary layers (embedding, head) by ``plan.vocab``; re-tie what TP untied."""
    for index, layer, block in present_blocks(module, spec):
        tp_mesh = dims.tp_mesh(Layout.of(plan.layers[index]))
        where = f"block {index} ({layer.root})"
        sp = plan.layers[index].sp
        apply_tensor_parallel(block, layer.tp_rules, layer.tp_attributes, tp_mesh, where=where, sequence_parallel=sp)
        if sp:
            apply_sequence_parallel(block, layer, tp_mesh)
    tp_mesh = dims.tp_mesh(Layout.of(plan.vocab))
    tied = _tied_embeddings(module)
    aliases = _alias_groups(module)
    for layer in spec.layers:
        root = None if layer.is_block else find_module(module, layer.root)
        if root is None:
            continue
        rules = [rule for rule in layer.tp_rules if find_module(root, rule.module) is not None]
        rules += _sharing_siblings(root, rules)
        attributes = [a for a in layer.tp_attributes if find_module(root, a.module) is not None]
        apply_tensor_parallel(root, rules, attributes, tp_mesh, vocab=True, where=f"{layer.name} (vocab)")
    tie_output_embeddings(module, tied)
    _restore_aliases(module, aliases)


def _sharing_siblings(root: nn.Module, rules: list[TPRule]) -> list[TPRule]:
    """Rules for modules of the same type that share a split module's weight (T5's ``encoder.embed_tokens``
    and ``decoder.embed_tokens`` share ``shared.weight``): they must be split the same way to run."""
    extra = []
    named = [rule.module for rule in rules]
    for rule in rules:
        module = root.get_submodule(rule.module)
        weight = getattr(module, "weight", None)
        for path, other in root.named_modules():
            if path not in named and type(other) is type(module) and getattr(other, "weight", None) is weight:
                extra.append(replace(rule, module=path))
                named.append(path)
    return extra


def _alias_groups(module: nn.Module) -> list[list[str]]:
    """Names sharing one parameter (BERT's ``cls.predictions.bias`` is ``decoder.bias``)."""
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _restore_aliases(module: nn.Module, groups: list[list[str]]) -> None:
    """TP replaced one name of a shared parameter with a DTensor: point the other names at it too."""
    params = dict(module.named_parameters(remove_duplicate=False))
    for names in groups:
        distinct = {id(params[n]): params[n] for n in names}
        if len(distinct) == 1:
            continue
        split = [p for p in distinct.values() if hasattr(p, "to_local")]
        if not split or any(p.placements != split[0].placements for p in split):
            raise ValueError(f"parameters {names} are one tensor in the model but TP split them differently")
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, split[0])


def _tied_embeddings(module: nn.Module) -> bool:
    get_in, get_out = getattr(module, "get_input_embeddings", None), getattr(module, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return False
    try:
        inputs, outputs = get_in(), get_out()
    except (AttributeError, NotImplementedError):
        return False
    return inputs is not None and outputs is not None and outputs.weight is inputs.weight
