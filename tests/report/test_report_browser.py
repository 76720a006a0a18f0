"""The report page in a real headless Chromium: every image loads and the console stays clean.

Needs the system's ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) and selenium (the ``test`` extra); skips otherwise.
"""

import importlib.util
import shutil

import pytest
from report_runs import trained  # noqa: F401 (fixture)

ALL_IMAGES_LOADED = """return Array.from(document.images).filter(
    img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute('src'));"""


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # the report's run is trained
    pytest.mark.skipif(BROWSER is None or DRIVER is None,
                       reason="Chromium and chromedriver not installed (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None,
                       reason="selenium not installed (pip install 'sever[test]')"),
]


@pytest.fixture
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


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
