"""Two ways to batch validation images of mixed sizes, measured in one run on CPU.

- (pad) batches in loader order, each padded to its largest height and width
  rounded up to a multiple of 32, padding set to 0 (the model's own padding),
  every output cropped back to its image;
- (group) batches of images that round up to the same multiple-of-32 size
  (sever's validation: ``size_grouped_batches`` + ``pad_collate``), padded the same way.

For each it prints the batches, the pixels the model computes as a multiple of
the images' own pixels, images/s of an FPN-ResNet18 forward pass (best of
``--repeat`` passes, taken in turns) and how far each image's logits move from
the image predicted alone (max |difference| over its own pixels): batched and
unbatched scores agree exactly only when that is 0. The sizes are drawn like a
patch dataset (the issue's NEU-like set: 222-403 x 103-632 pixels), scaled by
``--scale``. Run from the repository root::

    PYTHONPATH=. python benchmarks/mixed_batches.py [--images 48] [--batch 4] [--scale 0.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from sever.data_loader.data_loaders import padded_size, size_grouped_batches
from sever.model.model import build_model

MODEL = {"type": "FPN", "args": {"encoder_name": "resnet18", "encoder_weights": None}}


def pad_batches(sizes: list[tuple[int, int]], batch: int) -> list[list[int]]:
    """Batches in loader order, whatever their sizes."""
    return [list(range(start, min(start + batch, len(sizes)))) for start in range(0, len(sizes), batch)]


def run(model: torch.nn.Module, images: list[torch.Tensor], batches: list[list[int]]) -> list[torch.Tensor]:
    """Each image's logits ``(C, h, w)`` from batches padded to one multiple-of-32 size with zeros."""
    outputs: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for members in batches:
        height, width = padded_size(max(images[i].shape[-2] for i in members),
                                    max(images[i].shape[-1] for i in members))
        batch = torch.stack([F.pad(images[i], (0, width - images[i].shape[-1], 0, height - images[i].shape[-2]))
                             for i in members])
        logits = model(batch)
        for row, i in enumerate(members):
            outputs[i] = logits[row, :, : images[i].shape[-2], : images[i].shape[-1]]
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(222, 404) * options.scale), int(rng.integers(103, 633) * options.scale))
             for _ in range(options.images)]
    images = [torch.randn(1, h, w, generator=torch.Generator().manual_seed(n)) for n, (h, w) in enumerate(sizes)]
    torch.manual_seed(0)
    model = build_model(MODEL, 4).eval()
    own = sum(h * w for h, w in sizes)
    plans = {"pad": pad_batches(sizes, options.batch),
             "group": size_grouped_batches(sizes, range(len(sizes)), options.batch)}
    with torch.inference_mode():
        alone = run(model, images, [[i] for i in range(len(images))])
        best = {name: float("inf") for name in plans}
        for _ in range(options.repeat):
            for name, batches in plans.items():
                started = time.perf_counter()
                outputs = run(model, images, batches)
                best[name] = min(best[name], time.perf_counter() - started)
        for name, batches in plans.items():
            outputs = run(model, images, batches)
            moved = max(float((a - b).abs().max()) for a, b in zip(outputs, alone))
            computed = sum(len(b) * np.prod(padded_size(max(sizes[i][0] for i in b), max(sizes[i][1] for i in b)))
                           for b in batches)
            print(f"{name:<6} {len(batches):4d} batches  pixels x{computed / own:.2f} of the images' own  "
                  f"{len(images) / best[name]:6.2f} images/s  max |logit - alone| {moved:.2e}")
    print(f"group/pad images/s ratio: {best['pad'] / best['group']:.2f}")


if __name__ == "__main__":
    main()
