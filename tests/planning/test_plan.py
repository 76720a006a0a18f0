"""``sever plan``: the fingerprint, the planned values by their reasons, device decisions, bad input."""

import re
import shutil
import numpy as np
import pytest
from click.testing import CliRunner
from plan_datasets import CPU, EPOCHS_ONLY, fake_target, neu_subset, squares_dataset

from sever.cli.app import cli
from sever.data_loader.convert import csv_to_mask_folder
from sever.data_loader.demo import make_demo_data
from sever.exceptions import DataError
from sever.experiment import prepare_config
from sever.planning.fingerprint import Layout, fingerprint
import sever.planning.sizing as sizing_module
from sever.planning.plan import PlanError, Target, make_plan
from sever.planning.policy import DEFAULT_POLICY
from sever.planning.probe import loading_seconds
from sever.planning.rules import plan_augmentation, plan_schedule
from sever.planning.sizing import single_run_updates
from sever.utils.config import load_config
from sever.utils.device import Capabilities, choose_amp, cpu_batch_size, largest_batch

MEMORY_MARGIN, MIN_CPU_BATCH, MIN_UPDATES = (DEFAULT_POLICY.memory_margin, DEFAULT_POLICY.min_cpu_batch,
                                             DEFAULT_POLICY.min_updates)

# ----------------------------------------------------------------------------- device decisions


@pytest.mark.parametrize("caps, amp", [(Capabilities("cuda", bf16=True, memory=80 << 30), "bf16"),
                                       (Capabilities("cuda", bf16=False, memory=16 << 30), "fp16"),
                                       (CPU, "off")])
def test_amp_follows_what_the_device_supports(caps, amp):
    assert choose_amp(caps) == amp


@pytest.mark.parametrize("largest", [1, 2, 3, 37, 64, 255])
def test_largest_batch_finds_the_edge_with_few_probes(largest):
    probes = []

    def fits(batch):
        probes.append(batch)
        return batch <= largest

    assert largest_batch(fits) == largest
    assert len(probes) <= 2 * int(np.log2(largest)) + 3


def test_largest_batch_is_zero_when_nothing_fits_and_stops_at_the_limit():
    assert largest_batch(lambda batch: False) == 0
    assert largest_batch(lambda batch: True, limit=48) == 48


@pytest.mark.parametrize("crop, batch", [((256, 256), 8), ((64, 256), 16), ((256, 1600), 2), ((192, 192), 8)])
def test_cpu_batch_rule(crop, batch):
    assert cpu_batch_size(crop) == batch


# ----------------------------------------------------------------------------- fingerprint


# ----------------------------------------------------------------------------- planned values


@pytest.fixture(scope="module")
def demo_fp(module_tmp):
    return fingerprint(make_demo_data(module_tmp("demo"), n_train=24, n_test=4, height=64, width=256,
                                      seed=3))


def test_crop_fits_the_images_and_folds_follow_the_rarest_class(demo_fp):
    plan = make_plan(demo_fp, fake_target(), 3600, "demo")
    args = plan.config["augmentation"]["args"]
    assert (args["height"], args["width"]) == (64, 256)  # the whole image: a multiple of 32 that fits it
    rarest = min(c.images for c in demo_fp.classes)
    assert rarest < 5 and plan.folds == rarest
    assert any(f"folds reduced to {rarest}" in note for note in plan.notes)
    assert f"only {rarest} images" in plan.reasons["data_loader.args.folds"]


def test_monitor_is_the_balanced_dice_when_most_pairs_are_empty(demo_fp):
    assert demo_fp.empty_pairs > 0.5
    plan = make_plan(demo_fp, fake_target(), 3600, "demo")
    assert plan.config["trainer"]["monitor"] == "max val_dice_balanced"
    assert "empty" in plan.reasons["trainer.monitor"]
    assert {m["type"] for m in plan.config["metrics"]} >= {"Dice", "DefectDice", "Presence"}


def test_monitor_is_the_competition_dice_when_defects_are_common(demo_fp):
    common = type(demo_fp)(**{**demo_fp.__dict__, "empty_pairs": 0.2})
    assert make_plan(common, fake_target(), 3600, "demo").config["trainer"]["monitor"] == "max val_dice_mean"


def test_min_pixels_priors_come_from_the_defect_areas(demo_fp):
    plan = make_plan(demo_fp, fake_target(), 3600, "demo")
    priors = plan.config["metrics"][0]["args"]["min_pixels"]
    assert priors == [int(c.area[0] / 2) // 10 * 10 for c in demo_fp.classes]
    assert all(0 < p < c.area[0] for p, c in zip(priors, demo_fp.classes))


def test_budget_sets_epochs_and_the_studys_time(demo_fp):
    short = make_plan(demo_fp, fake_target(step=0.5), 600, "demo")
    long = make_plan(demo_fp, fake_target(step=0.5), 6000, "demo")
    assert short.config["trainer"]["epochs"] < long.config["trainer"]["epochs"]
    seconds = [int(p.config["trainer"]["time_budget"][:-1]) for p in (short, long)]
    assert seconds == [510, 5100]  # the study's whole budget less the 15% kept for its out-of-fold tuning
    pseudo = make_plan(demo_fp, fake_target(step=0.5), 6000, "demo", unlabelled=str(demo_fp.data_dir))
    assert pseudo.config["trainer"]["epochs"] < long.config["trainer"]["epochs"]  # two rounds share the time
    estimated = (long.config["trainer"]["epochs"] - 2) // 2  # trainer.epochs is twice the estimate, plus 2
    assert estimated >= 4
    # enough steps: a flat quarter, then a cosine moved at every step, so the rate reaches 0 as the budget ends
    assert long.config["lr_scheduler"]["args"] == {"start_anneal": estimated // 4, "n_epochs": estimated,
                                                   "per_step": True}
    assert "moved at every step" in long.reasons["lr_scheduler"]


def test_a_run_of_few_steps_keeps_its_rate_up_epoch_by_epoch():
    schedule, why = plan_schedule(3, MIN_UPDATES - 1)
    assert schedule["args"] == {"start_anneal": 1, "n_epochs": 3} and "under 400" in why
    schedule, why = plan_schedule(8, MIN_UPDATES)
    assert schedule["args"] == {"start_anneal": 2, "n_epochs": 8, "per_step": True}


def test_defect_seeking_crops_only_when_a_crop_covers_under_half_an_image(demo_fp):
    sides = {"images": 3000, "heights": [200, 200, 200], "widths": [200, 200, 200]}
    sparse = type(demo_fp)(**{**demo_fp.__dict__, **sides, "empty_pairs": 0.8})
    assert plan_augmentation(sparse, (192, 192))[0] == "LightTransforms"  # the crop is 92% of the image
    seeking, why = plan_augmentation(sparse, (96, 96))
    assert seeking == "HeavyCropTransforms" and "crops cover 23% of a median image" in why
    dense = type(demo_fp)(**{**demo_fp.__dict__, **sides, "empty_pairs": 0.3})
    assert plan_augmentation(dense, (96, 96))[0] == "LightTransforms"


def test_a_budget_too_short_for_two_trained_folds_plans_one_run(demo_fp):
    """Planning for epochs (the learning rules plan one run sooner: tests/planning/test_learning.py)."""
    single = make_plan(demo_fp, fake_target(step=2.0), 60, "demo", policy=EPOCHS_ONLY)
    args = single.config["data_loader"]["args"]
    assert single.folds == 1 and "folds" not in args and args["validation_split"] == 0.15
    assert "one run validated on 15% of the images" in single.reasons["data_loader.args.validation_split"]
    assert int(single.config["trainer"]["time_budget"][:-1]) < 0.85 * 60  # the run's training only
    assert "the training time of the single run" in single.reasons["trainer.time_budget"]
    assert "#   sever train -c THIS_FILE    # or: sever auto" in single.text()
    prepare_config(single.config)
    study = make_plan(demo_fp, fake_target(step=2.0, per_image=True), 90, "demo", policy=EPOCHS_ONLY)
    assert study.folds == 2 and "validation_split" not in study.config["data_loader"]["args"]
    assert make_plan(demo_fp, fake_target(step=2.0, per_image=True), 75, "demo", policy=EPOCHS_ONLY).folds == 1
    assert make_plan(demo_fp, fake_target(step=2.0, per_image=True), 75, "demo",
                     unlabelled=str(demo_fp.data_dir), policy=EPOCHS_ONLY).folds == 2  # pseudo-label rounds are a study's


def test_a_short_cpu_budget_lowers_the_batch_for_more_optimiser_steps(demo_fp):
    many = type(demo_fp)(**{**demo_fp.__dict__, "images": 400})  # 340 training images of a single run
    short = make_plan(many, fake_target(step=0.4, per_image=True), 120, "demo")  # 0.05 s per image
    long = make_plan(many, fake_target(step=0.4, per_image=True), 3600, "demo")
    assert long.config["data_loader"]["args"]["batch_size"] == 16  # thousands of steps: the CPU rule's batch
    assert short.config["data_loader"]["args"]["batch_size"] == MIN_CPU_BATCH  # 16, 8, then 4
    assert re.search(rf"lowered to 4 for more optimiser steps: the budget gives about \d+, under {MIN_UPDATES}",
                     short.reasons["data_loader.args.batch_size"])
    assert single_run_updates(many, 120, 4, (256, 256), 0.2) == pytest.approx(
        2 * single_run_updates(many, 120, 8, (256, 256), 0.4), rel=0.05)  # half the batch: about twice the steps
    gpu = Capabilities("cuda", bf16=True, memory=16 << 30, name="fake GPU")
    cuda = make_plan(many, fake_target(step=0.4, caps=gpu, fits=lambda batch: batch <= 16), 120, "demo")
    assert cuda.config["data_loader"]["args"]["batch_size"] == 16  # a GPU's step is not per image: kept


def test_a_budget_too_short_for_one_epoch_is_refused_naming_the_time_needed(demo_fp):
    with pytest.raises(PlanError, match=r"--time 20 s: too short.* on cpu, and about \d+ s more go to reading the "
                                        r"data, self-tuning and the report: give at least --time \d+s") as caught:
        make_plan(demo_fp, fake_target(step=2.0), 20, "demo")
    needed = int(str(caught.value).rsplit("--time ", 1)[1].rstrip("s"))
    assert make_plan(demo_fp, fake_target(step=2.0), needed, "demo").folds == 1  # the time it names suffices
    with pytest.raises(PlanError, match=r"--time 30 s: too short.*a study trains at least 2 folds.*give at least"):
        make_plan(demo_fp, fake_target(step=2.0), 30, "demo", unlabelled=str(demo_fp.data_dir))


def test_cuda_batch_is_the_largest_that_fits_and_amp_fp16_without_bf16(demo_fp):
    caps = Capabilities("cuda", bf16=False, memory=16 << 30, name="fake GPU")
    plan = make_plan(demo_fp, fake_target(caps=caps, fits=lambda batch: batch <= 9), 3600, "demo")
    assert plan.config["data_loader"]["args"]["batch_size"] == 9
    assert plan.config["amp"] == "fp16"
    assert "fake GPU" in plan.reasons["data_loader.args.batch_size"]
    assert f"{MEMORY_MARGIN:.0%}" in plan.reasons["data_loader.args.batch_size"]


def test_written_file_validates_and_explains_every_planned_value(demo_fp, tmp_path):
    plan = make_plan(demo_fp, fake_target(), 3600, "demo", unlabelled=str(tmp_path))
    path = plan.write(tmp_path / "experiments" / "demo.yml")
    assert (tmp_path / "experiments" / "fingerprint.json").is_file()
    loaded = load_config(path)
    assert loaded == plan.config
    assert loaded["pseudo"] == {"images": str(tmp_path.resolve()), "rounds": 1}
    prepare_config(loaded)
    lines = path.read_text().splitlines()
    for dotted in plan.reasons:
        at = line_of(lines, dotted)
        assert lines[at - 1].strip().startswith("#"), f"{dotted} has no comment above it"


def line_of(lines: list[str], dotted: str) -> int:
    """The index of the line that sets the dotted key, following the block indentation."""
    at = -1
    for depth, part in enumerate(dotted.split(".")):
        at = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("  " * depth + f"{part}:"))
    return at


def test_mixed_sizes_crop_pads_the_small_images(tmp_path):
    data = make_demo_data(tmp_path / "mixed", n_train=16, n_test=2, height=96, width=256, seed=4, mixed_sizes=True)
    fp = fingerprint(data)
    plan = make_plan(fp, fake_target(), 3600, "mixed")
    args = plan.config["augmentation"]["args"]
    assert args["height"] % 32 == 0 and args["width"] % 32 == 0
    assert args["height"] <= fp.heights[1] and args["width"] <= fp.widths[1]
    assert fp.heights[0] < args["height"] and "padded" in plan.reasons["augmentation.args.height"]


def test_mask_folder_dataset_is_planned_on_its_own_layout(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_train=16, n_test=2, height=64, width=256, seed=5)
    csv_to_mask_folder(data / "train_images", data / "train.csv", data / "train_masks", 4)
    (data / "train.csv").rename(data / "labels.csv")  # the masks are the only labels now
    plan = make_plan(fingerprint(data), fake_target(), 3600, "masks")
    args = plan.config["data_loader"]["args"]
    assert args["format"] == "mask_folder" and args["masks"] == "train_masks" and "csv" not in args
    prepare_config(plan.config)


def test_neu_seg_subset(shared_data, tmp_path):
    fp = fingerprint(neu_subset(shared_data, tmp_path / "neu"))
    assert fp.heights == [200, 200, 200] and fp.widths == [200, 200, 200] and len(fp.classes) == 3
    plan = make_plan(fp, fake_target(), 3600, "neu")
    args = plan.config["augmentation"]["args"]
    assert (args["height"], args["width"]) == (192, 192)  # 224 would pad every 200x200 image
    assert args["mean"] == pytest.approx(fp.grey_mean, abs=1e-4)
    prepare_config(plan.config)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_cli_plan_prints_the_fingerprint_and_writes_the_file(tmp_path):
    data = squares_dataset(tmp_path / "sq", images=12)
    out = tmp_path / "experiments" / "sq.yml"
    result = CliRunner().invoke(cli, ["plan", str(data), "--device", "cpu", "--time", "2h", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "class2" in result.output and "defect-free" in result.output
    assert "note: folds reduced to 2: class2 is in only 1 image(s); some folds validate without it" in result.output
    # the steps the budget gives against those the data needs (a warning when short; the step is timed here)
    learning = re.search(r"^(learning: the budget gives each run about \d+ optimiser steps|WARNING: this budget is "
                         r"too short to learn this data).*$", result.output, re.M).group(0)
    assert learning.split(")")[0][:60] in out.read_text().replace("\n# ", " ")  # the file carries it too
    config = load_config(out)
    assert config["data_loader"]["args"]["folds"] == 2 and config["seed"] == 42
    prepare_config(config)
    seeded = CliRunner().invoke(cli, ["plan", str(data), "--device", "cpu", "--time", "2h", "--seed", "7", "-o",
                                      str(tmp_path / "seeded.yml")])
    assert seeded.exit_code == 0, seeded.output
    seeded_config = load_config(tmp_path / "seeded.yml")  # the epochs follow a step timed again
    assert seeded_config["seed"] == 7 and seeded_config["augmentation"] == config["augmentation"]


@pytest.mark.slow
def test_cli_plan_refuses_a_budget_too_short(tmp_path):
    data = squares_dataset(tmp_path / "sq")
    result = CliRunner().invoke(cli, ["plan", str(data), "--device", "cpu", "--time", "1s", "-o",
                                      str(tmp_path / "x.yml")])
    assert result.exit_code == 1 and "too short" in result.output
    assert not (tmp_path / "x.yml").exists()


def test_batch_never_exceeds_the_training_images_of_a_fold(demo_fp):
    caps = Capabilities("cuda", bf16=True, memory=80 << 30, name="big GPU")
    plan = make_plan(demo_fp, fake_target(caps=caps, fits=lambda batch: True), 3600, "demo")
    assert plan.config["data_loader"]["args"]["batch_size"] == demo_fp.images // 2
    assert plan.config["amp"] == "bf16"
    assert "lowered to 12" in plan.reasons["data_loader.args.batch_size"]


def test_a_loader_slower_than_the_device_sets_the_planned_step(demo_fp, monkeypatch):
    """A fast GPU fed by slow loaders: the epochs are sized to the loading, and the plan says so."""
    monkeypatch.setattr(sizing_module.os, "cpu_count", lambda: 6)  # 4 loader processes on CUDA
    caps = Capabilities("cuda", bf16=True, memory=80 << 30, name="fast GPU")
    fast = make_plan(demo_fp, fake_target(step=0.01, caps=caps, fits=lambda batch: batch <= 8), 3600, "demo")
    fed = make_plan(demo_fp, fake_target(step=0.01, caps=caps, fits=lambda batch: batch <= 8, image_seconds=0.05),
                    3600, "demo")
    assert fed.config["data_loader"]["args"]["num_workers"] == 4
    assert any("loading sets the pace: 4 loader process(es) need 0.10 s per batch of 8" in note for note in fed.notes)
    assert "(0.10 s per measured step of 8)" in fed.reasons["trainer.time_budget"]
    assert fed.config["trainer"]["epochs"] < fast.config["trainer"]["epochs"]
    quick_loader = make_plan(demo_fp, fake_target(step=0.01, caps=caps, fits=lambda batch: batch <= 8,
                                                  image_seconds=0.001), 3600, "demo")
    assert quick_loader.config["trainer"]["epochs"] == fast.config["trainer"]["epochs"] and not any(
        "loading" in note for note in quick_loader.notes)


def test_loading_is_timed_on_the_datasets_own_images_with_the_planned_augmentation(tmp_path):
    fp = fingerprint(squares_dataset(tmp_path / "squares", images=16, size=(48, 80)), Layout("mask_folder"))
    seconds = loading_seconds(fp)
    first = seconds((32, 64))
    assert 0 < first < 1.0 and seconds((32, 64)) == first  # measured once per crop
    shutil.rmtree(tmp_path / "squares" / "train_images")
    with pytest.raises(DataError, match="train_images"):
        loading_seconds(fp)


def test_larger_model_on_cuda_only_when_its_measured_steps_fit_the_budget(demo_fp):
    many = type(demo_fp)(**{**demo_fp.__dict__, "images": 3000})
    caps = Capabilities("cuda", bf16=True, memory=80 << 30, name="fake GPU")
    quick = make_plan(many, fake_target(step=0.01, caps=caps, fits=lambda batch: batch <= 32), 4 * 3600, "many")
    assert quick.config["arch"]["type"] == "Unet" and quick.config["arch"]["args"]["encoder_name"] == "resnet34"
    slow_unet = Target("cuda", caps, lambda arch, crop, batch: 30.0 if arch["type"] == "Unet" else 0.01,
                       lambda arch, crop, batch: batch <= 32)
    slow = make_plan(many, slow_unet, 4 * 3600, "many")
    assert slow.config["arch"]["type"] == "FPN" and "measured too slow" in slow.reasons["arch"]
    cpu = make_plan(many, fake_target(step=0.01), 4 * 3600, "many")
    assert cpu.config["arch"]["type"] == "FPN"
