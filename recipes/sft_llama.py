"""Supervised fine-tuning of a Llama causal LM with TRL's SFTTrainer on a galvatron plan (needs galvatron-hf[trl]).

TRL prepares the data (prompt-completion pairs with completion-only loss here, or any dataset SFTTrainer takes:
--dataset_path with "prompt"/"completion" or "text" or "messages" columns) and logs entropy, mean_token_accuracy
and num_tokens; the step runs on the plan.

CPU smoke run (tiny model, a local word-level tokenizer, synthetic pairs, 2 gloo processes):
    torchrun --standalone --nproc_per_node 2 recipes/sft_llama.py --dp_type zero3
    torchrun --standalone --nproc_per_node 2 recipes/sft_llama.py --tp 2 --packing
GPU node:
    accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/sft_llama.py \
        --model_name_or_path /data/Llama-2-7b-hf --tokenizer_name /data/Llama-2-7b-hf \
        --dataset_path /data/sft.jsonl --max_length 2048 --bf16 --auto_parallel
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from recipe_common import QUICK_DEFAULTS, is_pretrained_directory, main_entry
from train_llama import tiny_config

WORDS = [f"w{i}" for i in range(200)]


@dataclass
class SFTRecipeArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A local from_pretrained directory."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "A local tokenizer directory."})
    dataset_path: str | None = field(default=None, metadata={"help": "A local json/jsonl/csv/parquet dataset."})
    num_samples: int = field(default=256, metadata={"help": "Synthetic prompt-completion pairs."})


def word_tokenizer():
    """A word-level tokenizer over WORDS, built locally (the smoke run downloads nothing)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def synthetic_pairs(samples: int):
    """Prompts of a few words; the completion repeats them (learnable within a few steps)."""
    import datasets

    gen = torch.Generator().manual_seed(1234)
    prompts = [" ".join(WORDS[int(i)] for i in torch.randint(0, 32, (4,), generator=gen)) for _ in range(samples)]
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": [" " + p for p in prompts]})


def main() -> None:
    import datasets
    from transformers import AutoTokenizer, HfArgumentParser, LlamaForCausalLM

    from galvatron_hf import GalvatronSFTConfig, GalvatronSFTTrainer

    parser = HfArgumentParser([SFTRecipeArguments, GalvatronSFTConfig])
    defaults = {k: v for k, v in QUICK_DEFAULTS.items() if k != "remove_unused_columns"}
    parser.set_defaults(**defaults, max_length=32, use_cpu=not torch.cuda.is_available())
    recipe, args = parser.parse_args_into_dataclasses()
    if is_pretrained_directory(recipe.model_name_or_path):
        model = LlamaForCausalLM.from_pretrained(recipe.model_name_or_path)
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_config())
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer_name) if recipe.tokenizer_name else word_tokenizer()
    if recipe.dataset_path:
        kind = recipe.dataset_path.rsplit(".", 1)[-1].replace("jsonl", "json")
        dataset = datasets.load_dataset(kind, data_files=recipe.dataset_path, split="train")
    else:
        dataset = synthetic_pairs(recipe.num_samples)
    trainer = GalvatronSFTTrainer(model, args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        last = logs[-1] if logs else {}
        print(
            f"recipe finished: {trainer.state.global_step} steps, last loss {last.get('loss')}, "
            f"mean_token_accuracy {last.get('mean_token_accuracy')}, num_tokens {last.get('num_tokens')}",
            file=sys.stdout,
            flush=True,
        )
    if args.save_strategy != "no":
        trainer.save_model()


if __name__ == "__main__":
    main_entry(main)
