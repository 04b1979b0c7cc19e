"""Training checkpoints that survive crashes and load into any layout and world size, their export to a
Hugging Face directory, and loading a Hugging Face directory straight into a parallelised model.

| module | concern |
|---|---|
| ``manifest.py`` | the directory's files and its manifest ``checkpoint.json``; :class:`CheckpointError` |
| ``atomic.py`` | atomic files, the staging folder and its swap into place, recovery of an interrupted swap |
| ``collective.py`` | how ranks agree, so a failure on one rank raises on all and none waits forever |
| ``sharded_state.py`` | the sharded model/optimizer state DCP writes and reads |
| ``frozen.py`` | checkpoints without the frozen parameters (a fine-tune's base) and the check of the base on load |
| ``rng.py`` | one process's RNG state: captured, applied, stored per rank (also used by the trainer) |
| ``save.py`` / ``load.py`` | :func:`save_checkpoint` / :func:`load_checkpoint` |
| ``export.py`` | :func:`export_to_hf` (``galvatron-hf export``) |
| ``hf_weights.py`` | :func:`load_hf_pretrained`: each rank reads only its slices of an HF safetensors directory |
| ``plain_trainer.py`` | a plain HF ``Trainer`` checkpoint (weights, ``optimizer.pt``, RNG files) into any layout |

See docs/checkpoints.md for the directory layout and what a resume in another layout restores.
"""

from galvatron_hf.checkpoint.atomic import recover_interrupted_save
from galvatron_hf.checkpoint.export import export_to_hf
from galvatron_hf.checkpoint.hf_weights import PretrainedWeightsError, load_hf_pretrained
from galvatron_hf.checkpoint.load import CheckpointState, load_checkpoint
from galvatron_hf.checkpoint.manifest import SCHEDULER_NAME, CheckpointError, read_manifest
from galvatron_hf.checkpoint.save import save_checkpoint

__all__ = [
    "SCHEDULER_NAME",
    "CheckpointError",
    "CheckpointState",
    "PretrainedWeightsError",
    "export_to_hf",
    "load_checkpoint",
    "load_hf_pretrained",
    "read_manifest",
    "recover_interrupted_save",
    "save_checkpoint",
]
