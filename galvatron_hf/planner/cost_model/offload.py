"""CPU offload prices: FSDP2's ``CPUOffloadPolicy`` keeps the sharded fp32 parameters, their gradients and the
AdamW states in host memory (docs/cost_model.md, "CPU offload")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model.shapes import StepShape
from galvatron_hf.planner.cost_model.units import CLIP_BYTES, OFFLOAD_GATHER_BYTES, OFFLOAD_GRAD_BYTES, OPTIMIZER_BYTES
from galvatron_hf.planner.plan import PlanError

if TYPE_CHECKING:
    from galvatron_hf.profiler.hardware_schema import HardwareProfile


class OffloadCosts:
    """The offload part of :class:`~galvatron_hf.planner.cost_model.CostModel` (a mixin: it reads the hardware
    profile's host figures, the overlap slowdowns and ``_gathers_per_step``)."""

    hardware: HardwareProfile

    def offload_s(self, params: float, sharded: float, dp_type: str, shape: StepShape, compute_s: float) -> float:
        """Once-per-step offload time of one layer left exposed.

        Each parameter all-gather first copies the rank's fp32 shard to the device, and each reduced fp32 gradient
        shard is copied back: ``(gathers x 4 + 4) x sharded`` bytes at the host-device rate, overlapped with the
        layer's compute (FSDP2 prefetches). Clipping and the AdamW step then run in host memory over the
        sharded state (``(28 + 12) x sharded`` bytes at the host memory rate), after backward: exposed.
        """
        device = self.hardware.device
        if device.host_device_GBps <= 0 or device.host_memory_bandwidth_GBps <= 0:
            raise PlanError(
                f"hardware profile {self.hardware.name!r} has no host-device or host memory bandwidth, so CPU "
                "offload cannot be priced: measure it (`galvatron-hf profile hardware`) or use a built-in node"
            )
        forward_gathers, backward_gathers = self._gathers_per_step("zero2" if dp_type == "ddp" else dp_type, shape)
        moved = ((forward_gathers + backward_gathers) * OFFLOAD_GATHER_BYTES + OFFLOAD_GRAD_BYTES) * sharded
        transfers = moved / (device.host_device_GBps * 1e9)
        host_step = (OPTIMIZER_BYTES + CLIP_BYTES) * sharded / (device.host_memory_bandwidth_GBps * 1e9)
        # copies run on the copy engines, not the SMs: the part under compute costs nothing more
        return max(0.0, transfers - compute_s) + host_step
