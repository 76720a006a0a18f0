"""Class colours, display stretching, mask overlays, outlines and boxes, checked pixel by pixel."""

import numpy as np
import pytest

from sever.utils.visualization import (
    CLASS_COLOURS,
    class_colour,
    draw_boxes,
    outline_masks,
    overlay_masks,
    to_uint8_image,
)


def test_class_colours_cycle_through_the_table():
    count = len(CLASS_COLOURS)
    assert class_colour(0) == (230, 25, 75) and class_colour(count) == class_colour(0)
    assert len({class_colour(k) for k in range(count)}) == count


def test_display_stretch_maps_the_range_to_0_255_and_a_flat_image_to_black():
    image = np.array([[-1.0, 0.0], [1.0, 3.0]])
    assert to_uint8_image(image).tolist() == [[0, 63], [127, 255]]
    assert not to_uint8_image(np.full((2, 3), 7.0)).any()


def test_overlay_blends_each_class_colour_and_the_mean_where_classes_overlap():
    image = np.full((2, 3), 100, np.uint8)
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, 0] = masks[1, 0, 1] = True
    masks[0, 1, 2] = masks[1, 1, 2] = True  # both classes
    alpha = 0.5
    out = overlay_masks(image, masks, alpha)
    grey = np.full(3, 100.0)
    expected = {(0, 0): 0.5 * grey + alpha * CLASS_COLOURS[0], (0, 1): 0.5 * grey + alpha * CLASS_COLOURS[1],
                (1, 2): 0.5 * grey + alpha * (CLASS_COLOURS[0] + CLASS_COLOURS[1]) / 2}
    for (y, x), colour in expected.items():
        assert out[y, x].tolist() == colour.astype(np.uint8).tolist()
    assert out[0, 2].tolist() == [100, 100, 100] and out[1, 0].tolist() == [100, 100, 100]
    assert overlay_masks(image, np.zeros((2, 2, 3))).tolist() == np.repeat(image[..., None], 3, 2).tolist()


def test_outlines_follow_each_mask_edge_in_its_colour_and_leave_the_inside_and_the_image_alone():
    image = np.full((40, 40), 50, np.uint8)
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[1, 10:30, 10:30] = 1
    out = outline_masks(image, masks, thickness=2)
    assert out.shape == (40, 40, 3) and (image == 50).all()
    ys, xs = np.nonzero((out == class_colour(1)).all(axis=2))
    assert len(ys) >= 60, "most of the 80-pixel edge is drawn in the class colour"
    edge_distance = np.minimum(np.minimum(abs(ys - 10), abs(ys - 29)), np.minimum(abs(xs - 10), abs(xs - 29)))
    assert edge_distance.max() <= 1
    assert out[20, 20].tolist() == [50, 50, 50] and out[2, 2].tolist() == [50, 50, 50]  # inside, far outside
    assert not any(tuple(pixel) == class_colour(0) for pixel in out.reshape(-1, 3))  # class 0 is empty


@pytest.mark.parametrize("grey", [True, False])
def test_draw_boxes_colours_the_outline(grey):
    image = np.zeros((50, 80), np.uint8) if grey else np.zeros((50, 80, 3), np.uint8)
    drawn = draw_boxes(image, np.array([[10, 10, 40, 30]]), np.array([1]), np.array([0.87]), ["a", "b"])
    assert drawn.shape == (50, 80, 3) and drawn.dtype == np.uint8
    assert tuple(drawn[20, 10]) == class_colour(1) and tuple(drawn[29, 25]) == class_colour(1)
    assert not drawn[20, 25].any() and not image.any()
