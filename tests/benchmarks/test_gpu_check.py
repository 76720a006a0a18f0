"""benchmarks/gpu_check.py's dry mode: the GPU check's whole code path, tiny, on CPU."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check  # noqa: E402 (a script beside the package, not part of it)

pytestmark = pytest.mark.slow  # every test here trains a model


def test_dry_mode_trains_checks_the_dice_and_predicts(capsys):
    gpu_check.main(["--dry"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU dry run")
    for amp in ("off", "bf16"):
        assert sum(line.startswith(f"train {amp:>4}, channels_last") for line in lines) == 1
        predictions = [line for line in lines if line.startswith(f"predict {amp:>4}")]
        assert len(predictions) == 3 and "tiled 64x64" in predictions[2]
        assert all("images/s" in line and "utilisation n/a" in line for line in predictions)
    dice = [line for line in lines if line.startswith("dice under amp bf16 (logits bfloat16)")]
    assert len(dice) == 1 and dice[0].endswith(": ok")
    assert lines[-2] == "NCCL: skipped (0 GPU(s); it needs two)"
