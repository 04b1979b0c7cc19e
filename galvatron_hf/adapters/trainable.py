"""Which parameters of a model train: a frozen base and the adapters added to it (PEFT's LoRA and the like).

A family adapter counts a layer's parameters from the HF config; the model in hand may hold more (the
adapter weights PEFT injects into its Linear modules) and freeze some (``requires_grad=False``: the base
under LoRA, or layers a user froze). ``describe_trainable`` adds both to the spec: a layer's ``params``
gains the added adapter weights and ``frozen_params`` counts those without gradients, which the planner
prices as weights only (no gradient, no optimizer state; docs/cost_model.md, "Memory").

Pure Python: the model's modules are walked through their methods, without importing torch. A PEFT tuner
layer is recognised by its shape (a ``base_layer`` and ``active_adapters``), so PEFT need not be installed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .spec import ModelSpec, module_path


@dataclass(frozen=True)
class ParamCounts:
    """One layer's parameters in a model: all of them, those an adapter added, those that do not train."""

    total: int = 0
    added: int = 0
    frozen: int = 0

    @property
    def base(self) -> int:
        """What the HF model alone holds (what the family adapter counts from the config)."""
        return self.total - self.added


def is_tuner_layer(module: Any) -> bool:
    """A PEFT tuner layer: the original module as ``base_layer``, adapter weights beside it."""
    return hasattr(module, "base_layer") and hasattr(module, "active_adapters")


def base_model(model: Any) -> Any:
    """The HF model inside a PEFT ``PeftModel`` (its LoRA layers in place); any other model unchanged."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def added_param_ids(model: Any) -> set[int]:
    """Parameters of tuner layers that are not their base layer's: the adapter weights."""
    added: set[int] = set()
    for module in model.modules():
        if is_tuner_layer(module):
            added.update(id(p) for name, p in module.named_parameters() if not name.startswith("base_layer."))
    return added


def layer_counts(model: Any, spec: ModelSpec) -> dict[str, ParamCounts]:
    """Every layer's :class:`ParamCounts`; a shared (tied) parameter goes to the first layer naming it."""
    added = added_param_ids(model)
    seen: set[int] = set()
    counts: dict[str, ParamCounts] = {}
    for layer in spec.layers:
        total = extra = frozen = 0
        for name in layer.modules:
            for param in model.get_submodule(module_path(layer.root, name)).parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                total += param.numel()
                extra += param.numel() if id(param) in added else 0
                frozen += 0 if param.requires_grad else param.numel()
        counts[layer.name] = ParamCounts(total, extra, frozen)
    return counts


def describe_trainable(spec: ModelSpec, counts: dict[str, ParamCounts]) -> ModelSpec:
    """``spec`` with each layer's added adapter weights and frozen parameters (unchanged if all train)."""
    if not any(c.added or c.frozen for c in counts.values()):
        return spec
    layers = tuple(
        replace(layer, params=layer.params + counts[layer.name].added, frozen_params=counts[layer.name].frozen)
        for layer in spec.layers
    )
    return replace(spec, layers=layers)

