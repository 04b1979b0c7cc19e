"""Phase 3, step 2 (under torchrun, one launch per run): train a few steps and measure.

    torchrun --standalone --nproc_per_node N benchmarks/multi_gpu/measure.py --config CFG --plan P.json --out R.json
    torchrun --standalone --nproc_per_node N benchmarks/multi_gpu/measure.py --config CFG --fsdp2 \
        --global_batch 32 --seq_len 2048 --out R.json

``--plan``: our runtime (``parallelize`` on a meta-device model, materialised shard by shard) under a plan file
from plans.py. ``--fsdp2``: the baseline, the plain HF model through accelerate's FSDP2 plugin
(``FullyShardedDataParallelPlugin(fsdp_version=2)``, every ``LlamaDecoderLayer`` its own unit, ZeRO-3
resharding, bf16 compute with fp32 reduction, as our bf16) in the loop the HF Trainer runs inside (prepare,
forward, ``accelerator.backward``, clip, step, zero_grad), without its data loader and logging.

Both get the same random global batch, split over their data ranks, fused AdamW (one group per device mesh, so
fused kernels never mix meshes), gradient clipping to 1.0. Recorded: step times after warm-up (median),
the loss per step, peak memory per rank (``max_memory_allocated``, tensors only, as the planner counts; and
reserved), max over ranks. Out of memory on any rank is written as ``status: "oom"`` by that rank, which then
exits; torchrun stops the others. No GPU numbers come out of ``--cpu`` (gloo, one thread per rank): it only
proves the script runs. accelerate does not apply its FSDP plugin on CPU (its state becomes non-distributed),
so the CPU dry run calls accelerate's own ``fsdp2_prepare_model`` with the same plugin and says so.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def optimizer_for(module: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with one parameter group per device mesh: a fused step runs group by group, and a mixed
    per-layer plan puts DTensors of several meshes in one model."""
    groups: dict[object, list] = {}
    for param in module.parameters():
        if param.requires_grad:
            mesh = getattr(param, "device_mesh", None)
            groups.setdefault(None if mesh is None else id(mesh), []).append(param)
    return torch.optim.AdamW([{"params": p} for p in groups.values()], lr=1e-5, fused=device.type == "cuda")


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> tuple[float | None, float | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device) / common.GB, torch.cuda.max_memory_reserved(device) / common.GB


# ----- our runtime --------------------------------------------------------------------------------------------
def build_ours(config, plan_path: Path, launch: common.Launch):
    from transformers import LlamaForCausalLM

    from galvatron_hf.parallel import parallelize
    from galvatron_hf.planner.plan import Plan

    plan = Plan.load(plan_path)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    pm = parallelize(model, plan, device=launch.device, attn_implementation="sdpa")
    optimizer = optimizer_for(pm.module, launch.device)

    def step(batch: dict) -> float:
        loss = pm.train_step(common.part_of(batch, pm.data_rank, pm.data_size))
        pm.clip_grad_norm_(1.0)
        pm.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return plan.global_batch_size, plan.seq_len, step, {"plan": plan.to_dict()}


# ----- accelerate FSDP2 baseline -----------------------------------------------------------------------------
def fsdp2_plugin(precision: str, checkpoint: bool):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = None
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
        reshard_after_forward=True,
        mixed_precision_policy=policy,
        activation_checkpointing=checkpoint,
        state_dict_type="SHARDED_STATE_DICT",
    )


def build_fsdp2(config, args, launch: common.Launch):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import LlamaForCausalLM

    plugin = fsdp2_plugin(args.precision, args.checkpoint)
    accelerator = Accelerator(mixed_precision="bf16" if args.precision == "bf16" else "no", fsdp_plugin=plugin)
    config._attn_implementation = "sdpa"
    with torch.device(launch.device):
        model = LlamaForCausalLM(config)
    model.config.use_cache = False
    if accelerator.distributed_type == DistributedType.FSDP:  # GPUs: the path HF Trainer takes
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=launch.device.type == "cuda")
        model, optimizer = accelerator.prepare(model, optimizer)
        how = "accelerator.prepare with FullyShardedDataParallelPlugin(fsdp_version=2)"
    else:  # accelerate leaves FSDP off (on CPU it always does): apply its own FSDP2 wrapping directly
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        accelerator.state.fsdp_plugin = plugin
        if args.checkpoint:  # the order of Accelerator._prepare_fsdp2: checkpointing, then sharding
            from accelerate.utils.fsdp_utils import fsdp2_apply_ac

            model = fsdp2_apply_ac(accelerator, model)
        model = fsdp2_prepare_model(accelerator, model)
        optimizer = optimizer_for(model, launch.device)
        how = (
            f"accelerate.utils.fsdp_utils.fsdp2_prepare_model (accelerate chose {accelerator.distributed_type} on "
            f"{launch.device.type}, not FSDP, so its FSDP2 wrapping is applied directly)"
        )
    data_parts, data_rank = launch.world_size, launch.rank

    def step(batch: dict) -> float:
        local = {k: v.to(launch.device) for k, v in common.part_of(batch, data_rank, data_parts).items()}
        loss = model(**local).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        reduced = loss.detach().float().clone()
        dist.all_reduce(reduced)
        return float(reduced) / launch.world_size

    details = {
        "how": how,
        "activation_checkpointing": args.checkpoint,
        "mixed_precision": args.precision,
    }
    return args.global_batch, args.seq_len, step, details


# ----- main --------------------------------------------------------------------------------------------------
def measure(launch: common.Launch, args) -> dict:
    config = common.llama_config(args.model, args.seq_len) if args.config is None else _load_config(args.config)
    begin = time.perf_counter()
    if args.fsdp2:
        global_batch, seq_len, step, details = build_fsdp2(config, args, launch)
    else:
        global_batch, seq_len, step, details = build_ours(config, args.plan, launch)
    setup_s = time.perf_counter() - begin
    reset_memory(launch.device)  # the peak of training steps, not of building (the baseline builds a full model)
    batches = [common.random_batch(config.vocab_size, global_batch, seq_len, seed) for seed in range(2)]
    losses: list[float] = []
    times = common.timed_steps(
        lambda i: losses.append(step(batches[i % 2])),
        args.warmup,
        args.steps,
        launch.device,
    )
    allocated, reserved = peak_memory_gb(launch.device)
    step_s = common.max_over_ranks(common.median(times), launch.device)
    return {
        "status": "ok",
        "global_batch_size": global_batch,
        "seq_len": seq_len,
        "setup_s": round(setup_s, 2),
        "step_times_s": times,
        "median_step_s": step_s,
        "tokens_per_s_per_gpu": global_batch * seq_len / step_s / launch.world_size,
        "peak_allocated_gb": None if allocated is None else common.max_over_ranks(allocated, launch.device),
        "peak_reserved_gb": None if reserved is None else common.max_over_ranks(reserved, launch.device),
        "losses": losses,
        **details,
    }


def _load_config(path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="config dir from plans.py")
    parser.add_argument(
        "--model",
        default="1.3b",
        choices=sorted(common.MODEL_SHAPES),
        help="when no --config",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", type=Path, help="a plan file: run it through our runtime")
    which.add_argument("--fsdp2", action="store_true", help="the accelerate FSDP2 baseline")
    parser.add_argument("--global_batch", type=int, default=None, help="--fsdp2: samples per step")
    parser.add_argument("--seq_len", type=int, default=2048, help="--fsdp2: tokens per sample")
    parser.add_argument("--checkpoint", action="store_true", help="--fsdp2: activation checkpointing")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"), help="--fsdp2")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--name",
        default=None,
        help="name in the result (default: the plan file's stem)",
    )
    parser.add_argument("--cpu", action="store_true", help="CPU dry run (gloo)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.fsdp2 and not args.global_batch:
        parser.error("--fsdp2 needs --global_batch")
    launch = common.start(args.cpu)
    name = args.name or ("accelerate_fsdp2" if args.fsdp2 else args.plan.stem)
    common.log(launch, f"measure {name} on {launch.world_size} ranks")
    head = {"name": name, "cpu_dry_run": args.cpu, "world_size": launch.world_size}
    try:
        result = {**head, **measure(launch, args)}
    except torch.OutOfMemoryError as err:  # this rank writes why, then leaves; torchrun stops the other ranks
        common.write_json(
            args.out.with_name(f"{args.out.stem}.oom-rank{launch.rank}.json"),
            {
                **head,
                "status": "oom",
                "rank": launch.rank,
                "error": str(err).splitlines()[0],
            },
        )
        common.finish(3)
        return 3
    except Exception as err:  # noqa: BLE001 - written for the report, then this rank leaves
        common.write_json(
            args.out.with_name(f"{args.out.stem}.error-rank{launch.rank}.json"),
            {
                **head,
                "status": "error",
                "rank": launch.rank,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            },
        )
        common.finish(4)
        return 4
    if launch.is_main:
        result["environment"] = common.environment()
        common.write_json(args.out, result)
        common.log(
            launch,
            f"{name}: median step {result['median_step_s']:.4f} s, "
            f"{result['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, peak {result['peak_allocated_gb']} GB",
        )
    common.finish(0)
    return 0


if __name__ == "__main__":
    main()
