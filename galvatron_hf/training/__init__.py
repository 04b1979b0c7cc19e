"""Pieces of the Hugging Face Trainer integration (``galvatron_hf.trainer``), one concern per file.

``arguments``: ``GalvatronTrainingArguments`` and the plan request they make; ``batching``: how
TrainingArguments' batch sizes map onto a plan's global batch; ``plans``: the plan the trainer runs (resolved by
``planner/request.py``, as `galvatron-hf search` does); ``construction``: constructor arguments refused before
sharding, the sequence lengths to plan for; ``data``: loaders that shard by data-parallel group;
``evaluation``: evaluation forwards, predictions gathered over the data-parallel group once per sample;
``optimizer``: fp16 optimizer steps through the runtime's loss scaler; ``scheduler_state``: schedulers across
layouts; ``report``: predicted vs measured step time and memory; ``launch``: process-group set-up and clean
exits. The Trainer hooks, as mixins ``GalvatronTrainer`` composes: ``loader_hooks``, ``evaluation_hooks``,
``checkpoint_hooks``.
"""
