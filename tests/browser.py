"""Headless Chromium for the report's browser tests (tests/report/): the browser fixture and its skip marks.

Needs the system's ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) and selenium (the ``test`` extra); tests skip otherwise.
"""

import importlib.util
import shutil

import pytest

ALL_IMAGES_LOADED = """return Array.from(document.images).filter(
    img => !(img.complete && img.naturalWidth > 0)).map(img => img.getAttribute('src'));"""

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NEEDS_BROWSER = pytest.mark.skipif(
    BROWSER is None or DRIVER is None or importlib.util.find_spec("selenium") is None,
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver) and selenium "
           "(pip install 'sever[test]')")


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
