"""ViT (``adapters/vit.py``) as pipeline stages of image classification: patch embeddings (first stage),
layers, ``layernorm`` + the classifier on the [CLS] token (last)."""

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


class ViTStages(PipelineStages):
    heads: ClassVar[tuple[str, ...]] = ("ViTForImageClassification",)
    first_stage_inputs: ClassVar[tuple[str, ...]] = ("pixel_values",)
    stage_kwargs: ClassVar[tuple[str, ...]] = ()

    def forward(self, model, layout: StageLayout, *activations):
        base = model.vit
        (first,) = activations
        if layout.is_first:
            projection = base.embeddings.patch_embeddings.projection
            hidden = base.embeddings(first.to(projection.weight.dtype))
        else:
            hidden = first
        mask = bidirectional_mask(base.config, hidden, None)
        for block in stage_blocks(model, layout):
            hidden = hidden_of(block(hidden, mask))
        if not layout.is_last:
            return hidden
        return model.classifier(base.layernorm(hidden)[:, 0, :])

    def loss_task(self, model) -> Task:
        return classification_task(model.config)


FAMILY = Family("vit", pipeline=ViTStages())
