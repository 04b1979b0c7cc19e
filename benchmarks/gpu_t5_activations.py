"""T5 activation memory on the GPU: the adapter's prediction vs what autograd keeps, per layer, and the SDPA kernel
each attention call really gets.

T5 hands its relative position bias to SDPA as the float mask. Where PyTorch cannot take it with a fused kernel
(it needs grad, or its last dimension is strided) SDPA runs the math kernel, which keeps fp32 copies of q, k, v
and fp32 probabilities; the adapter prices each call per device (``AttentionCall``, ``t5.bias_mask_is_strided``).
This script checks that on the machine at hand, for eager and SDPA, dropout on and off, checkpointing on and off,
in bf16 (the test model of ``tests/adapters/test_activations.py``: d_model 64, 4 heads x 16, 2 + 2 blocks,
2 samples x 32 tokens). It exits with 1 when a block (other than block 0 of a stack, which also saves what the
whole stack shares), the total, or a kernel choice disagrees with the prediction.

    python benchmarks/gpu_t5_activations.py                   # on the GPU machine
    python benchmarks/gpu_t5_activations.py --device cpu      # smoke test of the script (CPU kernels)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import torch
import transformers

from galvatron_hf.adapters import describe_model, t5
from galvatron_hf.adapters.validate import (
    build_model,
    measure_saved_bytes,
    record_sdpa_backends,
)

TOLERANCE = 0.10
BATCH, SEQ_LEN = 2, 32


@dataclass
class Case:
    attn_impl: str
    dropout: float
    checkpoint: bool
    predicted: dict[str, float] = field(default_factory=dict)
    measured: dict[str, int] = field(default_factory=dict)
    kernels: list[tuple[str, str, bool]] = field(default_factory=list)  # layer, backend picked, priced as math
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"t5 {self.attn_impl:5} dropout={self.dropout} checkpoint={self.checkpoint}"


def t5_config(dropout: float) -> transformers.T5Config:
    return transformers.T5Config(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2,
                                 vocab_size=300, decoder_start_token_id=0, pad_token_id=0, dropout_rate=dropout)


def batch(config: transformers.T5Config, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
    labels = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
    return {"input_ids": ids.to(device), "labels": labels.to(device)}


def run_case(case: Case, device: str) -> Case:
    config = t5_config(case.dropout)
    config._attn_implementation = case.attn_impl
    model = build_model(config, "T5ForConditionalGeneration").to(device=device, dtype=torch.bfloat16).train()
    spec = describe_model(model, seq_len=SEQ_LEN)
    inputs = batch(config, device)
    saved = measure_saved_bytes(model, spec, lambda: model(**inputs).loss, checkpoint_blocks=case.checkpoint)
    case.measured = dict(saved.per_layer)
    case.predicted = {
        layer.name: layer.activation_bytes(
            dtype_bytes=2, checkpoint=case.checkpoint and layer.is_block, attn_impl=case.attn_impl,
            device=device,  # type: ignore[arg-type]
            samples=BATCH,
        )
        for layer in spec.layers
    }
    for block in spec.blocks:
        if block.name.endswith(".0") or case.checkpoint:  # see the module docstring; checkpointed: total only
            continue
        check(case, block.name, case.predicted[block.name], case.measured.get(block.name, 0))
    check(case, "total", sum(case.predicted.values()), sum(case.measured.values()))
    if case.attn_impl == "sdpa" and not case.checkpoint:
        records = record_sdpa_backends(model, spec, lambda: model(**inputs).loss)
        priced = [call.runs_math(device) for layer in spec.blocks for call in layer.activation.sdpa_calls]  # type: ignore[arg-type]
        case.kernels = [(r.layer, r.backend, math) for r, math in zip(records, priced)]
        if len(records) != len(priced):
            case.failures.append(f"{len(records)} SDPA calls ran, the spec prices {len(priced)}")
        for layer, backend, math in case.kernels:
            if (backend == "MATH") != math:
                case.failures.append(f"{layer}: SDPA picked {backend}, priced as {'math' if math else 'fused'}")
    return case


def check(case: Case, name: str, predicted: float, measured: int) -> None:
    if abs(predicted - measured) > TOLERANCE * max(measured, 1):
        case.failures.append(f"{name}: predicted {predicted:,.0f} B, measured {measured:,} B")


def report(case: Case) -> None:
    print(f"\n== {case.name}: {'OK' if not case.failures else 'MISMATCH'}")
    print(f"   {'layer':20} {'predicted B':>12} {'measured B':>12} {'ratio':>7}")
    for name, predicted in case.predicted.items():
        measured = case.measured.get(name, 0)
        ratio = predicted / measured if measured else float("nan")
        print(f"   {name:20} {predicted:12,.0f} {measured:12,} {ratio:7.3f}")
    total_p, total_m = sum(case.predicted.values()), sum(case.measured.values())
    print(f"   {'total':20} {total_p:12,.0f} {total_m:12,} {total_p / total_m:7.3f}")
    for layer, backend, math in case.kernels:
        print(f"   sdpa call in {layer:16} ran {backend:20} priced as {'math' if math else 'fused'}")
    for failure in case.failures:
        print(f"   FAIL {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--output", help="write the cases as JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or pass --device cpu for a smoke test", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
          f"T5 bias handed to SDPA strided: {t5.bias_mask_is_strided()}")
    cases = [run_case(Case(impl, dropout, checkpoint), args.device)
             for impl in ("sdpa", "eager") for dropout in (0.1, 0.0) for checkpoint in (False, True)]
    for case in cases:
        report(case)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump([asdict(case) for case in cases], handle, indent=1)
    failed = [case.name for case in cases if case.failures]
    print(f"\n{len(cases) - len(failed)}/{len(cases)} cases match" + (f"; mismatches: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
