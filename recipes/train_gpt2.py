"""Train a GPT-2 causal LM with GalvatronTrainer.

CPU smoke run (tiny model, synthetic data, 2 gloo processes):
    accelerate launch --multi_gpu --num_processes 2 recipes/train_gpt2.py --auto_parallel
GPU node: accelerate launch --config_file recipes/accelerate/1node_8gpu.yaml recipes/train_gpt2.py \
        --model_name_or_path gpt2-xl --tokenizer_name /data/gpt2 --dataset_path /data/corpus.txt \
        --max_seq_length 1024 --bf16 --auto_parallel
"""

from __future__ import annotations

from _causal_lm import run
from recipe_common import main_entry


def tiny_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=256,
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=128,
        n_inner=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def main() -> None:
    from transformers import AutoModelForCausalLM

    run(AutoModelForCausalLM, tiny_config)


if __name__ == "__main__":
    main_entry(main)
