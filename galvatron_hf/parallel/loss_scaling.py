"""fp16 loss scaling for sharded, multi-mesh gradients (``torch.amp.GradScaler`` semantics).

``GradScaler`` checks for infs per device, not across ranks, and cannot see DTensor shards on several meshes;
here the check is one all-reduce (MAX) over the world so every rank skips the same steps. That matters most
with pipeline parallelism: only the last stage multiplies the loss by the scale, an overflow may show up on one
stage (or one ZeRO shard) only, yet every rank unscales with its own copy of the scale and must skip the same
step and back off identically. The same all-reduce also checks that all ranks hold the same scale.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.parallel.grad_norm import by_device_and_dtype, local_tensor


class LossScaler:
    """Dynamic loss scale: multiply the loss, unscale gradients, skip and back off on inf/NaN, grow when stable."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        self.scale = init_scale
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.found_inf = False  # the world's verdict on the last backward (what ``step`` acts on)
        self.local_found_inf = False  # whether this rank's own gradients held inf/NaN (diagnostics)
        self._good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    @torch.no_grad()
    def rescale_existing(self, parameters: Iterable[nn.Parameter]) -> None:
        """Before another backward accumulates scaled gradients, bring the unscaled ones back to scale."""
        for param in parameters:
            if param.grad is not None:
                local_tensor(param.grad).mul_(self.scale)

    @torch.no_grad()
    def unscale_(self, parameters: Iterable[nn.Parameter]) -> bool:
        """Divide gradients by the scale; return (and remember) whether any rank of the world saw inf/NaN.

        One all-reduce (MAX) over the world carries this rank's inf flag and its scale (as ``scale`` and
        ``-scale``): a rank whose scale differs from the others' (a scaler built or restored differently)
        would unscale by the wrong factor, so every rank raises instead.
        """
        grads = [local_tensor(p.grad) for p in parameters if p.grad is not None]
        device = grads[0].device if grads else "cpu"
        bad = torch.zeros(1, dtype=torch.float32, device=device)
        inverse = torch.full((1,), 1.0 / self.scale, dtype=torch.float32, device=device)
        for same_dtype in by_device_and_dtype(grads):  # one fused check-and-unscale per list, as GradScaler
            torch._amp_foreach_non_finite_check_and_unscale_(same_dtype, bad, inverse)
        self.local_found_inf = bool(bad.item())
        verdict = torch.tensor(
            [float(self.local_found_inf), self.scale, -self.scale], dtype=torch.float64, device=device
        )
        if dist.is_initialized():
            dist.all_reduce(verdict, op=dist.ReduceOp.MAX)
        found_inf, largest, smallest = bool(verdict[0].item()), verdict[1].item(), -verdict[2].item()
        if largest != smallest:
            raise RuntimeError(
                f"the fp16 loss scale differs across ranks (from {smallest:g} to {largest:g}; this rank "
                f"{self.scale:g}): give every rank the same LossScaler settings and restore the same scale "
                "everywhere when resuming"
            )
        self.found_inf = found_inf
        return self.found_inf

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step unless the last backward overflowed; update the scale. Return whether it stepped."""
        stepped = not self.found_inf
        if stepped:
            optimizer.step()
            self._good_steps += 1
            if self._good_steps % self.growth_interval == 0:
                self.scale *= self.growth_factor
        else:
            self.scale *= self.backoff_factor
            self._good_steps = 0
        self.found_inf = False
        return stepped
