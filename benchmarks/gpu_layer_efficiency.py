"""One GPU: the share of the matmul rate a whole HF Llama block reaches, by width and tokens per micro-batch.

The analytic cost model prices a layer as ``3 x forward FLOPs / (matmul rate x layer efficiency)``
(planner/cost_model/compute.py). This script measures that efficiency: it times forward + backward of one
HF Llama block (``LlamaModel`` with one layer: the block, its rotary embedding and a final RMSNorm; bf16,
SDPA, random inputs) and the rate of a large bf16 matmul on the same device, and reports

    efficiency = 3 x forward FLOPs (the adapter's count, as the planner uses) / (measured time x matmul rate)

for blocks of the Llama 1B, 8B, 13B and 70B shapes, and 70B's block as one rank of TP 8 holds it (heads and
FFN divided by 8), at 2,048 to 16,384 tokens per micro-batch.

    python benchmarks/gpu_layer_efficiency.py --output benchmarks/results/layer-efficiency/h200.json
    python benchmarks/gpu_layer_efficiency.py --tiny    # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

BLOCKS = {  # hidden, intermediate, heads, kv heads, head dim
    "llama-1b": (2048, 5632, 32, 4, 64),
    "llama-8b": (4096, 14336, 32, 8, 128),
    "llama-13b": (5120, 13824, 40, 40, 128),
    "llama-70b": (8192, 28672, 64, 8, 128),
    "llama-70b-tp8": (8192, 3584, 8, 1, 128),
}
POINTS = ((1, 2048), (2, 2048), (4, 2048), (8, 2048), (1, 8192))  # (micro-batch, sequence)
TINY_BLOCKS = {"tiny": (64, 128, 4, 2, 16)}
TINY_POINTS = ((1, 16), (2, 16))


def block_model(shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaModel

    hidden, ffn, heads, kv_heads, head_dim = shape
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_hidden_layers=1,
        vocab_size=256,
        max_position_embeddings=16384,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = LlamaModel(config).to(dtype)
    return config, model


def forward_flops(config, seq_len: int) -> float:
    """The adapter's count for the block at ``seq_len`` (per sample), as the planner prices it."""
    from galvatron_hf.adapters import describe_model

    spec = describe_model(config.to_dict() | {"model_type": "llama"}, seq_len=seq_len)
    return spec.blocks[0].forward_flops


def time_step(model, micro_batch: int, seq_len: int, device, dtype, repeats: int) -> float:
    hidden = model.config.hidden_size
    inputs = torch.randn(micro_batch, seq_len, hidden, device=device, dtype=dtype, requires_grad=True)

    def step():
        out = model(inputs_embeds=inputs).last_hidden_state
        out.backward(torch.ones_like(out))

    return median_seconds(step, device, repeats)


def median_seconds(work, device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            import time

            began = time.perf_counter()
            work()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def matmul_flops_per_s(device, dtype, side: int, repeats: int) -> float:
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats)
    return 2 * side**3 / seconds


def measure(blocks: dict, points, device, dtype, repeats: int, matmul_side: int) -> dict:
    rate = matmul_flops_per_s(device, dtype, matmul_side, repeats)
    print(f"matmul {matmul_side}^3 {dtype}: {rate / 1e12:.1f} TFLOP/s", flush=True)
    rows = []
    for name, shape in blocks.items():
        config, model = block_model(shape, device, dtype)
        for micro_batch, seq_len in points:
            seconds = time_step(model, micro_batch, seq_len, device, dtype, repeats)
            flops = 3 * forward_flops(config, seq_len) * micro_batch
            row = {
                "block": name,
                "hidden": shape[0],
                "micro_batch": micro_batch,
                "seq_len": seq_len,
                "tokens": micro_batch * seq_len,
                "step_ms": seconds * 1e3,
                "tflops": flops / seconds / 1e12,
                "efficiency": flops / seconds / rate,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"matmul_tflops": rate / 1e12, "matmul_side": matmul_side, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a tiny block on CPU (tests the script)")
    args = parser.parse_args(argv)
    if args.tiny:
        device, dtype, blocks, points, side = torch.device("cpu"), torch.float32, TINY_BLOCKS, TINY_POINTS, 128
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA device (--tiny runs a tiny block on CPU)")
        device, dtype, blocks, points, side = torch.device("cuda"), torch.bfloat16, BLOCKS, POINTS, 8192
    result = measure(blocks, points, device, dtype, args.repeats, side)
    result["environment"] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
