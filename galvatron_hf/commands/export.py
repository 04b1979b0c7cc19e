"""`galvatron-hf export CHECKPOINT OUT_DIR`: a training checkpoint as a Hugging Face model directory.

Offline, one process, CPU: the shards of whatever layout saved the checkpoint are reassembled into full
tensors and written with ``save_pretrained``, so ``AutoModel*.from_pretrained(OUT_DIR)`` loads the trained
model. The architecture comes from the checkpoint's config.json; the flags are for checkpoints without one.
A non-empty OUT_DIR is refused unless ``--overwrite``; a file is always refused.
"""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory written by save_checkpoint / GalvatronTrainer")
    parser.add_argument("out_dir", help="where to write the Hugging Face model (config.json + safetensors)")
    parser.add_argument(
        "--model_name_or_path",
        help="a local HF model directory whose config.json gives the architecture (default: the checkpoint's)",
    )
    parser.add_argument("--config", help="path to a config.json giving the architecture (same role)")
    parser.add_argument(
        "--model_class",
        help="transformers class to build, e.g. LlamaForCausalLM (default: the config's `architectures`)",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="dtype of the written weights (default: the config's `dtype`, fp32 if it names none)")
    parser.add_argument("--max_shard_size", default="5GB", help="largest safetensors file (default: 5GB)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into OUT_DIR even if it is not empty (its config.json and weights are replaced)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from galvatron_hf.checkpoint import CheckpointError, export_to_hf

    if args.model_name_or_path and args.config:
        print("error: give --model_name_or_path or --config, not both", file=sys.stderr)
        return 2
    try:
        out = export_to_hf(
            args.checkpoint,
            args.out_dir,
            config=args.model_name_or_path or args.config,
            model_class=args.model_class,
            dtype=getattr(torch, args.dtype) if args.dtype else None,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
        )
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} to {out}; load it with AutoModel*.from_pretrained({str(out)!r})")
    return 0
