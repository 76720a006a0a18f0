"""The gallery page: error kinds by hand, then filters, sorting and paging in a real headless Chromium.

The browser part needs the system's ``chromium`` and ``chromedriver`` and selenium, as
tests/test_report_browser.py (its ``browser`` fixture is reused); it skips otherwise.
"""

import numpy as np
import pytest
from report_runs import trained  # noqa: F401 (fixture)
from browser import ALL_IMAGES_LOADED, NEEDS_BROWSER, browser  # noqa: F401 (fixture)

from sever.report.gallery import PAGE_SIZE, GalleryImage, error_kinds, gallery_image, present_dice, thumbnail, write_gallery



def masks(*boxes, classes=3, size=8) -> np.ndarray:
    """``(classes, size, size)`` uint8 with a filled box ``(class, row0, row1, col0, col1)`` each."""
    out = np.zeros((classes, size, size), np.uint8)
    for c, r0, r1, c0, c1 in boxes:
        out[c, r0:r1, c0:c1] = 1
    return out


def test_error_kinds():
    truth = masks((0, 0, 4, 0, 4), (1, 5, 8, 5, 8))
    # class 0's defect predicted as class 2 (wrong class), class 1 missed elsewhere, nothing else
    assert error_kinds(masks((2, 0, 4, 0, 4)), truth) == [["wrong class", 0], ["missed", 1]]
    # a class-2 blob away from every defect is a false alarm, and class 0 is then simply missed
    assert error_kinds(masks((1, 5, 8, 5, 8), (2, 5, 6, 0, 1)), truth) == [["missed", 0], ["false alarm", 2]]
    assert error_kinds(truth, truth) == []


def test_present_dice_leaves_out_classes_absent_from_both():
    dice = np.array([[1.0, 0.4, 1.0]])
    score = present_dice(dice, np.array([[False, True, False]]), np.array([[False, True, True]]))
    assert score == pytest.approx([0.7])  # classes 1 and 2; class 0 (empty, predicted empty) left out
    assert np.isnan(present_dice(dice, np.zeros((1, 3), bool), np.zeros((1, 3), bool)))[0]


def test_gallery_image_record():
    truth, pred = masks((0, 0, 4, 0, 4)), masks((0, 0, 4, 0, 2), (2, 6, 8, 6, 8))
    record = gallery_image("x.jpg", np.array([2 / 3, 1.0, 0.0]), pred, truth, "gallery/0.jpg")
    assert record.truth == [0] and record.predicted == [0, 2]
    assert record.errors == [["false alarm", 2]] and record.score == pytest.approx(1 / 3, abs=1e-4)


CLASSES = ["1 a", "2 b", "3 c"]


@pytest.fixture
def gallery(tmp_path):
    """130 records (three pages) with known classes, errors and Dice, and their thumbnails."""
    rng = np.random.default_rng(0)
    (tmp_path / "gallery").mkdir()
    records = []
    for i in range(130):
        truth = masks((i % 3, 0, 4, 0, 4)) if i % 5 else masks()
        pred = masks(((i + (i % 7 == 0)) % 3, 0, 4, 0, 3)) if i % 4 else masks()
        image = rng.integers(0, 255, (8, 8), dtype=np.uint8)
        thumb = f"gallery/{i:06d}.jpg"
        thumbnail(np.repeat(image[..., None], 3, 2), np.repeat(image[..., None], 3, 2), tmp_path / thumb)
        dice = np.array([rng.uniform() if c in (i % 3,) else 1.0 for c in range(3)])
        records.append(gallery_image(f"img{i:03d}.jpg", dice, pred, truth, thumb))
    return write_gallery(records, CLASSES, tmp_path, "Test gallery."), records


def shown(browser) -> list[str]:  # noqa: F811 (fixture)
    return browser.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.name)")


def choose(browser, select, value):  # noqa: F811 (fixture)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", select)).select_by_value(value)


def dice_of(record: GalleryImage) -> float:
    return 2 if record.score is None else record.score  # as the page: nothing true or predicted sorts last


def page(records, keep=lambda r: True, best_first=False, number=0) -> list[str]:
    """The names the page should show: the kept records sorted by Dice (ties by name), one page."""
    kept = [r for r in records if keep(r)]
    kept.sort(key=lambda r: r.name)
    kept.sort(key=dice_of, reverse=best_first)  # stable: ties stay in name order
    return [r.name for r in kept][number * PAGE_SIZE:(number + 1) * PAGE_SIZE]


@NEEDS_BROWSER
def test_filters_sort_and_pages_change_what_is_shown(gallery, browser):  # noqa: F811 (fixture)
    index, records = gallery
    browser.get(index.as_uri())
    assert shown(browser) == page(records)  # worst Dice first
    assert browser.execute_script(ALL_IMAGES_LOADED) == []
    browser.find_element("id", "next").click()
    assert shown(browser) == page(records, number=1) != page(records)
    assert "page 2 of 3" in browser.find_element("id", "status").text
    choose(browser, "sort", "dice-")  # a new order starts again at page 1
    assert shown(browser) == page(records, best_first=True) != page(records)
    choose(browser, "class", "1")
    has_b = lambda r: 1 in r.truth or 1 in r.predicted  # noqa: E731
    assert shown(browser) == page(records, has_b, best_first=True) != page(records, best_first=True)
    assert f"{sum(map(has_b, records))} of 130 images" in browser.find_element("id", "status").text
    choose(browser, "class", "all")
    for kind in ("missed", "false alarm", "wrong class", "correct"):
        choose(browser, "kind", kind)
        keep = (lambda r: not r.errors) if kind == "correct" else (lambda r, k=kind: any(e[0] == k for e in r.errors))
        expected = page(records, keep, best_first=True)
        assert expected and shown(browser) == expected, kind
        assert f"{sum(map(keep, records))} of 130 images" in browser.find_element("id", "status").text
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


@pytest.mark.slow
@NEEDS_BROWSER
def test_the_trained_runs_gallery_loads(trained, browser):  # noqa: F811 (fixture)
    index = trained / "report" / "gallery.html"
    browser.get(index.as_uri())
    assert len(shown(browser)) == 6 and browser.execute_script(ALL_IMAGES_LOADED) == []
    assert "6 of 6 images, page 1 of 1" in browser.find_element("id", "status").text
    assert "gallery.html" in (trained / "report" / "index.html").read_text(encoding="utf-8")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
