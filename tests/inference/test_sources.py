"""inference/sources.py: what a model path is, and the ModelSource a study or an ensemble gives."""

import pytest
import torch
from inference_runs import runs  # noqa: F401 (fixture)

from sever.exceptions import CheckpointError, ConfigError
from sever.inference.sources import open_models, source_kind
from sever.study.folder import StudyPaths


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_each_kind_of_path_is_told_apart(runs, tmp_path):
    best = runs["fpn"] / "checkpoints" / "model_best.pth"
    assert source_kind(runs["fpn"]) == "run" and source_kind(best) == "checkpoint"
    scripted = tmp_path / "model.pt"
    torch.jit.script(torch.nn.Conv2d(1, 4, 3)).save(str(scripted))
    assert source_kind(scripted) == "torchscript"
    renamed = tmp_path / "renamed.pt"  # a checkpoint is a zip too, but holds no code
    renamed.write_bytes(best.read_bytes())
    assert source_kind(renamed) == "checkpoint"
    (tmp_path / "model.onnx").write_bytes(b"x")
    assert source_kind(tmp_path / "model.onnx") == "onnx"
    smp_dir = tmp_path / "smp"
    smp_dir.mkdir()
    (smp_dir / "config.json").write_text("{}")
    assert source_kind(smp_dir) == "run"  # half an smp folder is not one
    (smp_dir / "model.safetensors").write_bytes(b"")
    assert source_kind(smp_dir) == "smp"
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        source_kind(tmp_path / "nothing")


def test_a_study_expands_to_its_folds_with_its_tuned_settings(runs, tmp_path):
    study = StudyPaths(tmp_path / "study")
    study.root.mkdir()
    study.initialise(2)
    for fold, name in enumerate(("fpn", "unet")):
        (study.fold_dir(fold)).symlink_to(runs[name], target_is_directory=True)
        study.set_status(fold, "done")
    source = open_models([study.root], weights=[2.0])
    assert source.kinds == ["study"] and source.study == study.root
    assert [str(m) for m in source.models] == [str(study.fold_dir(0)), str(study.fold_dir(1))]
    assert source.weights == [1.0, 1.0] and source.tuned is None
    study.postprocess.write_text("threshold: 0.4\n")
    assert open_models([study.root]).tuned == study.postprocess
    mixed = open_models([study.root, runs["fpn"]], weights=[1.0, 1.0])
    assert mixed.study is None and mixed.tuned is None and mixed.weights == [0.5, 0.5, 1.0]
    with pytest.raises(ConfigError, match="-w: 1 weight"):
        open_models([runs["fpn"], runs["unet"]], weights=[1.0])
