"""Headless Chromium for the explorer tests and bench: the system browser, driven by Selenium (lazily).

Debian's `chromium` + `chromium-driver` (`.ci/run` installs them). Nothing is downloaded: the driver
path is given, so Selenium Manager never looks for one online.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
# Root in a container needs --no-sandbox; the rest keeps Chromium from reaching the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def find_browser() -> tuple[str | None, str | None, str]:
    """(chromium path, chromedriver path, reason when either is missing)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is not installed: pip install -e '.[dev]'"
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = next((p for p in map(shutil.which, DRIVER_NAMES) if p), None)
    if not browser or not driver:
        return browser, driver, "no chromium/chromedriver on PATH: apt-get install chromium chromium-driver"
    return browser, driver, ""


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A Selenium WebDriver on headless Chromium with a fresh profile, closed (and its profile removed) after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path, reason = find_browser()
    if reason:
        raise RuntimeError(reason)
    profile = tempfile.mkdtemp(prefix="atlas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
