"""Train a T5 sequence-to-sequence model with GalvatronTrainer.

Synthetic task by default: the target is the source reversed (learnable, fixed lengths). A real run reads
``--source_column`` / ``--target_column`` of a local dataset, tokenized to ``--max_seq_length`` (source) and
``--max_target_length`` (target) with padding, pads in the labels set to -100.

CPU smoke run: torchrun --standalone --nproc_per_node 2 recipes/train_t5.py --auto_parallel
With generation in evaluation (token accuracy of the generated ids): add --predict_with_generate
(PyTorch's "FSDP2-wrapped module (FSDPT5Block) returned a view tensor" warning is expected and harmless:
docs/trainer.md, "A PyTorch warning on T5".)
GPU node: accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/train_t5.py \
        --model_name_or_path t5-3b --tokenizer_name /data/t5 --dataset_path /data/pairs.jsonl --bf16 --auto_parallel
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from recipe_common import (
    RecipeArguments,
    build_model,
    load_pretrained_if_any,
    load_raw_dataset,
    load_tokenizer,
    main_entry,
    parse,
    split_for_eval,
    tensor_collator,
    train_and_save,
)

from galvatron_hf import GalvatronSeq2SeqTrainer, GalvatronSeq2SeqTrainingArguments


@dataclass
class Seq2SeqArguments:
    source_column: str = field(default="source", metadata={"help": "Input text column of a real dataset."})
    target_column: str = field(default="target", metadata={"help": "Target text column of a real dataset."})
    max_target_length: int = field(default=32, metadata={"help": "Target tokens per sample."})


def tiny_config():
    from transformers import T5Config

    return T5Config(
        vocab_size=256,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        decoder_start_token_id=0,
        pad_token_id=0,
    )


def synthetic_pairs(recipe: RecipeArguments, vocab_size: int):
    import datasets

    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(
        2,
        min(vocab_size, 64),
        (recipe.num_samples, recipe.max_seq_length),
        generator=generator,
    )
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "labels": ids.flip(1).tolist(),
        }
    )


def tokenized_pairs(raw, recipe: RecipeArguments, seq2seq: Seq2SeqArguments):
    tokenizer = load_tokenizer(recipe)

    def encode(batch: dict) -> dict:
        source = tokenizer(
            batch[seq2seq.source_column],
            max_length=recipe.max_seq_length,
            truncation=True,
            padding="max_length",
        )
        target = tokenizer(
            text_target=batch[seq2seq.target_column],
            max_length=seq2seq.max_target_length,
            truncation=True,
            padding="max_length",
        )
        labels = [[t if t != tokenizer.pad_token_id else -100 for t in row] for row in target["input_ids"]]
        return {
            "input_ids": source["input_ids"],
            "attention_mask": source["attention_mask"],
            "labels": labels,
        }

    return raw.map(encode, batched=True, remove_columns=raw.column_names)


def generated_token_accuracy(prediction) -> dict[str, float]:
    """Share of target tokens the generated ids get right (position t + 1 of the output: after the start id)."""
    import numpy as np

    generated, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    width = min(generated.shape[1] - 1, labels.shape[1])
    counted = labels[:, :width] > 0
    return {"token_accuracy": float((generated[:, 1 : width + 1] == labels[:, :width])[counted].mean())}


def main() -> None:
    from transformers import AutoModelForSeq2SeqLM

    recipe, args, seq2seq = parse(Seq2SeqArguments, GalvatronSeq2SeqTrainingArguments)
    model = build_model(AutoModelForSeq2SeqLM, tiny_config, recipe)
    raw = load_raw_dataset(recipe)
    dataset = synthetic_pairs(recipe, model.config.vocab_size) if raw is None else tokenized_pairs(raw, recipe, seq2seq)
    train, evaluation = split_for_eval(dataset, recipe)
    trainer = GalvatronSeq2SeqTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=tensor_collator,
        compute_metrics=generated_token_accuracy if args.predict_with_generate else None,
    )
    load_pretrained_if_any(trainer, recipe)
    train_and_save(trainer, args)


if __name__ == "__main__":
    main_entry(main)
