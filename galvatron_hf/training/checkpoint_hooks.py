"""The Trainer's checkpoint hooks: ``checkpoint-N/`` through ``galvatron_hf.checkpoint``.

The Trainer's own ``_save_checkpoint`` is kept (folder naming, best-model tracking, ``trainer_state.json``,
rotation); what it calls to write and read the model and optimizer is replaced, because the model is sharded
(DTensor TP, FSDP2, pipeline stages) and a checkpoint must load into any layout and world size: one
collective ``save_checkpoint`` writes the sharded model and optimizer (DCP), the scheduler, every rank's RNG
state, the plan and the fp16 loss scale, atomically. See docs/checkpoints.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from galvatron_hf.training.optimizer import unwrap_optimizer
from galvatron_hf.training.scheduler_state import load_scheduler_state

TRAINING_ARGS_NAME = "training_args.bin"
LOSS_SCALE_KEY = "loss_scale"  # the fp16 loss scale, in the manifest's ``extra``
EXPORT_STAGING = ".galvatron-export"


class CheckpointHooks:
    """Checkpoint hooks of a ``GalvatronTrainer`` (reads ``parallel_model``, ``plan`` and the Trainer's
    ``model``, ``optimizer``, ``lr_scheduler``, ``state``, ``args``, ``processing_class``).

    ``save_model`` is public. The private hooks, re-checked on each transformers upgrade (present in 5.17
    and 5.24), and why each is replaced:

    - ``_save_optimizer_and_scheduler``: the Trainer's ``torch.save``\\ s rank 0's optimizer state; here the
      sharded state is already in the checkpoint (every rank writes its shards).
    - ``_load_from_checkpoint``: the Trainer's loads a weights file before the optimizer exists; a sharded
      checkpoint loads model and optimizer together, so this only finishes an interrupted save and checks
      the checkpoint (early, on every rank, before the Trainer reads ``trainer_state.json``).
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
                export_to_hf(staging, output_dir)
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
        if self.is_world_process_zero():
            recover_interrupted_save(path)
        dist.barrier()
        read_manifest(path)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Model, optimizer and scheduler from a checkpoint of any layout (DCP reshards on load)."""
        if checkpoint is None:
            return
        from galvatron_hf.checkpoint import SCHEDULER_NAME, load_checkpoint

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
        if self.is_world_process_zero() and state.plan is not None and state.plan != self.plan:
            print(
                f"galvatron: resumed step {state.step} saved by another layout ({state.plan.world_size} "
                f"processes, pp={state.plan.pp}); RNG restored as {state.rng!r}",
                flush=True,
            )

    def _load_best_model(self) -> None:
        from galvatron_hf.checkpoint import load_checkpoint

        best = self.state.best_model_checkpoint
        load_checkpoint(best, model=self.model, optimizer=None, plan=self.plan, restore_rng=False)
