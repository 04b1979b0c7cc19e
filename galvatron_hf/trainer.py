"""``GalvatronTrainer``: the Hugging Face Trainer, trained by a galvatron plan.

Swap one line::

    trainer = GalvatronTrainer(model, args, train_dataset=ds, auto_parallel=True)

The model is parallelised in the constructor (before the Trainer builds its optimizer, which must see the
sharded parameters): describe it, choose a plan (plan file, search, uniform flags, or plain data parallel),
print the plan with its prediction, and apply it with ``galvatron_hf.parallel.parallelize``. The Trainer's
loop is kept; the hooks below route each step through ``ParallelModel`` and the checkpoints through
``galvatron_hf.checkpoint``. See docs/trainer.md for what each TrainingArguments field means here.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import find_batch_size
from transformers.trainer_utils import seed_worker

from galvatron_hf.checkpoint.rng import apply_rng, capture_rng
from galvatron_hf.planner.plan import Plan
from galvatron_hf.training.batching import BatchGeometry, merge_micro_batches
from galvatron_hf.training.data import sharded_loader
from galvatron_hf.training.evaluation import (
    CountingIterable,
    EvalProgress,
    EvaluationError,
    check_rows,
    forward_eval_batch,
    has_length,
    is_causal_lm,
    mask_rows,
)
from galvatron_hf.training.launch import ensure_process_group
from galvatron_hf.planner.summary import format_summary
from galvatron_hf.training.arguments import GalvatronTrainingArguments  # also importable from here, as before
from galvatron_hf.training.plans import resolve_training_plan
from galvatron_hf.training.report import PlanReportCallback
from galvatron_hf.training.scheduler_state import load_scheduler_state

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"
PIPELINE_LOGITS_MESSAGE = (
    "GalvatronTrainer returns logits (compute_metrics, predict) only for plans with pp = 1: with pipeline "
    "parallelism they live on the last stage. Evaluate the loss only (no compute_metrics, or "
    "prediction_loss_only=True), evaluate an exported model (trainer.save_model(dir) then from_pretrained), "
    "or use a plan with pp = 1"
)


class ParallelModule(nn.Module):
    """What the Trainer loop holds as its wrapped model.

    A different object from ``trainer.model`` so that ``accelerator.prepare`` does not wrap the already
    sharded model in DDP (it only prepares the optimizer); ``zero_grad`` / ``train`` / ``eval`` reach the
    HF model through the child module.
    """

    def __init__(self, parallel_model) -> None:
        super().__init__()
        self.module = parallel_model.module
        object.__setattr__(self, "parallel_model", parallel_model)  # not a submodule: it is not an nn.Module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class GalvatronTrainer(Trainer):
    """``transformers.Trainer`` running a galvatron plan (TP, FSDP2 ZeRO, pipelines, checkpointing per layer).

    ``auto_parallel`` and ``plan`` (a :class:`Plan` or a plan path) may also be given here; they override
    ``args``. The model must be the plain HF model (on CPU, on the target device, or on the meta device);
    ``model_init`` and pre-built optimizers are refused (they would not see the sharded parameters).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        auto_parallel: bool | None = None,
        plan: Plan | str | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        _refuse_unsupported(model, trainer_args, trainer_kwargs)
        args = args if args is not None else GalvatronTrainingArguments(output_dir="trainer_output")
        device = args.device  # under torchrun / accelerate launch this creates the process group
        ensure_process_group(device)
        self.parallel_model, self.resolved_plan = _parallelize(model, args, plan, auto_parallel, trainer_kwargs, device)
        self.plan = self.resolved_plan.plan
        self.batch_geometry = BatchGeometry.from_arguments(
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            self.parallel_model.data_size,
            self.plan.global_batch_size,
        )
        super().__init__(self.parallel_model.module, args, *trainer_args, **trainer_kwargs)
        self._train_batch_size = self.batch_geometry.per_rank_batch_size
        self.accelerator.scaler = None  # the runtime scales fp16 losses itself (LossScaler)
        self._wrapped = ParallelModule(self.parallel_model)
        self._pending: list[dict[str, Any]] = []
        self._eval_progress: EvalProgress | None = None
        self.last_step_skipped = False  # fp16: whether the loss scaler skipped the last optimizer step
        self._resumed_rng: dict[str, Any] | None = None
        self.plan_report = PlanReportCallback(self.plan, self.parallel_model.dims.stage if self.plan.pp > 1 else 0)
        self.add_callback(self.plan_report)
        if self.is_world_process_zero():
            print(format_summary(self.resolved_plan), flush=True)
            print(self._batch_summary(), flush=True)

    # ----- batches ---------------------------------------------------------------------------------------
    def _batch_summary(self) -> str:
        g = self.batch_geometry
        return (
            f"galvatron batch: global {g.global_batch_size} = {g.per_rank_batch_size} per loader batch x "
            f"{g.data_size} data-parallel group(s) x {g.gradient_accumulation_steps} accumulation step(s)"
        )

    def get_total_train_batch_size(self, args: TrainingArguments) -> int:
        return self.batch_geometry.global_batch_size

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("GalvatronTrainer: training requires a train_dataset.")
        dataset, collator = self._dataset_and_collator(self.train_dataset, "training")
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy not in ("random", "sequential"):
            logger.warning(
                "train_sampling_strategy=%r is not supported by GalvatronTrainer; using 'random'",
                strategy,
            )
        return sharded_loader(
            dataset,
            batch_size=self.batch_geometry.per_rank_batch_size,
            collate_fn=collator,
            data_rank=self.parallel_model.data_rank,
            data_size=self.parallel_model.data_size,
            shuffle=strategy != "sequential",
            data_seed=self.args.data_seed,
            drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            worker_init_fn=partial(
                seed_worker,
                num_workers=self.args.dataloader_num_workers,
                rank=self.args.process_index,
            ),
        )

    def get_eval_dataloader(self, eval_dataset=None):
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("GalvatronTrainer: evaluation requires an eval_dataset.")
        return self._evaluation_loader(eval_dataset, "evaluation")

    def get_test_dataloader(self, test_dataset):
        return self._evaluation_loader(test_dataset, "test")

    def _evaluation_loader(self, dataset, description: str):
        """In order, sharded by data-parallel group (``training/evaluation.py`` gathers the groups back)."""
        dataset, collator = self._dataset_and_collator(dataset, description)
        if isinstance(dataset, torch.utils.data.IterableDataset) and not has_length(dataset):
            if self.args.dataloader_num_workers == 0:
                dataset = CountingIterable(dataset)  # its length, for the last step's fillers
            else:
                logger.warning(
                    "GalvatronTrainer: an unsized iterable %s dataset read by workers: the last step's filler "
                    "samples (repeated from the start) stay in the predictions; use dataloader_num_workers=0 or "
                    "give the dataset a __len__",
                    description,
                )
        return sharded_loader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=collator,
            data_rank=self.parallel_model.data_rank,
            data_size=self.parallel_model.data_size,
            shuffle=False,
            data_seed=None,
            drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def _dataset_and_collator(self, dataset, description: str):
        """Drop the columns the model's forward does not take, as the Trainer's own loaders do."""
        import datasets

        if isinstance(dataset, datasets.Dataset):
            return self._remove_unused_columns(dataset, description=description), self.data_collator
        return dataset, self._get_collator_with_removed_columns(self.data_collator, description=description)

    # ----- the step --------------------------------------------------------------------------------------
    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader=None) -> nn.Module:
        return self._wrapped

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        scaler = self.parallel_model.scaler
        if scaler is not None and not getattr(optimizer, "_galvatron_scaled", False):
            _skip_steps_on_overflow(_unwrap_optimizer(optimizer), scaler, self._record_optimizer_step)
        return optimizer

    def _record_optimizer_step(self, stepped: bool) -> None:
        """fp16: tell the Trainer loop whether the scaler skipped the step (overflow).

        The loop steps the LR scheduler only ``if not accelerator.optimizer_step_was_skipped``, which reads the
        accelerate optimizer wrapper's overflow flag; accelerate sets it only with its own GradScaler, which
        the runtime's ``LossScaler`` replaces. Setting it here makes a skipped step leave the schedule where
        it was, as the plain Trainer does with fp16.
        """
        self.last_step_skipped = not stepped
        wrapper = self.optimizer
        if wrapper is not None and hasattr(wrapper, "_is_overflow"):
            wrapper._is_overflow = not stepped

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """Collect the step's loader batches; on the last one run the whole step through the runtime.

        Returns 0 for the first accumulation batches and the step's true mean loss (over the global batch,
        equal to a single process's) on the last, so the Trainer's summed, logged loss is that mean.
        """
        self._pending.append(inputs)
        expected = getattr(
            self,
            "current_gradient_accumulation_steps",
            self.args.gradient_accumulation_steps,
        )
        if len(self._pending) < expected:
            return torch.zeros((), device=self.args.device)
        batch = merge_micro_batches(self._pending, _pad_token_id(self.model))
        self._pending = []
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        loss = self.parallel_model.train_step(batch)
        return loss.detach().to(self.args.device)

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        return self.parallel_model.clip_grad_norm_(self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        if grad_norm is None:
            grad_norm = self.parallel_model.clip_grad_norm_(float("inf"))
        return grad_norm

    # ----- evaluation and prediction ----------------------------------------------------------------------
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
        self._check_evaluation(loss_only)
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

    def _check_evaluation(self, prediction_loss_only: bool) -> None:
        """Refuse, on every rank before any collective, what this layout cannot evaluate."""
        if self.plan.pp > 1 and not prediction_loss_only:
            raise EvaluationError(PIPELINE_LOGITS_MESSAGE)
        if "loss" in (getattr(self.args, "include_for_metrics", None) or []):
            raise EvaluationError(
                "GalvatronTrainer reports eval_loss per step (the mean over the data-parallel groups), not per "
                "sample: drop 'loss' from include_for_metrics"
            )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Forward one evaluation batch; the loss follows the runtime's contract (global mean of the step).

        pp = 1: returns this rank's logits and labels (the head's output is replicated over TP ranks; the
        evaluation loop gathers them over the data-parallel group). Inside ``evaluation_loop`` the step's
        loss is kept for ``eval_loss`` and None is returned for it (the Trainer would gather it over all ranks).
        pp > 1: the loss only (``PipelineRunner.evaluate``); logits stay on the last stage.
        """
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        if has_labels and "labels" not in inputs:
            raise EvaluationError(
                f"GalvatronTrainer computes the loss from 'labels' (docs/runtime.md); this batch has labels "
                f"{self.label_names}: rename the label column to 'labels'"
            )
        progress = self._eval_progress
        rows = find_batch_size(inputs)
        if progress is not None:
            progress.begin_step(rows)
        keep = progress.local_real_rows(rows) if progress is not None else rows
        if self.plan.pp > 1:
            loss = self._pipeline_loss(inputs, keep, prediction_loss_only, has_labels)
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
        return loss, self._logits(step.outputs, rows, ignore_keys), labels

    def _pipeline_loss(self, inputs, keep_rows: int, prediction_loss_only: bool, has_labels: bool) -> torch.Tensor:
        """The step's loss through ``ParallelModel.eval_step``. Token labels of the last step's fillers are
        set to -100 (the runtime and the pipeline then leave them out of the loss); per-sample labels are
        counted per row by the runtime, so the fillers of a classifier's last step stay in its loss."""
        if not prediction_loss_only:
            raise EvaluationError(PIPELINE_LOGITS_MESSAGE)
        if not has_labels:
            raise EvaluationError("GalvatronTrainer evaluation with pp > 1 needs 'labels' (the loss is the metric)")
        labels = inputs["labels"]
        if labels.dim() >= 2 and not labels.is_floating_point():
            inputs = {**inputs, "labels": mask_rows(labels, keep_rows)}
        return self.parallel_model.eval_step(inputs)

    def _logits(self, outputs: dict[str, Any], rows: int, ignore_keys: list[str] | None):
        """The model outputs the Trainer calls logits: all but the loss and ``ignore_keys`` (one -> unwrapped)."""
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or ["past_key_values", "cache"])
        kept = {k: v for k, v in outputs.items() if k not in ignore_keys}
        check_rows(kept, rows)
        logits = tuple(kept.values())
        return logits[0] if len(logits) == 1 else logits

    # ----- checkpoints -----------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Training checkpoints (internal calls) go through DCP; a user call writes a from_pretrained directory."""
        output_dir = output_dir or self.args.output_dir
        if _internal_call:
            self._save_training_checkpoint(output_dir)
        else:
            self._export_pretrained(output_dir)

    def _save_training_checkpoint(self, output_dir: str) -> None:
        from galvatron_hf.checkpoint import save_checkpoint

        keep_optimizer = not self.args.save_only_model and self.optimizer is not None
        extra = {"loss_scale": self.parallel_model.scaler.scale} if self.parallel_model.scaler else {}
        save_checkpoint(
            output_dir,
            model=self.model,
            optimizer=_unwrap_optimizer(self.optimizer) if keep_optimizer else None,
            lr_scheduler=self.lr_scheduler if keep_optimizer else None,
            plan=self.plan,
            step=self.state.global_step,
            extra=extra,
        )
        self._save_side_files(output_dir)

    def _export_pretrained(self, output_dir: str) -> None:
        from galvatron_hf.checkpoint import CheckpointError, export_to_hf, save_checkpoint

        staging = Path(output_dir) / ".galvatron-export"
        save_checkpoint(
            staging,
            model=self.model,
            optimizer=None,
            plan=self.plan,
            step=self.state.global_step,
        )
        error: list[str | None] = [None]
        if self.is_world_process_zero():
            try:
                export_to_hf(staging, output_dir)
            except (
                CheckpointError,
                OSError,
                ValueError,
            ) as err:  # re-raised on every rank below
                error = [f"exporting {staging} to {output_dir} failed: {err!r}"]
            shutil.rmtree(staging, ignore_errors=True)
        dist.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise RuntimeError(error[0])
        self._save_side_files(output_dir)

    def _save_side_files(self, output_dir: str) -> None:
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        dist.barrier()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Saved with the model by ``save_checkpoint`` (sharded, loadable into any layout)."""

    def _save_scaler(self, output_dir: str) -> None:
        """The fp16 loss scale is stored in the checkpoint manifest's ``extra``."""

    def _save_rng_state(self, output_dir: str) -> None:
        """``save_checkpoint`` stores every rank's RNG states (``galvatron_hf.checkpoint.rng.write_rank_rng``)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Runs before the optimizer exists: only check the checkpoint; the load is in the optimizer hook."""
        from galvatron_hf.checkpoint import read_manifest, recover_interrupted_save

        path = Path(resume_from_checkpoint)
        if self.is_world_process_zero():
            recover_interrupted_save(path.absolute())
        dist.barrier()
        read_manifest(path.absolute())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Model, optimizer and scheduler from a checkpoint of any layout (DCP reshards on load)."""
        if checkpoint is None:
            return
        from galvatron_hf.checkpoint import SCHEDULER_NAME, load_checkpoint

        state = load_checkpoint(
            checkpoint,
            model=self.model,
            optimizer=_unwrap_optimizer(self.optimizer),
            lr_scheduler=None,  # per-group lists differ between layouts: restored below
            plan=self.plan,
            restore_rng=True,
        )
        load_scheduler_state(self.lr_scheduler, Path(checkpoint) / SCHEDULER_NAME)
        self._resumed_rng = capture_rng()  # re-applied where the Trainer restores RNG (after skipping data)
        if self.parallel_model.scaler is not None and "loss_scale" in state.extra:
            self.parallel_model.scaler.scale = float(state.extra["loss_scale"])
        if self.is_world_process_zero() and state.plan is not None and state.plan != self.plan:
            print(
                f"galvatron: resumed step {state.step} saved by another layout ({state.plan.world_size} "
                f"processes, pp={state.plan.pp}); RNG restored as {state.rng!r}",
                flush=True,
            )

    def _load_scaler(self, checkpoint: str | None) -> None:
        """Restored in ``_load_optimizer_and_scheduler`` from the manifest."""

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Re-apply the states ``load_checkpoint`` restored, now that the Trainer has skipped the trained data."""
        if checkpoint is not None and self._resumed_rng is not None:
            apply_rng(self._resumed_rng)

    def _load_best_model(self) -> None:
        from galvatron_hf.checkpoint import load_checkpoint

        best = self.state.best_model_checkpoint
        load_checkpoint(best, model=self.model, optimizer=None, plan=self.plan, restore_rng=False)


# ----- construction helpers -----------------------------------------------------------------------------------


def _refuse_unsupported(model: nn.Module | None, trainer_args: tuple, trainer_kwargs: dict[str, Any]) -> None:
    if model is None:
        raise ValueError("GalvatronTrainer needs the model itself (model_init is not supported: pass model=...)")
    if trainer_kwargs.get("model_init") is not None:
        raise ValueError("GalvatronTrainer does not support model_init: build the model and pass model=...")
    optimizers = trainer_kwargs.get("optimizers", (None, None))
    if optimizers and optimizers[0] is not None:
        raise ValueError(
            "GalvatronTrainer builds the optimizer after sharding the model; pass optimizer_cls_and_kwargs=(cls, "
            "kwargs) or override create_optimizer instead of optimizers=(optimizer, scheduler)"
        )
    if trainer_args:
        raise TypeError("GalvatronTrainer takes (model, args) positionally; pass the other Trainer arguments by name")


def _parallelize(model, args, plan: Plan | str | None, auto_parallel: bool | None, trainer_kwargs, device):
    """Describe the model, resolve its plan (``training/plans.py``) and shard it: (ParallelModel, ResolvedPlan)."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize
    from galvatron_hf.parallel import default_attn_implementation

    # plan for the attention kernel the runtime will run (eager attention keeps its scores: more memory)
    attn_impl = getattr(args, "attn_implementation", None) or default_attn_implementation(torch.device(device))
    dataset = trainer_kwargs.get("train_dataset")
    seq_len, decoder_seq_len = _sequence_lengths(getattr(args, "seq_len", None), dataset, model)
    spec = describe_model(model, seq_len=seq_len, decoder_seq_len=decoder_seq_len)
    resolved = resolve_training_plan(
        args,
        spec,
        world_size=dist.get_world_size(),
        attn_implementation=attn_impl,
        plan=plan,
        auto_parallel=auto_parallel,
    )
    parallel_model = parallelize(
        model,
        resolved.plan,
        spec=spec,
        device=device,
        mixed_precision=resolved.request.mixed_precision,
        attn_implementation=attn_impl,
    )
    return parallel_model, resolved


def _sequence_lengths(seq_len: int | None, dataset, model) -> tuple[int | None, int | None]:
    """Plan for ``seq_len`` when given, else the first training sample's lengths (None: the adapter's default)."""
    first = _first_sample(dataset)
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    seq_len = seq_len or _length(first.get("input_ids"))
    decoder = (_length(first.get("decoder_input_ids")) or _length(first.get("labels"))) if encoder_decoder else None
    return seq_len, decoder


def _first_sample(dataset) -> dict[str, Any]:
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return {}
    try:
        sample = dataset[0]
    except (IndexError, KeyError, TypeError):
        return {}
    return sample if isinstance(sample, dict) else {}


def _length(value: Any) -> int | None:
    if value is None or isinstance(value, (int, float)):
        return None
    shape = getattr(value, "shape", None)
    if shape is not None:
        return int(shape[-1]) if len(shape) else None
    return len(value)


def _pad_token_id(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    pad = getattr(config, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


# ----- optimizer helpers --------------------------------------------------------------------------------------


def _unwrap_optimizer(optimizer):
    """The torch optimizer inside accelerate's AcceleratedOptimizer (DCP needs the real one)."""
    return getattr(optimizer, "optimizer", optimizer)


def _skip_steps_on_overflow(optimizer: torch.optim.Optimizer, scaler, on_step: Callable[[bool], None]) -> None:
    """fp16: the Trainer calls ``optimizer.step()``; route it through the runtime's loss scaler and report
    to ``on_step`` whether it stepped."""
    plain_step = optimizer.step

    class _Plain:
        step = staticmethod(plain_step)

    def step(closure=None):
        on_step(scaler.step(_Plain))

    optimizer.step = step
    optimizer._galvatron_scaled = True
