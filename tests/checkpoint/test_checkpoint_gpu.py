"""Checkpoints on CUDA with NCCL (skipped without a GPU): the device paths of the CPU/gloo tests.

FSDP2 over up to 2 GPUs, meta-initialised: HF weights load with their exact values, a save then a load into
a fresh model restores model, optimizer and each rank's CUDA RNG state; export gives the same logits.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import LlamaForCausalLM

from galvatron_hf.checkpoint import export_to_hf, load_checkpoint, load_hf_pretrained, save_checkpoint
from galvatron_hf.testing.distributed import run_distributed
from tests.checkpoint.test_checkpoint import batch, differing, full_states, make_optimizer, reset_rotary_buffers
from tests.checkpoint.test_checkpoint_hf_load import blocks_of, full_state, llama_config


def _fsdp_on_gpu(world: int) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config())
    mesh = init_device_mesh("cuda", (world,))
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cuda")
    reset_rotary_buffers(model)
    return model


def _gpu_round_trip(rank: int, world: int, hf_dir: str, ckpt: str) -> dict:
    torch.cuda.set_device(rank)
    model = _fsdp_on_gpu(world)
    load_hf_pretrained(model, hf_dir)
    reference = LlamaForCausalLM.from_pretrained(hf_dir).state_dict()
    load_differs = [k for k, v in full_state(model).items() if not torch.equal(v.cpu(), reference[k])]

    optimizer, scheduler = make_optimizer(model)
    ids = batch().cuda()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    save_checkpoint(ckpt, model=model, optimizer=optimizer, lr_scheduler=scheduler, plan=None, step=1)
    cuda_draw = torch.rand(2, device="cuda").cpu()
    saved = full_states(model, optimizer)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.cpu()

    fresh = _fsdp_on_gpu(world)
    fresh_optimizer, fresh_scheduler = make_optimizer(fresh)
    state = load_checkpoint(ckpt, model=fresh, optimizer=fresh_optimizer, lr_scheduler=fresh_scheduler)
    restored_draw = torch.rand(2, device="cuda").cpu()
    resumed = full_states(fresh, fresh_optimizer)
    to_cpu = lambda s: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}  # noqa: E731
    return {
        "load_differs": load_differs,
        "model_differs": differing(to_cpu(resumed[0]), to_cpu(saved[0])),
        "optim_differs": differing(to_cpu(resumed[1]), to_cpu(saved[1])),
        "rng": state.rng,
        "draws": (cuda_draw, restored_draw),
        "logits": logits,
    }


@pytest.mark.gpu
@pytest.mark.distributed
def test_fsdp_checkpoints_on_cuda(tmp_path):
    world = min(2, torch.cuda.device_count())
    hf_dir, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(hf_dir)
    results = run_distributed(_gpu_round_trip, world, str(hf_dir), str(ckpt), backend="nccl", timeout_s=300)
    for rank, result in enumerate(results):
        assert result["load_differs"] == [] and result["model_differs"] == [], f"rank {rank}"
        assert result["optim_differs"] == [], f"rank {rank}"
        assert result["rng"] == "per-rank" and torch.equal(*result["draws"]), f"rank {rank}: CUDA RNG not restored"
    exported = export_to_hf(ckpt, tmp_path / "exported")
    model = LlamaForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        logits = model(input_ids=batch()).logits
    torch.testing.assert_close(logits, results[0]["logits"], rtol=1e-4, atol=1e-4)
