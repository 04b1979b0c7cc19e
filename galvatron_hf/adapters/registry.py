"""The one registry of model families: model_type -> the family (its adapter) that describes it.

Each family's adapter names it (``FamilyAdapter.family``) and lists the model types and HF heads it reads
(``heads``); ``ModelSpec.family`` carries that name to the runtime, which finds the family's torch half,
``galvatron_hf/parallel/families/<family>.py``, by it. Adding a family = its adapter file + one entry in
``ADAPTERS`` (+ ``parallel/families/<family>.py`` for pipeline stages); see docs/adapters.md, "Adding a family".
"""

from __future__ import annotations

from ._common import FamilyAdapter
from .bert import BertAdapter
from .errors import UnsupportedArchitectureError
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .t5 import T5Adapter
from .vit import ViTAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (LlamaAdapter(), GPT2Adapter(), BertAdapter(), ViTAdapter(), T5Adapter())


def supported_architectures() -> dict[str, tuple[str, ...]]:
    """Every supported model type with the HF head classes it can be described as."""
    return {model_type: heads for adapter in ADAPTERS for model_type, heads in adapter.heads.items()}


def adapter_for(model_type: str) -> FamilyAdapter:
    for adapter in ADAPTERS:
        if model_type in adapter.heads:
            return adapter
    raise UnsupportedArchitectureError(f"Model type {model_type!r}", supported_architectures())
