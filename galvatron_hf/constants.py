"""Values every layer of the package shares, defined once.

The planner reads this module too, so it imports nothing heavy: torch is imported only when a torch dtype is
asked for (``torch_dtype``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # the label HF losses skip (torch.nn.CrossEntropyLoss's default ignore_index)
GB = 1e9  # the memory unit of budgets, profiles and the cost model: GB means 1e9 bytes everywhere
MIXED_PRECISIONS = ("bf16", "fp16", "fp32")  # the compute dtypes a plan, the runtime and the profilers accept
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # HF head classes whose loss shifts the labels by one


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name (``"bf16"``, ``"fp16"``, ``"fp32"``)."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"precision {name!r} is not one of {MIXED_PRECISIONS}")
    return dtypes[name]


def is_causal_lm(spec: Any) -> bool:
    """Causal LM heads shift labels by one (the loss's items are the label tokens after the first)."""
    return spec.architecture.endswith(CAUSAL_LM_SUFFIXES)
