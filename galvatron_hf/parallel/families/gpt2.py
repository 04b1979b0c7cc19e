"""GPT-2 (``adapters/gpt2.py``) as pipeline stages: token + position embeddings and dropout (first stage),
blocks, ``ln_f`` + LM head (last), or ``ln_f`` + ``score`` pooled at each sample's last non-padding token for
the sequence classifier."""

from __future__ import annotations

from typing import ClassVar

from galvatron_hf.parallel.families import Family, PipelineStages
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    Task,
    causal_mask,
    classification_task,
    hidden_of,
    last_token_logits,
    positions,
    stage_blocks,
)


class GPT2Stages(PipelineStages):
    heads: ClassVar[tuple[str, ...]] = ("GPT2LMHeadModel", "GPT2ForSequenceClassification")
    stage_kwargs: ClassVar[tuple[str, ...]] = ("attention_mask", "position_ids")

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
        hidden = base.ln_f(hidden)
        if _is_classifier(model):
            return last_token_logits(model.score(hidden), input_ids, model.config.pad_token_id)
        return model.lm_head(hidden)

    def last_stage_kwargs(self, model) -> tuple[str, ...]:
        return ("input_ids",) if _is_classifier(model) else ()

    def loss_task(self, model) -> Task:
        return classification_task(model.config) if _is_classifier(model) else Task("causal_lm")


def _is_classifier(model) -> bool:
    return hasattr(model, "score")


FAMILY = Family("gpt2", plain_causal_head=True, pipeline=GPT2Stages())
