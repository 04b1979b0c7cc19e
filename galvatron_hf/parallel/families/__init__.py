"""The runtime half of each model family: what runs a family's layers besides what its ModelSpec says.

A family lives in two files, one per layer of the package:

- ``galvatron_hf/adapters/<family>.py`` describes it (layers, sizes, parameters, FLOPs, activation memory, TP
  rules) in pure Python; the planner reads it, and ``adapters/registry.py`` is the one registry that maps each
  model type to its family.
- ``galvatron_hf/parallel/families/<family>.py`` (here, torch) holds what the runtime does with it: the
  pipeline stage forward, the stage inputs, the loss task of the last stage, the modules a stage owns beyond
  the spec's, the block tensors split by attention heads. It defines ``FAMILY``, a :class:`Family`.

The runtime finds the second by the name the first registered (``ModelSpec.family``): no second registry, and
nothing in ``parallel/`` outside this package branches on a family name or a model type. A family without a
module here runs every plan without pipeline stages; a pipeline plan is refused with a message naming the
file to add.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from galvatron_hf.adapters.spec import ModelSpec
from galvatron_hf.parallel.pipeline_stages import (
    StageLayout,
    Task,
    classification_task,
    last_token_logits,
    present,
)
from galvatron_hf.parallel.relayout import HeadTensors


class PipelineStages(ABC):
    """How a family's model runs as pipeline stages (docs/pipeline.md).

    ``heads``: the HF classes whose stages this runs (a plan with pp > 1 for another head is refused).
    ``first_stage_inputs``: the batch entries the first stage takes as positional arguments;
    ``stage_kwargs``: those every stage takes as keyword arguments; ``first_stage_kwargs``: keyword arguments
    only the first stage takes; ``last_stage_kwargs(model)``: those only the last stage takes (a decoder
    classifier pools at the last token that is not padding, so it needs the token ids).
    """

    heads: ClassVar[tuple[str, ...]] = ()
    first_stage_inputs: ClassVar[tuple[str, ...]] = ("input_ids",)
    stage_kwargs: ClassVar[tuple[str, ...]] = ("attention_mask",)
    first_stage_kwargs: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def forward(self, model: nn.Module, layout: StageLayout, *activations: torch.Tensor, **batch: Any) -> Any:
        """This stage's part of the HF forward: what it receives -> what the next stage receives (the last
        stage: the head's output, from which ``loss_task`` computes the loss)."""

    @abstractmethod
    def loss_task(self, model: nn.Module) -> Task:
        """The loss the HF model computes for this head."""

    def inputs(
        self, layout: StageLayout, model: nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> tuple[tuple, dict]:
        """(positional inputs of the first stage, keyword inputs of this stage) for ``schedule.step``."""
        kwargs = present(batch, self.stage_kwargs)
        if layout.is_last and not layout.is_first:
            kwargs.update(present(batch, self.last_stage_kwargs(model)))
        if not layout.is_first:
            return (), kwargs
        kwargs.update(present(batch, self.first_stage_kwargs))
        return tuple(batch[name] for name in self.first_stage_inputs), kwargs

    def last_stage_kwargs(self, model: nn.Module) -> tuple[str, ...]:
        return ()

    def extra_owned_paths(self, spec: ModelSpec) -> dict[str, int]:
        """Modules a stage uses that the spec lists in no layer, mapped to the index of the spec layer that owns
        them (the longest owned path wins, so paths the spec already covers are left to it)."""
        return {}


class DecoderStages(PipelineStages):
    """A decoder-only family's pipeline stages: the last stage ends with the final norm and either the LM head
    (causal LM) or ``score`` pooled at each sample's last token that is not padding (sequence classifier, as
    HF's ``...ForSequenceClassification``), which needs the token ids there too. Subclasses run the stages up
    to the final norm and end with :meth:`head`."""

    stage_kwargs: ClassVar[tuple[str, ...]] = ("attention_mask", "position_ids")

    def head(self, model: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        """The last stage's output from the final norm's output ``hidden``."""
        if is_sequence_classifier(model):
            return last_token_logits(model.score(hidden), input_ids, model.config.pad_token_id)
        return model.lm_head(hidden)

    def last_stage_kwargs(self, model: nn.Module) -> tuple[str, ...]:
        return ("input_ids",) if is_sequence_classifier(model) else ()

    def loss_task(self, model: nn.Module) -> Task:
        return classification_task(model.config) if is_sequence_classifier(model) else Task("causal_lm")


def is_sequence_classifier(model: nn.Module) -> bool:
    """A decoder's sequence-classification head is ``score`` (its causal-LM head is ``lm_head``)."""
    return hasattr(model, "score")


@dataclass(frozen=True)
class Family:
    """The runtime half of one model family (see the module docstring)."""

    name: str
    pipeline: PipelineStages | None = None  # None: plans with pp > 1 are refused
    head_tensors: HeadTensors | None = None  # block inputs/outputs with a heads dimension, shared between blocks
    # its causal-LM forward is exactly base model -> lm_head -> HF's causal cross-entropy (no logit scaling):
    # the chunked loss (chunked_loss.py) may then replace the head's training forward
    plain_causal_head: bool = False

    def pipeline_refusal(self, spec: ModelSpec) -> str | None:
        """Why ``spec`` cannot run as pipeline stages (the fix included), or None when it can."""
        if self.pipeline is None:
            return (
                f"no pipeline stage forward for model family {spec.family!r} (model_type {spec.model_type!r}); "
                f"supported families: {pipelined_families()}; use pp=1, or add galvatron_hf/parallel/families/"
                f"{spec.family}.py (docs/adapters.md, 'Adding a family')"
            )
        if spec.architecture not in self.pipeline.heads:
            return (
                f"{spec.architecture} has no pipeline stage forward: the {self.name} family's stages run "
                f"{', '.join(self.pipeline.heads)}; use pp=1 for this head"
            )
        return None


def max_pipeline_degree(spec: ModelSpec) -> int | None:
    """The largest pp the runtime runs ``spec`` with: 1 when its head has no pipeline stages, else no limit
    (None). Front doors pass it to the search (``PlanRequest.max_pp``) so it never proposes a refused plan."""
    return 1 if family_for(spec).pipeline_refusal(spec) is not None else None


def family_for(spec: ModelSpec) -> Family:
    """The runtime half of ``spec``'s family: ``FAMILY`` of the module named after ``spec.family``."""
    name = f"{__name__}.{spec.family}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return Family(spec.family)
    return module.FAMILY


def runtime_families() -> list[Family]:
    """Every family with a module here, by name."""
    modules = sorted(info.name for info in pkgutil.iter_modules(__path__))
    return [importlib.import_module(f"{__name__}.{module}").FAMILY for module in modules]


def pipelined_families() -> list[str]:
    return [family.name for family in runtime_families() if family.pipeline is not None]
