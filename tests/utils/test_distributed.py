"""Distributed training: two CPU processes with gloo."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from sever import experiment
from sever.utils.run import RunPaths

pytestmark = pytest.mark.slow  # every test here trains a model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_worker(rank: int, world_size: int, port: int, config: dict, out_dir: str) -> None:
    """One rank: record the batches it is given, train, keep its final weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    built = experiment.build_experiment(experiment.prepare_config(config))
    sampler = built.data.train_loader.batch_sampler
    seen = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        seen.append([index for batch in sampler for index, _ in batch])
    context = built.distributed
    root = RunPaths.create(config["save_dir"], config["name"]).root if context.is_main else None
    run = RunPaths(Path(context.broadcast(str(root) if root else None)))
    experiment.make_trainer(built, run).train()
    torch.save({"seen": seen, "run": str(run.root), "weights": built.model.state_dict()},
               Path(out_dir) / f"rank{rank}.pt")
    experiment.distributed.teardown(context)


def test_two_gloo_ranks_train_disjoint_shards_to_identical_weights(make_config, tmp_path):
    config = experiment.prepare_config(make_config(epochs=2))
    config["data_loader"]["args"]["batch_size"] = 2
    mp.start_processes(_rank_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for epoch in range(2):
        a, b = (set(r["seen"][epoch]) for r in ranks)
        assert a and b and not a & b, "the ranks' shards of every batch are disjoint"
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    run = Path(ranks[0]["run"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "last.pth", "model_best.pth"]


def test_sever_train_nproc_launches_one_job_with_one_run_folder(make_config, tmp_path):
    config = make_config(epochs=1)
    config["data_loader"]["args"]["batch_size"] = 2
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sever", "train", "--nproc", "2", "-c", str(path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((Path(config["save_dir"]) / "tiny").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "checkpoints" / "last.pth").is_file()
    assert done.stdout.count("run saved in") == 1
    # each INFO line once: rank 1 only warns (logged as the experiment is built, then every epoch)
    assert done.stderr.count("INFO    model: FPN over resnet18") == 1
    assert done.stderr.count("INFO    epoch 1/1  ") == 1  # the epoch line (its progress line is "epoch 1/1: ")
    assert done.stderr.count("INFO    epoch 1/1: ") == 1, "rank 0 alone shows progress"


def _mixed_worker(rank: int, world_size: int, port: int, config: dict, out_dir: str) -> None:
    """One rank of a mixed-size run: train an epoch, validate; keep the log, the weights and the images counted."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    built = experiment.build_experiment(experiment.prepare_config(config))
    context = built.distributed
    root = RunPaths.create(config["save_dir"], config["name"]).root if context.is_main else None
    run = RunPaths(Path(context.broadcast(str(root) if root else None)))
    log = experiment.make_trainer(built, run).train()
    shard = [index for batch in built.data.valid_loader.batch_sampler for index in batch]
    torch.save({"log": log, "weights": built.model.state_dict(), "shard": shard,
                "counted": float(built.metrics[0].images)}, Path(out_dir) / f"rank{rank}.pt")
    experiment.distributed.teardown(context)


def test_two_ranks_validate_mixed_sizes_as_one_process_does(tmp_path):
    """Size-grouped validation under DDP: each image counted once over the ranks, the scores of one process."""
    from sever.data_loader.demo import make_demo_data
    from conftest import mixed_config

    data = make_demo_data(tmp_path / "mixed", n_train=24, n_test=2, height=64, width=128, seed=5, mixed_sizes=True)
    config = experiment.prepare_config(mixed_config(data, tmp_path / "saved", batch_size=2, valid_batch_size=3))
    mp.start_processes(_mixed_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    built = experiment.build_experiment(config)
    n_valid = len(built.data.valid_dataset)
    assert sorted(ranks[0]["shard"] + ranks[1]["shard"]) == list(range(n_valid)), "every image on one rank"
    assert ranks[0]["counted"] == ranks[1]["counted"] == n_valid, "the reduced metric counts each image once"
    built.model.load_state_dict(ranks[0]["weights"])
    alone = experiment.make_trainer(built, RunPaths.create(tmp_path / "runs", "alone"))._valid_epoch(1)
    dice = [key for key in alone if re.fullmatch(r"val_dice_(\d+|mean)", key)]
    assert len(dice) == 5
    for rank in ranks:
        assert {k: rank["log"][k] for k in dice} == pytest.approx({k: alone[k] for k in dice}, abs=1e-9)


def test_one_builder_makes_every_torchrun_command():
    from sever.utils.distributed import torchrun_command

    assert torchrun_command(2, ["train", "-c", "x.yml"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sever",
        "train", "-c", "x.yml"]
    assert torchrun_command(1, ["train"]) == [sys.executable, "-m", "sever", "train"]  # one process: no torchrun
