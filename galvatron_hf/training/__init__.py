"""Pieces of the Hugging Face Trainer integration (``galvatron_hf.trainer``), one concern per file.

``batching``: how TrainingArguments' batch sizes map onto a plan's global batch; ``plans``: choosing the plan
(file, uniform flags, or the search) and describing it; ``data``: loaders that shard by data-parallel group;
``evaluation``: evaluation forwards, predictions gathered over the data-parallel group once per sample;
``report``: predicted vs measured step time and memory; ``launch``: process-group set-up and clean exits.
"""
