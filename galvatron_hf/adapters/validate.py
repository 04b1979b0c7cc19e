"""Checks a ModelSpec against the real HF model it describes (imports torch: not imported by the package).

The adapter tests use these, and so can anyone adding a family: ``layer_param_counts`` walks the modules each
layer names, ``measure_saved_bytes`` records what autograd really keeps for backward, layer by layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .spec import LayerSpec, ModelSpec, module_path


def layer_modules(model: torch.nn.Module, layer: LayerSpec) -> list[torch.nn.Module]:
    return [model.get_submodule(module_path(layer.root, name)) for name in layer.modules]


def layer_param_counts(model: torch.nn.Module, spec: ModelSpec) -> dict[str, int]:
    """Parameters each layer owns in ``model``; a shared (tied) parameter goes to the first layer naming it."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for layer in spec.layers:
        total = 0
        for module in layer_modules(model, layer):
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
        counts[layer.name] = total
    return counts


def layer_tp_param_counts(model: torch.nn.Module, spec: ModelSpec) -> dict[str, int]:
    """Parameters the TP rules split: every rule's weight, plus the bias of column-split modules.

    A fused column split (GPT-2's ``c_attn``) keeps its small bias replicated: the runtime does so because
    FSDP cannot gather a bias sharded on top of a strided TP split.
    """
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for layer in spec.layers:
        total = 0
        for rule in layer.tp_rules:
            module = model.get_submodule(module_path(layer.root, rule.module))
            bias = getattr(module, "bias", None)
            splits_bias = rule.style == "colwise" and rule.fused == 1 and bias is not None
            split = [module.weight] + ([bias] if splits_bias else [])
            for param in split:
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
        counts[layer.name] = total
    return counts


@dataclass
class SavedBytes:
    """Bytes autograd keeps, per layer (by the layer running when a storage was first saved)."""

    per_layer: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.per_layer.values())


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def measure_saved_bytes(
    model: torch.nn.Module,
    spec: ModelSpec,
    run: Callable[[], Any],
    checkpoint_blocks: bool = False,
) -> SavedBytes:
    """Run ``run()`` (a forward pass with loss) and record the storages autograd saves for backward.

    Each storage counts once, at the layer that saved it first (layers are switched by forward pre-hooks on
    the modules the spec names); parameters and buffers are not activations and are skipped. With
    ``checkpoint_blocks`` every block runs under non-reentrant ``torch.utils.checkpoint``: its own saved
    tensors go to the checkpoint's inner hooks, so what is recorded here is what the checkpoint itself keeps.
    """
    skip = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    seen: set[tuple[int, int]] = set()
    result = SavedBytes()
    current = {"layer": "outside"}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in skip and key not in seen and key[1] > 0:
            seen.add(key)
            result.per_layer[current["layer"]] += key[1]
        return tensor

    with ExitStack() as stack:
        for layer in spec.layers:
            for module in layer_modules(model, layer):
                handle = module.register_forward_pre_hook(lambda *_, name=layer.name: current.update(layer=name))
                stack.callback(handle.remove)
        if checkpoint_blocks:
            for layer in spec.blocks:
                enter = partial(current.update, layer=layer.name)
                _wrap_in_checkpoint(model.get_submodule(layer.root), stack, enter)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        run()
    return result


def _wrap_in_checkpoint(block: torch.nn.Module, stack: ExitStack, enter: Callable[[], Any]) -> None:
    """Make ``block.forward`` run under non-reentrant checkpointing until ``stack`` closes.

    ``enter`` names the layer right before the checkpoint saves the block's inputs (HF may call a block
    through its own ``__call__`` before the module's pre-hooks run).
    """
    from torch.utils.checkpoint import checkpoint

    original = block.forward

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        enter()
        return checkpoint(original, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed
    stack.callback(lambda: delattr(block, "forward"))


@dataclass(frozen=True)
class SdpaCallRecord:
    """One ``scaled_dot_product_attention`` call: where it ran, the backend PyTorch picked for it, and the mask
    properties that decide between a fused kernel and the math one."""

    layer: str  # the spec layer running when the call was made
    backend: str  # torch.nn.attention.SDPBackend name: MATH, FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION
    query_shape: tuple[int, ...]
    key_shape: tuple[int, ...]
    mask_shape: tuple[int, ...] | None
    mask_last_stride: int | None  # CUDA's fused kernels need 1
    mask_requires_grad: bool  # CPU's fused kernel (and cuDNN) refuse a mask that needs grad
    dropout_p: float


def record_sdpa_backends(model: torch.nn.Module, spec: ModelSpec, run: Callable[[], Any]) -> list[SdpaCallRecord]:
    """Run ``run()`` and record, for every SDPA call, the backend PyTorch picks (``torch._fused_sdp_choice``, the
    dispatcher SDPA itself asks). The adapters price the math kernel and the fused ones differently
    (``AttentionCall``); this says which one really ran, on the device and transformers release at hand.
    """
    from torch.nn.attention import SDPBackend

    names = {int(value): name for name, value in SDPBackend.__members__.items()}
    original = torch.nn.functional.scaled_dot_product_attention
    current = {"layer": "outside"}
    records: list[SdpaCallRecord] = []

    def recording(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                  dropout_p: float = 0.0, is_causal: bool = False, **kwargs: Any) -> torch.Tensor:
        choice = torch._fused_sdp_choice(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs
        )
        mask = attn_mask if isinstance(attn_mask, torch.Tensor) else None
        records.append(SdpaCallRecord(
            layer=current["layer"],
            backend=names.get(int(choice), str(choice)),
            query_shape=tuple(query.shape),
            key_shape=tuple(key.shape),
            mask_shape=tuple(mask.shape) if mask is not None else None,
            mask_last_stride=mask.stride(-1) if mask is not None else None,
            mask_requires_grad=bool(mask is not None and mask.requires_grad),
            dropout_p=float(dropout_p),
        ))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    with ExitStack() as stack:
        for layer in spec.layers:
            for module in layer_modules(model, layer):
                handle = module.register_forward_pre_hook(lambda *_, name=layer.name: current.update(layer=name))
                stack.callback(handle.remove)
        torch.nn.functional.scaled_dot_product_attention = recording
        stack.callback(setattr, torch.nn.functional, "scaled_dot_product_attention", original)
        run()
    return records


def build_model(config: Any, architecture: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The HF model ``architecture`` with random weights (``device="meta"`` allocates nothing)."""
    import transformers

    with torch.device(device):
        return getattr(transformers, architecture)(config)
