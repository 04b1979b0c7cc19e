"""Llama, Mistral and Qwen2 (one module tree, ``adapters/llama.py``) as pipeline stages.

Stage forward: embed (first stage), decoder layers with per-stage rotary embeddings, then norm and the head of a
decoder (``DecoderStages.head``: LM head, or ``score`` pooled at each sample's last non-padding token for a
sequence classifier).
Rotary embeddings hold no parameters, so every stage computes them from the positions; with no padding mask
the causal mask stays None and SDPA runs causal, as in ``LlamaModel.forward``. Sliding-window layers (Mistral
with ``sliding_window``, Qwen2's ``layer_types``) get HF's sliding-window mask.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from galvatron_hf.parallel.families import DecoderStages, Family
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    call_mask_helper,
    hidden_of,
    positions,
    stage_blocks,
)


class DecoderMasks:
    """The causal or sliding-window mask of each decoder layer, built once per stage call, as HF picks them."""

    def __init__(self, config, hidden: torch.Tensor, attention_mask, position_ids) -> None:
        self.config, self.hidden, self.attention_mask, self.position_ids = config, hidden, attention_mask, position_ids
        self._built: dict[str, Any] = {}

    def layer_type(self, index: int) -> str:
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types:  # Qwen2 (and newer configs) name each layer's attention
            return layer_types[index]
        sliding = getattr(self.config, "sliding_window", None) is not None
        return "sliding_attention" if sliding else "full_attention"  # Mistral: one window for all layers

    def for_layer(self, index: int):
        kind = self.layer_type(index)
        if kind not in self._built:
            from transformers import masking_utils

            sliding = kind == "sliding_attention"
            helper = masking_utils.create_sliding_window_causal_mask if sliding else masking_utils.create_causal_mask
            self._built[kind] = call_mask_helper(
                helper, self.config, self.hidden, self.attention_mask, position_ids=self.position_ids
            )
        return self._built[kind]


class LlamaStages(DecoderStages):
    heads: ClassVar[tuple[str, ...]] = tuple(
        f"{name}For{head}" for name in ("Llama", "Mistral", "Qwen2") for head in ("CausalLM", "SequenceClassification")
    )

    def forward(self, model, layout: StageLayout, *activations, attention_mask=None, position_ids=None,
                input_ids=None):
        base = model.model
        (first,) = activations
        hidden = base.embed_tokens(first) if layout.is_first else first
        position_ids = positions(hidden, position_ids)
        masks = DecoderMasks(base.config, hidden, attention_mask, position_ids)
        position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
        for index, block in zip(layout.block_indices, stage_blocks(model, layout)):
            mask = masks.for_layer(index)
            hidden = hidden_of(
                block(hidden, attention_mask=mask, position_embeddings=position_embeddings, position_ids=position_ids)
            )
        if not layout.is_last:
            return hidden
        return self.head(model, base.norm(hidden), input_ids)


FAMILY = Family("llama", plain_causal_head=True, pipeline=LlamaStages())
