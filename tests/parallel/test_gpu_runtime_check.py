"""The GPU check script runs end to end: tiny on CPU here, the ~1B Llama on a CUDA machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_runtime_check.py"


def test_tiny_run_matches_eager_loss():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--steps", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CHECK PASSED" in result.stdout


@pytest.mark.gpu
def test_one_gpu_llama_1b():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "3", "--seq-len", "512"],
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
