"""One-GPU check of the runtime: a ~1B Llama (random weights, bf16, SDPA) trained through ``parallelize``.

Builds the model, computes the eager HF loss of one batch (bf16 autocast, no parallelisation), then
parallelises the same model in place under a 1-GPU plan (every block checkpointed, FSDP2 bf16 mixed
precision with fp32 master weights), runs a few AdamW train steps and prints the first-step loss next to
the eager loss, step times and peak memory. ``--tiny`` runs a tiny config on CPU (gloo) to test the script.

    python benchmarks/gpu_runtime_check.py            # on one CUDA GPU
    python benchmarks/gpu_runtime_check.py --tiny     # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
    # TinyLlama-1.1B shape
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )


def one_gpu_plan(num_blocks: int, batch: int, seq_len: int):
    from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy

    return Plan(
        world_size=1,
        pp=1,
        schedule="gpipe",
        global_batch_size=batch,
        num_micro_batches=1,
        layers=[LayerStrategy(0, 1, 1, "ddp", True) for _ in range(num_blocks)],
        vocab=VocabStrategy(1, 1, "ddp"),
        seq_len=seq_len,
        mixed_precision="bf16",
    )


def init_single_process(device: torch.device) -> None:
    if dist.is_initialized():
        return
    store = os.path.join(tempfile.mkdtemp(prefix="gpu_runtime_check_"), "store")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (tests the script)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    args = parser.parse_args(argv)

    from transformers import LlamaForCausalLM

    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda", 0)
    seq_len = min(args.seq_len, 32) if args.tiny else args.seq_len
    init_single_process(device)
    config = llama_config(args.tiny)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, seq_len), generator=gen).to(device)
    batch = {"input_ids": ids, "labels": ids}

    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        eager_loss = model(**batch).loss.float().item()

    spec = describe_model(model, seq_len=seq_len)
    plan = one_gpu_plan(spec.num_blocks, args.batch, seq_len)
    pm = parallelize(model, plan, spec=spec, device=device, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-4, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = pm.train_step(batch)
        pm.clip_grad_norm_(1.0)
        pm.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)

    params = sum(p.numel() for p in model.parameters())
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": params,
        "batch": args.batch,
        "seq_len": seq_len,
        "eager_loss_bf16": eager_loss,
        "losses": losses,
        "first_loss_rel_diff": abs(losses[0] - eager_loss) / abs(eager_loss),
        "step_s": times,
        "tokens_per_s_last": args.batch * seq_len / times[-1],
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(json.dumps(report, indent=2))
    ok = report["first_loss_rel_diff"] < 2e-2 and all(torch.isfinite(torch.tensor(losses)))
    print(
        "CHECK",
        "PASSED" if ok else "FAILED",
        "(first train-step loss vs eager bf16 loss within 2e-2)",
    )
    dist.destroy_process_group()
    if not ok:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
