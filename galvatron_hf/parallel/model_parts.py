"""Which layers of a ModelSpec a module holds: all of them, or one pipeline stage's (the others pruned).

Every technique (TP, activation checkpointing, FSDP2, the relayout hooks) walks the spec through these, so
the same code parallelises a whole model and a pruned pipeline stage.
"""

from __future__ import annotations

from torch import nn

from galvatron_hf.adapters.spec import LayerSpec, ModelSpec


def find_module(module: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path`` ("" is ``module`` itself), or None where it is absent or pruned."""
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        return None


def present_blocks(module: nn.Module, spec: ModelSpec) -> list[tuple[int, LayerSpec, nn.Module]]:
    """(index in ``spec.blocks``, its spec, the block module) of every block ``module`` holds."""
    found = []
    for index, layer in enumerate(spec.blocks):
        block = find_module(module, layer.root)
        if block is not None:
            found.append((index, layer, block))
    return found
