"""Fake fingerprints for the learning rule's tests: the reference (the demo data) and issue 27's hard dataset."""

from plan_datasets import fake_fp

from sever.planning.fingerprint import ClassStats


def stats(name, images, total, area, extent=(30, 30)):
    return ClassStats(name, images, images / total, [area / 2, area, area * 3], [area / 3, area / 2, area],
                      list(extent))


def rare_small(tmp_path, images=1000, share=0.08, area=300.0, classes=5):
    """Like issue 27's dataset: images of 300x300, ``classes`` classes each in ``share`` of them, defects of
    ``area`` pixels per image."""
    count = round(share * images)
    return fake_fp(tmp_path, images=images, side=(300, 300), empty=0.6,
                   classes=[stats(f"class{k + 1}", count, images, area) for k in range(classes)])


def demo_like(tmp_path):
    """The reference: the demo data's rarest class (24 of 256 images of 256x1600, 1,960 pixels each)."""
    return fake_fp(tmp_path, images=256, side=(256, 1600), empty=0.34,
                   classes=[stats("class2", 24, 256, 1960.0), stats("class3", 98, 256, 3818.0)])
