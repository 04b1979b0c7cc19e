"""What every recipe shares: arguments, model building, local datasets, and the run itself.

A recipe = a task (how to build the tiny model, synthetic samples and the preprocessing of real data) +
these helpers. Defaults run on CPU in seconds (tiny config, synthetic data built with ``datasets``); real
runs pass ``--model_name_or_path`` (a bundled config name for random init, or a local ``from_pretrained``
directory whose weights are loaded into the parallel layout) and ``--dataset_path`` / ``--dataset_name``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments
from galvatron_hf.training.launch import run_main

# The planner prices tensors; the CUDA caching allocator's fragmentation comes on top. With the default
# allocator a 1.24B Llama plan needing 77.4 GB of tensors ran out of memory on an 85 GB H100 (the huge
# logits blocks fragment it); with expandable segments the same plan trained. The allocator reads this at
# its first CUDA allocation, which comes after these imports; a value the user set wins.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

# TrainingArguments defaults for a quick CPU run; every one can be overridden on the command line
QUICK_DEFAULTS = {
    "output_dir": "recipe_output",
    "max_steps": 6,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "report_to": "none",
    "disable_tqdm": True,
    "save_strategy": "no",
    "remove_unused_columns": False,
}


@dataclass
class RecipeArguments:
    """Model and data options shared by the recipes."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A bundled config name (galvatron_hf.adapters.bundled_models(); random init), a config.json or "
            "directory holding one (random init), or a local save_pretrained directory with weights (loaded "
            "into the parallel layout). Default: a tiny config."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "datasets.load_dataset name (must be available offline). Default: synthetic."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name for --dataset_name."})
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A local dataset: a save_to_disk directory, or .txt/.json/.jsonl/.csv/.parquet file(s)."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Local tokenizer directory (default: --model_name_or_path)."},
    )
    max_seq_length: int = field(
        default=32,
        metadata={"help": "Tokens per sample (synthetic and real data); the plan is priced for it unless --seq_len."},
    )
    num_samples: int = field(default=256, metadata={"help": "Synthetic samples (used without a dataset)."})
    eval_samples: int = field(
        default=32,
        metadata={"help": "Samples held out for evaluation (0: no evaluation)."},
    )


def parse(
    extra: type | None = None,
    arguments_class: type = GalvatronTrainingArguments,
) -> tuple[RecipeArguments, GalvatronTrainingArguments, Any]:
    """``HfArgumentParser`` over (RecipeArguments, ``arguments_class``[, extra]) with quick defaults
    (``arguments_class``: a GalvatronTrainingArguments subclass, e.g. GalvatronSeq2SeqTrainingArguments)."""
    from transformers import HfArgumentParser

    classes = [RecipeArguments, arguments_class] + ([extra] if extra else [])
    parser = HfArgumentParser(classes)
    parser.set_defaults(**QUICK_DEFAULTS, use_cpu=not torch.cuda.is_available())
    parsed = parser.parse_args_into_dataclasses()
    return parsed[0], parsed[1], parsed[2] if extra else None


# ----- models ------------------------------------------------------------------------------------------------


def is_pretrained_directory(path: str | None) -> bool:
    """A local directory with safetensors weights: its weights are loaded after parallelisation."""
    if not path or not os.path.isdir(path):
        return False
    return any(name.endswith(".safetensors") for name in os.listdir(path))


def build_model(auto_class: type, tiny_config: Callable[[], Any], recipe: RecipeArguments):
    """The HF model: tiny (default), or from a named/local config on the meta device (sharded at parallelise).

    ``auto_class`` (``AutoModelForCausalLM``, ...) picks the class the config names, so any supported family's
    checkpoint works with the recipe of its task (a Qwen2 or Mistral directory with train_llama.py)."""
    if recipe.model_name_or_path is None:
        torch.manual_seed(0)
        return auto_class.from_config(tiny_config())
    from galvatron_hf.adapters import load_config

    config = load_config(recipe.model_name_or_path)
    with torch.device("meta"):
        return auto_class.from_config(config)


def load_pretrained_if_any(trainer: GalvatronTrainer, recipe: RecipeArguments) -> None:
    """Fill the parallelised model from a local from_pretrained directory (each rank reads its own slices)."""
    if is_pretrained_directory(recipe.model_name_or_path):
        from galvatron_hf.checkpoint import load_hf_pretrained

        load_hf_pretrained(trainer.model, recipe.model_name_or_path)
        if trainer.is_world_process_zero():
            print(
                f"loaded pretrained weights from {recipe.model_name_or_path}",
                flush=True,
            )


def load_tokenizer(recipe: RecipeArguments):
    from transformers import AutoTokenizer

    source = recipe.tokenizer_name or recipe.model_name_or_path
    if source is None or not os.path.isdir(source):
        raise ValueError(
            "real text data needs a local tokenizer: pass --tokenizer_name DIR (or a --model_name_or_path directory "
            "that holds one); without --dataset_* the recipe uses synthetic token ids"
        )
    return AutoTokenizer.from_pretrained(source)


# ----- data --------------------------------------------------------------------------------------------------


def load_raw_dataset(recipe: RecipeArguments):
    """The user's dataset as a ``datasets.Dataset`` (train split), or None for synthetic data."""
    import datasets

    if recipe.dataset_path:
        path = Path(recipe.dataset_path)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
        else:
            kind = {
                ".txt": "text",
                ".json": "json",
                ".jsonl": "json",
                ".csv": "csv",
                ".parquet": "parquet",
            }.get(path.suffix, "imagefolder" if path.is_dir() else None)
            if kind is None:
                raise ValueError(f"cannot tell the format of {path}: use a save_to_disk directory or a known suffix")
            loaded = (
                datasets.load_dataset(kind, data_files=str(path))
                if kind != "imagefolder"
                else (datasets.load_dataset("imagefolder", data_dir=str(path)))
            )
    elif recipe.dataset_name:
        loaded = datasets.load_dataset(recipe.dataset_name, recipe.dataset_config_name)
    else:
        return None
    return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded


def split_for_eval(dataset, recipe: RecipeArguments):
    """(train, eval) with ``eval_samples`` held out from the end (eval None when 0)."""
    if recipe.eval_samples <= 0 or len(dataset) <= recipe.eval_samples:
        return dataset, None
    cut = len(dataset) - recipe.eval_samples
    return dataset.select(range(cut)), dataset.select(range(cut, len(dataset)))


def group_texts(tokenized, block: int):
    """Concatenate token ids and cut them into blocks of ``block`` tokens (the usual causal-LM preparation)."""

    def chunk(batch: dict[str, list]) -> dict[str, list]:
        ids = [token for row in batch["input_ids"] for token in row]
        usable = len(ids) // block * block
        blocks = [ids[i : i + block] for i in range(0, usable, block)]
        return {
            "input_ids": blocks,
            "attention_mask": [[1] * block for _ in blocks],
            "labels": [list(b) for b in blocks],
        }

    return tokenized.map(chunk, batched=True, remove_columns=tokenized.column_names)


def tensor_collator(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack fixed-size features (every recipe's preprocessing produces equal lengths)."""
    return {key: torch.as_tensor([f[key] for f in features]) for key in features[0]}


# ----- the run -----------------------------------------------------------------------------------------------


def train_and_save(trainer: GalvatronTrainer, args: GalvatronTrainingArguments) -> None:
    """Train (resuming if asked), evaluate when there is an eval set, save the state and the final model."""
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint-N in output_dir, as Trainer.train(resume_from_checkpoint=True)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("train", metrics)
    trainer.save_state()  # trainer_state.json in output_dir: the loss history
    if args.save_strategy != "no":
        trainer.save_model()  # a from_pretrained directory
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        print(
            f"recipe finished: {trainer.state.global_step} steps, losses {[round(x, 4) for x in losses]}",
            flush=True,
        )


def main_entry(main: Callable[[], None]) -> None:
    """Run ``main`` under the clean-exit wrapper (gloo workers can abort at interpreter exit)."""
    sys.stdout.reconfigure(line_buffering=True)
    run_main(main)
