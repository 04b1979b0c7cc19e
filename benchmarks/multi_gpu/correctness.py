"""Phase 1: the runtime's correctness matrix on N ranks against one process (same weights, same data).

    torchrun --standalone --nproc_per_node N benchmarks/multi_gpu/correctness.py --out phase1.json
    torchrun --standalone --nproc_per_node 2 benchmarks/multi_gpu/correctness.py --cpu --out phase1.json

Layouts (those of tests/parallel/runtime_cases.py and test_pipeline.py, sized for the world): DDP, ZeRO-2,
ZeRO-3 (+checkpointing), TP2 x ZeRO-3, TP over all ranks, mixed per-layer TP, PP2 GPipe, PP2 1F1B, and with
4 ranks or more PP2 x TP2 and PP2 x ZeRO-3. Each trains a tiny Llama for 3 SGD steps through
``galvatron_hf.parallel.parallelize``.

The reference is computed once on rank 0 and broadcast. In bf16 it mirrors what the runtime does (FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``): fp32 master weights, a bf16 copy runs forward
and backward, its gradients are cast to fp32 and the master steps. The fp32 reference is computed too, and
the distance between the two (the "bf16 floor") is reported, so a bf16 error can be read against the noise
bf16 itself makes. Every rank compares the losses, the gradients of the last step and the weights after the
last step for the parameters it holds (full tensors; pipeline ranks hold their stage's).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from galvatron_hf.planner.plan import LayerStrategy, Plan, VocabStrategy

SEQ = 32
GLOBAL_BATCH = 16  # divisible by every DP degree up to 8 and by 4 micro-batches of a PP2 x DP4 stage
STEPS = 3
LR = 0.05

# Per dtype: loss relative error; gradient / weight error per tensor, as a fraction of the reference's norm
# (TP and micro-batching reorder sums, which moves elements near zero by large fractions of themselves).
# In bf16 the tensor bound is also at least 3x the bf16 floor measured on this machine (see the docstring).
TOLERANCE = {
    "fp32": {"loss": 1e-5, "tensor": 1e-5},
    "bf16": {"loss": 5e-3, "tensor": 5e-2},
}
FLOOR_FACTOR = 3.0


@dataclass(frozen=True)
class Case:
    """One layout: per-block (tp, dp_type, checkpoint), the vocabulary's (tp, dp_type), and the pipeline."""

    name: str
    blocks: tuple[tuple[int, str, bool], ...]
    vocab: tuple[int, str] = (1, "ddp")
    pp: int = 1
    schedule: str = "gpipe"
    micro_batches: int = 1

    def plan(self, world: int, precision: str) -> Plan:
        per_stage, count = world // self.pp, len(self.blocks)
        layers = [
            LayerStrategy(i * self.pp // count, tp, per_stage // tp, dp_type, checkpoint)
            for i, (tp, dp_type, checkpoint) in enumerate(self.blocks)
        ]
        vocab = VocabStrategy(self.vocab[0], per_stage // self.vocab[0], self.vocab[1])
        return Plan(
            world_size=world,
            pp=self.pp,
            schedule=self.schedule,
            global_batch_size=GLOBAL_BATCH,
            num_micro_batches=self.micro_batches,
            layers=layers,
            vocab=vocab,
            seq_len=SEQ,
            mixed_precision=precision,
        )


def cases(world: int, blocks: int = 4) -> list[Case]:
    """The matrix for ``world`` ranks; layouts the world cannot hold (PP2 x TP2 on 2 ranks) are left out."""

    def same(tp: int, dp_type: str, checkpoint: bool = False) -> tuple:
        return tuple((tp, dp_type, checkpoint) for _ in range(blocks))

    mixed = (
        (1, "zero3", False),
        (2, "ddp", True),
        (world, "zero2", False),
        (2, "zero3", True),
    )
    matrix = [
        Case(f"ddp{world}", same(1, "ddp")),
        Case(f"zero2x{world}", same(1, "zero2")),
        Case(f"zero3x{world}+ckpt", same(1, "zero3", True), (1, "zero3")),
        Case(f"tp2_zero3x{world // 2}", same(2, "zero3"), (2, "zero3")),
        Case(f"tp{world}", same(world, "ddp"), (world, "ddp")),
        Case(
            "mixed_tp_per_layer",
            tuple(mixed[i % 4] for i in range(blocks)),
            (2, "zero3"),
        ),
        Case("pp2_gpipe", same(1, "ddp"), pp=2, schedule="gpipe", micro_batches=2),
        Case("pp2_1f1b", same(1, "ddp"), pp=2, schedule="1f1b", micro_batches=4),
    ]
    if world >= 4:
        matrix += [
            Case(
                "pp2_x_tp2_1f1b",
                same(2, "ddp"),
                (2, "ddp"),
                pp=2,
                schedule="1f1b",
                micro_batches=2,
            ),
            Case(
                "pp2_x_zero3+ckpt_gpipe",
                same(1, "zero3", True),
                (1, "zero3"),
                pp=2,
                schedule="gpipe",
                micro_batches=2,
            ),
        ]
    if world == 2:  # TP2 x ZeRO-3 over one rank is TP over all ranks: keep one
        matrix = [c for c in matrix if not c.name.startswith("tp2_zero3")]
    return matrix


# ----- the model, the batches and the reference --------------------------------------------------------------
def build_model(config, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.config.use_cache = False
    return model


def batches(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    """Step batches with uneven label counts per sample (some labels -100), as the runtime tests use."""
    result = []
    for step in range(STEPS):
        batch = common.random_batch(vocab_size, GLOBAL_BATCH, SEQ, seed=1000 + step)
        generator = torch.Generator().manual_seed(2000 + step)
        batch["labels"][torch.rand(GLOBAL_BATCH, SEQ, generator=generator) < 0.25] = -100
        result.append(batch)
    return result


def reference_run(config, precision: str, device: torch.device) -> dict:
    """One process, the whole global batch: losses per step, last-step gradients, final weights (CPU fp32)."""
    master = build_model(config).to(device)
    optimizer = torch.optim.SGD(master.parameters(), lr=LR)
    losses, grads = [], {}
    for step, batch in enumerate(batches(config.vocab_size)):
        batch = {k: v.to(device) for k, v in batch.items()}
        worker = master if precision == "fp32" else copy.deepcopy(master).to(torch.bfloat16)
        loss = worker(**batch).loss
        loss.backward()
        if worker is not master:
            for kept, computed in zip(master.parameters(), worker.parameters(), strict=True):
                kept.grad = computed.grad.float()
        losses.append(loss.item())
        if step == STEPS - 1:
            grads = {n: p.grad.detach().float().cpu() for n, p in master.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
    weights = {n: p.detach().float().cpu() for n, p in master.named_parameters()}
    return {"losses": losses, "grads": grads, "weights": weights}


# ----- one case on this rank ---------------------------------------------------------------------------------
def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (collective over its mesh), a plain tensor as is; on CPU in fp32."""
    tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return tensor.detach().float().cpu()


def parallel_run(case: Case, config, precision: str, launch: common.Launch) -> dict:
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    model = build_model(config)
    spec = describe_model(model, seq_len=SEQ)
    plan = case.plan(launch.world_size, precision)
    pm = parallelize(
        model,
        plan,
        spec=spec,
        device=launch.device,
        mixed_precision=precision,
        attn_implementation="sdpa",
    )
    optimizer = torch.optim.SGD(pm.parameters(), lr=LR)
    losses, grads = [], {}
    for step, batch in enumerate(batches(config.vocab_size)):
        losses.append(float(pm.train_step(common.part_of(batch, pm.data_rank, pm.data_size))))
        if step == STEPS - 1:
            grads = {n: _full(p.grad) for n, p in pm.module.named_parameters() if p.grad is not None}
        pm.step(optimizer)
        optimizer.zero_grad()
    weights = {n: _full(p) for n, p in pm.module.named_parameters()}
    return {"losses": losses, "grads": grads, "weights": weights}


def relative_errors(got: dict, reference: dict) -> dict:
    """Worst relative errors of this rank's run against the reference."""
    loss = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], reference["losses"], strict=True))
    worst = {}
    for key in ("grads", "weights"):
        error, name = 0.0, ""
        for param, value in got[key].items():
            expected = reference[key][param]
            rel = (value - expected).norm().item() / (expected.norm().item() + 1e-12)
            if rel > error:
                error, name = rel, param
        worst[key] = (error, name, len(got[key]))
    return {"loss": loss, "grads": worst["grads"], "weights": worst["weights"]}


def floor_of(bf16: dict, fp32: dict) -> dict:
    """How far bf16 itself moves the one-process run from fp32 (context for the bf16 tolerances)."""
    return relative_errors(bf16, fp32)


# ----- main --------------------------------------------------------------------------------------------------
def run_case(
    case: Case,
    config,
    precision: str,
    reference: dict,
    tolerance: dict,
    launch: common.Launch,
) -> dict:
    begin = time.perf_counter()
    try:
        got = parallel_run(case, config, precision, launch)
        errors = relative_errors(got, reference)
        failure = ""
    except Exception as err:  # noqa: BLE001 - any failure of a layout is recorded; the next one still runs
        errors, failure = (
            None,
            f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}",
        )
    seconds = time.perf_counter() - begin
    gathered: list = [None] * launch.world_size
    dist.all_gather_object(gathered, {"errors": errors, "failure": failure})
    return summarise(case, gathered, tolerance, seconds)


def tolerance_for(precision: str, floor: dict | None) -> dict:
    """The fixed bounds of TOLERANCE, widened to FLOOR_FACTOR x the bf16 floor when that is larger."""
    tolerance = dict(TOLERANCE[precision])
    if floor is not None:
        tolerance["tensor"] = max(tolerance["tensor"], FLOOR_FACTOR * floor["grads"][0])
        tolerance["loss"] = max(tolerance["loss"], FLOOR_FACTOR * floor["loss"])
    return tolerance


def summarise(case: Case, per_rank: list[dict], tolerance: dict, seconds: float) -> dict:
    failures = [f"rank {r}: {d['failure']}" for r, d in enumerate(per_rank) if d["failure"]]
    row = {
        "case": case.name,
        "layout": asdict(case),
        "seconds": round(seconds, 2),
        "tolerance": tolerance,
    }
    if failures:
        return {
            **row,
            "passed": False,
            "error": failures[0],
            "failed_ranks": len(failures),
        }
    loss = max(d["errors"]["loss"] for d in per_rank)
    grad = max((d["errors"]["grads"] for d in per_rank), key=lambda e: e[0])
    weight = max((d["errors"]["weights"] for d in per_rank), key=lambda e: e[0])
    held = [d["errors"]["grads"][2] for d in per_rank]
    passed = loss <= tolerance["loss"] and grad[0] <= tolerance["tensor"] and weight[0] <= tolerance["tensor"]
    return {
        **row,
        "passed": passed,
        "loss_rel_error": loss,
        "grad_rel_error": grad[0],
        "worst_grad": grad[1],
        "weight_rel_error": weight[0],
        "worst_weight": weight[1],
        "params_compared_per_rank": held,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result file (rank 0 writes it)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="CPU dry run: gloo, fp32, one thread per rank",
    )
    parser.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default=None,
        help="default: bf16 on GPUs, fp32 on CPU",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these case names")
    args = parser.parse_args(argv)
    launch = common.start(args.cpu)
    precision = args.precision or ("fp32" if args.cpu else "bf16")
    config = common.llama_config("tiny", SEQ)
    config._attn_implementation = "sdpa"
    matrix = [c for c in cases(launch.world_size) if not args.only or c.name in args.only]
    common.log(
        launch,
        f"phase 1: {len(matrix)} layouts on {launch.world_size} ranks, {precision}",
    )

    payload = [None]
    if launch.is_main:
        reference = reference_run(config, precision, launch.device)
        floor = floor_of(reference, reference_run(config, "fp32", launch.device)) if precision != "fp32" else None
        payload = [{"reference": reference, "floor": floor}]
    dist.broadcast_object_list(payload, src=0)
    reference, floor = payload[0]["reference"], payload[0]["floor"]

    tolerance = tolerance_for(precision, floor)
    rows = []
    for case in matrix:
        rows.append(run_case(case, config, precision, reference, tolerance, launch))
        status = "ok" if rows[-1]["passed"] else "FAILED"
        common.log(
            launch,
            f"  {case.name:28s} {status}  loss {rows[-1].get('loss_rel_error', float('nan')):.2e}"
            f"  grad {rows[-1].get('grad_rel_error', float('nan')):.2e}  ({rows[-1]['seconds']} s)",
        )
    if launch.is_main:
        common.write_json(
            args.out,
            {
                "phase": "correctness",
                "cpu_dry_run": args.cpu,
                "precision": precision,
                "world_size": launch.world_size,
                "model": {
                    "shape": "tiny",
                    **common.MODEL_SHAPES["tiny"],
                    "seq_len": SEQ,
                    "global_batch_size": GLOBAL_BATCH,
                    "steps": STEPS,
                    "optimizer": f"SGD lr={LR}",
                },
                "bf16_floor_vs_fp32": None
                if floor is None
                else {k: v if k == "loss" else v[0] for k, v in floor.items()},
                "passed": all(r["passed"] for r in rows),
                "cases": rows,
                "environment": common.environment(),
            },
        )
    common.finish(0 if all(r["passed"] for r in rows) else 1)
    return 0


if __name__ == "__main__":
    main()
