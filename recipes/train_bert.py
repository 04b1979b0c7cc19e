"""Train a BERT masked LM with GalvatronTrainer.

Masking is static (done once in preprocessing with a fixed seed), so every rank that must see the same batch
(TP and PP peers) sees the same masks, whatever each rank's random state.

CPU smoke run: torchrun --standalone --nproc_per_node 2 recipes/train_bert.py --auto_parallel
GPU node: accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/train_bert.py \
        --model_name_or_path bert-large-uncased --tokenizer_name /data/bert --dataset_path /data/corpus.txt \
        --max_seq_length 512 --bf16 --auto_parallel
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from recipe_common import (
    RecipeArguments,
    build_model,
    group_texts,
    load_pretrained_if_any,
    load_raw_dataset,
    load_tokenizer,
    main_entry,
    parse,
    split_for_eval,
    tensor_collator,
    train_and_save,
)

from galvatron_hf.trainer import GalvatronTrainer


@dataclass
class MaskingArguments:
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens to predict."})
    text_column: str = field(default="text", metadata={"help": "Text column of a real dataset."})


def tiny_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def mask_tokens(
    dataset,
    mask_token_id: int,
    vocab_size: int,
    probability: float,
    special_ids: set[int],
):
    """BERT's 80/10/10 masking, fixed per sample index (seeded), computed once."""

    def mask(example: dict, index: int) -> dict:
        rng = np.random.default_rng(10_000 + index)
        ids = np.array(example["input_ids"])
        chosen = (rng.random(ids.shape) < probability) & ~np.isin(ids, list(special_ids))
        if not chosen.any():
            chosen[rng.integers(len(ids))] = True
        labels = np.where(chosen, ids, -100)
        roll = rng.random(ids.shape)
        ids = np.where(chosen & (roll < 0.8), mask_token_id, ids)
        ids = np.where(
            chosen & (roll >= 0.8) & (roll < 0.9),
            rng.integers(0, vocab_size, ids.shape),
            ids,
        )
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}

    return dataset.map(mask, with_indices=True)


def synthetic_text(recipe: RecipeArguments, vocab_size: int):
    import datasets

    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(
        5,
        min(vocab_size, 64),
        (recipe.num_samples, recipe.max_seq_length),
        generator=generator,
    )
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def main() -> None:
    from transformers import AutoModelForMaskedLM

    recipe, args, masking = parse(MaskingArguments)
    model = build_model(AutoModelForMaskedLM, tiny_config, recipe)
    vocab_size = model.config.vocab_size
    raw = load_raw_dataset(recipe)
    if raw is None:
        dataset, mask_id, special = (
            synthetic_text(recipe, vocab_size),
            vocab_size - 1,
            set(),
        )
    else:
        tokenizer = load_tokenizer(recipe)
        tokenized = raw.map(
            lambda b: tokenizer(b[masking.text_column]),
            batched=True,
            remove_columns=raw.column_names,
        )
        dataset = group_texts(tokenized, recipe.max_seq_length).remove_columns("labels")
        mask_id, special = tokenizer.mask_token_id, set(tokenizer.all_special_ids)
    dataset = mask_tokens(dataset, mask_id, vocab_size, masking.mlm_probability, special)
    train, evaluation = split_for_eval(dataset, recipe)
    trainer = GalvatronTrainer(
        model,
        args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=tensor_collator,
    )
    load_pretrained_if_any(trainer, recipe)
    train_and_save(trainer, args)


if __name__ == "__main__":
    main_entry(main)
