"""The predictor through its public interface, on small models whose answers are known by hand:
fast enough to run against every mutant of ``sever/inference/predictor.py`` (``tools/mutation.py``).

The models depend on where a pixel is and on its class, so a view flipped the wrong way,
a class swapped or a model left out changes the answer.
"""

import io
import logging
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from sever.data_loader.augmentation import Normalization
from sever.exceptions import CheckpointError, ConfigError, DataError
from sever.inference import predictor as predictor_module
from sever.inference.checkpoints import LoadedModel
from sever.inference.compose import Gate
from sever.inference.predictor import (Predictor, average_probabilities, build_predictor, class_labels, load_settings,
                                       quantize, resolve_amp, run_settings, tta_probabilities)
from sever.inference.tiling import Tiling
from sever.model.postprocess import PostProcessing
from sever.utils.checkpoint import atomic_torch_save


class Ramp(nn.Module):
    """Segmentation logits ``(B, C, H, W)``: class c is ``scale * x + c`` plus a ramp over rows and columns."""

    def __init__(self, classes=2, scale=1.0):
        super().__init__()
        self.classes, self.scale = classes, scale

    def forward(self, x):
        _, _, h, w = x.shape
        ramp = torch.linspace(-1, 1, h).view(h, 1) + torch.linspace(-2, 0.5, w).view(1, w)
        return torch.cat([self.scale * x[:, :1] + c + ramp for c in range(self.classes)], dim=1)


class Presence(nn.Module):
    """Classifier logits ``(B, C)``: the mean of the left half of the image, plus ``c * step``."""

    def __init__(self, classes=2, step=1.0):
        super().__init__()
        self.classes, self.step = classes, step

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([left + c * self.step for c in range(self.classes)], dim=1)


def loaded(model, classes=2, mean=0.5, std=0.25, task="segmentation", names=None, source="a/checkpoints/m.pth",
           postprocess=None):
    config = {"classes": classes, "task": task, "class_names": names}
    return LoadedModel(model.eval(), Path(source), config, Normalization(mean, std), postprocess)


def model_input(images, mean=0.5, std=0.25):
    """``(B, H, W)`` uint8 images as a model sees them: ``(B, 1, H, W)`` normalised."""
    return (images.float().unsqueeze(1) / 255 - mean) / std


def images(b=2, h=4, w=6, seed=0):
    return torch.randint(0, 256, (b, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- averaging


def test_class_labels_number_the_classes_from_one():
    assert class_labels(["pits", "scratches"], 2) == ["1 pits", "2 scratches"]
    assert class_labels(None, 3) == ["class 1", "class 2", "class 3"]
    assert class_labels([], 2) == ["class 1", "class 2"]
    named = Predictor([loaded(Ramp(), names=["pits", "scratches"])])
    assert named.class_names == ["1 pits", "2 scratches"] and named.classes == 2
    assert Predictor([loaded(Ramp(classes=3), classes=3)]).class_names == ["class 1", "class 2", "class 3"]


def test_averages_of_maps_weight_each_model_per_pixel():
    a, b = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(1)).unbind(0)
    a, b = a[None], b[None]
    assert torch.allclose(average_probabilities([a, b]), (a + b) / 2)
    assert torch.allclose(average_probabilities([a, b], "mean", [3, 1]), (3 * a + b) / 4)
    assert torch.allclose(average_probabilities([a, b], "rms", [3, 1]), ((3 * a**2 + b**2) / 4).sqrt())
    assert torch.allclose(average_probabilities([a, b], "rms"), ((a**2 + b**2) / 2).sqrt())
    assert torch.equal(average_probabilities([a, b], "max"), torch.maximum(a, b))
    assert average_probabilities([a, b], "rms").shape == (1, 3, 4, 5)


def test_averaging_keeps_the_precision_of_its_inputs():
    a, b = torch.tensor([0.1, 0.7], dtype=torch.float64), torch.tensor([0.3, 0.2], dtype=torch.float64)
    mean = average_probabilities([a, b], "mean", [0.1, 0.3])  # weights not exact in float32
    assert mean.dtype == torch.float64
    assert torch.equal(mean, (0.1 * a + 0.3 * b) / (0.1 + 0.3))


@pytest.mark.parametrize("mode, weights, count, message", [
    ("median", None, 2, r"^average: 'median' is not one of mean, rms, max$"),
    ("max", [1, 1], 2, r"^weights: max averaging takes no weights$"),
    ("mean", [1, 2, 3], 2, r"^weights: 3 weights given for 2 models$"),
    ("rms", [1, -1], 2, r"^weights: expected non-negative weights with a positive sum, got \[1, -1\]$"),
    ("mean", [0, 0], 2, r"^weights: expected non-negative weights with a positive sum, got \[0, 0\]$"),
])
def test_bad_averages_and_weights_are_refused_before_predicting(mode, weights, count, message):
    with pytest.raises(ConfigError, match=message):
        average_probabilities([torch.zeros(1)] * count, mode, weights)
    with pytest.raises(ConfigError, match=message):
        Predictor([loaded(Ramp())] * count, average=mode, weights=weights)


def test_weights_summing_to_less_than_one_are_fine():
    a, b = torch.tensor([0.2]), torch.tensor([0.9])
    assert average_probabilities([a, b], "mean", [0.25, 0.5]).item() == pytest.approx((0.05 + 0.45) / 0.75)


def test_a_zero_weight_leaves_its_model_out():
    a, b = torch.tensor([0.2]), torch.tensor([0.9])
    assert average_probabilities([a, b], "mean", [0, 2]).item() == pytest.approx(0.9)


# ---------------------------------------------------------------- TTA and quantisation


def test_tta_of_a_classifier_averages_the_views_without_flipping_classes():
    x = torch.randn(3, 1, 4, 6)
    model = Presence(classes=3)
    for tta, views in [("hflip", [x, x.flip(-1)]), ("vflip", [x, x.flip(-2)]),
                       ("both", [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)])]:
        expected = torch.stack([torch.sigmoid(model(v)) for v in views]).mean(0)
        assert torch.allclose(tta_probabilities(model, x, tta), expected, atol=1e-6), tta
    assert torch.allclose(tta_probabilities(model, x), torch.sigmoid(model(x)))


def test_tta_returns_float32_probabilities_of_a_half_precision_model():
    x = torch.randn(1, 1, 4, 6)
    half = tta_probabilities(lambda v: Ramp()(v).to(torch.bfloat16), x, "hflip")
    assert half.dtype == torch.float32


def test_quantize_rounds_to_255_levels_and_clamps():
    probs = torch.tensor([0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.5, 1.0, 1.2, -0.3])
    expected = [0, 0, 1, 128, 255, 255, 0]
    kept = probs.clone()
    out = quantize(probs)
    assert out.dtype == torch.uint8 and out.tolist() == expected
    assert torch.equal(probs, kept), "not in place unless asked"
    assert quantize(probs, inplace=True).tolist() == expected
    assert not torch.equal(probs, kept), "in place: the input is scaled"


# ---------------------------------------------------------------- the predictor


@pytest.mark.parametrize("tta", ["none", "hflip", "vflip", "both"])
def test_prediction_is_the_quantised_weighted_ensemble_of_each_models_tta(tta):
    batch = images()
    first, second = loaded(Ramp(), mean=0.5, std=0.25), loaded(Ramp(scale=-2.0), mean=0.2, std=0.5)
    probs, class_probs = Predictor([first, second], weights=[3, 1], tta=tta).predict(batch)
    views = {"none": [()], "hflip": [(), (-1,)], "vflip": [(), (-2,)], "both": [(), (-1,), (-2,), (-2, -1)]}[tta]

    def by_hand(model, x):
        return torch.stack([torch.sigmoid(model(x.flip(d))).flip(d) if d else torch.sigmoid(model(x))
                            for d in views]).mean(0)

    expected = (3 * by_hand(Ramp(), model_input(batch)) + by_hand(Ramp(scale=-2.0), model_input(batch, 0.2, 0.5))) / 4
    assert class_probs is None and probs.dtype == torch.uint8 and probs.shape == (2, 2, 4, 6)
    assert (probs.int() - (expected * 255).round().int()).abs().max() <= 1
    alone = Predictor([first], tta=tta).predict(batch)[0]
    assert (alone.int() - probs.int()).abs().max() > 5, "the second model counts"


def test_rms_and_max_ensembles():
    batch = images()
    models = [loaded(Ramp()), loaded(Ramp(scale=-2.0))]
    p = [torch.sigmoid(Ramp()(model_input(batch))), torch.sigmoid(Ramp(scale=-2.0)(model_input(batch)))]
    rms, _ = Predictor(models, average="rms", weights=[1, 3]).predict(batch)
    assert (rms.int() - quantize(((p[0] ** 2 + 3 * p[1] ** 2) / 4).sqrt()).int()).abs().max() <= 1
    top, _ = Predictor(models, average="max").predict(batch)
    assert (top.int() - quantize(torch.maximum(*p)).int()).abs().max() <= 1


def test_classifiers_are_averaged_by_mean_on_the_whole_image():
    batch = images(h=32, w=64)
    classifiers = [loaded(Presence(), task="classification", mean=0.5, std=0.25),
                   loaded(Presence(step=-1.0), task="classification", mean=0.3, std=0.5)]
    predictor = Predictor([loaded(Ramp())], classifiers, tiling=Tiling(32, 32, overlap=0.0))
    probs, class_probs = predictor.predict(batch)
    expected = (torch.sigmoid(Presence()(model_input(batch))) +
                torch.sigmoid(Presence(step=-1.0)(model_input(batch, 0.3, 0.5)))) / 2
    assert class_probs.shape == (2, 2) and class_probs.dtype == torch.float32
    assert torch.allclose(class_probs, expected, atol=1e-6)
    assert probs.shape == (2, 2, 32, 64)


def test_large_images_are_predicted_tile_by_tile_and_small_ones_whole():
    batch = images(h=32, w=96)
    whole, _ = Predictor([loaded(Ramp())]).predict(batch)
    tiled, _ = Predictor([loaded(Ramp())], tiling=Tiling(32, 32, overlap=0.0)).predict(batch)
    assert tiled.shape == whole.shape == (2, 2, 32, 96) and tiled.dtype == torch.uint8
    # Ramp depends on the position in its input: tiles see their own ramps
    tile = torch.sigmoid(Ramp()(model_input(batch[:, :, 32:64])))
    assert (tiled[:, :, :, 32:64].int() - quantize(tile).int()).abs().max() <= 1
    assert not torch.equal(tiled, whole)
    fits, _ = Predictor([loaded(Ramp())], tiling=Tiling(32, 96)).predict(batch)
    assert torch.equal(fits, whole)


def test_the_predictor_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="^give at least one segmentation model$"):
        Predictor([])
    with pytest.raises(ConfigError, match=r"^tta: 'rot90' is not one of none, hflip, vflip, both$"):
        Predictor([loaded(Ramp())], tta="rot90")
    with pytest.raises(ConfigError, match=r"^--classifier: c/checkpoints/c.pth predicts 3 classes but "
                                          r"a/checkpoints/m.pth predicts 2 \(config `classes`\)"):
        Predictor([loaded(Ramp())], [loaded(Presence(3), classes=3, task="classification", source="c/checkpoints/c.pth")])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Predictor([loaded(Ramp())], amp="fp16")


def test_bf16_autocast_is_applied_to_the_forward_passes():
    seen = []

    class Spy(Ramp):
        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    Predictor([loaded(Spy())], amp="bf16").predict(images())
    Predictor([loaded(Spy())]).predict(images())
    assert seen == [True, False]


def test_amp_auto_is_fp16_on_cuda_only():
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("auto", torch.device("cuda")) == "fp16"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"


# ---------------------------------------------------------------- files


def write_images(folder: Path, sizes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index, (h, w) in enumerate(sizes):
        path = folder / f"{index:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w), dtype=np.uint8))
        paths.append(path)
    return paths


def test_files_are_predicted_in_order_in_runs_of_one_size(tmp_path):
    paths = write_images(tmp_path / "images", [(4, 6), (4, 6), (8, 6), (4, 6), (4, 6)])
    predictor = Predictor([loaded(Ramp())])
    got = list(predictor.predict_files(paths, batch_size=4, num_workers=0))
    assert [b.names for b in got] == [["00.png", "01.png"], ["02.png"], ["03.png"], ["04.png"]]
    for batch in got:
        read = torch.stack([torch.from_numpy(cv2.imread(str(tmp_path / "images" / n), cv2.IMREAD_GRAYSCALE))
                            for n in batch.names])
        assert torch.equal(batch.images, read)
        assert torch.equal(batch.probs, predictor.predict(read)[0]) and batch.class_probs is None
    with_workers = list(predictor.predict_files(paths, batch_size=2, num_workers=1))
    assert [b.names for b in with_workers] == [["00.png", "01.png"], ["02.png"], ["03.png"], ["04.png"]]


def test_an_unreadable_image_is_a_data_error_naming_it(tmp_path):
    paths = write_images(tmp_path, [(4, 6)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        list(Predictor([loaded(Ramp())]).predict_files([*paths, broken], batch_size=1, num_workers=0))


def test_images_are_read_a_bounded_number_of_batches_ahead(tmp_path, monkeypatch):
    """With the first batch in hand, READ_AHEAD more have been read (instant reads, one thread)."""
    paths = write_images(tmp_path, [(4, 6)] * 6)
    read = []
    monkeypatch.setattr(predictor_module, "read_grey", lambda path: read.append(Path(path).name) or np.zeros((4, 6)))
    batches = predictor_module.read_images(paths, batch_size=1, num_workers=1)
    assert [name for name, _ in next(batches)] == ["00.png"]
    time.sleep(0.3)  # the thread's reads of what was asked of it
    assert sorted(read) == [f"{k:02d}.png" for k in range(1 + predictor_module.READ_AHEAD)]
    assert [name for batch in batches for name, _ in batch] == [f"{k:02d}.png" for k in range(1, 6)]


def test_closing_the_reader_cancels_waiting_reads_and_waits_for_the_running_one(tmp_path, monkeypatch):
    """One thread of 1-s reads: closed with the first batch in hand, the second is being read, the third waits."""
    paths = write_images(tmp_path, [(4, 6)] * 5)
    started, finished = [], []

    def slow_read(path):
        started.append(Path(path).name)
        time.sleep(1.0)
        finished.append(Path(path).name)
        return np.zeros((4, 6), np.uint8)

    monkeypatch.setattr(predictor_module, "read_grey", slow_read)
    batches = predictor_module.read_images(paths, batch_size=1, num_workers=1)
    next(batches)
    batches.close()
    assert finished == ["00.png", "01.png"]  # the running read ended before close returned
    assert started == ["00.png", "01.png"]  # and the waiting ones never ran: one thread, the rest cancelled


@pytest.mark.parametrize("batch_size, workers", [(0, 0), (1, -1)])
def test_bad_batch_sizes_and_worker_counts_are_refused(tmp_path, batch_size, workers):
    paths = write_images(tmp_path, [(4, 6)])
    with pytest.raises(ConfigError, match=f"^batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}$"):
        list(Predictor([loaded(Ramp())]).predict_files(paths, batch_size=batch_size, num_workers=workers))
    assert len(list(Predictor([loaded(Ramp())]).predict_files(paths, batch_size=1, num_workers=0))) == 1


# ---------------------------------------------------------------- checkpoints


TINY_ARCH = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None,
                                     "decoder_args": {"decoder_pyramid_channels": 32,
                                                      "decoder_segmentation_channels": 32}}}


CLASSIFIER_ARCH = {"type": "Classifier", "args": {"encoder_name": "resnet18", "encoder_weights": None}}


def write_checkpoint(path: Path, classes=2, seed=0, task="segmentation", train_classes=None) -> Path:
    from sever.model.model import build_model

    torch.manual_seed(seed)
    config = {"arch": TINY_ARCH if task == "segmentation" else CLASSIFIER_ARCH, "classes": classes, "task": task,
              "class_names": None, "data_loader": {"args": {"train_classes": train_classes}},
              "augmentation": {"type": "LightTransforms", "args": {}}}
    model = build_model(config["arch"], len(train_classes) if train_classes else classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"config": config, "state_dict": model.state_dict(), "epoch": 1}, path)
    return path


def test_build_predictor_loads_the_checkpoints_with_the_options_given(tmp_path):
    first = write_checkpoint(tmp_path / "a.pth", seed=1)
    second = write_checkpoint(tmp_path / "b.pth", seed=2)
    predictor = build_predictor([first, second], average="rms", weights=[1, 2], tta="vflip", device="cpu",
                                amp="bf16", tiling=Tiling(32, 32))
    assert [m.source for m in predictor.models] == [first, second] and predictor.classifiers == []
    assert (predictor.average, predictor.weights, predictor.tta, predictor.amp) == ("rms", [1, 2], "vflip", "bf16")
    assert predictor.device == torch.device("cpu") and predictor.tiling == Tiling(32, 32)
    plain = build_predictor([first], device="cpu")
    assert (plain.average, plain.weights, plain.tta, plain.amp, plain.tiling) == ("mean", None, "none", "off", None)
    batch = images(b=1, h=64, w=64)  # the deepest level of a 32 x 32 image is too small for GroupNorm
    probs, _ = plain.predict(batch)
    with torch.inference_mode():
        expected = torch.sigmoid(plain.models[0].model(plain.models[0].normalization(batch.unsqueeze(1))))
    assert (probs.int() - quantize(expected).int()).abs().max() <= 1


def test_a_run_of_some_classes_predicts_unless_every_class_is_required(tmp_path):
    subset = write_checkpoint(tmp_path / "class2.pth", classes=3, train_classes=[2])
    probs, _ = build_predictor([subset], device="cpu").predict(images(b=1, h=64, w=64))
    assert probs.shape == (1, 1, 64, 64)  # the run's own channel (sever evaluate, tune of one class)
    with pytest.raises(ConfigError, match="a submission needs every class of the dataset"):
        build_predictor([subset], device="cpu", every_class=True)


# ---------------------------------------------------------------- post-processing settings


def run_with_checkpoint(tmp_path, postprocess=None, tuned_file=None):
    """A run folder's checkpoint as a loaded model, with the settings it was tuned with."""
    source = tmp_path / "run" / "checkpoints" / "model_best.pth"
    source.parent.mkdir(parents=True)
    if tuned_file is not None:
        (tmp_path / "run" / "postprocess.yml").write_text(tuned_file)
    return loaded(Ramp(classes=4), classes=4, source=str(source), postprocess=postprocess)


def test_postprocess_option_wins_over_the_tuned_settings(tmp_path):
    model = run_with_checkpoint(tmp_path, {"threshold": 0.3}, "threshold: 0.4\n")
    given = tmp_path / "given.yml"
    given.write_text("threshold: 0.7\nmin_pixels: 10\n")
    settings, described = run_settings(str(given), [model], classifier=False)
    assert settings.threshold == (0.7,) * 4 and described == str(given)
    settings, described = run_settings("default", [model], classifier=False)
    assert settings == PostProcessing.default(4) and described == "default post-processing (--postprocess default)"


def test_one_tuned_model_uses_its_run_folders_settings_else_its_checkpoints(tmp_path):
    model = run_with_checkpoint(tmp_path, {"threshold": 0.3}, "threshold: 0.4\n")
    settings, described = run_settings(None, [model], classifier=False)
    beside = tmp_path / "run" / "postprocess.yml"
    assert settings.threshold == (0.4,) * 4 and described == f"{beside} (tuned by the run)"
    beside.unlink()
    settings, described = run_settings(None, [model], classifier=False)
    assert settings.threshold == (0.3,) * 4 and described == f"the settings tuned in {model.source}"


def test_untuned_checkpoints_and_ensembles_use_the_defaults(tmp_path):
    untuned = run_with_checkpoint(tmp_path)
    settings, described = run_settings(None, [untuned], classifier=False)
    assert settings == PostProcessing.default(4)
    assert described == "default post-processing (the checkpoint was not tuned)"
    tuned = loaded(Ramp(classes=4), classes=4, postprocess={"threshold": 0.3})
    settings, described = run_settings(None, [tuned, tuned], classifier=False)
    assert settings == PostProcessing.default(4)
    assert described == "default post-processing (an ensemble's models were each tuned alone)"


def test_a_classifier_gates_with_the_write_ups_factor_unless_set(tmp_path, caplog):
    default = load_settings(None, 4, classifier=True)
    assert default.c_factor == (5.0,) * 4
    given = tmp_path / "gated.yml"
    given.write_text("threshold: 0.5\nmin_pixels: 0\nclassifier: {c_factor: 2, veto: null}\n")
    with caplog.at_level(logging.WARNING):
        assert load_settings(given, 4, classifier=True).c_factor == (2.0,) * 4
    assert [r.getMessage() for r in caplog.records] == [
        "classifier given but min_pixels are all 0 and no veto: the classifier changes nothing"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_settings("default", 4, classifier=True)
    assert "changes nothing" not in caplog.text
    tuned = run_with_checkpoint(tmp_path, {"threshold": 0.3, "min_pixels": 5})
    settings, _ = run_settings(None, [tuned], classifier=True)
    assert settings.c_factor == (5.0,) * 4 and settings.threshold == (0.3,) * 4


def test_gated_settings_without_a_classifier_are_refused_naming_their_source(tmp_path):
    given = tmp_path / "gated.yml"
    given.write_text("threshold: 0.5\nclassifier: {c_factor: 2}\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(given))}: classifier: settings for a classifier, but no"):
        load_settings(given, 4, classifier=False)
    tuned = run_with_checkpoint(tmp_path, {"threshold": 0.3, "classifier": {"c_factor": 2}})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tuned.source))}: classifier: settings for a classifier"):
        run_settings(None, [tuned], classifier=False)
    assert load_settings(None, 4, classifier=False) == PostProcessing.default(4)


def test_every_source_of_settings_gates_with_a_classifier(tmp_path):
    model = run_with_checkpoint(tmp_path, {"threshold": 0.3}, "threshold: 0.4\n")
    given = tmp_path / "given.yml"
    given.write_text("threshold: 0.7\n")
    for option in (str(given), "default", None):  # the option, the run folder's file
        settings, _ = run_settings(option, [model], classifier=True)
        assert settings.c_factor == (5.0,) * 4, option
    settings, _ = run_settings(None, [model, model], classifier=True)  # the defaults of an ensemble
    assert settings.c_factor == (5.0,) * 4


def test_bad_settings_tuned_into_a_checkpoint_name_it(tmp_path):
    model = run_with_checkpoint(tmp_path, {"threshold": 2.0})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(model.source))}: postprocess"):
        run_settings(None, [model], classifier=False)


def test_build_predictor_loads_classifiers_and_names_the_option_of_a_misplaced_run(tmp_path):
    segmenter = write_checkpoint(tmp_path / "s.pth", seed=1)
    classifier = write_checkpoint(tmp_path / "c.pth", seed=2, task="classification")
    predictor = build_predictor([segmenter], [classifier])
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu"), "device auto"
    assert [m.source for m in predictor.classifiers] == [classifier]
    _, class_probs = predictor.predict(images(b=1, h=64, w=64))
    assert class_probs.shape == (1, 2)
    with pytest.raises(CheckpointError, match=f"^-m {re.escape(str(classifier))}: a classification run; "
                                              "give it with --classifier$"):
        build_predictor([classifier], device="cpu")
    with pytest.raises(CheckpointError, match=f"^--classifier {re.escape(str(segmenter))}: a segmentation run; "
                                              "give it with -m$"):
        build_predictor([segmenter], [segmenter], device="cpu")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws its bar."""

    def isatty(self):
        return True


def test_files_are_read_eight_at_a_time_by_default_under_a_progress_bar(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "images", [(4, 6)] * 10)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    got = list(Predictor([loaded(Ramp())]).predict_files(paths, num_workers=0))
    assert [len(b.names) for b in got] == [8, 2]
    assert re.search(r"predict: 100%[^\r]* 10/10 [^\r]*img/s\]", terminal.getvalue())
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    list(Predictor([loaded(Ramp())]).predict_files(paths, num_workers=0, description="tune"))
    assert quiet.getvalue() == "", "no bar off a terminal"


def test_file_batches_carry_the_classifier_probabilities(tmp_path):
    paths = write_images(tmp_path, [(4, 6), (4, 6)])
    predictor = Predictor([loaded(Ramp())], [loaded(Presence(), task="classification")])
    (batch,) = predictor.predict_files(paths, batch_size=2, num_workers=0)
    assert torch.equal(batch.class_probs, predictor.predict(batch.images)[1])


def test_reading_threads_leave_opencvs_threads_alone(tmp_path):
    paths = write_images(tmp_path, [(4, 6), (5, 6), (4, 7)])
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        for workers in (0, 2):  # images are read in this process's threads: nothing is forked
            list(Predictor([loaded(Ramp())]).predict_files(paths, num_workers=workers))
            assert cv2.getNumThreads() == 2, workers
    finally:
        cv2.setNumThreads(before)


def test_a_classifier_gates_its_channels_and_leaves_the_others_at_one():
    """Per-class classifier probabilities ``(B, K_i)``: channel 0 gated by classifier 0's class 1, channel 1 by none."""
    class_probs = [torch.tensor([[0.1, 0.8], [0.3, 0.6], [0.5, 0.4]])]
    gated = predictor_module.gate_probabilities(class_probs, Gate(providers=(((0, 1),), ()), any_defect=()))
    assert torch.equal(gated, torch.tensor([[0.8, 1.0], [0.6, 1.0], [0.4, 1.0]]))
    any_defect = [torch.tensor([[0.5], [1.0], [0.0]])]
    gated = predictor_module.gate_probabilities([*class_probs, *any_defect],
                                                Gate(providers=(((0, 1),), ()), any_defect=(1,)))
    assert torch.allclose(gated, torch.tensor([[0.4, 0.5], [0.6, 1.0], [0.0, 0.0]]))


# ---------------------------------------------------------------- TTA on models that are not flip-symmetric, ensembles of unequal weights


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


# ---------------------------------------------------------------- ensemble modes, TTA views and per-model normalisation


def test_average_modes_on_the_writeups_example():
    probs = [torch.tensor([0.2]), torch.tensor([0.3]), torch.tensor([0.7])]
    assert average_probabilities(probs, "mean").item() == pytest.approx(0.4)
    assert average_probabilities(probs, "rms").item() == pytest.approx(((0.04 + 0.09 + 0.49) / 3) ** 0.5)  # 0.45
    assert average_probabilities(probs, "max").item() == pytest.approx(0.7)
    assert average_probabilities(probs, "mean", [1, 1, 2]).item() == pytest.approx((0.2 + 0.3 + 1.4) / 4)
    assert average_probabilities(probs, "rms", [0, 0, 1]).item() == pytest.approx(0.7)


def test_average_refuses_bad_weights():
    probs = [torch.zeros(1), torch.ones(1)]
    with pytest.raises(ConfigError, match="max averaging takes no weights"):
        average_probabilities(probs, "max", [1, 2])
    with pytest.raises(ConfigError, match="1 weights given for 2 models"):
        average_probabilities(probs, "mean", [1])
    with pytest.raises(ConfigError, match="not one of mean, rms, max"):
        average_probabilities(probs, "median")


class EchoModel(nn.Module):
    """Logits = the input's first channel, repeated per class and shifted by the class index."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return torch.cat([x[:, :1] + c for c in range(self.classes)], dim=1)


@pytest.mark.parametrize("tta", ["none", "hflip", "vflip", "both"])
def test_tta_views_come_back_aligned(tta):
    x = torch.randn(3, 1, 5, 7)  # nothing symmetric: a misaligned view would change the mean
    expected = torch.sigmoid(torch.cat([x, x + 1], dim=1))
    assert torch.allclose(tta_probabilities(EchoModel(), x, tta), expected, atol=1e-6)


def test_hflip_tta_averages_a_model_with_its_mirrored_prediction():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)  # not mirror-symmetric
    x = torch.randn(2, 1, 6, 9)
    with torch.no_grad():
        expected = (torch.sigmoid(conv(x)) + torch.sigmoid(conv(x.flip(-1))).flip(-1)) / 2
        assert torch.allclose(tta_probabilities(conv, x, "hflip"), expected, atol=1e-6)


def test_each_model_normalises_with_its_own_statistics():
    images = torch.randint(0, 256, (2, 4, 6), dtype=torch.uint8)
    predictor = Predictor([loaded(EchoModel(), mean=0.5, std=0.25), loaded(EchoModel(), mean=0.2, std=0.5)], tta="hflip")
    probs, class_probs = predictor.predict(images)
    x = images.float() / 255
    expected = (torch.sigmoid((x - 0.5) / 0.25) + torch.sigmoid((x - 0.2) / 0.5)) / 2
    assert class_probs is None and probs.dtype == torch.uint8 and probs.shape == (2, 2, 4, 6)
    assert (probs[:, 0].int() - quantize(expected).int()).abs().max() <= 1
