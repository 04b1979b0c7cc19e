"""The Trainer's checkpoint hooks: ``checkpoint-N/`` through ``galvatron_hf.checkpoint``.

The Trainer's own ``_save_checkpoint`` is kept (folder naming, best-model tracking, ``trainer_state.json``,
rotation); what it calls to write and read the model and optimizer is replaced, because the model is sharded
(DTensor TP, FSDP2, pipeline stages) and a checkpoint must load into any layout and world size: one
collective ``save_checkpoint`` writes the sharded model and optimizer (DCP), the scheduler, every rank's RNG
state, the plan and the fp16 loss scale, atomically. See docs/checkpoints.md.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.checkpoint.plain_trainer import (
    is_plain_trainer_checkpoint,
    load_plain_trainer_checkpoint,
    restore_plain_trainer_rng,
)
from galvatron_hf.training.batching import BatchGeometry
from galvatron_hf.training.optimizer import unwrap_optimizer
from galvatron_hf.training.resume import ResumeBatchError, describe_layout_change, resume_batch_decision, saved_layout
from galvatron_hf.training.scheduler_state import load_scheduler_state

TRAINING_ARGS_NAME = "training_args.bin"
LOSS_SCALE_KEY = "loss_scale"  # the fp16 loss scale, in the manifest's ``extra``
EXPORT_STAGING = ".galvatron-export"
RNG_SOURCES = {
    "per-rank": "each rank its own",
    "rank0": "rank 0's on every rank (ranks have new roles)",
    "none": "not restored",
}


class CheckpointHooks:
    """Checkpoint hooks of a ``GalvatronTrainer`` (reads ``parallel_model``, ``plan`` and the Trainer's
    ``model``, ``optimizer``, ``lr_scheduler``, ``state``, ``args``, ``processing_class``).

    ``save_model`` is public. The private hooks, re-checked on each transformers upgrade (present in 5.17
    and 5.24), and why each is replaced:

    - ``_save_optimizer_and_scheduler``: the Trainer's ``torch.save``\\ s rank 0's optimizer state; here the
      sharded state is already in the checkpoint (every rank writes its shards).
    - ``_load_from_checkpoint``: the Trainer's loads a weights file before the optimizer exists; a sharded
      checkpoint loads model and optimizer together, so this only finishes an interrupted save and checks
      the checkpoint (early, on every rank, before the Trainer reads ``trainer_state.json``) and keeps its
      global batch, before the training loader is built (``training/resume.py``).
    - ``_load_optimizer_and_scheduler``: the actual load (DCP reshards into this layout), the scheduler
      mapped onto this layout's param groups, the fp16 loss scale.
    - ``_load_best_model``: the best checkpoint is a sharded one.

    ``_save_scaler`` / ``_load_scaler`` are the Trainer's: they act on ``accelerator.scaler``, which is None
    (the runtime's ``LossScaler`` replaces it), and no ``scaler.pt`` is written, so both do nothing; the loss
    scale travels in the checkpoint's manifest.
    """

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
        scaler = self.parallel_model.scaler
        save_checkpoint(
            output_dir,
            model=self.model,
            optimizer=unwrap_optimizer(self.optimizer) if keep_optimizer else None,
            lr_scheduler=self.lr_scheduler if keep_optimizer else None,
            plan=self.plan,
            step=self.state.global_step,
            extra={LOSS_SCALE_KEY: scaler.scale} if scaler else {},
            keep_frozen=False,  # a fine-tune's frozen base comes from the model a resume builds (checkpoint/frozen.py)
        )
        self._save_side_files(output_dir)

    def _export_pretrained(self, output_dir: str) -> None:
        """Full weights assembled from the shards, through a staging checkpoint that rank 0 exports."""
        from galvatron_hf.checkpoint import CheckpointError, export_to_hf, save_checkpoint

        staging = Path(output_dir) / EXPORT_STAGING
        save_checkpoint(staging, model=self.model, optimizer=None, plan=self.plan, step=self.state.global_step)
        error: list[str | None] = [None]
        if self.is_world_process_zero():
            try:
                export_to_hf(staging, output_dir, overwrite=True)  # save_model writes into output_dir, as HF's
            except (CheckpointError, OSError, ValueError) as err:  # re-raised on every rank below
                error = [f"exporting {staging} to {output_dir} failed: {err!r}"]
            shutil.rmtree(staging, ignore_errors=True)
        dist.broadcast_object_list(error, src=0)
        if error[0] is not None:
            raise RuntimeError(error[0])
        self._save_side_files(output_dir)

    def _save_side_files(self, output_dir: str) -> None:
        """The tokenizer / processor and the training arguments, as the Trainer's ``save_model`` writes them."""
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        dist.barrier()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Saved with the model by ``save_checkpoint`` (sharded, loadable into any layout)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Runs before the optimizer exists: only check the checkpoint; the load is in the optimizer hook."""
        from galvatron_hf.checkpoint import read_manifest, recover_interrupted_save

        path = Path(resume_from_checkpoint).absolute()
        if is_plain_trainer_checkpoint(path):
            if self.is_world_process_zero():
                print(
                    f"galvatron: {path} is a plain Trainer checkpoint: its weights, optimizer, scheduler and RNG "
                    f"are loaded into this layout; it does not record its global batch, so the data position is "
                    f"exact if it trained with this run's ({self.batch_geometry.global_batch_size}: pass "
                    "global_batch_size to match it)",
                    flush=True,
                )
            return
        if self.is_world_process_zero():
            recover_interrupted_save(path)
        dist.barrier()
        read_manifest(path)
        self._keep_checkpoint_batch(path)

    def _keep_checkpoint_batch(self, path: Path) -> None:
        """Train with the checkpoint's global batch (``training/resume.py``), before the loader is built."""
        saved = saved_layout(path).global_batch_size
        current = self.batch_geometry.global_batch_size
        asked = getattr(self.args, "global_batch_size", None) is not None or bool(self.resolved_plan.request.galvatron_plan)
        asked = asked or self.resolved_plan.source == "given plan"  # the trainer's plan= argument
        batch, note = resume_batch_decision(saved, current, asked, self.args.ignore_data_skip, path)
        if batch != current:
            self._adopt_global_batch(batch, path)
        if note and self.is_world_process_zero():
            print(note, flush=True)
            print(self.batch_geometry.summary(), flush=True)

    def _adopt_global_batch(self, batch: int, path: Path) -> None:
        """Re-price this layout for ``batch`` and load batches of its size; the sharded model is unchanged
        (the runtime reads only pp and the micro-batch count, which stay)."""
        from galvatron_hf.planner.request import resolve_plan

        resolved = self.resolved_plan
        try:
            geometry = BatchGeometry.from_arguments(
                self.args.per_device_train_batch_size,
                self.args.gradient_accumulation_steps,
                self.parallel_model.data_size,
                batch,
            )
            repriced = resolve_plan(
                replace(resolved.request, global_batch_size=batch),
                resolved.spec,
                plan=replace(self.plan, global_batch_size=batch, predicted=None),
            )
        except ValueError as err:
            raise ResumeBatchError(
                f"{path} was trained with a global batch of {batch}, which this layout cannot train ({err}); "
                f"resume on a process count whose data-parallel groups divide {batch}, or pass "
                "global_batch_size with ignore_data_skip=True"
            ) from err
        if not repriced.fits:
            raise ResumeBatchError(
                f"{path} was trained with a global batch of {batch}; this plan, made for {self.plan.global_batch_size}, "
                f"needs {repriced.report.peak_memory_gb:.1f} GB with it (budget {repriced.memory_gb:g} GB). Set "
                "resume_from_checkpoint in the training arguments, so the plan is made for the checkpoint's batch"
            )
        self.resolved_plan = replace(repriced, source=resolved.source)
        self.plan = self.parallel_model.plan = self.plan_report.plan = repriced.plan
        if self.parallel_model.pipeline is not None:
            self.parallel_model.pipeline.plan = repriced.plan
        self.batch_geometry = geometry
        self._train_batch_size = geometry.per_rank_batch_size

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Model, optimizer and scheduler from a checkpoint of any layout (DCP reshards on load)."""
        if checkpoint is None:
            return
        from galvatron_hf.checkpoint import SCHEDULER_NAME, load_checkpoint

        if is_plain_trainer_checkpoint(checkpoint):
            self._load_plain_trainer_checkpoint(Path(checkpoint))
            return
        state = load_checkpoint(
            checkpoint,
            model=self.model,
            optimizer=unwrap_optimizer(self.optimizer),
            lr_scheduler=None,  # per-group lists differ between layouts: restored below
            plan=self.plan,
            restore_rng=True,
        )
        load_scheduler_state(self.lr_scheduler, Path(checkpoint) / SCHEDULER_NAME)
        if self.parallel_model.scaler is not None and LOSS_SCALE_KEY in state.extra:
            self.parallel_model.scaler.scale = float(state.extra[LOSS_SCALE_KEY])
        change = describe_layout_change(saved_layout(checkpoint), self.plan, dist.get_world_size())
        if self.is_world_process_zero() and change:
            print(f"{change}; resumed at step {state.step}, RNG: {RNG_SOURCES[state.rng]}", flush=True)

    def _load_plain_trainer_checkpoint(self, path: Path) -> None:
        """A plain Trainer's ``checkpoint-N/`` (``checkpoint/plain_trainer.py``), resharded into this layout."""
        from galvatron_hf.checkpoint import SCHEDULER_NAME

        load_plain_trainer_checkpoint(
            path, model=self.model, optimizer=unwrap_optimizer(self.optimizer), param_groups=self._plain_param_groups()
        )
        load_scheduler_state(self.lr_scheduler, path / SCHEDULER_NAME)
        rng = restore_plain_trainer_rng(path)
        if self.is_world_process_zero():
            print(f"galvatron: resumed {path} (plain Trainer checkpoint); RNG from {rng}", flush=True)

    def _plain_param_groups(self) -> list[list[str]]:
        """The parameter names of the plain Trainer's two param groups (weight decay, none), in its order: what
        the indices of its ``optimizer.pt`` count through. Read from an unsharded copy built on the meta device."""
        import transformers

        hf_class = next(cls for cls in type(self.model).__mro__ if cls.__module__.startswith("transformers."))
        with torch.device("meta"):
            full = hf_class._from_config(copy.deepcopy(self.model.config))
        if not isinstance(full, transformers.PreTrainedModel):
            raise TypeError(f"cannot rebuild {hf_class.__name__} to read a plain Trainer checkpoint")
        frozen = {name for name, param in self.model.named_parameters() if not param.requires_grad}
        names = [name for name, _ in full.named_parameters() if name not in frozen]
        decay = set(self.get_decay_parameter_names(full))
        return [[name for name in names if name in decay], [name for name in names if name not in decay]]

    def _load_best_model(self) -> None:
        from galvatron_hf.checkpoint import load_checkpoint

        best = self.state.best_model_checkpoint
        load_checkpoint(best, model=self.model, optimizer=None, plan=self.plan, restore_rng=False)
