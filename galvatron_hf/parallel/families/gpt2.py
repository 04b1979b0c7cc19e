"""GPT-2 (``adapters/gpt2.py``) as pipeline stages: token + position embeddings and dropout (first stage),
blocks, then ``ln_f`` and the head of a decoder (``DecoderStages.head``: LM head, or ``score`` pooled at each
sample's last non-padding token for the sequence classifier)."""

from __future__ import annotations

from typing import ClassVar

from galvatron_hf.parallel.families import DecoderStages, Family
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    causal_mask,
    hidden_of,
    positions,
    stage_blocks,
)


class GPT2Stages(DecoderStages):
    heads: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel", "GPT2ForSequenceClassification")

    def forward(self, model, layout: StageLayout, *activations, attention_mask=None, position_ids=None,
                input_ids=None):
        base = model.transformer
        (first,) = activations
        if layout.is_first:
            embeds = base.wte(first)
            position_ids = positions(embeds, position_ids)
            hidden = base.drop(embeds + base.wpe(position_ids))
        else:
            hidden = first
            position_ids = positions(hidden, position_ids)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(hidden.shape[0], -1)
        mask = causal_mask(base.config, hidden, attention_mask, position_ids)
        for block in stage_blocks(model, layout):
            hidden = hidden_of(block(hidden, attention_mask=mask, position_ids=position_ids))
        if not layout.is_last:
            return hidden
        return self.head(model, base.ln_f(hidden), input_ids)


FAMILY = Family("gpt2", plain_causal_head=True, pipeline=GPT2Stages())
