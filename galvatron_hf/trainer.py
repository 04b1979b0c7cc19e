"""``GalvatronTrainer``: the Hugging Face Trainer, trained by a galvatron plan.

Swap one line::

    trainer = GalvatronTrainer(model, args, train_dataset=ds, auto_parallel=True)

The model is parallelised in the constructor (before the Trainer builds its optimizer, which must see the
sharded parameters): describe it, choose a plan (plan file, search, uniform flags, or plain data parallel),
print the plan with its prediction, and apply it with ``galvatron_hf.parallel.parallelize``. The Trainer's
loop is kept. This file holds the constructor and the training step; the arguments are in
``training/arguments.py``, and the loaders, the evaluation and the checkpoints are the hooks of
``training/loader_hooks.py``, ``training/evaluation_hooks.py`` and ``training/checkpoint_hooks.py``. See docs/trainer.md for what each TrainingArguments field means here.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer, TrainingArguments

from galvatron_hf.checkpoint.rng import apply_rng, capture_rng
from galvatron_hf.parallel.peft import split_peft
from galvatron_hf.planner.plan import Plan
from galvatron_hf.planner.summary import format_summary
from galvatron_hf.training.arguments import GalvatronTrainingArguments  # also importable from here, as before
from galvatron_hf.training.batching import (
    BatchGeometry,
    changes_batch_layout,
    merge_micro_batches,
    pad_to_lengths_over_ranks,
    pad_token_id,
)
from galvatron_hf.training.checkpoint_hooks import CheckpointHooks
from galvatron_hf.training.construction import describe_for_training, refuse_unsupported, sequence_lengths
from galvatron_hf.training.evaluation_hooks import EvaluationHooks
from galvatron_hf.training.launch import ensure_process_group, errors_shared_across_ranks
from galvatron_hf.training.loader_hooks import DataParallelLoaders
from galvatron_hf.training.optimizer import check_optimizer, step_through_scaler, unwrap_optimizer
from galvatron_hf.training.peft_hooks import PeftHooks
from galvatron_hf.training.plans import resolve_training_plan
from galvatron_hf.training.report import PlanReportCallback


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


class GalvatronTrainer(DataParallelLoaders, EvaluationHooks, PeftHooks, CheckpointHooks, Trainer):
    """``transformers.Trainer`` running a galvatron plan (TP, FSDP2 ZeRO, pipelines, checkpointing per layer).

    ``auto_parallel`` and ``plan`` (a :class:`Plan` or a plan path) may also be given here; they override
    ``args``. The model must be the plain HF model (on CPU, on the target device, or on the meta device);
    ``model_init`` and pre-built optimizers are refused (they would not see the sharded parameters).

    Hooks: loaders sharded by data-parallel group (:class:`DataParallelLoaders`), evaluation gathered over the
    data-parallel group (:class:`EvaluationHooks`), sharded checkpoints (:class:`CheckpointHooks`), and here
    the step. The private hooks of this class, re-checked on each transformers upgrade, and why each is
    replaced:

    - ``_wrap_model``: returns :class:`ParallelModule`, so accelerate never wraps the sharded model in DDP.
    - ``_clip_grad_norm`` / ``_get_grad_norm``: the norm over every rank without counting a TP / DP / PP
      shard twice (``ParallelModel.clip_grad_norm_``); the Trainer's would see one pipeline stage only.
    - ``_save_rng_state`` / ``_load_rng_state``: RNG states are in the checkpoint; the restored ones are
      applied again where the Trainer restores RNG (after skipping the data already trained on).
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
        refuse_unsupported(model, trainer_args, trainer_kwargs)
        model, self.peft_model = split_peft(model)  # a PeftModel trains through its base model (parallel/peft.py)
        args = args if args is not None else GalvatronTrainingArguments(output_dir="trainer_output")
        check_optimizer(args.optim, trainer_kwargs.get("optimizer_cls_and_kwargs") is not None)
        device = args.device  # under torchrun / accelerate launch this creates the process group
        ensure_process_group(device)
        with errors_shared_across_ranks():
            self.parallel_model, self.resolved_plan = _parallelize(
                model, args, plan, auto_parallel, trainer_kwargs, device
            )
        self.plan = self.resolved_plan.plan
        self.batch_geometry = BatchGeometry.from_arguments(
            args.per_device_train_batch_size,
            args.gradient_accumulation_steps,
            self.parallel_model.data_size,
            self.plan.global_batch_size,
        )
        super().__init__(self.parallel_model.module, _without_kernel_flag(args), **trainer_kwargs)
        self._train_batch_size = self.batch_geometry.per_rank_batch_size
        self.accelerator.scaler = None  # the runtime scales fp16 losses itself (LossScaler)
        self._wrapped = ParallelModule(self.parallel_model)
        self._pending: list[dict[str, Any]] = []
        self.last_step_skipped = False  # fp16: whether the loss scaler skipped the last optimizer step
        self._resumed_rng: dict[str, Any] | None = None
        self.plan_report = PlanReportCallback(
            self.resolved_plan, self.parallel_model.dims.stage if self.plan.pp > 1 else 0, self.parallel_model.compile_clock
        )
        self.add_callback(self.plan_report)
        if self.is_world_process_zero():
            print(format_summary(self.resolved_plan), flush=True)
            detected = self.resolved_plan.hardware.sources.get("detected")
            if detected:
                print(f"galvatron hardware: {detected}", flush=True)
            for line in self.parallel_model.kernels.describe():
                print(f"galvatron: {line}", flush=True)
            print(self.batch_geometry.summary(), flush=True)

    def _set_signature_columns_if_needed(self) -> None:
        """The columns the HF class's ``forward`` takes: a pipeline stage installs its own forward on the model
        object (``(*activations, attention_mask=...)``), so the Trainer's look at ``model.forward`` would drop
        ``input_ids`` / ``pixel_values`` with ``remove_unused_columns=True``."""
        if self._signature_columns is None and "forward" in vars(self.model):
            self._signature_columns = signature_columns(type(self.model).forward, self.label_names)
        super()._set_signature_columns_if_needed()

    def get_total_train_batch_size(self, args: TrainingArguments) -> int:
        """The plan's global batch (the Trainer's counts every process as a data-parallel replica)."""
        return self.batch_geometry.global_batch_size

    # ----- entry points: an error on one rank is reported on every rank (training/launch.py) ----------------
    def train(self, *args: Any, **kwargs: Any):
        with errors_shared_across_ranks():
            return super().train(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any):
        with errors_shared_across_ranks():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with errors_shared_across_ranks():
            return super().predict(*args, **kwargs)

    # ----- the step --------------------------------------------------------------------------------------
    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader=None) -> nn.Module:
        return self._wrapped

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.parallel_model.scaler is not None:
            step_through_scaler(unwrap_optimizer(optimizer), self.parallel_model.scaler, self._record_optimizer_step)
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
        self._pending.append(self.without_train_fillers(inputs, len(self._pending)))
        expected = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if len(self._pending) < expected:
            return torch.zeros((), device=self.args.device)
        batch = self.same_lengths(merge_micro_batches(self._pending, pad_token_id(self.model)))
        self._pending = []
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        loss = self.parallel_model.train_step(batch)
        return loss.detach().to(self.args.device)

    def same_lengths(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch padded to the sequence lengths of every rank's, when the plan moves activations between
        ranks that loaded different samples (a block layout other than the data-loading one)."""
        if self.parallel_model.data_size == 1 or not changes_batch_layout(self.plan):
            return batch
        return pad_to_lengths_over_ranks(batch, pad_token_id(self.model))

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        return self.parallel_model.clip_grad_norm_(self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        if grad_norm is None:
            grad_norm = self.parallel_model.clip_grad_norm_(float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # ----- RNG ---------------------------------------------------------------------------------------------
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # CheckpointHooks: restores the saved RNG states
        if checkpoint is not None:
            self._resumed_rng = capture_rng()  # re-applied where the Trainer restores RNG (after skipping data)

    def _save_rng_state(self, output_dir: str) -> None:
        """``save_checkpoint`` stores every rank's RNG states (``galvatron_hf.checkpoint.rng.write_rank_rng``)."""

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Re-apply the states ``load_checkpoint`` restored, now that the Trainer has skipped the trained data."""
        if checkpoint is not None and self._resumed_rng is not None:
            apply_rng(self._resumed_rng)


def _parallelize(model, args, plan: Plan | str | None, auto_parallel: bool | None, trainer_kwargs, device):
    """Describe the model, resolve its plan (``training/plans.py``) and shard it: (ParallelModel, ResolvedPlan)."""
    from galvatron_hf.parallel import parallelize
    from galvatron_hf.parallel.attention import default_attn_implementation
    from galvatron_hf.parallel.compile import CompileConfig
    from galvatron_hf.parallel.families import max_pipeline_degree
    from galvatron_hf.parallel.kernels import KernelConfig, kernel_label, priced_for_kernels

    # plan for the attention kernel the runtime will run (eager attention keeps its scores: more memory)
    attn_impl = getattr(args, "attn_implementation", None) or default_attn_implementation(torch.device(device))
    dataset = trainer_kwargs.get("train_dataset")
    seq_len, decoder_seq_len = sequence_lengths(getattr(args, "seq_len", None), dataset, model)
    kernels = KernelConfig.from_training_args(args)
    compile_config = CompileConfig.from_training_args(args)
    spec = describe_for_training(model, args, seq_len, decoder_seq_len)  # generic for plain data parallelism
    spec = priced_for_kernels(spec, kernels, dist.get_world_size())  # a fused head frees the logits' memory
    resolved = resolve_training_plan(
        args,
        spec,
        world_size=dist.get_world_size(),
        attn_implementation=attn_impl,
        plan=plan,
        auto_parallel=auto_parallel,
        max_pp=max_pipeline_degree(spec),
        kernels=kernel_label(kernels, compile_config),
    )
    parallel_model = parallelize(
        model,
        resolved.plan,
        spec=spec,
        device=device,
        mixed_precision=resolved.request.mixed_precision,
        attn_implementation=getattr(args, "attn_implementation", None),  # None: the default, not required
        kernels=kernels,
        compile_config=compile_config,
    )
    return parallel_model, resolved


def signature_columns(forward, label_names: list[str] | None) -> list[str]:
    """The Trainer's signature columns for ``forward`` (an unbound HF ``forward``): its parameters and the label
    names the collators rename."""
    columns = [name for name in inspect.signature(forward).parameters if name != "self"]
    return columns + sorted({"label", "label_ids", *(label_names or [])})


def _without_kernel_flag(args: TrainingArguments) -> TrainingArguments:
    """The Trainer's copy of ``args``: ``parallelize`` applied Liger before sharding (``use_liger_kernel``); the
    Trainer's own pass in ``train()`` would patch the sharded model again (and a pipeline stage's forward)."""
    if not getattr(args, "use_liger_kernel", False):
        return args
    trainer_args = copy.copy(args)
    trainer_args.use_liger_kernel = False
    return trainer_args

