"""A real headless browser for tests: Debian's Chromium driven by Selenium through Debian's
chromedriver (a matching pair from the same package source; nothing is downloaded).

``scripts/install-browser.sh`` installs the packages when missing and prints their paths; it
is called lazily here, so any test run that needs a browser (``make test``, or pytest alone on
a fresh machine) gets one, and runs that need none pay nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-browser.sh"


class BrowserUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class BrowserPaths:
    chromium: str
    chromedriver: str


def browser_paths() -> BrowserPaths:
    out = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if out.returncode != 0:
        raise BrowserUnavailable(out.stderr.strip() or f"{INSTALL_SCRIPT} failed")
    found = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    try:
        return BrowserPaths(found["chromium"], found["chromedriver"])
    except KeyError as exc:
        raise BrowserUnavailable(f"{INSTALL_SCRIPT} printed no {exc}") from exc


@contextlib.contextmanager
def headless_chromium(paths: BrowserPaths, width: int = 1280, height: int = 900) -> Iterator:
    """A Selenium WebDriver for a fresh headless Chromium profile, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager would look for (and may download) a driver: the paths are given instead.
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = paths.chromium
    with tempfile.TemporaryDirectory(prefix="kubetune-chromium-") as profile:
        for argument in (
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(
            service=Service(executable_path=paths.chromedriver), options=options
        )
        try:
            yield driver
        finally:
            driver.quit()
