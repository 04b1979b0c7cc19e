"""What a layer is priced in (:class:`StepShape`) and what its price is made of (:class:`LayerCost`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepShape:
    """What every layer of one plan shares: pipeline degree, micro-batching and devices per stage."""

    pp: int
    num_micro_batches: int
    micro_batch_size: int  # samples per micro-batch across the stage (the stage's DP ranks split it)
    devices_per_stage: int
    schedule: str = "1f1b"
    cp: int = 1  # context parallelism: each rank holds 1 / cp of every sample's tokens
    offload: bool = False  # FSDP2 CPUOffloadPolicy: sharded parameters, gradients, optimizer states in host memory

    @property
    def accumulates(self) -> bool:
        """Gradient sync only on the last micro-batch: unsharded gradients accumulate in between."""
        return self.num_micro_batches > 1

    def in_flight(self, stage: int) -> int:
        """Micro-batches whose activations a stage holds at its peak: M for GPipe, pp - stage for 1F1B."""
        if self.schedule == "gpipe":
            return self.num_micro_batches
        return min(self.num_micro_batches, self.pp - stage)


@dataclass(frozen=True)
class LayerCost:
    """One layer under one strategy.

    ``time_s`` is per micro-batch, with the once-per-step costs (gradient sync, parameter gathers) spread
    over the M micro-batches; ``static_bytes`` stays resident through forward and backward (parameters,
    optimizer states, buffers FSDP2 keeps); ``activation_bytes`` is kept per micro-batch in flight;
    ``workspace_bytes`` is transient (recomputation, gathered parameters, unsharded gradients before their
    reduce): a stage needs the largest of its layers' workspaces on top of the rest. ``grad_bytes`` are the
    sharded fp32 gradients: the optimizer step needs them, but at the backward peak (its start, when every
    activation is still held) they do not exist yet (``zero_grad`` freed the last step's), so they are a
    second, separate peak (see :attr:`StageCost.peak_memory_gb`).
    """

    time_s: float
    static_bytes: float
    activation_bytes: float
    workspace_bytes: float
    grad_bytes: float = 0.0
    # Parts of the totals above, for reports (the search reads the totals only):
    communication_s: float = 0.0  # of time_s: TP collectives and exposed DP sync / gathers
    memory_bound_s: float = 0.0  # of time_s: optimizer step, clipping, FSDP2 copies (HBM traffic)
    optimizer_bytes: float = 0.0  # of static_bytes: AdamW states
    accumulated_grad_bytes: float = 0.0  # of static_bytes: unsharded gradients accumulated while M > 1
    offload_s: float = 0.0  # of time_s: exposed host-device transfers and the host optimizer step (offload)
