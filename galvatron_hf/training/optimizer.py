"""The Trainer's optimizer as the runtime needs it.

accelerate wraps the optimizer the Trainer builds (``AcceleratedOptimizer``); checkpoints (DCP) need the torch
optimizer inside. With fp16 the runtime scales losses itself (``ParallelModel.scaler``, a ``LossScaler`` that
agrees on overflow over every rank) instead of accelerate's GradScaler, so the Trainer's
``optimizer.step()`` is routed through that scaler, which skips a step whose gradients overflowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


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
