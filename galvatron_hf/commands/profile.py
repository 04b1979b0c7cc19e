"""`galvatron-hf profile hardware|model`: write the JSON profiles `galvatron-hf search` reads.

``profile hardware`` runs on every rank of a launch (torchrun / accelerate launch; NCCL on GPUs, gloo on
CPU) or alone (one device). ``profile model`` runs on one device and reuses a cached profile with the same
key (config, dtype, device, attention kernel, library versions) unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from galvatron_hf.commands import EXIT_BAD_INPUT

DEFAULT_CACHE = Path(os.environ.get("GALVATRON_HF_CACHE", Path.home() / ".cache" / "galvatron_hf")) / "model_profiles"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    hardware = targets.add_parser("hardware", help="measure collectives, p2p, matmul rate and overlap (all ranks)")
    hardware.add_argument("--output", required=True, help="hardware JSON to write (rank 0 writes it)")
    hardware.add_argument("--name", default="", help="profile name (default: device name x world size)")
    hardware.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run in seconds")
    hardware.add_argument("--message_sizes", type=int, nargs="+", default=(), help="bytes per message (full tensor)")
    hardware.add_argument("--warmup", type=int, default=None, help="discarded runs per measurement")
    hardware.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    hardware.add_argument("--matmul_dtypes", nargs="+", default=(), choices=("bf16", "fp16", "fp32"))
    hardware.add_argument("--no_overlap", action="store_true", help="skip the compute/communication overlap test")
    hardware.set_defaults(run_target=run_hardware)

    model = targets.add_parser("model", help="time and memory of one layer of each kind (one device)")
    model.add_argument("--model_name_or_path", required=True, help="bundled name, config.json or model directory")
    model.add_argument("--seq_len", type=int, required=True, help="sequence length to plan for")
    model.add_argument("--micro_batch_sizes", type=int, nargs="+", default=(1, 2, 4))
    model.add_argument("--seq_lens", type=int, nargs="+", default=(), help="sweep lengths (default: S/2 and S)")
    model.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    model.add_argument("--attn_implementation", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    model.add_argument("--architecture", default=None, help="HF head class (default: the config's own)")
    model.add_argument("--device", default="", help="cuda, cuda:1, cpu (default: cuda when available)")
    model.add_argument("--output", required=True, help="model-profile JSON to write")
    model.add_argument("--cache_dir", default=str(DEFAULT_CACHE), help="where profiles are cached by key")
    model.add_argument("--force", action="store_true", help="measure again even if a cached profile matches")
    model.add_argument("--warmup", type=int, default=2)
    model.add_argument("--repeats", type=int, default=5)
    model.add_argument(
        "--synchronised_timing",
        action="store_true",
        help="time each layer pass alone, host waiting (launch-bound at small sizes); default: host queued ahead",
    )
    model.add_argument(
        "--hardware", default=None, help="hardware JSON or built-in name for the truth report's analytic side"
    )
    model.add_argument(
        "--use_liger_kernel",
        action="store_true",
        help="time the layers with Liger's kernels and fused head + loss, as a run with use_liger_kernel trains",
    )
    model.add_argument(
        "--torch_compile", action="store_true", help="time compiled blocks, as a run with torch_compile trains"
    )
    model.add_argument("--torch_compile_mode", default=None, help="torch.compile mode (as the Trainer's flag)")
    model.add_argument("--torch_compile_backend", default=None, help="torch.compile backend (default inductor)")
    model.set_defaults(run_target=run_model)



def run(args: argparse.Namespace) -> int:
    """Run the chosen target; bad input (unknown model, missing kernel, bad file) is one line, exit code 2."""
    from galvatron_hf.profiler.model_profiler import ModelProfilerError

    try:
        return int(args.run_target(args) or 0)
    except (ModelProfilerError, ValueError, OSError) as err:  # profile/hardware file errors are ValueErrors
        print(f"galvatron-hf profile {args.target}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ----- hardware ------------------------------------------------------------------------------------------------
def run_hardware(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from galvatron_hf.profiler.hardware import HardwareOptions, profile_hardware
    from galvatron_hf.profiler.timing import Repeats

    launched = init_distributed_from_env()
    quick_repeats = Repeats(warmup=1, repeats=3) if args.quick else Repeats()
    repeats = Repeats(
        warmup=quick_repeats.warmup if args.warmup is None else args.warmup,
        repeats=quick_repeats.repeats if args.repeats is None else args.repeats,
    )
    options = HardwareOptions(
        name=args.name,
        quick=args.quick,
        message_sizes=tuple(args.message_sizes),
        repeats=repeats,
        matmul_dtypes=tuple(args.matmul_dtypes),
        measure_overlap=not args.no_overlap,
    )
    profile = profile_hardware(options)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        path = profile.save(args.output)
        print(
            f"wrote {path}: {profile.name}, {profile.num_nodes} node(s) x {profile.gpus_per_node}, "
            f"{len(profile.collectives)} collective fits, {len(profile.p2p)} p2p fits",
            file=sys.stderr,
        )
    if launched:
        # gloo processes sometimes abort in interpreter teardown after all work is done; leave cleanly
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def init_distributed_from_env() -> bool:
    """Start the process group a launcher described (RANK / WORLD_SIZE / MASTER_ADDR); False if alone."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


# ----- model ---------------------------------------------------------------------------------------------------
def run_model(args: argparse.Namespace) -> int:
    from galvatron_hf.adapters import describe_model, load_config
    from galvatron_hf.profiler.model_profiler import ModelProfileOptions, profile_key, profile_model
    from galvatron_hf.profiler.timing import Repeats
    from galvatron_hf.profiler.truth import format_truth_report, truth_rows

    config = load_config(args.model_name_or_path)
    spec = describe_model(config, seq_len=args.seq_len, architecture=args.architecture)
    kernels = profiled_kernels(args, spec)
    options = ModelProfileOptions(
        seq_len=args.seq_len,
        micro_batch_sizes=tuple(args.micro_batch_sizes),
        seq_lens=tuple(args.seq_lens),
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        repeats=Repeats(warmup=args.warmup, repeats=args.repeats),
        device=args.device,
        queue_ahead=not args.synchronised_timing,
        kernels=kernels.label,
        prepare=kernels.prepare,
        head_loss=kernels.head_loss,
    )
    key = profile_key(config, spec, options, options.torch_device())
    cache_path = Path(args.cache_dir) / f"{key.digest()}.json"
    profile = None if args.force else find_cached(key, spec, options, [Path(args.output), cache_path])
    if profile is None:
        profile = profile_model(config, spec, options)
        profile.save(cache_path)
    profile.save(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    analytic, source = analytic_times(args.hardware, options)
    print(format_truth_report(truth_rows(profile, spec, analytic), source))
    return 0


def profiled_kernels(args: argparse.Namespace, spec):
    """The kernels the flags ask for, as the trainer maps the same TrainingArguments flags (Liger's ``KernelError``,
    a ValueError, refuses them where they cannot run when the profiled model is patched)."""
    from galvatron_hf.parallel.compile import CompileConfig
    from galvatron_hf.parallel.kernels import KernelConfig, kernels_for_profiling
    from galvatron_hf.profiler.model_profiler import ModelProfileOptions

    device = ModelProfileOptions(seq_len=args.seq_len, device=args.device).torch_device()
    kernels = KernelConfig.from_training_args(args)
    compile_config = CompileConfig.from_training_args(args)
    return kernels_for_profiling(spec, device, kernels, compile_config)


def analytic_times(hardware: str | None, options):
    """The planner's default (analytic) compute cost and a line saying where its figures come from."""
    from galvatron_hf.constants import torch_dtype
    from galvatron_hf.profiler.hardware import matmul_tflops
    from galvatron_hf.profiler.timing import Repeats

    if hardware:
        from galvatron_hf.profiler.builtin_hardware import load_hardware

        rate = load_hardware(hardware).matmul_flops_per_s(options.dtype)
        source = f"matmul rate {rate / 1e12:.1f} TFLOP/s from {hardware}"
    else:
        device = options.torch_device()
        side = 4096 if device.type == "cuda" else 512
        rate = matmul_tflops(device, torch_dtype(options.dtype), side, Repeats(warmup=2, repeats=5)) * 1e12
        source = f"matmul rate {rate / 1e12:.3g} TFLOP/s measured now ({side}^3, pass --hardware to use a profile)"

    # the same formula as the planner's AnalyticCompute (layer efficiency, backward factor), so the report
    # compares measurements with what the search really assumes
    from galvatron_hf.planner.cost_model import AnalyticCompute

    efficiency, backward_factor = AnalyticCompute.layer_efficiency, AnalyticCompute.backward_factor
    source += f", layer efficiency {efficiency:g} (planner's AnalyticCompute)"

    def times(layer, micro_batch: int) -> tuple[float, float]:
        forward = layer.forward_flops * micro_batch / (rate * efficiency)
        return forward, backward_factor * forward

    return times, source


def find_cached(key, spec, options, paths: list[Path]):
    """A stored profile with this exact key that measured at least the requested sweep, else None."""
    from galvatron_hf.profiler.model_profiler import sweep_points
    from galvatron_hf.profiler.model_schema import ModelProfile, ModelProfileError

    points = sweep_points(spec, options)
    micro_batches, seq_lens = sorted({b for b, _ in points}), sorted({s for _, s in points})

    for path in paths:
        if not path.is_file():
            continue
        try:
            profile = ModelProfile.load(path)
        except ModelProfileError:
            continue
        if profile.key == key and profile.seq_len == spec.seq_len and profile.covers(micro_batches, seq_lens):
            print(f"reusing the cached profile {path} (same key; pass --force to measure again)", file=sys.stderr)
            return profile
    return None
