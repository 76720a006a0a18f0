"""The label-issues gallery in a real headless Chromium: suspects in rank order, filtered by issue kind.

Needs the system's ``chromium`` and ``chromedriver`` and selenium (tests/browser.py); skips otherwise.
"""

from browser import ALL_IMAGES_LOADED, NEEDS_BROWSER, browser  # noqa: F401 (fixture)
from label_studies import corrupted_study  # noqa: F401 (fixture)

from sever.inference.label_issues import image_ranking, study_label_issues
from sever.report.label_issues import write_issue_gallery



def shown(browser) -> list[str]:  # noqa: F811 (fixture)
    return browser.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.name)")


def test_gallery_records_follow_the_ranking(corrupted_study, tmp_path):  # noqa: F811 (fixture)
    paths, planted = corrupted_study
    result = study_label_issues(paths.root)
    index = write_issue_gallery(result, tmp_path / "out", max_images=2)
    assert index == tmp_path / "out" / "gallery.html"
    assert sorted(p.name for p in (tmp_path / "out" / "gallery").iterdir()) == ["000000.jpg", "000001.jpg"]
    assert "The 2 most suspect of 3 images" in index.read_text()  # the demo's clean labels raise nothing
    assert set(image_ranking(result.issues)) == {image for image, _ in planted}


@NEEDS_BROWSER
def test_rank_order_and_kind_filter_in_the_browser(corrupted_study, tmp_path, browser):  # noqa: F811 (fixture)
    from selenium.webdriver.support.ui import Select

    paths, planted = corrupted_study
    result = study_label_issues(paths.root)
    browser.get(write_issue_gallery(result, tmp_path / "out").as_uri())
    ranking = image_ranking(result.issues)
    assert shown(browser) == ranking and browser.execute_script(ALL_IMAGES_LOADED) == []
    top = result.issues[0]
    first_card = browser.find_elements("css selector", ".card")[0].text
    assert f"{top.kind}: {result.class_names[top.class_index]} {top.score:.3f}" in first_card
    Select(browser.find_element("id", "kind")).select_by_value("wrong class")
    assert shown(browser) == [image for (image, _), kind in planted.items() if kind == "wrong class"]
    Select(browser.find_element("id", "sort")).select_by_value("name")
    Select(browser.find_element("id", "kind")).select_by_value("all")
    assert shown(browser) == sorted(ranking) != ranking or sorted(ranking) == ranking
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
