"""LoRA fine-tuning of a Llama causal LM with GalvatronTrainer (needs galvatron-hf[peft]).

The model is wrapped with PEFT before the trainer sees it; the plan prices the frozen base without gradients or
optimizer state, and trainer.save_model writes the adapter (PeftModel.from_pretrained(base, dir) loads it).

CPU smoke run (tiny model, synthetic data, 2 gloo processes):
    torchrun --standalone --nproc_per_node 2 recipes/lora_llama.py --dp_type zero3 --save_strategy steps
GPU node, pretrained weights in a local directory (each process reads the whole base model into host memory
before it is sharded; plan first with `galvatron-hf search ... --lora_rank 16`):
    accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/lora_llama.py \
        --model_name_or_path /data/Llama-2-7b-hf --tokenizer_name /data/Llama-2-7b-hf \
        --dataset_path /data/corpus.txt --max_seq_length 4096 --bf16 --auto_parallel --lora_rank 16
"""

from __future__ import annotations

from dataclasses import dataclass, field

from _causal_lm import synthetic_blocks, text_blocks
from recipe_common import (
    build_model,
    is_pretrained_directory,
    load_raw_dataset,
    main_entry,
    parse,
    split_for_eval,
    tensor_collator,
    train_and_save,
)
from train_llama import tiny_config

from galvatron_hf import GalvatronTrainer


@dataclass
class LoraArguments:
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scaling = alpha / r)."})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "Comma-separated modules LoRA adapts."}
    )


def main() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    recipe, args, lora = parse(LoraArguments)
    if is_pretrained_directory(recipe.model_name_or_path):  # the base weights, before PEFT wraps the model
        model = LlamaForCausalLM.from_pretrained(recipe.model_name_or_path)
    else:
        model = build_model(LlamaForCausalLM, tiny_config, recipe)
    targets = [name.strip() for name in lora.lora_target_modules.split(",") if name.strip()]
    model = get_peft_model(model, LoraConfig(r=lora.lora_rank, lora_alpha=lora.lora_alpha, target_modules=targets))
    raw = load_raw_dataset(recipe)
    dataset = synthetic_blocks(recipe, model.config.vocab_size) if raw is None else text_blocks(recipe, raw, "text")
    train, evaluation = split_for_eval(dataset, recipe)
    trainer = GalvatronTrainer(
        model, args, train_dataset=train, eval_dataset=evaluation, data_collator=tensor_collator
    )
    train_and_save(trainer, args)  # save_model writes the adapter


if __name__ == "__main__":
    main_entry(main)
