"""benchmarks/report_history.py, tiny: both readers read back the same per-epoch values of a file with images."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import report_history  # noqa: E402 (a script beside the package, not part of it)


def test_both_readers_agree_on_a_file_with_images_and_the_ratio_is_printed(capsys):
    report_history.main(["--epochs", "3", "--steps", "2", "--grid", "2", "--height", "32", "--width", "64",
                         "--repeat", "1"])
    out = capsys.readouterr().out
    assert "(3 epochs, 2 images of 32x64 an epoch)" in out
    assert "x faster (median of 1; both read the same values)" in out

