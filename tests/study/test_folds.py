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


def test_after_a_stop_no_slot_starts_another_fold():
    import os
    import signal
    import time

    from sever.exceptions import Interrupted
    from sever.study.folds import run_queue
    from sever.utils import interrupt

    started = []

    def launch(fold, environment):
        started.append(fold)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread (waiting in join: it raises there)
        for _ in range(500):  # as a fold process would still run while the main thread takes the signal
            if interrupt.requested() is not None:
                break
            time.sleep(0.01)
        return 0

    with interrupt.handled():
        try:
            run_queue([0, 1, 2], [{}], launch)
        except Interrupted:
            pass
    assert started == [0]


def test_a_stop_is_passed_on_to_the_fold_processes_which_finish_saving(tmp_path):
    import signal
    import subprocess
    import time

    from sever.study.folds import _stop_fold_processes

    saved = tmp_path / "saved"
    child = ("import signal, sys, time\n"
             "def stop(signum, frame):\n"
             "    time.sleep(0.5)\n"  # saving
             f"    open({str(saved)!r}, 'w').write(str(signum)); sys.exit(128 + signum)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    started = time.monotonic()
    _stop_fold_processes([process], signal.SIGTERM, grace=20)
    assert process.returncode == 128 + signal.SIGTERM and saved.read_text() == str(int(signal.SIGTERM))
    assert time.monotonic() - started < 10
