"""Activation bytes predicted by each adapter vs. what autograd really saves on small CPU models.

``measure_saved_bytes`` records every storage passed to ``saved_tensors_hooks`` during a training-mode
forward with loss, once per storage, attributed to the layer running when it was first saved. Each block and
the whole model must be within 10 % of ``LayerSpec.activation_bytes`` (block 0 of a stack is checked through
the total only: it is the first to save tensors shared by the whole stack, e.g. T5's encoder output).
Predictions are for the device measured on (``device=``): CPU dropout keeps masks of the activation dtype
(CUDA: 1 byte) and SDPA picks other kernels there (T5's cross-attention with dropout runs the math kernel).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from galvatron_hf.adapters import describe_model, t5
from galvatron_hf.adapters.spec import AttentionCall
from galvatron_hf.adapters.validate import (
    build_model,
    measure_saved_bytes,
    record_sdpa_backends,
)

TOLERANCE = 0.10
BATCH = 2


def llama_config(**overrides):
    values = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "num_hidden_layers": 2, "vocab_size": 300, "max_position_embeddings": 128}
    values.update(overrides)
    return transformers.AutoConfig.for_model("llama", **values)


def token_batch(config, seq_len: int, batch: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "labels": ids}


def compare(config, architecture, batch_fn, seq_len, attn_impl, dtype=torch.float32, checkpoint=False, batch=BATCH,
            check_blocks=True, device="cpu"):
    """Predicted and measured bytes per layer; asserts each block and the total are within tolerance."""
    config._attn_implementation = attn_impl
    model = build_model(config, architecture).to(device=device, dtype=dtype).train()
    spec = describe_model(model, seq_len=seq_len)
    inputs = {key: value.to(device) for key, value in batch_fn(config, seq_len, batch).items()}
    measured = measure_saved_bytes(model, spec, lambda: model(**inputs).loss, checkpoint_blocks=checkpoint)
    dtype_bytes = torch.finfo(dtype).bits // 8
    predicted = {
        layer.name: layer.activation_bytes(
            dtype_bytes=dtype_bytes, checkpoint=checkpoint and layer.is_block, attn_impl=attn_impl, device=device,
            samples=batch,
        )
        for layer in spec.layers
    }
    for block in spec.blocks:
        if block.name.endswith(".0") or not check_blocks:
            continue
        got = measured.per_layer[block.name]
        assert predicted[block.name] == pytest.approx(got, rel=TOLERANCE), (block.name, predicted, dict(measured.per_layer))
    assert sum(predicted.values()) == pytest.approx(measured.total, rel=TOLERANCE), (predicted, dict(measured.per_layer))
    return predicted, measured


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_llama_family(model_type, attn_impl):
    config = llama_config()
    config = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config.to_dict().items()
                                                               if k in ("hidden_size", "intermediate_size",
                                                                        "num_attention_heads", "num_key_value_heads",
                                                                        "num_hidden_layers", "vocab_size")})
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    compare(config, architecture[model_type], token_batch, 32, attn_impl)


def test_llama_attention_dropout_eager():
    compare(llama_config(attention_dropout=0.1), "LlamaForCausalLM", token_batch, 32, "eager")


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_llama_checkpointed_blocks_keep_only_their_input(attn_impl):
    _, measured = compare(llama_config(), "LlamaForCausalLM", token_batch, 32, attn_impl, checkpoint=True)
    assert measured.per_layer["decoder_block.1"] == BATCH * 32 * 64 * 4  # fp32 hidden states


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_llama_bf16(attn_impl):
    compare(llama_config(), "LlamaForCausalLM", token_batch, 32, attn_impl, dtype=torch.bfloat16)


# ----- GPT-2 ----------------------------------------------------------------------------------------------


def gpt2_config(**overrides):
    values = {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 300, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}
    values.update(overrides)
    return transformers.GPT2Config(**values)


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_gpt2_eager_with_and_without_dropout(dropout):
    config = gpt2_config(attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout)
    compare(config, "GPT2LMHeadModel", token_batch, 32, "eager")


def test_gpt2_sdpa_with_residual_dropout():
    # attention dropout off: CPU SDPA with dropout falls back to the math kernel (CUDA kernels stay fused)
    compare(gpt2_config(attn_pdrop=0.0), "GPT2LMHeadModel", token_batch, 32, "sdpa")


def test_gpt2_untied_exact_gelu_and_checkpointing():
    config = gpt2_config(tie_word_embeddings=False, activation_function="gelu", n_inner=100)
    compare(config, "GPT2LMHeadModel", token_batch, 32, "eager")
    compare(gpt2_config(attn_pdrop=0.0), "GPT2LMHeadModel", token_batch, 32, "sdpa", checkpoint=True)


# ----- BERT -----------------------------------------------------------------------------------------------


def bert_config(**overrides):
    values = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
                  "vocab_size": 300, "max_position_embeddings": 64}
    values.update(overrides)
    return transformers.BertConfig(**values)


def classification_batch(config, seq_len, batch):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "labels": torch.arange(batch) % config.num_labels}


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_bert_mlm_eager(dropout):
    config = bert_config(attention_probs_dropout_prob=dropout, hidden_dropout_prob=dropout)
    compare(config, "BertForMaskedLM", token_batch, 32, "eager")


def test_bert_sdpa_classification_and_checkpointing():
    config = bert_config(attention_probs_dropout_prob=0.0, num_labels=3)
    compare(config, "BertForMaskedLM", token_batch, 32, "sdpa")
    compare(config, "BertForSequenceClassification", classification_batch, 32, "sdpa")
    compare(config, "BertForMaskedLM", token_batch, 32, "sdpa", checkpoint=True)


# ----- ViT ------------------------------------------------------------------------------------------------


def vit_config(**overrides):
    values = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128,
                  "image_size": 32, "patch_size": 8, "num_labels": 2}
    values.update(overrides)
    return transformers.ViTConfig(**values)


def image_batch(config, seq_len, batch):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    return {"pixel_values": pixels, "labels": torch.arange(batch) % config.num_labels}


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_vit_eager(dropout):
    config = vit_config(attention_probs_dropout_prob=dropout, hidden_dropout_prob=dropout)
    compare(config, "ViTForImageClassification", image_batch, 17, "eager")


def test_vit_sdpa_and_checkpointing():
    compare(vit_config(hidden_dropout_prob=0.1), "ViTForImageClassification", image_batch, 17, "sdpa")
    compare(vit_config(), "ViTForImageClassification", image_batch, 17, "sdpa", checkpoint=True)


def test_vit_bf16_eager():
    compare(vit_config(), "ViTForImageClassification", image_batch, 17, "eager", dtype=torch.bfloat16)


# ----- T5 -------------------------------------------------------------------------------------------------
# Under SDPA T5's position bias is the attention mask. It needs grad, so CPU runs the self-attention with the
# math kernel (fp32 q/k/v copies and probabilities in bf16); the cross-attention's zero bias does not, so CPU's
# fused kernel takes it unless there is dropout. The adapter prices each call per device (``AttentionCall``).


def t5_config(**overrides):
    values = {"d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": 300,
                  "decoder_start_token_id": 0, "pad_token_id": 0}
    values.update(overrides)
    return transformers.T5Config(**values)


def seq2seq_batch(config, seq_len, batch):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator)
    labels = torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator)
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("dropout", [0.1, 0.0])
@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_t5_eager(proj, dropout):
    compare(t5_config(feed_forward_proj=proj, dropout_rate=dropout), "T5ForConditionalGeneration", seq2seq_batch, 32, "eager")


def test_t5_checkpointing():
    # checkpointed blocks keep their input; the relative position bias handed from block to block is one
    # tensor per micro-batch, saved by the first block that receives it: only the total is compared per layer
    _, measured = compare(
        t5_config(), "T5ForConditionalGeneration", seq2seq_batch, 32, "eager", checkpoint=True, check_blocks=False,
    )
    assert measured.per_layer["encoder_block.0"] == BATCH * 32 * 64 * 4  # a checkpointed block keeps its input


def test_t5_per_micro_batch_terms_are_what_block_0_adds():
    """Without them, block 0 of each stack is off by the position buckets (int64, one set per micro-batch)."""
    predicted, measured = compare(t5_config(dropout_rate=0.0), "T5ForConditionalGeneration", seq2seq_batch, 32, "eager")
    assert measured.per_layer["encoder_block.0"] - measured.per_layer["encoder_block.1"] == 32 * 32 * 8
    assert predicted["encoder_block.0"] == measured.per_layer["encoder_block.0"]


@pytest.mark.parametrize("dropout", [0.1, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_t5_sdpa_on_cpu(dtype, dropout):
    compare(t5_config(dropout_rate=dropout), "T5ForConditionalGeneration", seq2seq_batch, 32, "sdpa", dtype=dtype)


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_t5_sdpa_calls_run_the_kernels_the_adapter_prices(dropout):
    """PyTorch's own backend choice for every SDPA call, against ``AttentionCall.runs_math`` (CPU here; the
    GPU test below does the same on CUDA)."""
    assert_kernels_as_priced(t5_config(dropout_rate=dropout), torch.bfloat16, "cpu")


def assert_kernels_as_priced(config, dtype, device):
    config._attn_implementation = "sdpa"
    model = build_model(config, "T5ForConditionalGeneration").to(device=device, dtype=dtype).train()
    spec = describe_model(model, seq_len=32)
    inputs = {key: value.to(device) for key, value in seq2seq_batch(config, 32, BATCH).items()}
    records = record_sdpa_backends(model, spec, lambda: model(**inputs).loss)
    ran = [(r.layer, r.backend == "MATH") for r in records]
    priced = [(layer.name, call.runs_math(device)) for layer in spec.blocks for call in layer.activation.sdpa_calls]
    assert ran == priced, records


def saved_bytes_of(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn()`` runs (no model: a bare SDPA call)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("dropout", [0.1, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_math_kernel_bytes_of_one_sdpa_call(dtype, dropout):
    """The math kernel forced on a bare call with a mask that needs grad: fp32 q, k, v, probabilities (and
    dropped probabilities, fp32 CPU noise) whatever the dtype, nothing of the mask. Hand count for bf16 with
    dropout, per token of 2 x 32 (4 heads x 16): q, k, v 3 x 64 x 4 = 768; per key 32: probabilities, dropped
    and noise 3 x 4 heads x 4 bytes = 48."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, heads, tokens, head_dim = 2, 4, 32, 16
    q, k, v = (torch.randn(batch, tokens, heads, head_dim, dtype=dtype, requires_grad=True).transpose(1, 2)
               for _ in range(3))
    mask = torch.randn(1, heads, tokens, tokens, dtype=dtype, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH):
        measured = saved_bytes_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, dropout))
    inner, dtype_bytes = heads * head_dim, torch.finfo(dtype).bits // 8
    call = AttentionCall(math_on=("cpu", "cuda"), qkv=3 * inner, scores=heads * (2 if dropout else 1),
                         scores_mask=heads if dropout else 0)
    per_token = call.bytes_per_token(1, dtype_bytes, tokens, "cpu") + 3 * inner * dtype_bytes  # + dtype q, k, v
    assert measured == per_token * batch * tokens
    if dtype == torch.bfloat16 and dropout:
        assert measured == batch * tokens * (768 + 48 * tokens)
    # CUDA keeps a bool dropout mask instead of the fp32 noise: 3 bytes less per score
    cuda = call.bytes_per_token(1, dtype_bytes, tokens, "cuda") + 3 * inner * dtype_bytes
    assert (per_token - cuda) * batch * tokens == (3 * batch * heads * tokens * tokens if dropout else 0)


def test_t5_sdpa_cuda_prediction_with_a_strided_bias(monkeypatch):
    """The GPU test case (bf16, dropout 0.1, 2 x 32 tokens, d_model 64, 4 heads x 16) under transformers 5.17,
    which hands CUDA a strided bias: encoder block 1 keeps the eager tensors plus fp32 q, k, v (3 x 64 x 2 extra
    bytes per token) and fp32 instead of bf16 probabilities and dropped probabilities (2 x 4 x 32 keys x 2
    extra bytes per token): 205,312 + 24,576 + 32,768 = 262,656 bytes, what the H100 measured."""
    monkeypatch.setattr(t5, "bias_mask_is_strided", lambda: True)
    block = describe_model(t5_config(), seq_len=32).blocks[1]
    eager = block.activation_bytes(dtype_bytes=2, attn_impl="eager", samples=BATCH)
    assert eager == 205_312
    assert block.activation_bytes(dtype_bytes=2, samples=BATCH) == eager + 24_576 + 32_768 == 262_656
    monkeypatch.setattr(t5, "bias_mask_is_strided", lambda: False)  # contiguous bias: memory-efficient kernel
    fused = describe_model(t5_config(), seq_len=32).blocks[1]
    # q, k, v, output and logsumexp in bf16 plus its own contiguous copy of the bias (4 x 32 x 32 per batch)
    assert fused.activation_bytes(dtype_bytes=2, samples=BATCH) == 164_864 + 4 * 32 * 32 * 2


# ----- bf16 (CPU supports it): the fp32 upcasts, casts and loss dtypes the adapters price ------------------


@pytest.mark.parametrize("family", ["gpt2", "bert", "t5"])
def test_bf16_eager(family):
    if family == "gpt2":
        compare(gpt2_config(), "GPT2LMHeadModel", token_batch, 32, "eager", dtype=torch.bfloat16)
    elif family == "bert":
        compare(bert_config(), "BertForMaskedLM", token_batch, 32, "eager", dtype=torch.bfloat16)
    else:
        compare(t5_config(dropout_rate=0.0), "T5ForConditionalGeneration", seq2seq_batch, 32, "eager", dtype=torch.bfloat16)


def test_bert_gelu_new_activation_internals():
    compare(bert_config(hidden_act="gelu_new"), "BertForMaskedLM", token_batch, 32, "eager")


# ----- CUDA (GPU only): fused SDPA kernels, bool dropout masks, bf16 --------------

GPU_CASES = {
    "llama": (lambda: llama_config(attention_dropout=0.1), "LlamaForCausalLM", token_batch, 32),
    "gpt2": (gpt2_config, "GPT2LMHeadModel", token_batch, 32),
    "bert": (bert_config, "BertForMaskedLM", token_batch, 32),
    "vit": (lambda: vit_config(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1),
            "ViTForImageClassification", image_batch, 17),
    "t5": (t5_config, "T5ForConditionalGeneration", seq2seq_batch, 32),
}


@pytest.mark.gpu
@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", sorted(GPU_CASES))
def test_cuda_bf16_with_dropout(family, attn_impl, checkpoint):
    """The CUDA prediction (the planner's default device): T5's biased SDPA calls priced with the kernel CUDA
    picks for them on the installed transformers (see ``t5.bias_mask_is_strided``)."""
    make_config, architecture, batch_fn, seq_len = GPU_CASES[family]
    compare(make_config(), architecture, batch_fn, seq_len, attn_impl, dtype=torch.bfloat16, checkpoint=checkpoint,
            check_blocks=not (family == "t5" and checkpoint), device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_cuda_t5_sdpa_calls_run_the_kernels_the_adapter_prices(dropout):
    assert_kernels_as_priced(t5_config(dropout_rate=dropout), torch.bfloat16, "cuda")
