"""The causal-LM task shared by train_llama.py and train_gpt2.py: synthetic token blocks or tokenized text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from recipe_common import (
    RecipeArguments,
    build_model,
    group_texts,
    load_pretrained_if_any,
    load_raw_dataset,
    load_tokenizer,
    parse,
    split_for_eval,
    tensor_collator,
    train_and_save,
)

from galvatron_hf.trainer import GalvatronTrainer


def synthetic_blocks(recipe: RecipeArguments, vocab_size: int):
    """Random token blocks (labels = inputs; the model shifts them): enough to watch the loss fall."""
    import datasets

    generator = torch.Generator().manual_seed(1234)
    # a small repeated vocabulary subset makes the sequences learnable within a few steps
    ids = torch.randint(
        0,
        min(vocab_size, 64),
        (recipe.num_samples, recipe.max_seq_length),
        generator=generator,
    )
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "labels": ids.tolist(),
        }
    )


def text_blocks(recipe: RecipeArguments, raw, text_column: str):
    tokenizer = load_tokenizer(recipe)
    tokenized = raw.map(
        lambda batch: tokenizer(batch[text_column]),
        batched=True,
        remove_columns=raw.column_names,
    )
    return group_texts(tokenized, recipe.max_seq_length)


def run(auto_class: type, tiny_config: Callable[[], Any], text_column: str = "text") -> None:
    recipe, args, _ = parse()
    model = build_model(auto_class, tiny_config, recipe)
    raw = load_raw_dataset(recipe)
    dataset = (
        synthetic_blocks(recipe, model.config.vocab_size) if raw is None else text_blocks(recipe, raw, text_column)
    )
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
