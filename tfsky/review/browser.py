"""Headless Debian Chromium driven by Selenium, for the review page's browser test and its benchmark.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium``
package (the ``dev`` extra). The flags keep Chromium off the network (the
machines have no internet) and the profile is a fresh folder each time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def missing_browser() -> str:
    """Why a headless browser cannot start here, or ``""`` when ``chromium`` and ``chromedriver`` are on PATH."""
    absent = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if not absent:
        return ""
    return f"{' and '.join(absent)} not found on PATH (apt-get install chromium chromium-driver)"


def headless_chromium(profile: Path):
    """A Selenium Chrome driver on the system Chromium with a fresh ``profile`` folder; call ``quit()`` after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium")
    if binary is None:  # (selenium's binary_location refuses None with a bare TypeError)
        raise FileNotFoundError("chromium is not on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
