"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven with Selenium,
for tests and benchmarks of the dashboard as a browser shows it."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
T = TypeVar("T")


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Keep what the page looked like (tests/artifacts, git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    driver.save_screenshot(str(path))
    return path


def eventually(check: Callable[[], T | None], what: str, timeout: float = 120.0) -> T:
    """The first truthy result of `check`, polled; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.1)


def shown_text(driver: WebDriver, tag: str, what: str, timeout: float = 30.0) -> str:
    """The text of the first `tag` once the page (a navigation a click started) shows it."""

    def text() -> str | None:
        try:
            found = driver.find_elements(By.TAG_NAME, tag)
            return found[0].text if found and found[0].text else None
        except StaleElementReferenceException:  # the page was replaced while we read it
            return None

    return eventually(text, what, timeout)


def sign_in(driver: WebDriver, base_url: str, key: str, next_path: str = "/devboxes") -> None:
    """Through the real form, as a person does."""
    driver.get(f"{base_url}/sign-in?next={next_path}")
    driver.find_element(By.ID, "api_key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form[action='/sign-in'] button").click()
    eventually(lambda: "/sign-in" not in driver.current_url, "the page after signing in", 30)


def terminal_text(driver: WebDriver) -> str:
    """What the first terminal view shows on screen (xterm.js's rendered rows)."""
    rows = driver.find_elements(By.CSS_SELECTOR, ".terminal .xterm-rows")
    return rows[0].text if rows else ""
