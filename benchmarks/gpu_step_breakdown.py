"""Where a training step's time goes on one GPU, next to what the cost model charges for each part.

The plan-accuracy runs (benchmarks/results/h100-plan-accuracy) found the predicted step 12-25 % short on
an H100, for our runtime and for the plain HF model alike. This script splits one real step into parts
that the cost model prices separately, so the missing time can be attributed instead of guessed:

1. phases, each bracketed by a device synchronisation: forward (with the loss), backward, gradient
   clipping, optimizer step, zero_grad; plus the unsynchronised step as the benchmarks time it;
2. in-situ module times from CUDA events: embedding, every block, final norm, LM head, loss in the
   forward; every block, norm, head + loss and embedding in the backward (tensor gradient hooks);
3. device time by kernel family (matmul, attention, elementwise/reduction, optimizer, copy/cast, comm)
   from ``torch.profiler`` over one step, and the share of the step the GPU sat idle;
4. the isolated layer timings the model profiler stores, synchronised (the old method) and with the
   host queued ahead (``profiler.timing.QueueAhead``), at several micro-batch sizes;
5. the cost model's own split of the same plan (analytic and, with --model_profile, profiled).

    python benchmarks/gpu_step_breakdown.py --config_dir CFG --plan plan.json [--plain_hf] --output out.json
    python benchmarks/gpu_step_breakdown.py --tiny      # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_plan_accuracy import (  # noqa: E402
    init_single_process,
    peak_memory,
    random_batch,
    reset_memory,
    sync,
    tiny_inputs,
)

KERNEL_FAMILIES = [  # first match wins; names of CUDA kernels as torch.profiler reports them
    ("comm", r"nccl"),
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|sm90|sm80|cublas|matmul|wgmma"),
    ("copy/cast", r"memcpy|memset|copy|cast|convert|to_copy|cat|fill"),
    ("loss", r"log_softmax|nll_loss|cross_entropy|softmax"),
    ("elementwise/reduction", r"elementwise|vectorized|reduce|norm|pointwise|unrolled|index|embedding"),
]


# ----- 1. phases -------------------------------------------------------------------------------------------
def micro_batches(batch: dict, count: int) -> list[dict]:
    return [{k: v.chunk(count)[i] for k, v in batch.items()} for i in range(count)]


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def phase_times(module, step_parts, batch, num_micro_batches, steps, warmup, device) -> dict:
    """Median seconds per phase over ``steps`` steps (after ``warmup``), each phase synchronised."""
    clip, optimizer_step, zero_grad = step_parts
    rows = []
    for index in range(warmup + steps):
        row = {"forward": 0.0, "backward": 0.0}
        parts = micro_batches(batch, num_micro_batches)
        for i, part in enumerate(parts):
            if len(parts) > 1 and hasattr(module, "set_requires_gradient_sync"):
                module.set_requires_gradient_sync(i == len(parts) - 1)
            seconds, loss = timed(device, lambda: module(**part).loss / len(parts))
            row["forward"] += seconds
            seconds, _ = timed(device, loss.backward)
            row["backward"] += seconds
        row["clip"], _ = timed(device, clip)
        row["optimizer"], _ = timed(device, optimizer_step)
        row["zero_grad"], _ = timed(device, zero_grad)
        if index >= warmup:
            rows.append(row)
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]}


def full_step(module, step_parts, batch, num_micro_batches) -> None:
    """One training step as ``ParallelModel.train_step`` runs it (sync on the last micro-batch), then clip,
    optimizer step and zero_grad."""
    parts = micro_batches(batch, num_micro_batches)
    for i, part in enumerate(parts):
        if len(parts) > 1 and hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(i == len(parts) - 1)
        (module(**part).loss / len(parts)).backward()
    for part_fn in step_parts:
        part_fn()


def unsynchronised_step_s(module, step_parts, batch, num_micro_batches, steps, warmup, device) -> float:
    """The step as the benchmarks time it: one synchronisation at each end."""
    times = [timed(device, lambda: full_step(module, step_parts, batch, num_micro_batches))[0]
             for _ in range(warmup + steps)]
    return statistics.median(times[warmup:])


# ----- 2. in-situ module times ------------------------------------------------------------------------------
class EventTrace:
    """CUDA events at module boundaries in forward and at gradient arrivals in backward."""

    def __init__(self, model) -> None:
        inner = model.model
        self.named = [("embedding", inner.embed_tokens)]
        self.named += [(f"block.{i}", layer) for i, layer in enumerate(inner.layers)]
        self.named += [("final_norm", inner.norm), ("head", model.lm_head)]
        self.forward: dict[str, list] = {}
        self.backward: dict[str, object] = {}
        self.handles = []
        for name, module in self.named:
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    @staticmethod
    def _event():
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pre(self, name):
        def hook(module, args):
            self.forward[name] = [self._event(), None]
            hidden = args[0] if args else None
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(self._grad_hook(f"{name}:input_grad"))

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.forward[name][1] = self._event()
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state", output)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._grad_hook(f"{name}:output_grad"))

        return hook

    def _grad_hook(self, key):
        def hook(grad):
            self.backward[key] = self._event()

        return hook

    def measure(self, module, batch) -> dict:
        """One forward + backward of ``batch``; milliseconds per module and phase."""
        torch.cuda.synchronize()
        self.forward, self.backward = {}, {}
        forward_start = self._event()
        loss = module(**batch).loss
        forward_end = self._event()
        loss.backward()
        backward_end = self._event()
        torch.cuda.synchronize()
        ms = {f"forward:{name}": start.elapsed_time(end) for name, (start, end) in self.forward.items()}
        ms["forward:total"] = forward_start.elapsed_time(forward_end)
        ms["forward:loss_and_rest"] = ms["forward:total"] - sum(
            v for k, v in ms.items() if k.startswith("forward:") and k != "forward:total"
        )
        grads = self.backward
        names = [name for name, _ in self.named]
        ms["backward:head+loss"] = forward_end.elapsed_time(grads["head:input_grad"])
        ms["backward:final_norm"] = grads["head:input_grad"].elapsed_time(grads["final_norm:input_grad"])
        blocks = [n for n in names if n.startswith("block.")]
        for name in blocks:
            ms[f"backward:{name}"] = grads[f"{name}:output_grad"].elapsed_time(grads[f"{name}:input_grad"])
        ms["backward:embedding"] = grads[f"{blocks[0]}:input_grad"].elapsed_time(backward_end)
        ms["backward:total"] = forward_end.elapsed_time(backward_end)
        return ms

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def summarise_trace(ms: dict) -> dict:
    blocks_f = [v for k, v in ms.items() if k.startswith("forward:block.")]
    blocks_b = [v for k, v in ms.items() if k.startswith("backward:block.")]
    summary = {k: round(v, 3) for k, v in ms.items() if ".block." not in k and "block." not in k}
    summary["forward:block_median"] = round(statistics.median(blocks_f), 3)
    summary["forward:blocks_sum"] = round(sum(blocks_f), 3)
    summary["backward:block_median"] = round(statistics.median(blocks_b), 3)
    summary["backward:blocks_sum"] = round(sum(blocks_b), 3)
    return summary


# ----- 3. kernel families -----------------------------------------------------------------------------------
def kernel_families(step_fn, device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    step_fn()  # warm
    sync(device)
    wall_start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step_fn()
        sync(device)
    wall_ms = (time.perf_counter() - wall_start) * 1e3
    families: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:  # CPU ops repeat their kernels' time
            continue
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        if not device_us:
            continue
        name = event.key
        family = next((fam for fam, pattern in KERNEL_FAMILIES if re.search(pattern, name, re.I)), "other")
        families[family] = families.get(family, 0.0) + device_us / 1e3
        top.append((name[:120], device_us / 1e3))
    busy = sum(families.values())
    top.sort(key=lambda item: -item[1])
    return {
        "wall_ms_under_profiler": round(wall_ms, 2),
        "device_busy_ms": round(busy, 2),
        "families_ms": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(name, round(ms, 2)) for name, ms in top[:25]],
    }


# ----- 4. isolated layer timings ----------------------------------------------------------------------------
def isolated_layers(config, seq_len: int, micro_batch_sizes: list[int], device) -> list[dict]:
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.profiler.model_profiler import (
        ModelProfileOptions,
        build_reduced_model,
        capture_calls,
        measure_layer,
        representative_layers,
        scaled_lengths,
        warm_up,
    )
    from galvatron_hf.profiler.timing import Repeats

    spec = describe_model(config, seq_len=seq_len)
    options = ModelProfileOptions(seq_len=seq_len, micro_batch_sizes=tuple(micro_batch_sizes), dtype="bf16")
    model = build_reduced_model(config, spec, options, device)
    layers = [layer for layer in representative_layers(spec) if layer.kind in ("decoder_block", "head")]
    warm_up(model, spec, layers, (micro_batch_sizes[0], seq_len), device)
    rows = []
    for micro_batch in micro_batch_sizes:
        calls = capture_calls(model, spec, layers, micro_batch, seq_len, device)
        for layer in layers:
            layer_seq, kv_seq = scaled_lengths(layer, spec, seq_len)
            row = {"kind": layer.kind, "micro_batch_size": micro_batch}
            for queue_ahead in (False, True):
                point = measure_layer(layer, calls[layer.name], micro_batch, layer_seq, kv_seq, device,
                                      Repeats(2, 5), queue_ahead)
                label = "queued" if queue_ahead else "synchronised"
                row[f"{label}_forward_ms"] = round(point.forward_s * 1e3, 3)
                row[f"{label}_backward_ms"] = round(point.backward_s * 1e3, 3)
                row[f"{label}_recompute_ms"] = round(point.checkpointed_forward_s * 1e3, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del calls
    del model
    return rows


# ----- 5. the cost model's split ----------------------------------------------------------------------------
def predicted_split(config, plan, hardware_path: Path | None, model_profile: Path | None) -> dict:
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.planner.cost_model import CostModel
    from galvatron_hf.profiler.builtin_hardware import builtin_hardware
    from galvatron_hf.profiler.hardware_schema import HardwareProfile

    spec = describe_model(config, seq_len=plan.seq_len)
    hardware = HardwareProfile.load(hardware_path) if hardware_path else builtin_hardware("h100")
    sources = {"analytic": None}
    if model_profile:
        from galvatron_hf.planner.profiled_costs import ProfiledCompute
        from galvatron_hf.profiler.model_schema import ModelProfile

        sources["profiled"] = ProfiledCompute(ModelProfile.load(model_profile), CostModel(spec, hardware).compute)
    out = {}
    samples = plan.micro_batch_size
    for name, compute in sources.items():
        model = CostModel(spec, hardware, mixed_precision=plan.mixed_precision, compute=compute)
        block = spec.blocks[0]
        row = {"block_forward_ms": model.compute.forward_time_s(block, samples, 1) * 1e3,
               "block_backward_ms": model.compute.backward_time_s(block, samples, 1) * 1e3}
        for layer in list(spec.pre_layers) + list(spec.post_layers):
            row[f"{layer.kind}_forward_ms"] = model.compute.forward_time_s(layer, samples, 1) * 1e3
            row[f"{layer.kind}_backward_ms"] = model.compute.backward_time_s(layer, samples, 1) * 1e3
        row["optimizer_ms"] = model.optimizer_step_s(spec.total_params) * 1e3
        row["blocks"] = len(spec.blocks)
        out[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    return out


# ----- drivers ----------------------------------------------------------------------------------------------
def ours(config, plan, device, args) -> dict:
    from transformers import AutoModelForCausalLM

    from galvatron_hf.parallel import parallelize

    reset_memory(device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    pm = parallelize(model, plan, device=device)
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-5, fused=device.type == "cuda")  # the Trainer's default
    return measure_all("ours", pm.module, plan, device, args, (
        lambda: pm.clip_grad_norm_(1.0), lambda: pm.step(optimizer), lambda: optimizer.zero_grad(set_to_none=True)))


def plain_hf(config, plan, device, args) -> dict:
    from transformers import AutoModelForCausalLM

    reset_memory(device)
    model = AutoModelForCausalLM.from_config(config).to(device)
    model.config.use_cache = False
    if any(layer.checkpoint for layer in plan.layers):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.mixed_precision)

    class Autocast(torch.nn.Module):  # the HF model under autocast, with the module tree reachable
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.model, self.lm_head = inner.model, inner.lm_head

        def forward(self, **batch):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return self.inner(**batch)

    return measure_all("plain_hf", Autocast(model), plan, device, args, (
        lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), optimizer.step,
        lambda: optimizer.zero_grad(set_to_none=True)))


def measure_all(label, module, plan, device, args, step_parts) -> dict:
    module.train()
    batch = random_batch(module.model.config.vocab_size if hasattr(module.model, "config") else 0,
                         plan.global_batch_size, plan.seq_len, device, 0)
    m = plan.num_micro_batches
    result = {"run": label}
    try:
        result["step_s"] = unsynchronised_step_s(module, step_parts, batch, m, args.steps, args.warmup, device)
        result["phases_s"] = phase_times(module, step_parts, batch, m, args.steps, 1, device)
        if device.type == "cuda":
            trace = EventTrace(module)
            one = micro_batches(batch, m)[0]
            runs = [trace.measure(module, one) for _ in range(3)]
            step_parts[2]()
            trace.remove()
            result["in_situ_ms_per_micro_batch"] = summarise_trace(runs[-1])

            result["kernels"] = kernel_families(lambda: full_step(module, step_parts, batch, m), device)
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
    allocated, reserved = peak_memory(device)
    result["peak_allocated_gb"], result["peak_reserved_gb"] = allocated, reserved
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_dir", type=Path)
    parser.add_argument("--plan", type=Path, nargs="+", default=[])
    parser.add_argument("--hardware", type=Path, help="hardware profile JSON for the predicted split")
    parser.add_argument("--model_profile", type=Path, help="model profile JSON for the profiled split")
    parser.add_argument("--plain_hf", action="store_true", help="also break down the plain HF model's step")
    parser.add_argument("--isolated_micro_batches", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoConfig

    from galvatron_hf.planner.plan import Plan

    if args.tiny:
        args.config_dir, args.plan = tiny_inputs(Path(tempfile.mkdtemp(prefix="breakdown_tiny_")))
        args.steps, args.warmup, args.isolated_micro_batches = 1, 1, [1, 2]
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    init_single_process(device)
    config = AutoConfig.from_pretrained(args.config_dir)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "plans": []}
    for path in args.plan:
        plan = Plan.load(path)
        entry = {"plan": path.name, "global_batch_size": plan.global_batch_size,
                 "num_micro_batches": plan.num_micro_batches, "seq_len": plan.seq_len,
                 "predicted_step_s": plan.predicted.step_time_s if plan.predicted else None,
                 "predicted_split": predicted_split(config, plan, args.hardware, args.model_profile),
                 "runs": [ours(config, plan, device, args)]}
        if args.plain_hf:
            entry["runs"].append(plain_hf(config, plan, device, args))
        report["plans"].append(entry)
    seq_len = Plan.load(args.plan[0]).seq_len
    if args.isolated_micro_batches:
        report["isolated_layers"] = isolated_layers(config, seq_len, args.isolated_micro_batches, device)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
