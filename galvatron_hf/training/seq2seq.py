"""``GalvatronSeq2SeqTrainer``: ``transformers.Seq2SeqTrainer`` running a galvatron plan.

Swap two names in a Seq2Seq script::

    args = GalvatronSeq2SeqTrainingArguments(output_dir="out", predict_with_generate=True, auto_parallel=True)
    trainer = GalvatronSeq2SeqTrainer(model, args, train_dataset=train, eval_dataset=dev,
                                      compute_metrics=bleu)

Training and ``eval_loss`` are ``GalvatronTrainer``'s under every plan. With ``predict_with_generate``
(``generation_max_length``, ``generation_num_beams``, ``generation_config`` and ``evaluate(**gen_kwargs)`` keep
their Seq2SeqTrainer meaning) ``compute_metrics`` receives the generated ids, produced through the sharded
model (``parallel/generation.py``: no rank gathers the whole model) and gathered once per sample over the
data-parallel group, in dataset order. Plans with pp > 1 train and report ``eval_loss``; generation is refused
before any collective, with the fixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import find_batch_size

from galvatron_hf.parallel.generation import check_generation, enable_generation
from galvatron_hf.trainer import GalvatronTrainer
from galvatron_hf.training.arguments import GalvatronTrainingArguments
from galvatron_hf.training.evaluation_hooks import has_all_labels


@dataclass
class GalvatronSeq2SeqTrainingArguments(GalvatronTrainingArguments, Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments plus the plan options; every inherited field keeps its meaning."""


class GalvatronSeq2SeqTrainer(GalvatronTrainer, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` on a parallelised model. Overrides, each calling the Trainer's or the mixins':

    - ``evaluation_loop``: refuses generation with pp > 1 on every rank before any collective;
    - ``prediction_step``: the loss as ``GalvatronTrainer`` computes it (global mean of the step, the last step's
      fillers left out), then ``Seq2SeqTrainer.prediction_step`` for the generated ids (its padding to the
      generation length, its handling of ``decoder_input_ids``), with ``synced_gpus`` on.
    """

    def __init__(self, model: nn.Module | None = None, args: Seq2SeqTrainingArguments | None = None, *a, **kw) -> None:
        args = args if args is not None else GalvatronSeq2SeqTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, Seq2SeqTrainingArguments):
            raise TypeError(
                "GalvatronSeq2SeqTrainer needs Seq2SeqTrainingArguments (predict_with_generate, generation_*): "
                "pass GalvatronSeq2SeqTrainingArguments"
            )
        super().__init__(model, args, *a, **kw)
        enable_generation(self.parallel_model)

    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: bool | None = None, *a, **kw):
        loss_only = prediction_loss_only if prediction_loss_only is not None else self.args.prediction_loss_only
        if self.args.predict_with_generate and not loss_only:
            check_generation(self.plan.pp)
        return super().evaluation_loop(dataloader, description, prediction_loss_only, *a, **kw)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ):
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if has_all_labels(inputs, self.label_names):
            loss = super().prediction_step(model, inputs, True, ignore_keys=ignore_keys)[0]
        else:  # no loss to compute: only count the step's real samples
            loss = None
            if self._eval_progress is not None:
                self._eval_progress.begin_step(find_batch_size(inputs))
        gen_kwargs = dict(gen_kwargs or getattr(self, "_gen_kwargs", {}))
        gen_kwargs.setdefault("synced_gpus", True)  # Seq2SeqTrainer does not know our FSDP2 roots
        _, generated, _ = Seq2SeqTrainer.prediction_step(
            self, model, generation_inputs(inputs), False, ignore_keys=ignore_keys, **gen_kwargs
        )
        labels = inputs.get("labels")
        return loss, generated, None if labels is None else self._pad_labels(labels.to(generated.device))

    def _pad_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels padded as ``Seq2SeqTrainer.prediction_step`` pads them (to the generation config's length)."""
        config = self.model.generation_config
        if labels.shape[-1] < config.max_length:
            return self._pad_tensors_to_max_len(labels, config.max_length)
        if config.max_new_tokens is not None and labels.shape[-1] < config.max_new_tokens + 1:
            return self._pad_tensors_to_max_len(labels, config.max_new_tokens + 1)
        return labels


def generation_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """What ``generate`` reads: the batch without labels, and without ``decoder_input_ids`` made from them
    (same shape as the labels: teacher forcing, which ``Seq2SeqTrainer`` drops for generation too)."""
    labels = inputs.get("labels")
    decoder = inputs.get("decoder_input_ids")
    drop = {"labels"}
    if isinstance(labels, torch.Tensor) and isinstance(decoder, torch.Tensor) and labels.shape == decoder.shape:
        drop |= {"decoder_input_ids", "decoder_attention_mask"}
    return {k: v for k, v in inputs.items() if k not in drop}
