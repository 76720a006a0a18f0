"""Composed pipelines: runs trained on some classes (train_classes), composed into one prediction."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config
from inference_runs import invoke
from torch import nn

from sever import experiment
from sever.data_loader.annotations import Annotations, read_rle_csv
from sever.data_loader.augmentation import Normalization
from sever.data_loader.data_loaders import SteelDataLoader
from sever.data_loader.datasets import read_grey
from sever.data_loader.rle import decode_masks
from sever.exceptions import CheckpointError, ConfigError
from sever.inference.checkpoints import LoadedModel, load_model
from sever.inference.outputs import predict_directory, save_probabilities
from sever.inference.predictor import Predictor
from sever.model.model import build_model
from sever.model.postprocess import PostProcessing
from sever.registries import TRANSFORMS
from sever.utils.checkpoint import atomic_torch_save
from sever.utils.config import output_classes
from sever.utils.run import RunPaths


class Affine(nn.Module):
    """Logit channel k is ``scales[k] * x + shifts[k]`` of the normalised image: outputs we choose."""

    def __init__(self, scales, shifts):
        super().__init__()
        self.scales, self.shifts = scales, shifts

    def forward(self, x):
        return torch.cat([s * x + b for s, b in zip(self.scales, self.shifts)], dim=1)


class Brightness(nn.Module):
    """A classifier whose logit is ``scale * (mean of the normalised image)``: bright images are defective."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def forward(self, x):
        return torch.stack([s * x.mean(dim=(1, 2, 3)) for s in self.scales], dim=1)


def loaded(module, classes, train_classes=None, task="segmentation", name="m", class_names=None):
    config = {"classes": classes, "task": task, "class_names": class_names,
              "data_loader": {"type": "SteelDataLoader", "args": {"train_classes": train_classes}}}
    return LoadedModel(module.eval(), Path(f"{name}.pth"), config, Normalization(0.5, 0.25))


IMAGES = torch.randint(0, 256, (3, 8, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_two_single_class_runs_compose_to_the_two_class_prediction():
    full = Predictor([loaded(Affine([2.0, -1.5], [0.3, 0.1]), 2)])
    first = loaded(Affine([2.0], [0.3]), 2, [1], name="first")
    second = loaded(Affine([-1.5], [0.1]), 2, [2], name="second")
    for models in ([first, second], [second, first]):  # the order of -m does not matter
        composed = Predictor(models)
        assert composed.classes == 2 and composed.class_names == ["class 1", "class 2"]
        assert torch.equal(composed.predict(IMAGES)[0], full.predict(IMAGES)[0])


def test_a_class_predicted_twice_is_the_weighted_ensemble_of_its_models_only():
    full = loaded(Affine([2.0, -1.5], [0.3, 0.1]), 2, name="full")
    binary = loaded(Affine([0.5], [-1.0]), 2, [2], name="binary")
    probs = Predictor([full, binary], weights=[1.0, 3.0]).predict(IMAGES)[0]
    x = (IMAGES.float() / 255 - 0.5) / 0.25
    first = torch.sigmoid(2.0 * x + 0.3)  # only the full run predicts class 1: its weight does not matter
    second = (torch.sigmoid(-1.5 * x + 0.1) + 3 * torch.sigmoid(0.5 * x - 1.0)) / 4
    assert (probs[:, 0].int() - (first * 255).round().int()).abs().max() <= 1
    assert (probs[:, 1].int() - (second * 255).round().int()).abs().max() <= 1


def test_a_class_whose_models_all_weigh_nothing_is_refused():
    full = loaded(Affine([2.0, -1.5], [0.3, 0.1]), 2, name="full")
    binary = loaded(Affine([0.5], [-1.0]), 2, [2], name="binary")
    Predictor([full, binary], weights=[1.0, 0.0])  # class 2 still has the full run
    with pytest.raises(ConfigError, match=r"-w: class 1 is predicted only by models of weight 0 \(models 1 of -m\)"):
        Predictor([full, binary], weights=[0.0, 1.0])


def test_a_class_no_model_predicts_is_refused_naming_it_and_the_models():
    models = [loaded(Affine([1.0], [0.0]), 3, [1], name="a"), loaded(Affine([1.0], [0.0]), 3, [2], name="b")]
    with pytest.raises(ConfigError) as error:
        Predictor(models)
    message = str(error.value)
    assert "class 3 of the dataset's 3 classes is predicted by none" in message
    assert "a.pth predicts class 1" in message and "b.pth predicts class 2" in message


def test_models_of_different_datasets_are_refused():
    with pytest.raises(ConfigError, match="a.pth predicts 3 classes but b.pth predicts 4"):
        Predictor([loaded(Affine([1.0], [0.0]), 3, [1], name="a"), loaded(Affine([1.0], [0.0]), 4, [2], name="b")])
    with pytest.raises(ConfigError, match=r"names its classes \['x', 'y'\] but b.pth \['x', 'z'\]"):
        Predictor([loaded(Affine([1.0], [0.0]), 2, [1], name="a", class_names=["x", "y"]),
                   loaded(Affine([1.0], [0.0]), 2, [2], name="b", class_names=["x", "z"])])


def test_an_any_defect_segmentation_run_is_no_class_provider():
    binary = loaded(Affine([1.0], [0.0]), 2, [1], name="one")
    union = loaded(Affine([1.0], [0.0]), 2, "any", name="union")
    with pytest.raises(ConfigError, match="union.pth: an any-defect segmentation run"):
        Predictor([binary, loaded(Affine([1.0], [0.0]), 2, [2]), union])
    alone = Predictor([union])
    assert alone.classes == 1 and alone.class_names == ["any defect"]


def test_the_any_defect_classifier_vetoes_every_class_of_an_image():
    images = torch.stack([torch.full((8, 10), 250, dtype=torch.uint8), torch.full((8, 10), 5, dtype=torch.uint8)])
    segmentation = loaded(Affine([0.0, 0.0], [4.0, 4.0]), 2)  # sure of both classes everywhere
    gate = loaded(Brightness([3.0]), 2, "any", task="classification", name="gate")
    predictor = Predictor([segmentation], [gate])
    probs, class_probs = predictor.predict(images)
    p_bright, p_dark = torch.sigmoid(torch.tensor([3.0 * 1.92, 3.0 * -1.92]))
    assert torch.allclose(class_probs, torch.tensor([[p_bright, p_bright], [p_dark, p_dark]]), atol=1e-3)
    plain = {"threshold": 0.5, "min_pixels": 0, "one_class_per_pixel": False}
    masks = PostProcessing.from_mapping({**plain, "classifier": {"veto": 0.5}}, 2).apply(probs, class_probs)
    assert masks[0].all() and not masks[1].any()  # the dark image loses both classes, the bright keeps them
    assert PostProcessing.from_mapping(plain, 2).apply(probs)[1].all()  # without the classifier it keeps them


def test_an_any_defect_classifier_scales_the_per_class_classifier():
    images = torch.full((1, 8, 10), 250, dtype=torch.uint8)
    segmentation = loaded(Affine([0.0, 0.0], [4.0, 4.0]), 2)
    classes = loaded(Brightness([1.0, -1.0]), 2, task="classification", name="classes")
    gate = loaded(Brightness([0.5]), 2, "any", task="classification", name="gate")
    x = torch.tensor(1.92)  # (250 / 255 - 0.5) / 0.25
    _, class_probs = Predictor([segmentation], [classes, gate]).predict(images)
    expected = torch.stack([torch.sigmoid(x), torch.sigmoid(-x)]) * torch.sigmoid(0.5 * x)
    assert torch.allclose(class_probs[0], expected, atol=1e-3)


def test_a_classifier_of_classes_nobody_predicts_is_refused():
    segmentation = loaded(Affine([1.0], [0.0]), 2, [1])
    other = loaded(Brightness([1.0]), 2, [2], task="classification", name="other")
    with pytest.raises(ConfigError, match="other.pth predicts class 2, none of the predicted classes"):
        Predictor([segmentation], [other])


@pytest.mark.parametrize("value, problem", [
    ([5], r"train_classes\[0\]: 5 is not a ClassId in 1..4"),
    ([0], r"train_classes\[0\]: 0 is not a ClassId in 1..4"),
    ([2, 2], r"train_classes\[1\]: ClassId 2 is listed twice"),
    ([], "expected a list of ClassIds"),
    ("some", "expected a list of ClassIds"),
])
def test_bad_train_classes_are_refused_before_anything_is_built(demo_dir, tmp_path, value, problem):
    config = tiny_config(demo_dir, tmp_path)
    config["data_loader"]["args"]["train_classes"] = value
    with pytest.raises(ConfigError, match=problem):
        experiment.prepare_config(config)


def test_resuming_with_other_train_classes_is_refused(demo_dir, tmp_path):
    config = tiny_config(demo_dir, tmp_path)
    old, new = (experiment.prepare_config(config, [f"data_loader.args.train_classes={value}"]) for value in ("[2]", "[3]"))
    with pytest.raises(CheckpointError, match="train_classes is 'class 2' in the checkpoint but 'class 3'"):
        experiment.check_compatible(old, new)


def test_annotations_for_outputs_select_or_unite_classes():
    annotations = Annotations(("a.jpg", "b.jpg"), [["1 3", "", "2 4"], ["", "", ""]], [[1, 0, 2], [0, 0, 0]])
    chosen = annotations.for_outputs(output_classes({"classes": 3, "data_loader": {"args": {"train_classes": [3, 1]}}}))
    assert chosen.encodings.tolist() == [["1 3", "2 4"], ["", ""]]
    union = annotations.for_outputs(output_classes({"classes": 3, "data_loader": {"args": {"train_classes": "any"}}}))
    assert union.encodings.tolist() == [["1 5"], [""]]  # pixels 1-3 and 2-5 merge into 1-5


def loader(demo_dir, train_classes):
    config = tiny_config(demo_dir, Path("unused"))
    transforms = TRANSFORMS.build({"type": "HeavyCropTransforms", "args": {"height": 64, "width": 64}},
                                  "augmentation")
    return SteelDataLoader(**{**config["data_loader"]["args"], "train_classes": train_classes}, classes=4,
                           transforms=transforms, seed=7)


def test_the_loader_gives_masks_of_the_chosen_classes_only(demo_dir):
    full, some, union = (loader(demo_dir, value) for value in (None, [2, 4], "any"))
    assert len(full.valid_dataset) == len(some.valid_dataset) == len(union.valid_dataset) > 0
    defects = 0
    for index in range(len(full.valid_dataset)):
        assert full.valid_dataset.paths[index] == some.valid_dataset.paths[index]  # the same split
        everything = full.valid_dataset[index][1]
        assert torch.equal(some.valid_dataset[index][1], everything[[1, 3]])
        assert torch.equal(union.valid_dataset[index][1], everything.amax(dim=0, keepdim=True))
        defects += int(everything.any())
    assert defects  # the comparison saw masks, not only empty ones


@pytest.mark.slow
def test_a_train_classes_run_trains_one_output_per_class_and_tunes_itself(demo_dir, tmp_path):
    config = tiny_config(demo_dir, tmp_path / "saved", epochs=1)
    config["data_loader"]["args"]["train_classes"] = [3]
    run = experiment.train(config)
    model = load_model(run.root)
    assert model.classes == 1 and model.outputs.ids == (2,)
    assert model.model(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    tuned = yaml.safe_load((run.root / "postprocess.yml").read_text())
    assert len(tuned["threshold"]) == 1 and len(tuned["min_pixels"]) == 1


def write_run(root: Path, data_dir: Path, name: str, train_classes, seed: int) -> Path:
    """A run folder of ``tiny_config`` predicting ``train_classes``, with random weights of that many outputs."""
    config = tiny_config(data_dir, root)
    config["data_loader"]["args"]["train_classes"] = train_classes
    config = experiment.prepare_config({**config, "name": name})
    torch.manual_seed(seed)
    run = RunPaths.create(root, name)
    model = build_model(config["arch"], output_classes(config).outputs)
    atomic_torch_save({"state_dict": model.state_dict(), "config": config, "epoch": 1}, run.best)
    return run.root


@pytest.fixture(scope="module")
def halves(demo_dir, module_tmp):
    root = module_tmp("halves")
    return write_run(root, demo_dir, "low", [1, 2], 1), write_run(root, demo_dir, "high", [3, 4], 2)


def test_tune_and_evaluate_a_composition_cover_every_class(halves, tmp_path):
    low, high = halves
    output = tmp_path / "composed.yml"
    result = invoke("tune", "-m", low, "-m", high, "--split", "val", "-o", output, "--num-workers", 0)
    assert result.exit_code == 0, result.output
    tuned = yaml.safe_load(output.read_text())
    assert len(tuned["threshold"]) == 4 and len(tuned["min_pixels"]) == 4
    result = invoke("evaluate", "-m", low, "-m", high, "--split", "val", "--postprocess", output, "--num-workers", 0)
    assert result.exit_code == 0, result.output
    assert "6 images x 4 classes" in result.output
    alone = invoke("evaluate", "-m", high, "--split", "val", "--num-workers", 0)
    assert alone.exit_code == 0, alone.output
    assert "6 images x 2 classes" in alone.output and "class 3" in alone.output and "class 1 " not in alone.output


def test_predict_composes_a_submission_and_refuses_one_with_classes_missing(halves, demo_dir, tmp_path):
    low, high = halves
    images = demo_dir / "test_images"
    out = tmp_path / "sub.csv"
    result = invoke("predict", "-m", low, "-i", images, "-o", out, "--num-workers", 0)
    assert result.exit_code == 1 and "a submission needs every class" in result.output
    assert "class 3, class 4" in result.output and not out.exists()
    pp = tmp_path / "pp.yml"
    pp.write_text("threshold: 0.5\nmin_pixels: 0\n")
    result = invoke("predict", "-m", high, "-m", low, "-i", images, "-o", out, "--num-workers", 0,
                    "--postprocess", pp, "--save-probs", tmp_path / "probs")
    assert result.exit_code == 0, result.output
    written = read_rle_csv(out, 4)
    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0}, 4)
    halves_alone = [Predictor([load_model(run)]) for run in (low, high)]
    for position, name in enumerate(written.image_ids):
        probs = torch.from_numpy(np.load(tmp_path / "probs" / f"{name}.npz")["probs"])
        image = torch.from_numpy(read_grey(images / name))[None]
        alone = torch.cat([predictor.predict(image)[0][0] for predictor in halves_alone])
        assert (probs.int() - alone.int()).abs().max() <= 1  # batches of other sizes round differently
        masks = settings.apply(probs[None])[0].numpy()
        np.testing.assert_array_equal(decode_masks(written.encodings[position], probs.shape[1:]).transpose(2, 0, 1),
                                      masks)


def test_the_rows_of_a_run_of_some_classes_carry_the_dataset_class_ids(halves, demo_dir, tmp_path):
    """Out-of-fold CSVs and pseudo-labels of a ``train_classes: [3, 4]`` run: its channels are ClassIds 3 and 4."""
    _, high = halves
    images = demo_dir / "test_images"
    predictor = Predictor([load_model(high)])
    settings = PostProcessing.from_mapping({"threshold": 0.5, "min_pixels": 0}, 2)
    summary = predict_directory(predictor, settings, images, tmp_path / "high.csv", save_probs=tmp_path / "probs",
                                num_workers=0)
    written = read_rle_csv(summary.output, 4)
    assert written.has_defect()[:, 2:].any() and not written.has_defect()[:, :2].any()
    for position, name in enumerate(written.image_ids):
        probs = torch.from_numpy(np.load(tmp_path / "probs" / f"{name}.npz")["probs"])
        masks = settings.apply(probs[None])[0].numpy()
        np.testing.assert_array_equal(decode_masks(written.encodings[position][2:], probs.shape[1:]).transpose(2, 0, 1),
                                      masks)


def test_tuning_saved_probabilities_against_labels_of_more_classes_is_refused(tmp_path):
    probs = tmp_path / "probs"
    probs.mkdir()
    save_probabilities(probs, "a.jpg", np.zeros((1, 4, 4), np.uint8))
    truth = tmp_path / "truth.csv"
    truth.write_text("ImageId,ClassId,EncodedPixels\na.jpg,3,1 2\n")
    result = invoke("tune", "--probs", probs, "--truth", truth)
    assert result.exit_code == 1
    assert "ClassId '3'" in result.output and f"the probabilities in {probs} hold 1 classes" in result.output
