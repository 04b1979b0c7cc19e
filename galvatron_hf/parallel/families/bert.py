"""BERT (``adapters/bert.py``) as pipeline stages: embeddings (first stage), encoder layers with the padding
mask, then on the last stage the ``cls`` MLM head over the whole sequence (masked LM) or the pooler, dropout
and classifier on the [CLS] token (sequence classification)."""

from __future__ import annotations

from typing import ClassVar

from galvatron_hf.parallel.families import Family, PipelineStages
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    Task,
    bidirectional_mask,
    classification_task,
    hidden_of,
    stage_blocks,
)


class BertStages(PipelineStages):
    heads: ClassVar[tuple[str, ...]] = ("BertForMaskedLM", "BertForSequenceClassification")
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
        if _is_classifier(model):
            return model.classifier(model.dropout(base.pooler(hidden)))
        return model.cls(hidden)

    def loss_task(self, model) -> Task:
        return classification_task(model.config) if _is_classifier(model) else Task("token_lm")


def _is_classifier(model) -> bool:
    return hasattr(model, "classifier")


FAMILY = Family("bert", pipeline=BertStages())
