"""CPU offload (plan.offload, FSDP2 CPUOffloadPolicy) trains to the single-process losses and gradients.

On a CPU-only machine the host shards are the device shards (pinning needs an accelerator, so it is off) and the
copies are no-ops; what runs is FSDP2's offload path on every block and the root: sharded parameters and
reduced gradients held as host tensors and the optimizer stepping on them. The copy speed is measured on a GPU
(benchmarks, docs/cost_model.md "CPU offload").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

ZERO3_OFFLOAD = rc.Case("offload_zero3", tuple((1, "zero3", False) for _ in range(4)), (1, "zero3"), offload=True)
CASES = [
    ZERO3_OFFLOAD,
    # every data-parallel type, TP2 and checkpointing beside offload: every fully_shard call offloads
    rc.Case(
        "offload_mixed",
        ((1, "zero3", True), (2, "zero3", False), (1, "zero2", False), (1, "ddp", False)),
        (2, "zero3"),
        offload=True,
    ),
    rc.Case("offload_meta_zero3", ZERO3_OFFLOAD.blocks, ZERO3_OFFLOAD.vocab, meta=True, offload=True),
]


def _offload_worker(rank: int, world: int) -> dict:
    """The cases' losses and gradients, then which offload policy each FSDP2 module of an offloaded plan holds."""
    from torch.distributed.fsdp import FSDPModule

    from galvatron_hf.adapters import describe_model
    from galvatron_hf.parallel import parallelize

    results = rc.parallel_run(rank, world, "llama", CASES)
    model = rc.make_model("llama")
    pm = parallelize(model, ZERO3_OFFLOAD.plan(world), spec=describe_model(model, seq_len=rc.SEQ), device="cpu")
    modules = [m for m in pm.module.modules() if isinstance(m, FSDPModule)]
    results["policies"] = [type(m._get_fsdp_state()._fsdp_param_group.offload_policy).__name__ for m in modules]
    results["param_devices"] = sorted({p.to_local().device.type for p in pm.module.parameters()})
    return results


def test_offload_under_zero3_and_mixed_layouts_matches_one_process():
    results = run_distributed(_offload_worker, 2, timeout_s=300)[0]
    plain = rc.reference_run("llama")
    assert results["policies"] == ["CPUOffloadPolicy"] * 5, "4 blocks and the root all offload"
    assert results["param_devices"] == ["cpu"]
    for case in CASES:
        got = results[case.name]
        assert got["losses"] == pytest.approx(plain["losses"], rel=1e-5), case.name
        for step in (0, rc.STEPS - 1):
            for name, grad in plain["grads"][step].items():
                error = ((got["grads"][step][name] - grad).norm() / grad.norm().clamp_min(1e-12)).item()
                assert error < 1e-5, f"{case.name} step {step} {name}: relative error {error:.2e}"
