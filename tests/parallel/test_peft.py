"""PEFT LoRA under every plan: GalvatronTrainer on a LoRA-wrapped tiny Llama vs the plain single-process Trainer.

One 4-rank gloo launch: ZeRO-3, TP2 x ZeRO-3 and PP2 x ZeRO-3 train with the reference's losses;
only the adapters train (the optimizer holds exactly the trainable parameters, the spec counts them);
``save_model`` writes the adapter as PEFT does and ``PeftModel.from_pretrained`` reloads the reference's weights;
a ZeRO-3 checkpoint holds the adapters and their optimizer state only (the frozen base comes from the model a
resume builds), resumes under TP2 x ZeRO-3 with the reference's losses, and is refused onto another base and by
export.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="PEFT tests need the peft extra: pip install galvatron-hf[peft]")

sys.path.insert(0, str(Path(__file__).parent))
import peft_cases as pc

from galvatron_hf.checkpoint import CheckpointError, export_to_hf, read_manifest
from galvatron_hf.checkpoint.sharded_state import stored_keys
from galvatron_hf.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed
RTOL = 1e-5


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("peft")
    results = run_distributed(pc.worker, 4, list(pc.LAYOUTS), str(workdir), timeout_s=1200)
    return workdir, results, pc.reference(str(workdir / "reference"))


@pytest.mark.parametrize("layout", list(pc.LAYOUTS))
def test_lora_trains_like_one_process(launch, layout):
    workdir, results, reference = launch
    for rank, rank_results in enumerate(results):
        got = rank_results[layout]
        assert got["losses"] == pytest.approx(reference["losses"], rel=RTOL), f"{layout} rank {rank}"
        assert got["optimized"], f"{layout}: the optimizer holds other parameters than the trainable ones"
        assert got["trainable_params"] == reference["trainable_params"]
        if layout != "pp2":  # a pipeline stage holds half of the adapters
            assert got["names"] == reference["names"]
    assert reference["losses"][-1] != pytest.approx(reference["losses"][0], rel=1e-4)  # it does train


@pytest.mark.parametrize("layout", list(pc.LAYOUTS))
def test_saved_adapter_reloads_with_peft(launch, layout):
    workdir, _, reference = launch
    reloaded = pc.reload_adapter(str(workdir / f"adapter_{layout}"))
    assert reloaded.keys() == reference["adapter"].keys()
    for key, value in reference["adapter"].items():
        torch.testing.assert_close(reloaded[key], value, rtol=RTOL, atol=1e-6, msg=f"{layout} {key}")
    assert any(float(v.abs().max()) > 0 for k, v in reloaded.items() if "lora_B" in k)  # trained, not the init


def test_checkpoint_holds_what_trains_and_resumes_across_layouts(launch):
    workdir, results, reference = launch
    checkpoint = workdir / pc.RESUME[0] / "checkpoint-2"
    stored = stored_keys(checkpoint / "dcp")
    model_entries = {key.removeprefix("model.") for key in stored if key.startswith("model.")}
    assert model_entries == set(reference["names"])  # the adapters; the frozen base is left out
    assert any(key.startswith("optim.") for key in stored)
    assert set(read_manifest(checkpoint)["frozen_parameters"]) == reference["frozen_names"]
    for rank_results in results:
        assert rank_results["resume"]["steps"] == 2  # steps 3 and 4 only
        assert rank_results["resume"]["losses"] == pytest.approx(reference["losses"], rel=RTOL)
        assert "CheckpointError" in rank_results["another_base"] and "differ from those it trained with" in (
            rank_results["another_base"]
        )
    with pytest.raises(CheckpointError, match="trainable parameters only"):
        export_to_hf(checkpoint, workdir / "exported")
