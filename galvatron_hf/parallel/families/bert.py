"""BERT (``adapters/bert.py``) as pipeline stages of the masked LM: embeddings (first stage), encoder layers
with the padding mask, the ``cls`` MLM head over the whole sequence (last)."""

from __future__ import annotations

from typing import ClassVar

from galvatron_hf.parallel.families import Family, PipelineStages
from galvatron_hf.parallel.pipeline_stages import StageLayout, Task, bidirectional_mask, hidden_of, stage_blocks


class BertStages(PipelineStages):
    heads: ClassVar[tuple[str, ...]] = ("BertForMaskedLM",)
    first_stage_kwargs: ClassVar[tuple[str, ...]] = ("token_type_ids", "position_ids")  # read by the embeddings

    def forward(self, model, layout: StageLayout, *activations, attention_mask=None, token_type_ids=None,
                position_ids=None):
        base = model.bert
        (first,) = activations
        if layout.is_first:
            hidden = base.embeddings(input_ids=first, token_type_ids=token_type_ids, position_ids=position_ids)
        else:
            hidden = first
        mask = bidirectional_mask(base.config, hidden, attention_mask)
        for block in stage_blocks(model, layout):
            hidden = hidden_of(block(hidden, attention_mask=mask))
        if not layout.is_last:
            return hidden
        return model.cls(hidden)

    def loss_task(self, model) -> Task:
        return Task("token_lm")


FAMILY = Family("bert", pipeline=BertStages())
