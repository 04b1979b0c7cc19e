"""Every recipe runs to completion on CPU in its default tiny setting, launched the ways users launch it:
torchrun (2 and 4 gloo processes, auto_parallel on), accelerate launch --multi_gpu (no galvatron flags: plain
data parallel, checkpoints and the final from_pretrained export) and a lone ``python`` process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
STEPS = 3


def _launch(command: list[str], output_dir: Path, *extra: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    args = [
        *command,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(STEPS),
        "--num_samples",
        "64",
        *extra,
    ]
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited with {done.returncode}:\n{output[-6000:]}"
    return output


def _torchrun(processes: int, recipe: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(RECIPES / recipe),
    ]


def _losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("recipe", "processes"),
    [
        ("train_bert.py", 2),
        ("train_vit.py", 2),
        ("train_t5.py", 4),
    ],
)
def test_recipe_with_auto_parallel_under_torchrun(tmp_path, recipe, processes):
    output = _launch(_torchrun(processes, recipe), tmp_path, "--auto_parallel")
    assert "galvatron plan (search)" in output and "predicted vs measured" in output
    losses = _losses(tmp_path)
    assert len(losses) == STEPS and all(math.isfinite(loss) and loss > 0 for loss in losses)


@pytest.mark.distributed
def test_gpt2_recipe_under_accelerate_launch_saves_and_exports(tmp_path):
    accelerate = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        str(RECIPES / "train_gpt2.py"),
    ]
    output = _launch(accelerate, tmp_path, "--save_strategy", "steps", "--save_steps", "2")
    assert "plain data parallel" in output
    assert len(_losses(tmp_path)) == STEPS
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-3",
    ]
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tmp_path)  # trainer.save_model() wrote a from_pretrained directory
    assert model.config.n_layer == 4


@pytest.mark.distributed
def test_llama_recipe_loads_pretrained_weights_into_any_layout(tmp_path):
    """A local save_pretrained directory of another family member (Qwen2: the recipe builds the class its config
    names): one plain process and 4 processes with a searched plan (meta-device build, weights loaded shard by
    shard) train the same steps with the same losses."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(5)
    config = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "pretrained")
    common = ("--model_name_or_path", str(tmp_path / "pretrained"), "--global_batch_size", "8")
    alone = _launch([sys.executable, str(RECIPES / "train_llama.py")], tmp_path / "alone", *common)
    assert "on 1 device (" in alone and "loaded pretrained weights" in alone
    searched = _launch(_torchrun(4, "train_llama.py"), tmp_path / "searched", *common, "--auto_parallel")
    assert "galvatron plan (search):" in searched and "on 4 devices" in searched
    assert "loaded pretrained weights" in searched
    expected, actual = _losses(tmp_path / "alone"), _losses(tmp_path / "searched")
    assert len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(actual), torch.tensor(expected), rtol=1e-5, atol=0)


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    one = load_config_from_file(str(RECIPES / "accelerate" / "1node_8gpu.yaml"))
    two = load_config_from_file(str(RECIPES / "accelerate" / "2node_8gpu.yaml"))
    assert (one.num_machines, one.num_processes, one.distributed_type) == (
        1,
        8,
        DistributedType.MULTI_GPU,
    )
    assert (two.num_machines, two.num_processes, two.main_process_port) == (
        2,
        16,
        29500,
    )
