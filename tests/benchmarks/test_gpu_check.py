"""benchmarks/gpu_check.py's dry mode: the GPU check's whole code path, tiny, on CPU."""

import sys
from pathlib import Path

import pytest

from sever.trainer.trainer import PHASES

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


@pytest.mark.slow
def test_dry_profile_shows_where_every_step_goes_and_the_sweep_compares_precisions(capsys, tmp_path):
    trace = tmp_path / "trace.json"
    gpu_check.main(["--dry", "--profile", "--profile-steps", "3", "--profile-amp", "off", "--trace", str(trace),
                    "--sweep", "--sweep-batches", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("plan's probe batch: 16 (CPU rule")
    assert lines[2].startswith("profile: 3 steps of batch 2, amp off")
    start = next(index for index, line in enumerate(lines) if line.startswith("where a step goes")) + 1
    end = next(index for index, line in enumerate(lines) if "step (wall, under the profiler)" in line) + 1
    table = {line[:34].strip(): line[34:].split() for line in lines[start:end]}
    phases = [gpu_check.PHASE_LABELS[name] for name in PHASES]
    others = ["waits for the device (all)", "other host (outside the phases)", "GPU busy", "idle GPU",
              "step (wall, under the profiler)"]
    assert list(table) == phases + others
    milliseconds = {label: float(figures[0]) for label, figures in table.items() if figures[0] != "n/a"}
    assert all(milliseconds[label] > 0 for label in phases), "every phase of the step ran inside its range"
    assert table["GPU busy"][0] == table["idle GPU"][0] == "n/a", "no device, no device time"
    step = milliseconds["step (wall, under the profiler)"]
    assert sum(milliseconds[label] for label in phases) + milliseconds["other host (outside the phases)"] == \
        pytest.approx(step, abs=0.05)
    assert "longest operators (by self_cpu_time_total):" in lines
    assert trace.stat().st_size > 0 and "sever.forward" in trace.read_text()
    sweep = lines[lines.index("sweep: images/s (ratio to fp32 at the same batch)") + 1:]
    assert sweep[0].split() == ["batch", "fp32", "bf16"]
    rows = {int(line.split()[0]): line.split()[1:] for line in sweep[1:3]}
    assert list(rows) == [2, 16], "the asked batch and the plan's probe batch"
    for fp32, fp32_ratio, bf16, bf16_ratio in rows.values():
        assert fp32_ratio == "(1.00x)" and float(fp32) > 0
        assert float(bf16_ratio.strip("()x")) == pytest.approx(float(bf16) / float(fp32), abs=0.03)


def test_the_union_of_intervals_counts_overlaps_once():
    assert gpu_check.union_us([(5, 7), (0, 2), (1, 3), (6, 6.5)]) == 5.0
    assert gpu_check.union_us([]) == 0.0
