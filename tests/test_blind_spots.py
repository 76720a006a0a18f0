"""Behaviours earlier tests passed whatever they did (issue 18).

Each test here is built so that the tempting wrong implementation gives a
different answer: TTA on models that are not flip-symmetric, weights that are
not all equal, checkpoint state that differs from a fresh start, a README
table read independently of the experiment files.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sever.data_loader.augmentation import Normalization
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.demo import make_demo_data
from sever.inference.checkpoints import LoadedModel
from sever.inference.predictor import Predictor, average_probabilities, tta_probabilities
from sever.experiment import prepare_config
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- TTA


class PositionModel(nn.Module):
    """Logits = the input plus a ramp over rows (class 0) and over columns (class 1).

    Its output depends on where a pixel is, so a view flipped on one axis and
    flipped back on another (or not at all) lands on different values.
    """

    def forward(self, x):
        b, _, h, w = x.shape
        rows = torch.linspace(-2, 2, h).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-3, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([x[:, :1] + rows, x[:, :1] * 0.5 + cols], dim=1)


def asymmetric_conv() -> nn.Conv2d:
    """A fixed 3x3 convolution whose kernels have no mirror symmetry on either axis."""
    conv = nn.Conv2d(1, 2, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0, -2.0], [0.5, 3.0, 0.0], [0.0, 0.0, 0.0]]],
                                        [[[0.0, -1.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 4.0]]]]))
    return conv


# The views each mode must average, written out here rather than read from the predictor.
EXPECTED_VIEWS = {
    "none": [()],
    "hflip": [(), (3,)],
    "vflip": [(), (2,)],
    "both": [(), (3,), (2,), (2, 3)],
}


def by_hand(model, x, views):
    return torch.stack([torch.sigmoid(model(x.flip(d) if d else x)).flip(d) if d else torch.sigmoid(model(x))
                        for d in views]).mean(0)


@pytest.mark.parametrize("model_factory", [PositionModel, asymmetric_conv], ids=["position", "conv"])
@pytest.mark.parametrize("tta", list(EXPECTED_VIEWS))
def test_tta_mean_is_the_mean_of_each_flipped_view_flipped_back(tta, model_factory):
    torch.manual_seed(0)
    model = model_factory()
    x = torch.randn(2, 1, 6, 9)
    with torch.no_grad():
        expected = by_hand(model, x, EXPECTED_VIEWS[tta])
        assert torch.allclose(tta_probabilities(model, x, tta), expected, atol=1e-6)
        if tta != "none":  # the views matter for this model: a wrong flip cannot pass by accident
            assert not torch.allclose(expected, torch.sigmoid(model(x)), atol=1e-3)


@pytest.mark.parametrize("tta", ["hflip", "vflip", "both"])
def test_tta_feeds_the_model_exactly_the_flipped_views(tta):
    seen = []

    class Recorder(PositionModel):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    x = torch.randn(1, 1, 4, 5)
    tta_probabilities(Recorder(), x, tta)
    batch = torch.cat(seen)
    wanted = [x.flip(d) if d else x for d in EXPECTED_VIEWS[tta]]
    assert len(batch) == len(wanted)
    for view in wanted:  # each wanted view once, in any order
        assert sum(torch.equal(view[0], row) for row in batch) == 1


@pytest.mark.parametrize("tta", ["hflip", "vflip", "both"])
def test_predictor_applies_the_chosen_tta(tta):
    images = torch.randint(0, 256, (2, 6, 9), dtype=torch.uint8)
    model = LoadedModel(PositionModel().eval(), Path("position.pth"),
                        {"classes": 2, "task": "segmentation", "class_names": None}, Normalization(0.5, 0.25))
    probs, _ = Predictor([model], tta=tta).predict(images)
    x = (images.float().unsqueeze(1) / 255 - 0.5) / 0.25
    expected = (by_hand(PositionModel(), x, EXPECTED_VIEWS[tta]) * 255).round()
    assert (probs.int() - expected.int()).abs().max() <= 1


# ---------------------------------------------------------------- ensembles


def test_weighted_rms_and_mean_follow_their_formulas():
    a, b = torch.tensor([0.2, 0.9]), torch.tensor([0.6, 0.1])
    rms = average_probabilities([a, b], "rms", [1.0, 3.0])
    assert torch.allclose(rms, ((1 * a**2 + 3 * b**2) / 4).sqrt())
    mean = average_probabilities([a, b], "mean", [1.0, 3.0])
    assert torch.allclose(mean, (a + 3 * b) / 4)


@pytest.mark.parametrize("mode", ["mean", "rms"])
def test_weights_act_only_through_their_ratios(mode):
    probs = [torch.tensor([0.1, 0.5]), torch.tensor([0.8, 0.3]), torch.tensor([0.4, 0.9])]
    small = average_probabilities(probs, mode, [1.0, 2.0, 0.5])
    assert torch.allclose(small, average_probabilities(probs, mode, [4.0, 8.0, 2.0]))
    equal = average_probabilities(probs, mode)
    assert torch.allclose(equal, average_probabilities(probs, mode, [3.0, 3.0, 3.0]))
    assert not torch.allclose(small, equal)


def test_averages_of_identical_models_are_that_model():
    p = torch.rand(2, 3, 4, 5)
    for mode, weights in [("mean", [0.3, 2.0]), ("rms", [0.3, 2.0]), ("max", None)]:
        assert torch.allclose(average_probabilities([p, p], mode, weights), p, atol=1e-6)


# ---------------------------------------------------------------- command line


def sever(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sever", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_debug_shows_the_traceback_of_a_user_error_and_its_absence_hides_it(tmp_path):
    missing = tmp_path / "missing.yml"
    plain = sever("train", "-c", str(missing))
    debug = sever("--debug", "train", "-c", str(missing))
    for result in (plain, debug):
        assert result.returncode == 1 and "missing.yml" in result.stderr
    assert "Traceback" not in plain.stderr and plain.stderr.startswith("Error:")
    assert "Traceback (most recent call last)" in debug.stderr and "ConfigError" in debug.stderr


# ---------------------------------------------------------------- experiment files vs the write-up


def write_up_table() -> list[dict[str, str]]:
    """Rows of README.rst's table under 'Reproducing the write-up', keyed by its header."""
    text = (REPO / "README.rst").read_text()
    section = text.split("Reproducing the write-up", 1)[1]
    table = section.split(".. list-table::", 1)[1].split("\n\n", 2)[1]
    rows = [[cell.strip().strip("`") for cell in re.split(r"\n\s+- ", row)]
            for row in re.split(r"\n\s*\* - ", "\n" + table.strip())[1:]]
    header, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def test_the_write_up_table_lists_every_write_up_experiment():
    rows = write_up_table()
    assert len(rows) == 4
    assert {row["file"] for row in rows} == {"experiments/config.yml", "experiments/sever-unet-b5.yml",
                                             "experiments/sever-fpn-se_resnext50.yml",
                                             "experiments/sever-unet-se_resnext50.yml"}


@pytest.mark.parametrize("row", write_up_table(), ids=lambda row: row["file"])
def test_each_experiment_file_matches_its_row_of_the_write_up_table(row):
    config = prepare_config(load_config(REPO / row["file"]))
    arch, augmentation = config["arch"], config["augmentation"]["args"]
    assert arch["type"] == row["decoder"]
    assert arch["args"]["encoder_name"] == row["encoder"]
    assert arch["args"]["in_channels"] == row["first conv"]
    assert config["data_loader"]["args"]["batch_size"] == int(row["batch"])
    assert f"{augmentation['height']}x{augmentation['width']}" == row["crop"]


# ---------------------------------------------------------------- class-balanced sampling


@pytest.fixture(scope="module")
def skewed_dir(module_tmp) -> Path:
    return make_demo_data(module_tmp("skewed"), n_train=40, n_test=1, height=32, width=128, seed=5)


def rarest_class_groups(has_defect: np.ndarray) -> np.ndarray:
    """Per image: the index of its rarest present class, or C when it has none (computed here, by hand)."""
    counts = has_defect.sum(0)
    labels = []
    for row in has_defect:
        present = [c for c in range(len(row)) if row[c]]
        labels.append(min(present, key=lambda c: (counts[c], c)) if present else len(row))
    return np.array(labels)


def epoch_group_counts(data: SteelDataLoader, labels: np.ndarray, epoch: int) -> tuple[list, np.ndarray]:
    data.train_loader.batch_sampler.set_epoch(epoch)
    batches = [[index for index, _ in batch] for batch in data.train_loader.batch_sampler]
    counts = np.bincount(labels[np.concatenate(batches)], minlength=labels.max() + 1)
    return batches, counts


def loader(data_dir: Path, sampler) -> SteelDataLoader:
    from sever.data_loader.augmentation import TRANSFORMS

    transforms = TRANSFORMS.build({"type": "LightTransforms", "args": {}}, "augmentation")
    return SteelDataLoader(str(data_dir), batch_size=8, validation_split=0, num_workers=0, sampler=sampler,
                           classes=4, transforms=transforms, seed=3)


def test_class_balanced_sampling_without_pseudo_labels_balances_the_rarest_classes(skewed_dir):
    plain = loader(skewed_dir, None)
    balanced = loader(skewed_dir, {"type": "WeightedFixedBatchSampler", "args": {"alpha": 1.0}})
    labels = rarest_class_groups(plain.train_dataset.annotations.has_defect())
    population = np.bincount(labels)
    present = population > 0
    assert population[present].max() >= 2 * population[present].min(), "the demo data must be skewed"

    plain_batches, plain_counts = epoch_group_counts(plain, labels, 1)
    assert np.array_equal(plain_counts, population)  # one shuffled pass: every image once
    batches, counts = epoch_group_counts(balanced, labels, 1)
    assert [len(b) for b in batches] == [len(b) for b in plain_batches]
    # alpha = 1: every present group equally often per batch (largest-remainder rounding: +-1)
    for batch in batches:
        per_group = np.bincount(labels[batch], minlength=len(population))[present]
        assert per_group.max() - per_group.min() <= 1, batch
    assert counts[present].max() - counts[present].min() <= len(batches)
    assert not np.array_equal(counts, population)
