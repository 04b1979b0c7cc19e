"""The Trainer's optimizer as the runtime needs it.

accelerate wraps the optimizer the Trainer builds (``AcceleratedOptimizer``); checkpoints (DCP) need the torch
optimizer inside. With fp16 the runtime scales losses itself (``ParallelModel.scaler``, a ``LossScaler`` that
agrees on overflow over every rank) instead of accelerate's GradScaler, so the Trainer's
``optimizer.step()`` is routed through that scaler, which skips a step whose gradients overflowed.

The parameters the Trainer's optimizer sees are sharded (DTensor) under FSDP2 and TP. ``SHARDED_OPTIMIZERS``
are the ``--optim`` values checked to step DTensor parameters (tests/trainer/test_optimizer.py); any other is
refused before the model is sharded, with that list (``adafactor``, for one, mixes plain tensors into its
factored state). A custom optimizer stays possible through ``optimizer_cls_and_kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

SHARDED_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "rmsprop")


def check_optimizer(optim: Any, custom_optimizer: bool) -> None:
    """Refuse an ``--optim`` not known to step sharded parameters (unless a custom optimizer replaces it)."""
    name = getattr(optim, "value", optim)
    if custom_optimizer or name in SHARDED_OPTIMIZERS:
        return
    raise ValueError(
        f"GalvatronTrainer: optim={name!r} is not supported with sharded (DTensor) parameters; use one of "
        f"{', '.join(SHARDED_OPTIMIZERS)}, or pass optimizer_cls_and_kwargs=(cls, kwargs) for an optimizer that "
        "steps DTensor parameters"
    )


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (DCP needs the real one)."""
    return getattr(optimizer, "optimizer", optimizer)


def step_through_scaler(optimizer: torch.optim.Optimizer, scaler: Any, on_step: Callable[[bool], None]) -> None:
    """Route ``optimizer.step()`` through the runtime's loss scaler and tell ``on_step`` whether it stepped.

    Routing twice would scale twice; an optimizer already routed is left as it is.
    """
    if getattr(optimizer, "_galvatron_scaled", False):
        return
    plain_step = optimizer.step

    class _Plain:
        step = staticmethod(plain_step)

    def step(closure=None):
        on_step(scaler.step(_Plain))

    optimizer.step = step
    optimizer._galvatron_scaled = True
