"""Pascal VOC datasets drawn for the tests (tests/data_loader/test_voc.py, tests/detection/)."""

import cv2
import numpy as np
import pytest

CLASSES = ["crazing", "patches"]


def voc_xml(name, width, height, objects, size=True):
    """VOC XML text; ``objects`` are ``(class, xmin, ymin, xmax, ymax)`` with VOC's 1-based corners."""
    body = "".join(
        f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1 in objects
    )
    stated = f"<size><width>{width}</width><height>{height}</height><depth>1</depth></size>" if size else ""
    return f"<annotation><filename>{name}</filename>{stated}{body}</annotation>"


def make_voc(root, n=8, images="images", annotations="annotations", seed=0, sizes=((64, 80), (72, 72))):
    """A tiny VOC dataset: dark images with bright boxes of two classes; returns the per-image objects."""
    rng = np.random.default_rng(seed)
    (root / images).mkdir(parents=True)
    (root / annotations).mkdir(parents=True)
    truth = []
    for i in range(n):
        height, width = sizes[i % len(sizes)]
        image = rng.integers(20, 60, (height, width), dtype=np.uint8)
        objects = []
        for k in range(1 + i % 2):
            w, h = rng.integers(12, 28, 2)
            x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
            image[y0:y0 + h, x0:x0 + w] = 200 if k == 0 else 140
            objects.append((CLASSES[k], int(x0 + 1), int(y0 + 1), int(x0 + w), int(y0 + h)))
        cv2.imwrite(str(root / images / f"img{i}.png"), image)
        (root / annotations / f"img{i}.xml").write_text(voc_xml(f"img{i}.png", width, height, objects))
        truth.append(objects)
    return truth


@pytest.fixture(scope="module")
def voc_dir(module_tmp):
    """Six images of two sizes with boxes of both classes (import it into the test module that uses it)."""
    root = module_tmp("voc")
    make_voc(root, n=6)
    return root
