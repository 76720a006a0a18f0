"""Tiled (sliding-window) prediction: tile placement, blending weights, agreement with whole-image prediction."""

from pathlib import Path

import numpy as np
import pytest
import torch
from inference_runs import invoke, runs  # noqa: F401 (fixture)
from torch import nn

from sever.data_loader.augmentation import Normalization
from sever.data_loader.datasets import list_images, read_grey
from sever.exceptions import ConfigError
from sever.inference.checkpoints import LoadedModel, load_model
from sever.inference.outputs import load_probabilities
from sever.inference.predictor import Predictor
from sever.inference.tiling import NETWORK_STRIDE, Tiling, parse_tile
from sever.model.model import build_model


def loaded(model: nn.Module, classes: int = 2, task: str = "segmentation") -> LoadedModel:
    config = {"classes": classes, "task": task, "class_names": None}
    return LoadedModel(model.eval(), Path("test.pth"), config, Normalization(0.5, 0.25))


def blocky_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 ``(1, H, W)``: random 8x8 blocks, so neither axis is symmetric and a misplaced tile shows."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (-(-height // 8), -(-width // 8)), dtype=np.uint8)
    return torch.from_numpy(blocks.repeat(8, 0).repeat(8, 1)[:height, :width].copy())[None]


class Constant(nn.Module):
    """Logits 0.7 everywhere, whatever the input."""

    def forward(self, x):
        return torch.full((x.shape[0], 2, *x.shape[-2:]), 0.7)


class Echo(nn.Module):
    """Logits = the input itself, shifted per class: the output at a pixel depends on that pixel only."""

    def forward(self, x):
        return torch.cat([x, x - 1], dim=1)


@pytest.mark.parametrize("length, tile, overlap", [(1600, 512, 0.25), (1000, 256, 0.5), (333, 96, 0.0),
                                                   (250, 64, 0.9), (200, 256, 0.25)])
def test_tiles_cover_the_axis_on_the_stride_grid(length, tile, overlap):
    spans = Tiling(tile, tile, overlap).spans(length, tile)
    covered = np.zeros(length, int)
    for start, size in spans:
        assert start % NETWORK_STRIDE == 0 and 0 < size <= tile and start + size <= length
        covered[start:start + size] += 1
    assert covered.min() >= 1  # every pixel has a tile
    if length > tile:
        assert spans[-1][0] + spans[-1][1] == length and spans[0][1] == tile


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.6])
def test_blending_weights_sum_to_one_everywhere(blend, overlap):
    tiling = Tiling(64, 96, overlap, blend, batch=3)
    probs = tiling.predict(lambda tiles: torch.full((len(tiles), 2, *tiles.shape[-2:]), 0.3), torch.zeros(150, 333,
                           dtype=torch.uint8), classes=2)
    assert probs.shape == (2, 150, 333)
    assert torch.allclose(probs, torch.full_like(probs, 0.3), atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_constant_model_stays_constant_through_the_predictor(blend):
    predictor = Predictor([loaded(Constant())], tiling=Tiling(64, 64, 0.5, blend, batch=4))
    probs, _ = predictor.predict(blocky_image(130, 200))
    assert probs.shape == (1, 2, 130, 200)
    assert (probs == round(255 * torch.sigmoid(torch.tensor(0.7)).item())).all()


@pytest.mark.parametrize("tta", ["none", "hflip", "both"])
def test_pointwise_model_is_reassembled_exactly(tta):
    """Each pixel is the weighted mean of the same value from every tile covering it: exact."""
    image = blocky_image(150, 333, seed=1)
    whole, _ = Predictor([loaded(Echo())], tta=tta).predict(image)
    tiled, _ = Predictor([loaded(Echo())], tta=tta, tiling=Tiling(64, 96, 0.3, "gaussian", batch=5)).predict(image)
    assert torch.equal(tiled, whole)


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_tta_and_ensembles_compose_with_tiles(blend):
    """A 3x3 convolution sees one pixel past a tile's edge; blending leaves that to weights near 0."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(1, 2, 3, padding=1) for _ in range(2)]  # not mirror-symmetric: TTA matters
    image = blocky_image(96, 352, seed=2)
    kwargs = {"tta": "both", "average": "mean", "weights": [2.0, 1.0]}
    whole, _ = Predictor([loaded(c) for c in convs], **kwargs).predict(image)
    tiled, _ = Predictor([loaded(c) for c in convs], tiling=Tiling(64, 128, 0.5, blend), **kwargs).predict(image)
    untiled_tta, _ = Predictor([loaded(c) for c in convs], tta="none", weights=[2.0, 1.0]).predict(image)
    assert (tiled.int() - whole.int()).abs().max() <= 1  # at most one quantisation step (1/255)
    assert (untiled_tta.int() - whole.int()).abs().max() > 10  # the flips change the answer: TTA was applied


def test_real_network_matches_whole_image_away_from_tile_edges():
    """A Unet over resnet18 with random weights, tiled against the same network on the whole image.

    The network's output at a pixel depends on the input up to 281 px to its left and 249 px to its
    right (measured from its gradient), so a tile's pixels farther than ``REACH`` from an edge the
    tile shares with the image's inside see exactly what they see in the whole image. There, the
    tiled probabilities may differ only by float rounding: at most one quantisation step (1/255).
    Elsewhere the tile's zero padding changes them: far more. (FPN is not tested so: its decoder's
    GroupNorm takes statistics over the whole input, so every output pixel depends on the tile.)
    """
    reach = 288
    torch.manual_seed(0)
    unet = build_model({"type": "Unet", "args": {"encoder_name": "resnet18", "encoder_weights": None,
                                                 "decoder_args": {"decoder_channels": [32, 16, 16, 8, 8]}}}, 2)
    image = blocky_image(64, 1536, seed=3)
    whole, _ = Predictor([loaded(unet)]).predict(image)
    tiling = Tiling(64, 768, 0.25, "gaussian", batch=2)
    tiled, _ = Predictor([loaded(unet)], tiling=tiling).predict(image)
    spans = tiling.spans(1536, 768)
    inside_edges = {edge for start, size in spans for edge in (start, start + size)} - {0, 1536}
    columns = torch.arange(1536)
    covering = sum(((columns >= start) & (columns < start + size)).int() for start, size in spans)
    interior = (covering == 1) & torch.stack([(columns - e).abs() >= reach for e in inside_edges]).all(0)
    assert interior.sum() >= 200  # columns [0, 288) and [1344 - ..., 1536) of one tile each
    difference = (tiled.int() - whole.int()).abs()
    assert difference[..., interior].max() <= 1
    assert difference[..., ~interior].max() > 1  # the edges do differ: the comparison is not vacuous


class MeanClassifier(nn.Module):
    """Class logits from the mean of the whole input: a tile would see another mean."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 2) * torch.tensor([1.0, -1.0])


def test_classifiers_see_the_whole_image():
    image = blocky_image(64, 256, seed=4)
    image[..., :64] = 255  # one bright end: its tile's mean is far from the image's
    classifier = loaded(MeanClassifier(), task="classification")
    _, whole = Predictor([loaded(Echo())], [classifier]).predict(image)
    _, tiled = Predictor([loaded(Echo())], [classifier], tiling=Tiling(64, 64, 0.0)).predict(image)
    assert torch.equal(tiled, whole)


def test_cli_tiles_with_saved_probabilities(runs, demo_dir, tmp_path):
    images = demo_dir / "test_images"  # 64x256: tiles of 64x128 cut each in three
    result = invoke("predict", "-m", runs["unet"], "-i", images, "-o", tmp_path / "sub.csv", "--num-workers", 0,
                    "--tile", "64x128", "--overlap", 0.5, "--blend", "linear", "--tta", "hflip",
                    "--save-probs", tmp_path / "probs", "--batch-size", 2)
    assert result.exit_code == 0, result.output
    model = load_model(runs["unet"])
    tiled = Predictor([model], tta="hflip", tiling=Tiling(64, 128, 0.5, "linear", batch=2))
    whole = Predictor([model], tta="hflip")
    name = list_images(images)[0]
    image = torch.from_numpy(read_grey(images / name))[None]
    saved, _ = load_probabilities(tmp_path / "probs" / f"{name}.npz")
    assert np.array_equal(saved, tiled.predict(image)[0][0].numpy())
    assert not np.array_equal(saved, whole.predict(image)[0][0].numpy())  # the tiles were used


@pytest.mark.parametrize("args, message", [
    (["--tile", "0x128"], "--tile: 0x128: height and width must be positive"),
    (["--tile", "-64x128"], "--tile: -64x128: height and width must be positive"),
    (["--tile", "64by128"], "--tile: expected HEIGHTxWIDTH"),
    (["--tile", "128"], "--tile: expected HEIGHTxWIDTH"),
    (["--tile", "16x128"], "--tile: 16x128 is smaller than the network stride 32"),
    (["--tile", "64x100"], "--tile: 64x100: height and width must be multiples of the network stride 32"),
    (["--tile", "64x128", "--overlap", "1"], "--overlap: 1.0 is outside [0, 1)"),
    (["--tile", "64x128", "--overlap", "-0.1"], "--overlap: -0.1 is outside [0, 1)"),
])
def test_bad_tiles_stop_predict_before_it_starts(runs, demo_dir, tmp_path, args, message):
    out = tmp_path / "sub.csv"
    result = invoke("predict", "-m", runs["unet"], "-i", demo_dir / "test_images", "-o", out, *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "tune"])
def test_bad_tiles_stop_evaluate_and_tune(runs, tmp_path, command):
    result = invoke(command, "-m", runs["unet"], "--split", "val", "--tile", "64x128", "--overlap", "1.5")
    assert result.exit_code == 1 and "--overlap: 1.5 is outside [0, 1)" in result.output, result.output


def test_parse_tile():
    assert parse_tile("512x768") == (512, 768) and parse_tile(" 64 X 96 ") == (64, 96)
    with pytest.raises(ConfigError, match="--tile: expected HEIGHTxWIDTH"):
        parse_tile("512x")
