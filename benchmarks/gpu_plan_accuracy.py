"""Predicted vs measured: run searched 1-GPU plans for real and compare with what the planner promised.

For each plan file (written by ``galvatron-hf search --output``), build the model from a local config on
the meta device, apply the plan with ``parallelize``, train a few fused-AdamW steps (the HF Trainer's default
optimizer) on random tokens and measure
the median step time and the peak memory (``torch.cuda.max_memory_allocated``, which counts tensors only,
as the planner does; reserved memory is reported beside it). The same batch also runs through the plain
HF model (bf16 autocast, the plan's checkpointing through ``gradient_checkpointing_enable``) as a baseline,
so the runtime's overhead shows as a ratio. Results go to stdout and, with ``--output``, to JSON.

    python benchmarks/gpu_plan_accuracy.py --config_dir CFG --plan plan-profiled.json plan-analytic.json
    python benchmarks/gpu_plan_accuracy.py --tiny          # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

GB = 1e9  # the planner's GB


def init_single_process(device: torch.device) -> None:
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # memory statistics need an initialised CUDA context
    store = os.path.join(tempfile.mkdtemp(prefix="plan_accuracy_"), "store")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()  # FSDP modules and DTensors form reference cycles: free the previous run's memory first
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return 0.0, 0.0
    return torch.cuda.max_memory_allocated(device) / GB, torch.cuda.max_memory_reserved(device) / GB


def random_batch(vocab_size: int, batch: int, seq_len: int, device: torch.device, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids.to(device), "labels": ids.clone().to(device)}


def time_steps(step_fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        step_fn(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_plan(config, plan, device, steps: int, warmup: int) -> dict:
    """Train ``steps`` steps under ``plan`` through parallelize; measured step time and peak memory."""
    from transformers import AutoModelForCausalLM

    from galvatron_hf.parallel import parallelize

    reset_memory(device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    pm = parallelize(model, plan, device=device)
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-5, fused=device.type == "cuda")
    batches = [random_batch(config.vocab_size, plan.global_batch_size, plan.seq_len, device, s) for s in range(2)]
    losses = []

    def step(i: int) -> None:
        loss = pm.train_step(batches[i % 2])
        pm.clip_grad_norm_(1.0)
        pm.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))

    try:
        times = time_steps(step, steps, warmup, device)
    except torch.OutOfMemoryError:
        allocated, reserved = peak_memory(device)
        del pm, model, optimizer
        return {"error": "out of memory", "peak_allocated_gb": allocated, "peak_reserved_gb": reserved}
    allocated, reserved = peak_memory(device)
    del pm, model, optimizer
    return {"step_times_s": times, "median_step_s": statistics.median(times), "peak_allocated_gb": allocated,
            "peak_reserved_gb": reserved, "losses": losses}


def run_plain_hf(config, plan, device, steps: int, warmup: int) -> dict:
    """The same batch through the plain HF model: fp32 weights, bf16 autocast, AdamW, HF checkpointing."""
    from transformers import AutoModelForCausalLM

    reset_memory(device)
    model = AutoModelForCausalLM.from_config(config).to(device)
    model.config.use_cache = False
    if any(layer.checkpoint for layer in plan.layers):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    batches = [random_batch(config.vocab_size, plan.global_batch_size, plan.seq_len, device, s) for s in range(2)]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.mixed_precision)

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batches[i % 2]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        times = time_steps(step, steps, warmup, device)
    except torch.OutOfMemoryError:
        del model, optimizer
        return {"error": "out of memory"}
    allocated, reserved = peak_memory(device)
    del model, optimizer
    return {"median_step_s": statistics.median(times), "peak_allocated_gb": allocated, "peak_reserved_gb": reserved}


def compare(name: str, plan, measured: dict, plain: dict) -> dict:
    predicted = plan.predicted
    row = {"plan": name, "global_batch_size": plan.global_batch_size, "seq_len": plan.seq_len,
           "checkpointed_layers": sum(layer.checkpoint for layer in plan.layers), "measured": measured,
           "plain_hf": plain}
    if "median_step_s" not in measured:
        return row
    if predicted is not None:
        row["predicted"] = {"step_time_s": predicted.step_time_s, "peak_memory_gb": max(predicted.peak_memory_gb),
                            "source": predicted.source}
        row["step_time_error"] = predicted.step_time_s / measured["median_step_s"] - 1
        if measured["peak_allocated_gb"]:
            row["peak_memory_error"] = max(predicted.peak_memory_gb) / measured["peak_allocated_gb"] - 1
    if "median_step_s" in plain:
        row["speed_ratio_ours_vs_plain_hf"] = plain["median_step_s"] / measured["median_step_s"]
    return row


def tiny_inputs(workdir: Path) -> tuple[Path, list[Path]]:
    """A tiny config and a searched plan for it, so the script can be tested without a GPU."""
    from transformers import LlamaConfig

    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.search import search_plan
    from galvatron_hf.profiler.builtin_hardware import builtin_hardware

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config.save_pretrained(workdir)
    spec = describe_model(config, seq_len=32)
    result = search_plan(spec, builtin_hardware("h100"), 1, 80.0, global_batch_size=4, mixed_precision="fp32")
    return workdir, [result.best.plan.save(workdir / "plan.json")]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_dir", type=Path, help="directory with config.json")
    parser.add_argument("--plan", type=Path, nargs="+", default=[], help="plan files from `galvatron-hf search`")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no_baseline", action="store_true", help="skip the plain HF baseline")
    parser.add_argument("--output", type=Path, help="write the comparison as JSON here")
    parser.add_argument("--tiny", action="store_true", help="tiny config and plan on CPU (tests the script)")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    from galvatron_hf.planner.plan import Plan

    if args.tiny:
        args.config_dir, args.plan = tiny_inputs(Path(tempfile.mkdtemp(prefix="plan_accuracy_tiny_")))
        args.steps, args.warmup = 2, 1
    if not args.config_dir or not args.plan:
        parser.error("--config_dir and --plan are required (or --tiny)")
    if len(args.plan) > 1:
        return run_each_in_own_process(args)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    init_single_process(device)
    config = AutoConfig.from_pretrained(args.config_dir)
    rows = []
    for path in args.plan:
        plan = Plan.load(path)
        measured = run_plan(config, plan, device, args.steps, args.warmup)
        plain = {} if args.no_baseline else run_plain_hf(config, plan, device, args.steps, args.warmup)
        rows.append(compare(path.name, plan, measured, plain))
        print(json.dumps(rows[-1], indent=2), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                                           "torch": torch.__version__, "results": rows}, indent=2) + "\n")
    dist.destroy_process_group()
    return rows


def run_each_in_own_process(args: argparse.Namespace) -> list[dict]:
    """One process per plan: a model parallelised earlier in the same process left about 6 GB allocated on an
    H100 (benchmarks/gpu_memory_phases.py saw the base memory grow run by run), which a later plan's peak then
    counted as its own."""
    rows, device_name, torch_version = [], "cpu", torch.__version__
    for plan_path in args.plan:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "one.json"
            command = [sys.executable, __file__, "--config_dir", str(args.config_dir), "--plan", str(plan_path),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--output", str(out)]
            if args.no_baseline:
                command.append("--no_baseline")
            subprocess.run(command, check=True)
            result = json.loads(out.read_text())
        rows += result["results"]
        device_name, torch_version = result["device"], result["torch"]
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"device": device_name, "torch": torch_version, "results": rows,
                                           "one_process_per_plan": True}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
