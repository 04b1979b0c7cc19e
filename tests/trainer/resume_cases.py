"""Per-rank workers of ``test_resume_world_size.py``: a training run interrupted and resumed on other process
counts, recording which samples each step trained; an ``auto_parallel`` run and its resume on another world
size. Imported by the test module and, through ``run_distributed``'s spawn, by every rank."""

from __future__ import annotations

import os
from typing import Any

import trainer_cases as cases
from transformers import TrainerCallback

EPOCH_SAMPLES = 48  # 6 steps of the checkpoint's global batch of 8
PER_DEVICE_BATCH = 4  # without global_batch_size: 8 on 2 processes, 16 on 4, 4 on 1
SAVE_EVERY = 2
AUTO_STEPS = 4


class StopAt(TrainerCallback):
    """End training after ``step`` (its checkpoint is written first), as an interruption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def numbered_dataset(samples: int):
    """Samples whose first token is their index, so the embedding sees which samples a step trains."""
    dataset = cases.make_dataset("llama", samples)
    return dataset.map(lambda row, index: _numbered(row, index), with_indices=True)


def _numbered(row: dict[str, Any], index: int) -> dict[str, Any]:
    row["input_ids"] = [index, *row["input_ids"][1:]]
    return row


def _trainer(output_dir: str, stop_step: int | None, **flags: Any):
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    values = cases.common_arguments(output_dir, save_strategy="steps", save_steps=SAVE_EVERY)
    values.update(flags)
    return GalvatronTrainer(
        cases.make_model("llama"),
        GalvatronTrainingArguments(**values),
        train_dataset=numbered_dataset(EPOCH_SAMPLES),
        data_collator=cases.collate,
        callbacks=[StopAt(stop_step)] if stop_step else None,
    )


def interrupted_phase(rank: int, world_size: int, output_dir: str, resume_step: int | None, stop_step: int):
    """Train the one-epoch run on this world size from ``checkpoint-<resume_step>`` up to ``stop_step``;
    return the sample indices this rank's embedding saw, and the batch it trained with."""
    steps = EPOCH_SAMPLES // 8
    trainer = _trainer(output_dir, stop_step, per_device_train_batch_size=PER_DEVICE_BATCH, max_steps=steps)
    seen: list[int] = []
    embedding = trainer.model.get_input_embeddings()
    embedding.register_forward_pre_hook(lambda module, inputs: seen.extend(inputs[0][:, 0].tolist()))
    resume = os.path.join(output_dir, f"checkpoint-{resume_step}") if resume_step else None
    trainer.train(resume_from_checkpoint=resume)
    return {"seen": seen, "global_batch": trainer.batch_geometry.global_batch_size, "step": trainer.state.global_step}


def auto_parallel_run(rank: int, world_size: int, output_dir: str, resume: str | None):
    """``auto_parallel`` with 2 samples per device, all ``AUTO_STEPS`` steps or resumed from ``resume`` (given in
    the arguments, as example scripts pass ``--resume_from_checkpoint``); its losses and plan. Priced for H100s
    (not the CPU the test runs on), where the search pipelines this model over every process: pp 4, then pp 2."""
    trainer = _trainer(
        output_dir,
        None,
        auto_parallel=True,
        hardware="h100",
        per_device_train_batch_size=2,
        max_steps=AUTO_STEPS,
        resume_from_checkpoint=resume,
    )
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    return {"losses": cases.logged_losses(trainer.state.log_history), "plan": trainer.plan}


def chain_first(rank: int, world_size: int, workdir: str):
    """2 processes: the interrupted run's first steps."""
    return {"chain": interrupted_phase(rank, world_size, os.path.join(workdir, "chain"), None, SAVE_EVERY)}


def chain_second_and_auto_reference(rank: int, world_size: int, workdir: str):
    """4 processes: the interrupted run's middle steps, and the auto_parallel reference run."""
    chain = interrupted_phase(rank, world_size, os.path.join(workdir, "chain"), SAVE_EVERY, 2 * SAVE_EVERY)
    reference = auto_parallel_run(rank, world_size, os.path.join(workdir, "auto4"), None)
    return {"chain": chain, "auto": reference}


def chain_last(rank: int, world_size: int, workdir: str):
    """1 process: the interrupted run's last steps."""
    return {"chain": interrupted_phase(rank, world_size, os.path.join(workdir, "chain"), 2 * SAVE_EVERY, 99)}


def auto_resumed(rank: int, world_size: int, workdir: str):
    """2 processes: the auto_parallel run resumed from the 4-process checkpoint."""
    resume = os.path.join(workdir, "auto4", f"checkpoint-{SAVE_EVERY}")
    return {"auto": auto_parallel_run(rank, world_size, os.path.join(workdir, "auto2"), resume)}


PLAIN_LAYOUTS = {"zero3": {"dp_type": "zero3"}, "tp2": {"tp": 2}, "pp2": {"pp": 2, "num_micro_batches": 2}}


def plain_trainer_run(output_dir: str) -> list[float]:
    """The plain HF Trainer, one process: 4 steps of the global batch, ``checkpoint-2`` saved; its losses."""
    from transformers import Trainer, TrainingArguments

    values = cases.common_arguments(output_dir, per_device_train_batch_size=8, max_steps=AUTO_STEPS)
    values.update(save_strategy="steps", save_steps=SAVE_EVERY)
    trainer = Trainer(
        cases.make_model("llama"),
        TrainingArguments(**values),
        train_dataset=cases.make_dataset("llama"),
        data_collator=cases.collate,
    )
    trainer.train()
    return cases.logged_losses(trainer.state.log_history)


def resume_plain_checkpoint(rank: int, world_size: int, workdir: str, checkpoint: str):
    """2 processes: the plain Trainer's ``checkpoint-2`` resumed under ZeRO-3, TP2 and PP2; each run's losses."""
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    losses = {}
    for name, layout in PLAIN_LAYOUTS.items():
        values = cases.common_arguments(os.path.join(workdir, name), global_batch_size=8, max_steps=AUTO_STEPS)
        trainer = GalvatronTrainer(
            cases.make_model("llama", seed=1),  # other initial weights: the checkpoint's must replace them
            GalvatronTrainingArguments(**values, **layout),
            train_dataset=cases.make_dataset("llama"),
            data_collator=cases.collate,
        )
        trainer.train(resume_from_checkpoint=checkpoint)
        losses[name] = cases.logged_losses(trainer.state.log_history)
    return losses
