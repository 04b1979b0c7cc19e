"""Train a Llama causal LM with GalvatronTrainer (or any causal LM of a supported family: the class comes from the
checkpoint's config, so a Qwen2 or Mistral directory works too).

CPU smoke run (tiny model, synthetic data, 2 gloo processes):
    torchrun --standalone --nproc_per_node 2 recipes/train_llama.py --auto_parallel
GPU node (8 GPUs), a bundled config with random init, a local text file:
    accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/train_llama.py \
        --model_name_or_path meta-llama/Llama-2-7b-hf --tokenizer_name /data/llama-tokenizer \
        --dataset_path /data/corpus.txt --max_seq_length 4096 --bf16 --auto_parallel --memory_gb 70
"""

from __future__ import annotations

from _causal_lm import run
from recipe_common import main_entry


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )


def main() -> None:
    from transformers import AutoModelForCausalLM

    run(AutoModelForCausalLM, tiny_config)


if __name__ == "__main__":
    main_entry(main)
