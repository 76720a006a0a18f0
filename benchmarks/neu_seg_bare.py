"""The bare smp + torch baseline for NEU-Seg, to compare with sever's recipe.

Trains the same network as ``experiments/neu-seg.yml`` (FPN over resnet18,
1 grey input channel, 3 classes) the way a quick script would: random crops
of the same size, Adam at 1e-3, plain BCE, no other augmentation, no schedule,
for a fixed wall-clock budget. It is scored on the same validation images
(sever's stratified split with the experiment's seed and fraction) with the
same metric (sever's ``Dice``), so the two are comparable figure for figure.

    python benchmarks/neu_seg_bare.py --data ../shared/data/neu-seg --seconds 1800
    sever train -c experiments/neu-seg.yml --set data_loader.args.data_dir=../shared/data/neu-seg
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sever.data_loader.data_loaders import stratified_split
from sever.data_loader.sources import read_csv_folder
from sever.data_loader.datasets import read_grey
from sever.model.metric import Dice
from sever.utils.config import load_config

REPO = Path(__file__).resolve().parents[1]


class CropDataset(Dataset):
    """Grey image and its masks, a random ``crop`` x ``crop`` window of each (None: whole image)."""

    def __init__(self, paths, annotations, indices, mean, std, crop=None, seed=0):
        self.paths, self.annotations, self.indices = paths, annotations, indices
        self.mean, self.std, self.crop = mean, std, crop
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        image = read_grey(self.paths[index])
        mask = self.annotations.decode(index, image.shape)
        if self.crop:
            top = self.rng.integers(0, image.shape[0] - self.crop + 1)
            left = self.rng.integers(0, image.shape[1] - self.crop + 1)
            image = image[top:top + self.crop, left:left + self.crop]
            mask = mask[top:top + self.crop, left:left + self.crop]
        image = (image.astype(np.float32) / 255 - self.mean) / self.std
        return torch.from_numpy(image)[None], torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1)))


def padded_forward(model, images):
    """Pad H, W up to a multiple of 32 for smp, crop the logits back."""
    height, width = images.shape[-2:]
    images = F.pad(images, (0, -width % 32, 0, -height % 32))
    return model(images)[..., :height, :width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "neu-seg"))
    parser.add_argument("--config", default=str(REPO / "experiments" / "neu-seg.yml"))
    parser.add_argument("--seconds", type=float, default=1800, help="wall-clock training budget")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(args.config)
    loader_args = config["data_loader"]["args"]
    crop = config["augmentation"]["args"]["height"]
    mean, std = config["augmentation"]["args"]["mean"], config["augmentation"]["args"]["std"]
    annotations, paths = read_csv_folder(Path(args.data) / "train_images", Path(args.data) / "train.csv", config["classes"])
    train_idx, valid_idx = stratified_split(annotations.n_defects(), loader_args["validation_split"], config["seed"])

    torch.manual_seed(config["seed"])
    decoder = config["arch"]["args"]["decoder_args"]
    model = smp.FPN(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=config["classes"], **decoder)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = DataLoader(CropDataset(paths, annotations, train_idx, mean, std, crop, config["seed"]),
                       batch_size=loader_args["batch_size"], shuffle=True, drop_last=True, num_workers=1)
    valid = DataLoader(CropDataset(paths, annotations, valid_idx, mean, std), batch_size=16, num_workers=1)

    start, steps, epochs = time.perf_counter(), 0, 0
    model.train()
    while time.perf_counter() - start < args.seconds:
        epochs += 1
        for images, masks in train:
            loss = F.binary_cross_entropy_with_logits(model(images), masks.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= args.seconds:
                break
    trained = time.perf_counter() - start

    dice = Dice()
    model.eval()
    with torch.inference_mode():
        for images, masks in valid:
            dice.update(padded_forward(model, images), masks)
    scores = dice.compute()
    print(f"bare smp + torch loop: {steps} steps ({epochs} epochs started) in {trained:.0f} s, "
          f"{len(valid_idx)} validation images")
    print("  ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
