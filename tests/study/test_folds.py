"""A study's fold processes: their command line, built by the one torchrun builder."""

import sys
from pathlib import Path

from sever.study.folder import StudyPaths
from sever.study.folds import fold_command, with_fold


def test_a_fold_process_runs_train_resume_fold_under_torchrun_when_it_needs_several():
    study = StudyPaths(Path("/studies/s1"))
    command = fold_command(study, 1, 2, ["trainer.epochs=3"], debug=True)
    assert command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "sever", "--debug", "train", "--resume=/studies/s1", "--fold=1",
                       "--set=trainer.epochs=3"]
    assert fold_command(study, 0, 1, [], debug=False) == [sys.executable, "-m", "sever", "train",
                                                          "--resume=/studies/s1", "--fold=0"]


def test_a_fold_config_validates_on_its_fold_of_the_saved_split(tmp_path):
    config = {"data_loader": {"type": "SteelDataLoader", "args": {"data_dir": "d", "folds": 9}}}
    folded = with_fold(config, 3, 2, tmp_path / "splits.json")
    assert folded["data_loader"]["args"] == {"data_dir": "d", "folds": 3, "fold": 2,
                                             "split_file": str((tmp_path / "splits.json").resolve())}
    assert config["data_loader"]["args"] == {"data_dir": "d", "folds": 9}  # the study's own is left alone
    assert "split_file" not in with_fold(config, 3, 0)["data_loader"]["args"]
