"""The Trainer's evaluation hooks: ``evaluation_loop`` and ``prediction_step`` on a parallelised model.

``evaluate()`` and ``predict()`` stay the Trainer's. Its loop is kept too (``super().evaluation_loop``), with
two things swapped for the loop's duration: ``gather_function`` becomes the gather over the data-parallel
group that drops the last step's fillers (``EvalProgress.gather``, ``training/evaluation.py``), and each
step's loss is kept by ``EvalProgress`` for ``eval_loss`` instead of being gathered over every process.
``prediction_step`` forwards through the runtime: the whole model with pp = 1, ``ParallelModel.eval_step``
(the loss only) with pp > 1.
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
    is_causal_lm,
    mask_rows,
)

PIPELINE_LOGITS_MESSAGE = (
    "GalvatronTrainer returns logits (compute_metrics, predict) only for plans with pp = 1: with pipeline "
    "parallelism they live on the last stage. Evaluate the loss only (no compute_metrics, or "
    "prediction_loss_only=True), evaluate an exported model (trainer.save_model(dir) then from_pretrained), "
    "or use a plan with pp = 1"
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
        loss_only = prediction_loss_only if prediction_loss_only is not None else self.args.prediction_loss_only
        check_evaluation(self.plan.pp, getattr(self.args, "include_for_metrics", None), loss_only)
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
        pp > 1: the loss only (``PipelineRunner.evaluate``); logits stay on the last stage.
        """
        has_labels = has_all_labels(inputs, self.label_names)
        progress = self._eval_progress
        rows = find_batch_size(inputs)
        if progress is not None:
            progress.begin_step(rows)
        keep = progress.local_real_rows(rows) if progress is not None else rows
        if self.plan.pp > 1:
            loss = pipeline_loss(self.parallel_model, inputs, keep, prediction_loss_only, has_labels)
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


def check_evaluation(pp: int, include_for_metrics: list[str] | None, prediction_loss_only: bool) -> None:
    """Refuse, on every rank before any collective, what a plan with ``pp`` stages cannot evaluate."""
    if pp > 1 and not prediction_loss_only:
        raise EvaluationError(PIPELINE_LOGITS_MESSAGE)
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


def pipeline_loss(
    parallel_model: Any, inputs: dict[str, Any], keep_rows: int, prediction_loss_only: bool, has_labels: bool
) -> torch.Tensor:
    """The step's loss through ``ParallelModel.eval_step``. Token labels of the last step's fillers are set
    to -100 (the runtime and the pipeline then leave them out of the loss); per-sample labels are counted
    per row by the runtime, so the fillers of a classifier's last step stay in its loss."""
    if not prediction_loss_only:
        raise EvaluationError(PIPELINE_LOGITS_MESSAGE)
    if not has_labels:
        raise EvaluationError("GalvatronTrainer evaluation with pp > 1 needs 'labels' (the loss is the metric)")
    labels = inputs["labels"]
    if labels.dim() >= 2 and not labels.is_floating_point():
        inputs = {**inputs, "labels": mask_rows(labels, keep_rows)}
    return parallel_model.eval_step(inputs)


def prediction_logits(outputs: Mapping[str, Any], rows: int, ignore_keys: list[str] | None, config: Any):
    """The model outputs the Trainer calls logits: all but the loss and ``ignore_keys`` (default: the model
    config's ``keys_to_ignore_at_inference``, else the cache); a single output is returned unwrapped."""
    if ignore_keys is None:
        ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or DEFAULT_IGNORED_OUTPUTS)
    kept = {k: v for k, v in outputs.items() if k not in ignore_keys}
    check_rows(kept, rows)
    logits = tuple(kept.values())
    return logits[0] if len(logits) == 1 else logits
