"""load_hf_pretrained: HF save_pretrained directories load into parallel layouts with the exact weights.

One 4-rank launch checks TP2 x FSDP2 (meta-initialised), FSDP4, a 2-stage pipeline split x FSDP2 and T5 under
FSDP4 against `from_pretrained` of the same directory; the single-process tests cover the plain model, key
matching and the error messages.
"""

from __future__ import annotations

import json
import math
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, T5Config, T5ForConditionalGeneration

from galvatron_hf.checkpoint.hf_weights import (
    PretrainedWeightsError,
    SafetensorsSliceReader,
    load_hf_pretrained,
    match_model_keys,
    stored_tensors,
    safetensors_files,
)
from galvatron_hf.testing.distributed import run_distributed

# ----- tiny models and the layouts we load into (built with PyTorch APIs directly) ---------------------------


def llama_config(tie: bool = True) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=tie,
    )  # fmt: skip


def t5_config() -> T5Config:
    return T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip


LLAMA_TP_RULES = {
    "self_attn.q_proj": "col", "self_attn.k_proj": "col", "self_attn.v_proj": "col", "self_attn.o_proj": "row",
    "mlp.gate_proj": "col", "mlp.up_proj": "col", "mlp.down_proj": "row",
}  # fmt: skip


def blocks_of(model: nn.Module) -> list[nn.Module]:
    if hasattr(model, "model"):
        layers = model.model.layers
        return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)
    return list(model.encoder.block) + list(model.decoder.block)


def apply_tp_fsdp(model: nn.Module, tp: int, dp: int, pp: int = 1) -> nn.Module:
    """TP inside Llama blocks over consecutive ranks, FSDP2 (ZeRO-3) per block then root over the DP ranks.

    With ``pp`` > 1 the DP ranks are this rank's stage (consecutive blocks of ``dp`` ranks).
    """
    if tp > 1:
        mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
        style = {"col": ColwiseParallel, "row": RowwiseParallel}
        rules = {name: style[kind]() for name, kind in LLAMA_TP_RULES.items()}
        for block in blocks_of(model):
            parallelize_module(block, mesh["tp"], rules)
        dp_mesh = mesh["dp"]
    else:
        dp_mesh = init_device_mesh("cpu", (pp, dp), mesh_dim_names=("pp", "dp"))["dp"]
    for block in blocks_of(model):
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    return model


def prune_llama_to_stage(model: LlamaForCausalLM, stage: int, num_stages: int) -> LlamaForCausalLM:
    """A pipeline stage as the runtime builds it: the same HF object holding only its blocks, names unchanged."""
    layers = model.model.layers
    per_stage = len(layers) // num_stages
    keep = range(stage * per_stage, (stage + 1) * per_stage)
    model.model.layers = nn.ModuleDict({str(i): layers[i] for i in keep})
    if stage != 0:
        model.model.embed_tokens = None
    if stage != num_stages - 1:
        model.model.norm = None
        model.lm_head = None
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model gathered in full on this rank (collective over each tensor's mesh)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def compare_with_reference(model: nn.Module, reference: nn.Module) -> dict:
    ours = full_state(model)
    ref = reference.state_dict()
    differing = [key for key, value in ours.items() if not torch.equal(value, ref[key])]
    return {"compared": sorted(ours), "differing": differing}


# ----- the 4-rank launch --------------------------------------------------------------------------------------


def _load_into_layouts(rank: int, world_size: int, dirs: dict[str, str]) -> dict:
    results = {}
    llama_ref = LlamaForCausalLM.from_pretrained(dirs["llama_single"])
    llama_ref_sharded = LlamaForCausalLM.from_pretrained(dirs["llama_sharded"])

    # TP2 x FSDP2, built on the meta device and materialised empty: every weight must come from the file
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config())
    apply_tp_fsdp(model, tp=2, dp=2)
    model.to_empty(device="cpu")
    load_hf_pretrained(model, dirs["llama_single"])
    results["tp2_fsdp2_meta"] = compare_with_reference(model, llama_ref)

    # FSDP4 from a sharded directory (several safetensors files + index), counting the elements read
    model = apply_tp_fsdp(LlamaForCausalLM(llama_config()), tp=1, dp=4)
    elements_read = []
    original_read = SafetensorsSliceReader._read_one

    def counting_read(self, handle, item, planner):
        elements_read.append(math.prod(item.lengths))
        return original_read(self, handle, item, planner)

    with mock.patch.object(SafetensorsSliceReader, "_read_one", counting_read):
        load_hf_pretrained(model, dirs["llama_sharded"])
    results["fsdp4_sharded"] = compare_with_reference(model, llama_ref_sharded)
    results["fsdp4_sharded"]["elements_read"] = sum(elements_read)

    # 2-stage pipeline split x FSDP2 inside each stage; the last stage holds lm_head but not the embedding
    stage = rank // 2
    model = prune_llama_to_stage(LlamaForCausalLM(llama_config()), stage, 2)
    apply_tp_fsdp(model, tp=1, dp=2, pp=2)
    load_hf_pretrained(model, dirs["llama_sharded"])
    results["pp2_fsdp2"] = compare_with_reference(model, llama_ref_sharded)

    # T5 (encoder-decoder, shared embedding tied three ways) under FSDP4
    model = apply_tp_fsdp(T5ForConditionalGeneration(t5_config()), tp=1, dp=4)
    load_hf_pretrained(model, dirs["t5"])
    results["t5_fsdp4"] = compare_with_reference(model, T5ForConditionalGeneration.from_pretrained(dirs["t5"]))
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf_dirs")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config())
    llama.save_pretrained(root / "llama_single")
    torch.manual_seed(1)
    LlamaForCausalLM(llama_config()).save_pretrained(root / "llama_sharded", max_shard_size="20KB")
    torch.manual_seed(2)
    T5ForConditionalGeneration(t5_config()).save_pretrained(root / "t5")
    return {name: str(root / name) for name in ("llama_single", "llama_sharded", "t5")}


@pytest.mark.distributed
def test_hf_directories_load_into_parallel_layouts_with_identical_weights(pretrained_dirs):
    assert len(safetensors_files(pretrained_dirs["llama_sharded"])) > 1, "the sharded directory must have shards"
    results = run_distributed(_load_into_layouts, 4, pretrained_dirs, timeout_s=240)
    for rank, by_layout in enumerate(results):
        for layout, outcome in by_layout.items():
            assert outcome["differing"] == [], f"rank {rank} {layout}: weights differ for {outcome['differing']}"
            assert outcome["compared"], f"rank {rank} {layout}: nothing compared"
    full_llama = set(LlamaForCausalLM(llama_config()).state_dict())
    assert set(results[0]["tp2_fsdp2_meta"]["compared"]) == full_llama
    # each rank read its quarter of every tensor, and together exactly the model once
    model_elements = sum(t.numel() for t in LlamaForCausalLM(llama_config()).state_dict().values())
    per_rank = [r["fsdp4_sharded"]["elements_read"] for r in results]
    assert sum(per_rank) == model_elements and max(per_rank) == model_elements // 4, per_rank
    stage0, stage1 = set(results[0]["pp2_fsdp2"]["compared"]), set(results[2]["pp2_fsdp2"]["compared"])
    assert "model.embed_tokens.weight" in stage0 and "lm_head.weight" not in stage0
    assert "lm_head.weight" in stage1 and "model.embed_tokens.weight" not in stage1
    assert stage0 | stage1 == full_llama and not stage0 & stage1


# ----- single process: plain model, key matching, errors ----------------------------------------------------


def test_plain_model_loads_without_a_process_group(pretrained_dirs, capsys):
    model = LlamaForCausalLM(llama_config())
    assert load_hf_pretrained(model, pretrained_dirs["llama_sharded"]) == []
    shown = capsys.readouterr().err  # the progress bar, one count per tensor read
    count = len(model.state_dict())  # the tied head too: it is filled from the embedding's stored tensor
    assert "loading weights from" in shown and f"{count}/{count}" in shown
    reference = LlamaForCausalLM.from_pretrained(pretrained_dirs["llama_sharded"])
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bf16_file_loads_into_fp32_model(tmp_path):
    torch.manual_seed(3)
    source = LlamaForCausalLM(llama_config())
    source.to(torch.bfloat16).save_pretrained(tmp_path)
    model = LlamaForCausalLM(llama_config())
    load_hf_pretrained(model, tmp_path)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, source.model.layers[1].mlp.up_proj.weight.float())


def test_base_model_file_fills_the_head_model_through_prefix_and_tie(tmp_path):
    torch.manual_seed(4)
    base = LlamaModel(llama_config())
    base.save_pretrained(tmp_path)  # keys without the "model." prefix and no lm_head
    stored = stored_tensors(safetensors_files(tmp_path))
    model = LlamaForCausalLM(llama_config())
    found, missing = match_model_keys(model.state_dict().keys(), stored, model)
    assert missing == []
    assert found["model.layers.0.self_attn.q_proj.weight"].key == "layers.0.self_attn.q_proj.weight"
    assert found["lm_head.weight"].key == "embed_tokens.weight"
    load_hf_pretrained(model, tmp_path)
    assert torch.equal(model.lm_head.weight, base.embed_tokens.weight)


def test_untied_head_missing_from_the_file_is_named(tmp_path):
    LlamaModel(llama_config(tie=False)).save_pretrained(tmp_path)
    with pytest.raises(PretrainedWeightsError, match=r"no weights for 1 model keys.*lm_head.weight"):
        load_hf_pretrained(LlamaForCausalLM(llama_config(tie=False)), tmp_path)
    missing = load_hf_pretrained(LlamaForCausalLM(llama_config(tie=False)), tmp_path, strict=False)
    assert missing == ["lm_head.weight"]


def test_errors_name_the_directory_and_the_fix(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="no pretrained directory"):
        load_hf_pretrained(LlamaForCausalLM(llama_config()), tmp_path / "nowhere")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PretrainedWeightsError, match="safetensors only"):
        load_hf_pretrained(LlamaForCausalLM(llama_config()), tmp_path)
    bigger = tmp_path / "bigger"
    LlamaForCausalLM(llama_config()).save_pretrained(bigger)
    wider = llama_config()
    wider.intermediate_size = 96
    with pytest.raises(PretrainedWeightsError, match="shapes differ"):
        load_hf_pretrained(LlamaForCausalLM(wider), bigger)
    index = tmp_path / "broken"
    index.mkdir()
    (index / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(PretrainedWeightsError, match="do not exist"):
        load_hf_pretrained(LlamaForCausalLM(llama_config()), index)
    with torch.device("meta"):
        on_meta = LlamaForCausalLM(llama_config())
    with pytest.raises(PretrainedWeightsError, match="to_empty"):
        load_hf_pretrained(on_meta, bigger)
