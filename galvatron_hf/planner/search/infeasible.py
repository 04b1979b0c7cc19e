"""Proving fast that no plan fits, and naming the cheapest ways out with figures.

Every plan keeps, on some device, at least its share of the model's training state: the fp32 weights, their
fp32 gradients and AdamW's two fp32 states (16 bytes per parameter; 4 for a frozen one, e.g. the base under
LoRA: no gradient, no AdamW state) split over every GPU (ZeRO-3 over the whole world, or TP x PP x ZeRO-3: no
layout splits them further), plus the memory the device reserves. When
that floor alone is above the budget, no plan of the device-memory search space fits: the proof is one
division, and the search skips straight to what would fit (docs/cost_model.md, "When nothing fits").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from galvatron_hf.planner.cost_model import ADAM_BYTES, GB, GRAD_BYTES, MASTER_BYTES

if TYPE_CHECKING:
    from galvatron_hf.planner.search.problem import SearchProblem

@dataclass(frozen=True)
class StateFloor:
    """The least memory per GPU any plan needs for its state, and what would bring it under the budget."""

    state_gb: float  # 16 bytes per trainable parameter, 4 per frozen one, over every GPU
    reserved_gb: float  # what the device keeps outside the tensors
    budget_gb: float
    num_gpus: int
    gpus_needed: int  # the fewest GPUs of this budget whose state floor fits (activations come on top)
    per_parameter: str = "16 bytes per parameter"  # how the state is counted, for the reason

    @property
    def floor_gb(self) -> float:
        return self.state_gb + self.reserved_gb

    @property
    def proves_no_fit(self) -> bool:
        return self.floor_gb > self.budget_gb + 1e-9

    def reason(self) -> str:
        return (
            f"the training state alone ({self.per_parameter} over all {self.num_gpus} GPUs) needs "
            f"{self.state_gb:.1f} GB per GPU, plus {self.reserved_gb:g} GB reserved: {self.floor_gb:.1f} GB > "
            f"{self.budget_gb:g} GB"
        )

    def ways_out(self, offload_text: str | None) -> str:
        """The cheapest ways out, with figures, as one sentence."""
        state_then = self.state_gb * self.num_gpus / self.gpus_needed
        parts = [
            f"{self.gpus_needed}+ GPUs of {self.budget_gb:g} GB (the state then takes {state_then:.1f} GB per GPU "
            "before activations)"
        ]
        if offload_text:
            parts.append(offload_text)
        parts.append("a shorter --seq_len or a smaller batch does not help: the state does not depend on them")
        return "; ".join(parts)


def state_floor(problem: SearchProblem) -> StateFloor:
    """The state floor of ``problem`` (one division: microseconds)."""
    reserved_gb = problem.model.reserved_bytes / GB
    spec = problem.spec
    total_gb = (MASTER_BYTES * spec.total_params + (GRAD_BYTES + ADAM_BYTES) * spec.trainable_params) / GB
    room = problem.memory_gb - reserved_gb
    needed = math.ceil(total_gb / room) if room > 0 else 0
    counted = "16 bytes per parameter" if spec.trainable_params == spec.total_params else (
        "16 bytes per trainable parameter, 4 per frozen one"
    )
    return StateFloor(
        total_gb / problem.num_gpus,
        reserved_gb,
        problem.memory_gb,
        problem.num_gpus,
        max(needed, problem.num_gpus + 1),
        counted,
    )
