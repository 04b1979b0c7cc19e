"""Allocated memory at each phase of a step, for uniform 1-GPU plans with and without gradient accumulation.

The cost model predicts the peak of a step as static state + activations + the worst workspace at the start
of backward (docs/cost_model.md). On one H100 that held within 0.4 % for one micro-batch, but two
micro-batches of 8 peaked 6 GB higher than predicted while four of 4 did not. This script records
``torch.cuda.memory_allocated`` before and after every forward and backward of every micro-batch, the
peak inside each, and the allocation when the loss gradient reaches the LM head's input (the predicted
peak moment), so the extra can be located. It drives the module as ``ParallelModel.train_step`` does
(gradient sync only on the last micro-batch).

    python benchmarks/gpu_memory_phases.py --config_dir CFG --shapes 8x1 8x2 4x4 --output phases.json
    python benchmarks/gpu_memory_phases.py --tiny     # CPU smoke test of the script (no allocator figures)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_plan_accuracy import init_single_process, random_batch, reset_memory  # noqa: E402

GB = 1e9


class Memory:
    """Allocated bytes now, and the peak since the last ``mark`` (0 on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        return torch.cuda.memory_allocated() / GB if self.cuda else 0.0

    def mark(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> float:
        if not self.cuda:
            return 0.0
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GB


def one_step(pm, optimizer, batch, micro_batches: int, memory: Memory) -> list[dict]:
    rows = []
    module = pm.module
    parts = [{k: v.chunk(micro_batches)[i] for k, v in batch.items()} for i in range(micro_batches)]
    for index, part in enumerate(parts):
        if micro_batches > 1:
            module.set_requires_gradient_sync(index == micro_batches - 1)
        row = {"micro_batch": index, "before_forward": memory.now()}
        memory.mark()
        seen = {}
        output = module(**part)
        loss = output.loss / micro_batches
        del output
        row["forward_peak"], row["after_forward"] = memory.peak(), memory.now()
        hidden = module.lm_head.__dict__.pop("_galvatron_phase_input", None)
        if hidden is not None:
            hidden.register_hook(lambda grad: seen.update(at_head_input_grad=memory.now()) or None)
            del hidden
        memory.mark()
        loss.backward()
        row["backward_peak"], row["after_backward"] = memory.peak(), memory.now()
        row.update(seen)
        rows.append(row)
    memory.mark()
    pm.clip_grad_norm_(1.0)
    pm.step(optimizer)
    rows.append({"phase": "clip+optimizer", "peak": memory.peak(), "after": memory.now()})
    optimizer.zero_grad(set_to_none=True)
    rows.append({"phase": "after zero_grad", "after": memory.now()})
    return rows


def keep_head_input(module) -> None:
    """Remember the LM head's input tensor so its gradient can be hooked (the start of the blocks' backward)."""

    def hook(head, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            head._galvatron_phase_input = args[0]

    module.lm_head.register_forward_pre_hook(hook)


def run_shape(config, spec, micro_batch: int, micro_batches: int, seq_len: int, device, steps: int) -> dict:
    from transformers import AutoModelForCausalLM

    from galvatron_hf.parallel import parallelize
    from galvatron_hf.planner.cost_model import estimate_plan
    from galvatron_hf.planner.search import uniform_plan
    from galvatron_hf.profiler.builtin_hardware import builtin_hardware

    plan = uniform_plan(spec, 1, global_batch_size=micro_batch * micro_batches, num_micro_batches=micro_batches,
                        mixed_precision="bf16" if device.type == "cuda" else "fp32")
    report = estimate_plan(plan, spec, builtin_hardware("h100", 1))
    stage = report.stages[0]
    reset_memory(device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    pm = parallelize(model, plan, device=device)
    keep_head_input(pm.module)
    optimizer = torch.optim.AdamW(pm.parameters(), lr=1e-5, fused=device.type == "cuda")
    batch = random_batch(config.vocab_size, micro_batch * micro_batches, seq_len, device, 0)
    memory = Memory(device)
    result = {"shape": f"{micro_batch}x{micro_batches}", "predicted": {
        "static_gb": stage.static_gb, "activation_gb": stage.activation_gb, "workspace_gb": stage.workspace_gb,
        "grad_gb": stage.grad_gb, "reserved_gb": stage.reserved_gb, "peak_gb": stage.peak_memory_gb}}
    try:
        result["steps"] = [one_step(pm, optimizer, batch, micro_batches, memory) for _ in range(steps)]
    except torch.OutOfMemoryError as error:
        result["error"] = f"out of memory: {str(error)[:200]}"
    del pm, model, optimizer
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_dir", type=Path)
    parser.add_argument("--shapes", nargs="+", default=["8x1", "8x2", "4x4"], help="MICROBATCHxCOUNT")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoConfig, LlamaConfig

    from galvatron_hf.adapters import describe_model

    if args.tiny:
        args.config_dir = Path(tempfile.mkdtemp(prefix="memory_phases_"))
        LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64).save_pretrained(args.config_dir)
        args.shapes, args.seq_len, args.steps = ["2x1", "2x2"], 32, 1
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    init_single_process(device)
    config = AutoConfig.from_pretrained(args.config_dir)
    spec = describe_model(config, seq_len=args.seq_len)
    results = []
    for shape in args.shapes:
        micro_batch, count = (int(x) for x in shape.split("x"))
        results.append(run_shape(config, spec, micro_batch, count, args.seq_len, device, args.steps))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
