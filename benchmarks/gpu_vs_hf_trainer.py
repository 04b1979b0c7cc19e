"""One GPU: the HF Trainer's setups against GalvatronTrainer (auto_parallel) with the same flags.

Each variant runs in its own process and tries per-device batches in ascending order (stopping at the first
that runs out of memory); every batch trains a freshly built model with random weights for
``--warmup + --steps`` optimizer steps on random tokens (bf16, gradient clipping at 1.0, the Trainer's loop).
Reported per batch: median step time after the warm-up steps, tokens/s, MFU (the adapter's forward FLOPs x 3
over ``--peak_tflops``), peak allocated memory, and for GalvatronTrainer the plan's predicted step time and
memory. The table keeps each variant's best batch; ``ratio`` compares a GalvatronTrainer variant with the HF
variant of the same flags.

    python benchmarks/gpu_vs_hf_trainer.py --output_dir benchmarks/results/vs-hf-trainer   # all variants
    python benchmarks/gpu_vs_hf_trainer.py --variants hf_liger ours_liger --batches 8 16
    python benchmarks/gpu_vs_hf_trainer.py --tiny     # CPU smoke test of the script (tiny model)

Predictions from measured layers: write the shape's config, profile it with the variant's flags, pass it:

    python benchmarks/gpu_vs_hf_trainer.py --write_config /tmp/llama-1.1b
    galvatron-hf profile model --model_name_or_path /tmp/llama-1.1b --seq_len 2048 --use_liger_kernel \
        --micro_batch_sizes 1 2 4 8 16 --output liger.json
    python benchmarks/gpu_vs_hf_trainer.py --variants ours_liger --profile liger.json
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

GIB = 2**30
SHAPES = {  # Llama-1.1B (TinyLlama's shape) and Llama-3.2-3B's
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
}


@dataclass(frozen=True)
class Variant:
    name: str
    trainer: str  # "hf" or "ours"
    flags: dict = field(default_factory=dict)  # TrainingArguments fields
    pair: str | None = None  # the HF variant with the same flags


FUSED = {"optim": "adamw_torch_fused"}
VARIANTS = [
    Variant("hf_plain", "hf", {"optim": "adamw_torch"}),
    Variant("hf_fused", "hf", FUSED),
    Variant("hf_compile", "hf", {**FUSED, "torch_compile": True}),
    Variant("hf_liger", "hf", {**FUSED, "use_liger_kernel": True}),
    Variant("hf_liger_compile", "hf", {**FUSED, "use_liger_kernel": True, "torch_compile": True}),
    Variant("hf_liger_ckpt", "hf", {**FUSED, "use_liger_kernel": True, "gradient_checkpointing": True}),
    Variant("ours_plain", "ours", {"optim": "adamw_torch"}, "hf_plain"),
    Variant("ours_fused", "ours", FUSED, "hf_fused"),
    Variant("ours_compile", "ours", {**FUSED, "torch_compile": True}, "hf_compile"),
    Variant("ours_liger", "ours", {**FUSED, "use_liger_kernel": True}, "hf_liger"),
    Variant("ours_liger_compile", "ours", {**FUSED, "use_liger_kernel": True, "torch_compile": True},
            "hf_liger_compile"),
    # under a 24 GB budget (the search's memory_gb) against HF's smallest-memory setup
    Variant("ours_liger_24gb", "ours", {**FUSED, "use_liger_kernel": True, "memory_gb": 24.0}, "hf_liger_ckpt"),
    # 16 GB: the 1.1B shape's training state alone (16 bytes a parameter) is 17.6 GB, so no HF setup fits
    Variant("ours_liger_16gb", "ours", {**FUSED, "use_liger_kernel": True, "memory_gb": 16.0}),
]
BY_NAME = {v.name: v for v in VARIANTS}


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, samples: int, seq_len: int, vocab: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (samples, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(shape: str, seq_len: int, device: torch.device, on_meta: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max(seq_len, 4096), use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("meta" if on_meta else device):
        return LlamaForCausalLM(config)


def run_batch(variant: Variant, batch: int, opts) -> dict:
    """Train ``warmup + steps`` steps at ``batch``; the measurements (or the error)."""
    from transformers import Trainer, TrainingArguments

    from galvatron_hf.adapters import describe_model
    from galvatron_hf.trainer import GalvatronTrainer, GalvatronTrainingArguments

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = opts.warmup + opts.steps
    common = dict(output_dir=tempfile.mkdtemp(prefix="vs_hf_"), per_device_train_batch_size=batch, max_steps=steps,
                  bf16=device.type == "cuda", learning_rate=1e-5, logging_steps=10**6, save_strategy="no",
                  report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=0, use_cpu=device.type != "cuda",
                  **variant.flags)
    model = build_model(opts.shape, opts.seq_len, device, on_meta=variant.trainer == "ours")
    spec = describe_model(model.config, seq_len=opts.seq_len)
    data = RandomTokens(batch * steps, opts.seq_len, model.config.vocab_size)
    timer = step_timer()
    trainer = None
    row: dict = {"batch": batch}
    try:
        if variant.trainer == "hf":
            trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
        else:
            args = GalvatronTrainingArguments(auto_parallel=True, hardware=opts.hardware, seq_len=opts.seq_len,
                                              profile=opts.profile, **common)
            trainer = GalvatronTrainer(model, args, train_dataset=data, callbacks=[timer])
            row.update(_prediction(trainer))
        trainer.train()
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as error:  # recorded, the sweep goes on
        row["error"] = f"{type(error).__name__}: {error}"[:600]
    row.update(_measurements(timer.times, opts, spec, batch))
    if trainer is not None and getattr(trainer, "parallel_model", None) is not None:
        clock = trainer.parallel_model.compile_clock
        row["compile_s"] = clock.seconds if clock else None
        row["kernels"] = trainer.parallel_model.kernels.describe()
    del trainer, model
    gc.collect()
    return row


def _prediction(trainer) -> dict:
    plan = trainer.plan
    out = {"plan": {"checkpointed_layers": sum(layer.checkpoint for layer in plan.layers),
                    "dp_types": sorted({layer.dp_type for layer in plan.layers}),
                    "micro_batches": plan.num_micro_batches}}
    if plan.predicted is not None:
        out["predicted_step_s"] = plan.predicted.step_time_s
        out["predicted_peak_gb"] = max(plan.predicted.peak_memory_gb)
    return out


def _measurements(times: list[float], opts, spec, batch: int) -> dict:
    row = {"step_times_s": times}
    if torch.cuda.is_available():
        row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    timed = times[opts.warmup:]
    if len(timed) == opts.steps:
        step = statistics.median(timed)
        row["median_step_s"] = step
        row["tokens_per_s"] = batch * opts.seq_len / step
        row["mfu"] = 3 * spec.forward_flops * batch / step / (opts.peak_tflops * 1e12)
    return row


def run_variant(variant: Variant, opts) -> dict:
    """All batches of one variant in this process, ascending, stopping after the first out-of-memory."""
    rows = []
    for batch in opts.batches:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        leftover = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0
        row = run_batch(variant, batch, opts)
        row["allocated_before_gib"] = leftover  # memory a previous batch left behind (counted in the peak)
        rows.append(row)
        print(json.dumps({"variant": variant.name, **row}), flush=True)
        if row.get("error"):
            break
    return {"variant": variant.name, "trainer": variant.trainer, "flags": variant.flags, "rows": rows}


def best_row(result: dict) -> dict | None:
    done = [r for r in result["rows"] if "tokens_per_s" in r and not r.get("error")]
    return max(done, key=lambda r: r["tokens_per_s"]) if done else None


def table(results: list[dict]) -> str:
    by_name = {r["variant"]: r for r in results}
    lines = ["| variant | best batch | tokens/s | MFU | peak GiB | ratio vs HF same flags | predicted step / measured | "
             "predicted GB / measured GB | compile s (all batches) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        best = best_row(result)
        if best is None:
            errors = [r.get("error", "") for r in result["rows"]]
            error = " ".join((errors[-1] if errors else "no run").split()).replace("|", "/")[:80]
            lines.append(f"| {result['variant']} | failed: {error} |||||||")
            continue
        pair = BY_NAME[result["variant"]].pair
        ratio = ""
        if pair in by_name and best_row(by_name[pair]):
            ratio = f"{best['tokens_per_s'] / best_row(by_name[pair])['tokens_per_s']:.2f}x"
        step = (f"{best['predicted_step_s']:.3f} / {best['median_step_s']:.3f} s ({best['predicted_step_s'] / best['median_step_s'] - 1:+.0%})"
                if "predicted_step_s" in best else "")
        memory = ""
        if "predicted_peak_gb" in best and "peak_allocated_gib" in best:
            measured_gb = best["peak_allocated_gib"] * GIB / 1e9
            memory = f"{best['predicted_peak_gb']:.1f} / {measured_gb:.1f} ({best['predicted_peak_gb'] / measured_gb - 1:+.0%})"
        compiles = [r["compile_s"] for r in result["rows"] if r.get("compile_s") is not None]
        compile_s = f"{sum(compiles):.0f}" if compiles else ""
        lines.append(f"| {result['variant']} | {best['batch']} | {best['tokens_per_s'] / 1e3:.1f}k | "
                     f"{best['mfu']:.1%} | {best.get('peak_allocated_gib', 0):.1f} | {ratio} | {step} | {memory} | "
                     f"{compile_s} |")
    return "\n".join(lines)


def versions() -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version

        out["liger-kernel"] = version("liger-kernel")
    except ImportError:
        out["liger-kernel"] = None
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
    return out


def run_all(opts) -> list[dict]:
    """Each variant in its own process (a fresh allocator, compile caches and Liger patches per variant)."""
    results = []
    for name in opts.variants:
        command = [sys.executable, __file__, "--one", name, "--shape", opts.shape, "--seq_len", str(opts.seq_len),
                   "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--hardware", opts.hardware,
                   "--peak_tflops", str(opts.peak_tflops), "--batches", *map(str, opts.batches)]
        command += ["--profile", opts.profile] if opts.profile else []
        command += ["--tiny"] if opts.tiny else []
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=opts.timeout_s)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{\"variant_result\"")]
            result = json.loads(lines[-1])["variant_result"] if lines else {
                "variant": name, "rows": [{"error": f"exit {done.returncode}: {done.stderr[-600:]}"}]}
        except subprocess.TimeoutExpired as timeout:  # keep the batches that finished
            out = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
            rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"variant"')]
            rows.append({"error": f"timed out after {opts.timeout_s} s"})
            result = {"variant": name, "rows": rows}
        print(json.dumps({"finished": name, "best": best_row(result)}), flush=True)
        results.append(result)
        if opts.output_dir:
            save(results, opts)
    return results


def save(results: list[dict], opts) -> None:
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{opts.shape}-seq{opts.seq_len}"
    payload = {"shape": opts.shape, "seq_len": opts.seq_len, "versions": versions(), "results": results}
    (opts.output_dir / f"{tag}.json").write_text(json.dumps(payload, indent=1))
    (opts.output_dir / f"{tag}.md").write_text(table(results) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], choices=list(BY_NAME))
    parser.add_argument("--one", choices=list(BY_NAME), help="run one variant in this process")
    parser.add_argument("--shape", default="llama-1.1b", choices=list(SHAPES))
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--hardware", default="h200")
    parser.add_argument("--peak_tflops", type=float, default=989.0)
    parser.add_argument("--timeout_s", type=int, default=600)
    parser.add_argument("--output_dir", type=Path)
    parser.add_argument("--profile", help="model profile for GalvatronTrainer's plans (`galvatron-hf profile model` "
                        "with the variant's --use_liger_kernel / --torch_compile); default: analytic costs")
    parser.add_argument("--write_config", type=Path, help="write the shape's config (for `profile model`) and exit")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU, two variants (tests the script)")
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.shape, opts.seq_len, opts.batches, opts.steps, opts.warmup = "tiny", 16, [2], 1, 1
        opts.variants = [v for v in opts.variants if v in ("hf_fused", "ours_fused")] or ["hf_fused", "ours_fused"]
        for variant in ("hf_fused", "ours_fused"):  # no fused AdamW on CPU
            BY_NAME[variant] = Variant(variant, BY_NAME[variant].trainer, {}, BY_NAME[variant].pair)
    if opts.write_config:
        build_model(opts.shape, opts.seq_len, torch.device("cpu"), on_meta=True).config.save_pretrained(opts.write_config)
        return []
    if opts.one:
        result = run_variant(BY_NAME[opts.one], opts)
        print(json.dumps({"variant_result": result}), flush=True)
        return [result]
    results = run_all(opts)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
