"""Which HF attention implementation a parallelised model runs, and switching it.

``attn_implementation`` defaults to SDPA (flash_attention_2 on CUDA when flash-attn is installed). A plan whose
layers change activation layout runs SDPA with the mask always built (``FULL_MASK_SDPA``, see ``attention_for``).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from galvatron_hf.planner.plan import Plan

FULL_MASK_SDPA = "galvatron_sdpa_full_mask"


def default_attn_implementation(device: torch.device) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, SDPA otherwise."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def has_layout_changes(plan: Plan) -> bool:
    """Whether activations change layout somewhere (some layer's TP degree differs from another's)."""
    return len({s.tp for s in plan.layers} | {plan.vocab.tp}) > 1


def attention_for(plan: Plan, device: torch.device, requested: str | None) -> str:
    """The attention implementation to run.

    HF drops the mask when a rank's batch part has no padding (SDPA's ``is_causal`` fast path, flash
    attention's unpadded path) and builds one when it has padding: with layout changes the ranks exchanging
    batch parts would then disagree on what to exchange and hang. Plans with layout changes therefore use
    SDPA with the mask always built (HF's own ``sdpa_mask`` without the skip, registered under
    ``FULL_MASK_SDPA``); eager attention always builds its mask and is kept.
    """
    chosen = requested or default_attn_implementation(device)
    if not has_layout_changes(plan) or chosen == "eager":
        return chosen
    _register_full_mask_sdpa()
    return FULL_MASK_SDPA


def _register_full_mask_sdpa() -> None:
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    sdpa_mask = ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]

    def full_sdpa_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False
        if "allow_is_bidirectional_skip" in kwargs:
            kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionMaskInterface.register(FULL_MASK_SDPA, full_sdpa_mask)
    AttentionInterface.register(FULL_MASK_SDPA, ALL_ATTENTION_FUNCTIONS["sdpa"])


def set_attn_implementation(model: nn.Module, implementation: str, required: bool = False) -> None:
    """Switch HF attention; a default choice the model does not support leaves its own in place."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(implementation)
        except (ValueError, ImportError):
            if required:
                raise
    elif hasattr(model, "config"):
        model.config._attn_implementation = implementation
