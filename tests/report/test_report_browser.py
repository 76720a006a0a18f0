"""The report page in a real headless Chromium: every image loads and the console stays clean.

Needs the system's ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) and selenium (the ``test`` extra); skips otherwise.
"""

import shutil

import pytest
from browser import ALL_IMAGES_LOADED, NEEDS_BROWSER, browser  # noqa: F401 (fixture)
from report_runs import trained  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, NEEDS_BROWSER]  # the report's run is trained


def test_report_page_loads_every_image_without_console_errors(trained, browser):  # noqa: F811 (fixture)
    index = trained / "report" / "index.html"
    browser.get(index.as_uri())
    assert browser.title == f"sever report: {trained.name}"
    assert browser.execute_script("return document.images.length") == 9
    assert browser.execute_script(ALL_IMAGES_LOADED) == []
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_a_missing_figure_is_caught(trained, browser, tmp_path):  # noqa: F811 (fixture)
    copy = tmp_path / "report"
    shutil.copytree(trained / "report", copy)
    (copy / "lr.png").unlink()
    browser.get((copy / "index.html").as_uri())
    assert browser.execute_script(ALL_IMAGES_LOADED) == ["lr.png"]
    assert any("lr.png" in entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE")
