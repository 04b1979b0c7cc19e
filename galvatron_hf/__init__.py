"""galvatron_hf: automatic hybrid-parallel training for Hugging Face Transformers models.

Importing the package is cheap: the trainer and runtime (which need torch.distributed) load on first use,
so `galvatron-hf search` runs on a laptop without touching them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GalvatronTrainer": "galvatron_hf.trainer",
    "GalvatronTrainingArguments": "galvatron_hf.training.arguments",
    "GalvatronSeq2SeqTrainer": "galvatron_hf.training.seq2seq",
    "GalvatronSeq2SeqTrainingArguments": "galvatron_hf.training.seq2seq",
    "GalvatronSFTTrainer": "galvatron_hf.training.sft",  # needs galvatron-hf[trl]
    "GalvatronSFTConfig": "galvatron_hf.training.sft",
    "Plan": "galvatron_hf.planner.plan",
    "describe_model": "galvatron_hf.adapters",
    "parallelize": "galvatron_hf.parallel",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'galvatron_hf' has no attribute {name!r}")
