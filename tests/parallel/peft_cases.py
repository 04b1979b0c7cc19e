"""Cases of the PEFT test: a tiny Llama with LoRA adapters trained by GalvatronTrainer under several layouts, the
single-process plain-Trainer reference, and the per-rank worker. Imported by the test module and, through
``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
import trainer_cases as cases  # noqa: E402

STEPS = 4
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}

LAYOUTS: dict[str, dict[str, Any]] = {  # ddp and zero2 are the same FSDP2 path as zero3 (other mesh / resharding)
    "zero3": {"dp_type": "zero3"},
    "tp2_zero3": {"tp": 2, "dp_type": "zero3"},
    "pp2": {"pp": 2, "dp_type": "zero3", "num_micro_batches": 2},
}
RESUME = ("zero3", "tp2_zero3")  # checkpoint at step 2 under the first layout, resume under the second


def lora_model(seed: int = 0):
    """The trainer tests' tiny Llama with LoRA on attention and MLP projections (B initialised to zero, so
    the first step's loss is the base model's; A and B both change afterwards)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(cases.make_model("llama", seed), LoraConfig(**LORA))


def arguments(output_dir: str, galvatron: bool, **overrides: Any):
    from transformers import TrainingArguments

    from galvatron_hf import GalvatronTrainingArguments

    values = cases.common_arguments(output_dir, max_steps=STEPS, learning_rate=1e-2)
    values.update(overrides)
    return GalvatronTrainingArguments(**values) if galvatron else TrainingArguments(**values)


def reference(output_dir: str) -> dict[str, Any]:
    """The plain HF Trainer on the PeftModel, one process, the global batch per step; the adapter it saves."""
    from transformers import Trainer

    args = arguments(output_dir, galvatron=False, per_device_train_batch_size=cases.GLOBAL_BATCH)
    trainer = Trainer(lora_model(), args, train_dataset=cases.make_dataset("llama"), data_collator=cases.collate)
    trainer.train()
    trainer.save_model(os.path.join(output_dir, "adapter"))
    base = trainer.model.get_base_model()
    return {
        "losses": cases.logged_losses(trainer.state.log_history),
        "adapter": adapter_weights(trainer.model),
        "names": sorted(n for n, p in base.named_parameters() if p.requires_grad),
        "frozen_names": {n for n, p in base.named_parameters() if not p.requires_grad},
        "trainable_params": sum(p.numel() for p in base.parameters() if p.requires_grad),
    }


def adapter_weights(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def reload_adapter(directory: str) -> dict[str, torch.Tensor]:
    """What a user gets back: PeftModel.from_pretrained on a fresh base model."""
    from peft import PeftModel

    return adapter_weights(PeftModel.from_pretrained(cases.make_model("llama", seed=0), directory))


def galvatron_trainer(name: str, output_dir: str, seed: int = 0, **overrides: Any):
    from galvatron_hf import GalvatronTrainer

    args = arguments(output_dir, galvatron=True, global_batch_size=cases.GLOBAL_BATCH, **LAYOUTS[name], **overrides)
    return GalvatronTrainer(
        lora_model(seed), args, train_dataset=cases.make_dataset("llama"), data_collator=cases.collate
    )


def train_and_save(name: str, workdir: str) -> dict[str, Any]:
    """Train under layout ``name`` (the first layout of RESUME saves a checkpoint at step 2), save the adapter
    with save_model; report the losses and what trained."""
    checkpoints = {"save_strategy": "steps", "save_steps": 2} if name == RESUME[0] else {}
    trainer = galvatron_trainer(name, os.path.join(workdir, name), **checkpoints)
    trainer.train()
    trainer.save_model(os.path.join(workdir, f"adapter_{name}"))
    return {
        "losses": cases.logged_losses(trainer.state.log_history),
        "optimized": {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        == {id(p) for p in trainer.model.parameters() if p.requires_grad},
        "trainable_params": trainer.parallel_model.spec.trainable_params,
        "names": sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad),
    }


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def resume_across_layouts(workdir: str) -> dict[str, Any]:
    """Resume RESUME[0]'s step-2 checkpoint under RESUME[1]: the logged losses (steps 1-2 come with the
    checkpoint's trainer state) and how many steps this run trained."""
    first, second = RESUME
    resumed = galvatron_trainer(second, os.path.join(workdir, "resumed"))
    counter = CountSteps()
    resumed.add_callback(counter)
    resumed.train(resume_from_checkpoint=os.path.join(workdir, first, "checkpoint-2"))
    return {"losses": cases.logged_losses(resumed.state.log_history), "steps": counter.steps}


def resume_onto_another_base(workdir: str) -> str:
    """The error a resume of RESUME[0]'s checkpoint (adapters and optimizer only) onto another base raises."""
    other = galvatron_trainer(RESUME[1], os.path.join(workdir, "other_base"), seed=1)
    try:
        other.train(resume_from_checkpoint=os.path.join(workdir, RESUME[0], "checkpoint-2"))
    except Exception as err:  # every rank raises
        return f"{type(err).__name__}: {err}"
    return "resumed"


def worker(rank: int, world_size: int, layouts: list[str], workdir: str) -> dict[str, Any]:
    results: dict[str, Any] = {name: train_and_save(name, workdir) for name in layouts}  # RESUME[0] first
    results["resume"] = resume_across_layouts(workdir)
    results["another_base"] = resume_onto_another_base(workdir)
    return results
