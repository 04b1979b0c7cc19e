"""The Trainer's ``save_model`` for a PEFT model: the adapter, as ``PeftModel.save_pretrained`` writes it.

``GalvatronTrainer`` trains the HF model inside a ``PeftModel`` (``parallel/peft.py``) and keeps the
``PeftModel`` as ``trainer.peft_model``. A user's ``trainer.save_model(dir)`` then writes ``adapter_config.json``
and ``adapter_model.safetensors`` (what ``PeftModel.from_pretrained(base, dir)`` loads), not the whole model.
Training checkpoints (``checkpoint-N/``) stay sharded checkpoints of the whole model and optimizer, loadable
into any layout (``CheckpointHooks``).
"""

from __future__ import annotations

from typing import Any


class PeftHooks:
    """``save_model`` of a ``GalvatronTrainer`` (reads ``peft_model``, ``parallel_model``, ``args``)."""

    peft_model: Any = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.peft_model is None or _internal_call:
            return super().save_model(output_dir, _internal_call)
        from galvatron_hf.parallel.peft import save_adapter

        output_dir = output_dir or self.args.output_dir
        save_adapter(self.peft_model, self.parallel_model, output_dir)
        self._save_side_files(output_dir)
