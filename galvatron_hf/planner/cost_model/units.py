"""Units and byte sizes the cost model prices with: what FSDP2, AdamW and mixed precision keep per parameter."""

from __future__ import annotations

from dataclasses import dataclass

from galvatron_hf.planner.plan import MIXED_PRECISIONS, PlanError

MASTER_BYTES = 4  # fp32 master weights (the sharded parameter FSDP2 keeps)
GRAD_BYTES = 4  # fp32 sharded gradients (reduce_dtype=fp32)
ADAM_BYTES = 8  # AdamW exp_avg + exp_avg_sq in fp32
ACCUMULATED_GRAD_BYTES = 4  # unsharded fp32 gradient FSDP2 accumulates while gradient sync is off (M > 1)
TRANSIENT_GRAD_BYTES = 6  # one layer's unsharded gradient in param dtype (2) + its fp32 copy for the reduce (4)
# A fused AdamW step reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq, all fp32:
# 7 x 4 bytes of memory traffic per parameter (torch.optim.AdamW(fused=True) makes one pass).
OPTIMIZER_BYTES = 28
# Gradient clipping (the HF Trainer clips by default, max_grad_norm=1.0): one foreach norm reads every local
# fp32 gradient (4 bytes), one foreach scale reads and writes it (8 bytes).
CLIP_BYTES = 12
# With offload the fused AdamW step runs on the host over the same 7 x 4 bytes per parameter; each all-gather
# first copies the fp32 shard to the device (4 bytes), and the reduced fp32 gradient shard goes back (4 bytes).
OFFLOAD_GATHER_BYTES = 4
OFFLOAD_GRAD_BYTES = 4


@dataclass(frozen=True)
class Precision:
    """Byte sizes a mixed-precision setting implies."""

    name: str
    compute_bytes: int  # activations and the gathered (unsharded) parameters

    @classmethod
    def of(cls, name: str) -> Precision:
        if name not in MIXED_PRECISIONS:
            raise PlanError(f"mixed_precision {name!r} is not one of {MIXED_PRECISIONS}")
        return cls(name, 4 if name == "fp32" else 2)

