"""Every family, six layouts on 4 gloo ranks: loss and gradients of 3 SGD steps equal one process (fp32).

One launch per family covers DDP x4, ZeRO-2 x4, ZeRO-3 x4 (checkpointed), TP2 x ZeRO-3 2, TP4 and a
per-layer mixed layout (tp = [1, 2, 4, 2] with zero3 / ddp / zero2 / zero3, checkpointing on two blocks),
and checks that each rank holds only its share of every parameter and that parameter names are HF's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import runtime_cases as rc

from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
WORLD = 4
RTOL = 1e-5
ATOL = 1e-9


def _check_family(family: str) -> None:
    from galvatron_hf.adapters import describe_model

    cases = rc.standard_cases(4)  # T5: 2 encoder + 2 decoder blocks
    reference = rc.reference_run(family)
    results = run_distributed(rc.parallel_run, WORLD, family, cases, timeout_s=900)
    model = rc.make_model(family)
    spec = describe_model(model, seq_len=rc.SEQ if family != "vit" else None)
    aliases = rc.alias_names(model)
    for case in cases:
        got = results[0][case.name]
        assert got["names"] == reference["names"], f"{case.name}: parameter names differ from HF's"
        for step, (loss, ref) in enumerate(zip(got["losses"], reference["losses"])):
            assert loss == pytest.approx(ref, rel=RTOL), f"{case.name}: loss of step {step}"
        for step in range(rc.STEPS):
            for name, ref in reference["grads"][step].items():
                grad = got["grads"][step][name]
                # rtol 1e-5, plus atol 1e-9 for gradients that are mathematically zero (BERT's key bias)
                error = (grad - ref).norm().item()
                assert error <= RTOL * ref.norm().item() + ATOL, (
                    f"{case.name}: step {step} gradient of {name} off by {error:.2e}"
                )
        rc.check_shares(
            spec,
            case.plan(WORLD),
            WORLD,
            [r[case.name]["sizes"] for r in results],
            aliases,
        )


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "vit", "t5"])
def test_layouts_match_single_process(family):
    _check_family(family)
