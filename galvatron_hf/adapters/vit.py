"""ViT: ViTForImageClassification (default) and the bare ViTModel.

Pre-LN blocks: LayerNorm -> q/k/v -> attention -> output projection -> residual; LayerNorm -> fc1 -> GELU ->
fc2 -> residual. transformers renamed ViT's modules across releases: older ones hold blocks at
``encoder.layer.i`` with ``attention.attention.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense`` (and reshape with ``num_attention_heads`` / ``all_head_size``);
newer ones at ``layers.i`` with ``attention.{q,k,v,o}_proj`` and ``mlp.{fc1,fc2}`` (reshape with -1). The
adapter reads which one is installed from the modeling source (without importing torch).

The sequence length is fixed by the image: (image_size / patch_size)^2 patches + the [CLS] token.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from ._common import (
    LAYERNORM_STATS,
    FamilyAdapter,
    first_token_dense_spec,
    layernorm_final_spec,
    linear_flops,
    linear_params,
)
from .bert import encoder_block_spec
from .gpt2 import gelu_kept
from .spec import ActivationModel, LayerSpec, TPAttribute, TPRule


@dataclass(frozen=True)
class ViTLayout:
    """Module names of one transformers release."""

    blocks: str
    rules: tuple[TPRule, ...]
    attributes: tuple[TPAttribute, ...]


RENAMED_LAYOUT = ViTLayout(
    blocks="layers",
    rules=(
        TPRule("attention.q_proj", "colwise"),
        TPRule("attention.k_proj", "colwise"),
        TPRule("attention.v_proj", "colwise"),
        TPRule("attention.o_proj", "rowwise"),
        TPRule("mlp.fc1", "colwise"),
        TPRule("mlp.fc2", "rowwise"),
    ),
    attributes=(TPAttribute("attention", "num_attention_heads"),),
)
LEGACY_LAYOUT = ViTLayout(
    blocks="encoder.layer",
    rules=(
        TPRule("attention.attention.query", "colwise"),
        TPRule("attention.attention.key", "colwise"),
        TPRule("attention.attention.value", "colwise"),
        TPRule("attention.output.dense", "rowwise"),
        TPRule("intermediate.dense", "colwise"),
        TPRule("output.dense", "rowwise"),
    ),
    attributes=(
        TPAttribute("attention.attention", "num_attention_heads"),
        TPAttribute("attention.attention", "all_head_size"),
    ),
)


@lru_cache(maxsize=1)
def installed_layout() -> ViTLayout:
    """The legacy layout has a ``ViTSelfAttention`` class; the renamed one does not."""
    spec = importlib.util.find_spec("transformers.models.vit.modeling_vit")
    if spec is None or spec.origin is None:
        return RENAMED_LAYOUT
    with open(spec.origin, encoding="utf-8") as handle:
        source = handle.read()
    return LEGACY_LAYOUT if "class ViTSelfAttention" in source else RENAMED_LAYOUT


def pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def num_patches(config: Any) -> int:
    (image_h, image_w), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return (image_h // patch_h) * (image_w // patch_w)


def vit_block_activation(
    hidden: int, heads: int, ffn: int, attn_dropout: bool, hidden_dropout: bool, activation: str = "gelu"
) -> ActivationModel:
    """Like BERT's block, but the eager softmax runs in fp32 and is cast back (as LLaMA's)."""
    return ActivationModel(
        replicated=4 * hidden,  # first norm's input and output, second norm's input and output
        fp32_replicated=2 * LAYERNORM_STATS,
        sharded=3 * hidden + hidden + ffn * (1 + gelu_kept(activation)),  # q, k, v, attention out, FFN
        bool_replicated=2 * hidden if hidden_dropout else 0,
        fused_attention=heads,
        eager_scores_fp32=heads,
        eager_scores_cast=0 if attn_dropout else heads,
        eager_scores=heads if attn_dropout else 0,
        eager_scores_bool=heads if attn_dropout else 0,
        checkpointed=hidden,
    )


class ViTAdapter(FamilyAdapter):
    family = "vit"
    heads: ClassVar[dict[str, tuple[str, ...]]] = {"vit": ("ViTForImageClassification", "ViTModel")}

    def default_seq_len(self, config: Any) -> int:
        return num_patches(config) + 1

    def check_seq_len(self, config: Any, seq_len: int) -> None:
        fixed = self.default_seq_len(config)
        if seq_len != fixed:
            raise ValueError(
                f"ViT's sequence length is fixed by the image: ({config.image_size}/{config.patch_size})^2 "
                f"patches + [CLS] = {fixed}, got seq_len={seq_len}. Leave seq_len unset, or change "
                "image_size / patch_size in the config."
            )

    def ties_embeddings(self, config: Any, architecture: str) -> bool:
        return False

    def layers(self, config: Any, architecture: str, seq_len: int, decoder_seq_len: int) -> list[LayerSpec]:
        prefix = "vit" if architecture == "ViTForImageClassification" else ""
        hidden = int(config.hidden_size)
        layout = installed_layout()
        layers = [self.embedding(config, prefix, hidden, seq_len)]
        layers += [self.block(config, layout, prefix, hidden, seq_len, i) for i in range(int(config.num_hidden_layers))]
        layers.append(self.final_norm(prefix, hidden, seq_len))
        if architecture == "ViTForImageClassification":
            layers.append(self.classifier(config, hidden, seq_len))
        else:
            layers.append(self.pooler(config, hidden, seq_len))
        return layers

    def embedding(self, config: Any, prefix: str, hidden: int, seq_len: int) -> LayerSpec:
        patch_h, patch_w = pair(config.patch_size)
        patch_pixels = int(config.num_channels) * patch_h * patch_w
        projection = linear_params(patch_pixels, hidden, True)
        dropout = float(config.hidden_dropout_prob or 0.0) > 0
        image_pixels = patch_pixels * num_patches(config)
        return LayerSpec(
            name="embedding",
            kind="embedding",
            root=f"{prefix}.embeddings".lstrip("."),
            modules=("",),
            hidden_size=hidden,
            seq_len=seq_len,
            params=projection + hidden + seq_len * hidden,  # patch projection, [CLS], positions
            forward_flops=linear_flops(seq_len - 1, patch_pixels, hidden),
            # the pixels the patch convolution keeps (spread over the tokens), and the dropout mask
            activation=ActivationModel(
                replicated=image_pixels / seq_len, bool_replicated=hidden if dropout else 0
            ),
        )

    def block(self, config: Any, layout: ViTLayout, prefix: str, hidden: int, seq_len: int, index: int) -> LayerSpec:
        return encoder_block_spec(
            config,
            index=index,
            root=f"{prefix}.{layout.blocks}.{index}".lstrip("."),
            modules=("",),
            hidden=hidden,
            seq_len=seq_len,
            qkv_bias=bool(config.qkv_bias),
            activation_of=vit_block_activation,
            tp_rules=layout.rules,
            tp_attributes=layout.attributes,
        )

    def final_norm(self, prefix: str, hidden: int, seq_len: int) -> LayerSpec:
        return layernorm_final_spec(f"{prefix}.layernorm".lstrip("."), ("",), hidden, seq_len)

    def classifier(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        """On the [CLS] token only; it keeps a view of the final norm's whole output."""
        return first_token_dense_spec(
            name="head", root="", modules=("classifier",), hidden=hidden, seq_len=seq_len,
            width=int(config.num_labels), activation=ActivationModel(replicated=hidden),
        )

    def pooler(self, config: Any, hidden: int, seq_len: int) -> LayerSpec:
        width = int(getattr(config, "pooler_output_size", None) or hidden)
        return first_token_dense_spec(
            name="pooler", root="pooler", modules=("",), hidden=hidden, seq_len=seq_len, width=width,
            activation=ActivationModel(replicated=hidden),
        )
