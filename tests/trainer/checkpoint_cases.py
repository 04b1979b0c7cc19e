"""The per-rank worker of the checkpoint-hook tests (``test_checkpoint_hooks.py``): fp16 training with
checkpoints, evaluation and ``load_best_model_at_end``; a resume from one of its checkpoints; a
``save_only_model`` run. Imported by the test module and, through ``run_distributed``'s spawn, by every rank."""

from __future__ import annotations

import os
from typing import Any

import torch
import trainer_cases as cases
from transformers import TrainerCallback

SCALE = 1024.0  # the fp16 loss scale the first run trains with (the runtime's default is 2**16)
LAYOUT = {"dp_type": "zero3", "fp16": True}  # ZeRO-3 over 2 ranks
EVALUATED = {
    "save_strategy": "steps",
    "save_steps": 2,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "eval_loss",
    "greater_is_better": True,  # the worse loss wins: the best model is not the last one
    "max_steps": 4,
}


class RecordCheckpoints(TrainerCallback):
    """The loss scale when training begins, and the model's logits and loss scale at each save."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.scale_at_begin: float | None = None
        self.saved: dict[int, dict[str, Any]] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.scale_at_begin = self.trainer.parallel_model.scaler.scale

    def on_save(self, args, state, control, **kwargs):
        self.saved[state.global_step] = {
            "logits": cases.logits(self.trainer.model),
            "scale": self.trainer.parallel_model.scaler.scale,
        }


def _trainer(workdir: str, name: str, **flags: Any):
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    values = cases.common_arguments(os.path.join(workdir, name), global_batch_size=cases.GLOBAL_BATCH)
    values.update({**LAYOUT, **flags})
    trainer = GalvatronTrainer(
        cases.make_model("llama"),
        GalvatronTrainingArguments(**values),
        train_dataset=cases.make_dataset("llama"),
        eval_dataset=cases.make_dataset("llama", 16, seed=2),
        data_collator=cases.collate,
    )
    recorder = RecordCheckpoints(trainer)
    trainer.add_callback(recorder)
    return trainer, recorder


def checkpoint_worker(rank: int, world_size: int, workdir: str) -> dict[str, Any]:
    trainer, recorder = _trainer(workdir, "best", **EVALUATED)
    trainer.parallel_model.scaler.scale = SCALE
    trainer.train()
    best = {
        "losses": cases.logged_losses(trainer.state.log_history),
        "best_step": trainer.state.best_global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "saved": recorder.saved,
        "final_logits": cases.logits(trainer.model),
    }
    resumed, resumed_recorder = _trainer(workdir, "best", max_steps=4, save_strategy="no")
    resumed.train(resume_from_checkpoint=os.path.join(workdir, "best", "checkpoint-2"))
    only_model, _ = _trainer(
        workdir, "only_model", max_steps=1, save_strategy="steps", save_steps=1, save_only_model=True
    )
    only_model.train()
    return {
        "best": best,
        "resumed": {
            "losses": cases.logged_losses(resumed.state.log_history),
            "scale_at_begin": resumed_recorder.scale_at_begin,
        },
    }
