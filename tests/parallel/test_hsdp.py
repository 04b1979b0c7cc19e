"""HSDP (dp_type "hsdp": FSDP2 on a 2-D replicate x shard mesh) on 4 gloo ranks, in ONE launch.

What 4 ranks allow: HSDP needs 1 < dp_shard < dp, so dp >= 4; with tp = 2 or pp = 2 a layer has dp = 2 on 4
ranks. So the launch checks HSDP 2 x 2 on every layer, HSDP composed with TP2 x ZeRO-3 layers in one model
(per-layer meshes of both kinds, relayouts between them), and a checkpoint saved under HSDP that resumes under
ZeRO-3 and back. HSDP x TP2 on one layer and HSDP with PP2 need 8 ranks (dp = 4 per stage / TP index).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.planner.plan import Plan
from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
WORLD = 4
SHARD = 2
RTOL = 1e-5


@dataclass(frozen=True)
class HsdpCase(rc.Case):
    """A runtime case whose hsdp layers (blocks and vocab) shard over ``SHARD`` ranks."""

    def plan(self, world: int) -> Plan:
        plan = super().plan(world)
        shard = lambda s: replace(s, dp_shard=SHARD) if s.dp_type == "hsdp" else s  # noqa: E731
        return replace(plan, layers=[shard(s) for s in plan.layers], vocab=shard(plan.vocab))


# blocks 0 and 2 (and the vocab layers) HSDP 2 x 2, block 2 checkpointed; blocks 1 and 3 TP2 x ZeRO-3 / DDP
CASES = [HsdpCase("hsdp_with_tp2", ((1, "hsdp", False), (2, "zero3", False), (1, "hsdp", True), (2, "ddp", False)), (1, "hsdp"))]
HSDP_PARAMS = ("model.layers.0.", "model.layers.2.", "model.embed_tokens.", "lm_head.", "model.norm.")


def _checkpoint_round_trip(rank: int, world: int, directory: str) -> dict:
    """Train a step under the HSDP plan, save; resume under ZeRO-3 (same states?), train, save; resume under
    the HSDP plan (same states?). Returns the names of the states that differ, per hop."""
    from galvatron_hf.adapters import describe_model
    from galvatron_hf.checkpoint import load_checkpoint, save_checkpoint
    from galvatron_hf.parallel import parallelize
    from tests.checkpoint.test_checkpoint import full_states

    hsdp = CASES[0].plan(world)
    zero3 = rc.uniform("zero3", 4, 1, "zero3").plan(world)

    def build(plan):
        model = rc.make_model("llama")
        pm = parallelize(model, plan, spec=describe_model(model, seq_len=rc.SEQ), device="cpu", mixed_precision="fp32")
        return pm, torch.optim.AdamW(pm.parameters(), lr=1e-2)

    def train(pm, optimizer, step):
        pm.train_step(rc.split_batch(rc.make_batch("llama", step), pm.data_rank, pm.data_size))
        pm.step(optimizer)
        optimizer.zero_grad()

    same = {}
    saved_under, loaded_under = hsdp, zero3
    for hop in ("hsdp_to_zero3", "zero3_to_hsdp"):
        pm, optimizer = build(saved_under)
        if hop == "zero3_to_hsdp":
            load_checkpoint(f"{directory}/hsdp_to_zero3", model=pm.module, optimizer=optimizer, plan=saved_under)
        train(pm, optimizer, step=0 if hop == "hsdp_to_zero3" else 1)
        before = full_states(pm.module, optimizer)
        save_checkpoint(f"{directory}/{hop}", model=pm.module, optimizer=optimizer, plan=saved_under, step=1)
        resumed, resumed_optimizer = build(loaded_under)
        load_checkpoint(f"{directory}/{hop}", model=resumed.module, optimizer=resumed_optimizer, plan=loaded_under)
        after = full_states(resumed.module, resumed_optimizer)
        same[hop] = [k for part in (0, 1) for k, v in before[part].items() if not _equal(v, after[part][k])]
        saved_under, loaded_under = loaded_under, saved_under
    return same


def _equal(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _worker(rank: int, world: int, directory: str) -> dict:
    results = rc.parallel_run(rank, world, "llama", CASES)
    results["checkpoint_mismatches"] = _checkpoint_round_trip(rank, world, directory)
    return results


def test_hsdp_matches_one_process_and_checkpoints_move_to_and_from_zero3(tmp_path):
    reference = rc.reference_run("llama")
    results = run_distributed(_worker, WORLD, str(tmp_path), timeout_s=900)
    for case in CASES:
        got = results[0][case.name]
        for step, (loss, ref) in enumerate(zip(got["losses"], reference["losses"])):
            assert loss == pytest.approx(ref, rel=RTOL), f"{case.name}: loss of step {step}"
        for step in range(rc.STEPS):
            for name, ref in reference["grads"][step].items():
                error = (got["grads"][step][name] - ref).norm().item()
                assert error <= RTOL * ref.norm().item() + 1e-9, f"{case.name}: step {step} gradient of {name}"
    # each rank holds 1/2 of every hsdp parameter (its shard group), and the two groups hold the same copies
    sizes = [r["hsdp_with_tp2"]["sizes"] for r in results]
    checked = [name for name in sizes[0] if name.startswith(HSDP_PARAMS)]
    assert len(checked) >= 20
    for name in checked:
        shape = sizes[0][name][1]
        numel = int(torch.Size(shape).numel())
        held = [s[name][0] for s in sizes]
        assert sum(held) == numel * WORLD // SHARD and max(held) <= -(-shape[0] // SHARD) * (numel // shape[0]), name
    for rank_result in results:
        assert rank_result["checkpoint_mismatches"] == {"hsdp_to_zero3": [], "zero3_to_hsdp": []}
