"""Cases of the TRL SFT test: a tiny Llama fine-tuned on prompt-completion pairs (completion-only loss), a local
word-level tokenizer, the single-process plain ``SFTTrainer`` reference and the per-rank worker. Imported by the
test module and, through ``run_distributed``'s spawn, by every rank.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import trainer_cases as cases

WORDS = [f"w{i}" for i in range(cases.VOCAB - 3)]
STEPS = 3
SAMPLES = 48
MAX_LENGTH = 16

LAYOUTS: dict[str, dict[str, Any]] = {
    "zero3": {"flags": {"dp_type": "zero3"}},
    "tp2": {"flags": {"tp": 2}},
    "pp2": {"flags": {"pp": 2, "num_micro_batches": 2}},
    "zero3_packed_accumulated": {"flags": {"dp_type": "zero3", "gradient_accumulation_steps": 2}, "packing": True},
    "tp2_packed": {"flags": {"tp": 2}, "packing": True},
}
EVAL_SAMPLES = 9  # packed: 5 rows; a step evaluates 4 rows, so the last ends with fillers on 2 data-parallel groups


def reference_key(layout: dict[str, Any]) -> tuple[bool, int]:
    """(packing, accumulation steps): what the single-process reference depends on."""
    return layout.get("packing", False), layout["flags"].get("gradient_accumulation_steps", 1)


def tokenizer():
    """A word-level tokenizer over WORDS: <pad> 0, <eos> 1, <unk> 2 (built locally, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def pairs(samples: int, seed: int):
    """Prompts of 2-5 words; the completion repeats the prompt (learnable: accuracy rises within a few steps)."""
    import datasets

    gen = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for _ in range(samples):
        words = [WORDS[int(i)] for i in torch.randint(0, 20, (int(torch.randint(2, 6, (1,), generator=gen)),),
                                                     generator=gen)]
        prompts.append(" ".join(words))
        completions.append(" " + " ".join(words))
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})


def config(output_dir: str, galvatron: bool, packing: bool, **overrides: Any):
    from trl import SFTConfig

    values = cases.common_arguments(output_dir, max_steps=STEPS, learning_rate=0.1, optim="sgd")  # SGD: Adam's first
    # step follows the sign of every gradient, so 1e-7 differences in near-zero gradients would move the loss 1e-4
    values.update(max_length=MAX_LENGTH, packing=packing, dataset_num_proc=None, eval_strategy="no")
    values.update(bf16=False)  # fp32 on both sides: TRL's default bf16 autocast rounds the logits, whose argmax
    # (mean_token_accuracy) then flips on near ties
    values.update(overrides)
    if not galvatron:
        return SFTConfig(**values)
    from galvatron_hf import GalvatronSFTConfig

    return GalvatronSFTConfig(**values)


def report(trainer) -> dict[str, Any]:
    trainer.train()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    keys = ("loss", "entropy", "mean_token_accuracy", "num_tokens")
    evaluation = trainer.evaluate()
    return {
        "train": [{k: entry[k] for k in keys} for entry in train_logs],
        "eval": {k: v for k, v in evaluation.items() if k.removeprefix("eval_") in keys},
    }


def reference(output_dir: str, packing: bool, accumulation: int) -> dict[str, Any]:
    """The plain SFTTrainer, one process, the global batch per step (over ``accumulation`` loader batches) and a
    Galvatron step's samples per eval step."""
    from trl import SFTTrainer

    args = config(output_dir, False, packing, per_device_train_batch_size=cases.GLOBAL_BATCH // accumulation,
                  gradient_accumulation_steps=accumulation, per_device_eval_batch_size=4)
    trainer = SFTTrainer(cases.make_model("llama"), args, train_dataset=pairs(SAMPLES, 1),
                         eval_dataset=pairs(EVAL_SAMPLES, 2), processing_class=tokenizer())
    return report(trainer)


def worker(rank: int, world_size: int, layouts: list[str], workdir: str) -> dict[str, Any]:
    from galvatron_hf import GalvatronSFTTrainer

    results = {}
    for name in layouts:
        layout = LAYOUTS[name]
        args = config(os.path.join(workdir, name), True, layout.get("packing", False),
                      global_batch_size=cases.GLOBAL_BATCH, per_device_eval_batch_size=2 if "tp" not in
                      layout["flags"] and "pp" not in layout["flags"] else 4, **layout["flags"])
        trainer = GalvatronSFTTrainer(cases.make_model("llama"), args, train_dataset=pairs(SAMPLES, 1),
                                      eval_dataset=pairs(EVAL_SAMPLES, 2), processing_class=tokenizer())
        results[name] = report(trainer)
    return results
