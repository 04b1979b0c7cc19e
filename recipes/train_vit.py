"""Train a ViT image classifier with GalvatronTrainer.

Synthetic images by default (random pixels, labels from a fixed random projection, so there is something to
learn); a real run reads an image folder (``--dataset_path DIR`` with one sub-folder per class) or a
save_to_disk dataset with ``image`` / ``label`` columns, preprocessed with the model directory's image processor.

CPU smoke run: torchrun --standalone --nproc_per_node 2 recipes/train_vit.py --auto_parallel
GPU node: accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/train_vit.py \
        --model_name_or_path /models/vit-large-patch16-224 --dataset_path /data/imagenet/train --bf16 --auto_parallel
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from recipe_common import (
    RecipeArguments,
    build_model,
    load_pretrained_if_any,
    load_raw_dataset,
    main_entry,
    parse,
    split_for_eval,
    tensor_collator,
    train_and_save,
)

from galvatron_hf.trainer import GalvatronTrainer

NUM_LABELS = 5


@dataclass
class ImageArguments:
    image_column: str = field(default="image", metadata={"help": "Image column of a real dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of a real dataset."})


def tiny_config():
    from transformers import ViTConfig

    return ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_LABELS,
    )


def synthetic_images(samples: int, config):
    import datasets

    generator = torch.Generator().manual_seed(1234)
    size = config.image_size
    pixels = torch.randn(samples, config.num_channels, size, size, generator=generator)
    projection = torch.randn(config.num_channels * size * size, config.num_labels, generator=generator)
    labels = (pixels.flatten(1) @ projection).argmax(dim=1)
    return datasets.Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()})


def real_images(raw, recipe: RecipeArguments, image: ImageArguments):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(recipe.model_name_or_path)

    def preprocess(batch: dict) -> dict:
        pixels = processor(
            [img.convert("RGB") for img in batch[image.image_column]],
            return_tensors="np",
        )
        return {
            "pixel_values": pixels["pixel_values"].tolist(),
            "labels": batch[image.label_column],
        }

    return raw.map(preprocess, batched=True, remove_columns=raw.column_names)


def main() -> None:
    from transformers import AutoModelForImageClassification

    recipe, args, image = parse(ImageArguments)
    model = build_model(AutoModelForImageClassification, tiny_config, recipe)
    raw = load_raw_dataset(recipe)
    dataset = synthetic_images(recipe.num_samples, model.config) if raw is None else real_images(raw, recipe, image)
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
