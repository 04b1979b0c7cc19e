"""The Trainer's evaluation hooks: ``evaluation_loop`` and ``prediction_step`` on a parallelised model.

``evaluate()`` and ``predict()`` stay the Trainer's. Its loop is kept too (``super().evaluation_loop``), with
two things swapped for the loop's duration: ``gather_function`` becomes the gather over the data-parallel
group that drops the last step's fillers (``EvalProgress.gather``, ``training/evaluation.py``), and each
step's loss is kept by ``EvalProgress`` for ``eval_loss`` instead of being gathered over every process.
``prediction_step`` forwards through the runtime: the whole model with pp = 1, the pipeline with pp > 1 (the
last stage's logits are sent to every stage, so predictions come back as without pipelining).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.trainer_pt_utils import find_batch_size

from galvatron_hf.training.evaluation import (
    EvalProgress,
    EvaluationError,
    check_rows,
    forward_eval_batch,
    forward_pipeline_batch,
    is_causal_lm,
)

DEFAULT_IGNORED_OUTPUTS = ["past_key_values", "cache"]


class EvaluationHooks:
    """``evaluation_loop`` and ``prediction_step`` for a ``GalvatronTrainer`` (reads ``parallel_model``,
    ``plan`` and the Trainer's ``args``, ``label_names``, ``gather_function``).

    Both are public Trainer hooks; ``evaluation_loop`` wraps ``super()``. ``prediction_step`` replaces the
    Trainer's: that one runs the wrapped model's forward, which is not how a pipeline or a step of several
    micro-batches runs.
    """

    _eval_progress: EvalProgress | None = None  # set while evaluation_loop runs

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        """The Trainer's loop, gathering predictions over the data-parallel group only (once per sample).

        ``eval_loss``: each step's loss is the mean over that step's real samples (the runtime's contract);
        steps are weighted by their real samples, as the plain Trainer does. It equals what one process
        evaluating ``data_size x per_device_eval_batch_size`` samples per step reports.
        """
        check_evaluation(getattr(self.args, "include_for_metrics", None))
        pm = self.parallel_model
        progress = EvalProgress.for_loader(dataloader, pm.data_rank, pm.data_size, pm.data_group)
        trainer_gather = self.gather_function
        self._eval_progress, self.gather_function = progress, progress.gather
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self._eval_progress, self.gather_function = None, trainer_gather
        loss = progress.mean_loss(drop_non_finite=self.args.logging_nan_inf_filter)
        if loss is not None:
            output.metrics[f"{metric_key_prefix}_loss"] = loss
        if progress.total is None:  # an iterable: the Trainer would count this rank's rows only
            output = output._replace(num_samples=progress.real_samples)
        return output

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        """Forward one evaluation batch; the loss follows the runtime's contract (global mean of the step).

        pp = 1: returns this rank's logits and labels (the head's output is replicated over TP ranks; the
        evaluation loop gathers them over the data-parallel group). Inside ``evaluation_loop`` the step's
        loss is kept for ``eval_loss`` and None is returned for it (the Trainer would gather it over all ranks).
        pp > 1: the same, through the pipeline (``forward_pipeline_batch``).
        """
        has_labels = has_all_labels(inputs, self.label_names)
        inputs = self.same_lengths(inputs)
        progress = self._eval_progress
        rows = find_batch_size(inputs)
        if progress is not None:
            progress.begin_step(rows)
        keep = progress.local_real_rows(rows) if progress is not None else rows
        if self.plan.pp > 1:
            step = forward_pipeline_batch(self.parallel_model, inputs, keep, with_outputs=not prediction_loss_only)
        else:
            step = forward_eval_batch(self.parallel_model, inputs, keep, is_causal_lm(self.parallel_model.spec))
        loss = step.loss
        if progress is not None and loss is not None:
            progress.add_loss(loss)
            loss = None
        elif loss is not None:
            loss = loss.detach().to(self.args.device)
        if prediction_loss_only:
            return loss, None, None
        labels = None
        if has_labels:
            labels = tuple(inputs[k].detach() for k in self.label_names)
            labels = labels[0] if len(labels) == 1 else labels
        config = getattr(self.model, "config", None)
        return loss, prediction_logits(step.outputs, rows, ignore_keys, config), labels


def check_evaluation(include_for_metrics: list[str] | None) -> None:
    """Refuse, on every rank before any collective, what this evaluation cannot report."""
    if "loss" in (include_for_metrics or []):
        raise EvaluationError(
            "GalvatronTrainer reports eval_loss per step (the mean over the data-parallel groups), not per "
            "sample: drop 'loss' from include_for_metrics"
        )


def has_all_labels(inputs: Mapping[str, Any], label_names: list[str]) -> bool:
    """Whether the batch carries every label column; the loss is computed from 'labels', so other names
    are refused with the fix."""
    has_labels = bool(label_names) and all(inputs.get(k) is not None for k in label_names)
    if has_labels and "labels" not in inputs:
        raise EvaluationError(
            f"GalvatronTrainer computes the loss from 'labels' (docs/runtime.md); this batch has labels "
            f"{label_names}: rename the label column to 'labels'"
        )
    return has_labels


def prediction_logits(outputs: Mapping[str, Any], rows: int, ignore_keys: list[str] | None, config: Any):
    """The model outputs the Trainer calls logits: all but the loss and ``ignore_keys`` (default: the model
    config's ``keys_to_ignore_at_inference``, else the cache); a single output is returned unwrapped."""
    if ignore_keys is None:
        ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or DEFAULT_IGNORED_OUTPUTS)
    kept = {k: v for k, v in outputs.items() if k not in ignore_keys}
    check_rows(kept, rows)
    logits = tuple(kept.values())
    return logits[0] if len(logits) == 1 else logits
