"""The UI journeys of the design card, clicked in headless Chromium with selenium (Debian's chromium and
chromium-driver, installed by `chromium()` when missing): pause and resume a schedule in the Prefect UI, read a
version's page in the MLflow UI, roll back by stage there. Each journey returns what it saw; the tests assert."""
from __future__ import annotations

import shutil
import subprocess
import time

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")
PAGE_S = 30  # a page of a React / Vue app on 2 busy cores may take seconds to render
LOST_CLICK_S = 10  # a toggle click that changed nothing in this long was lost (clicked while the page was loading)


def chromium():
    """A headless Chromium driver; installs the Debian packages first when they are missing. None (with the reason)
    when it cannot: the caller skips."""
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        if not shutil.which("apt-get"):
            return None, "no chromium and no apt-get to install it"
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env)
        if install.returncode != 0:  # a fresh machine's package lists may be missing or stale
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            install = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True,
                                     env=env)
        if install.returncode != 0:
            return None, f"apt-get install {' '.join(PACKAGES)} failed: {install.stderr.strip()[-300:]}"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options), None


def _wait(driver, find, what: str, within_s: float = PAGE_S):
    """What `find(driver)` returns once truthy (elements render asynchronously)."""
    from selenium.common.exceptions import WebDriverException
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            found = find(driver)
            if found:
                return found
        except WebDriverException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} not found on {driver.current_url}")


def _css(selector: str, text: str | None = None):
    """A finder: the first displayed element matching `selector` (and containing `text`)."""
    from selenium.webdriver.common.by import By

    def find(driver):
        return next((e for e in driver.find_elements(By.CSS_SELECTOR, selector)
                     if e.is_displayed() and (text is None or text in e.text)), None)
    return find


def prefect_pause_and_resume(driver, prefect: str, deployment: str) -> tuple[bool, bool]:
    """On the deployment's page, flip its schedule's toggle twice; (schedule active after the first click, after the
    second), as the Prefect API reports them."""
    import httpx
    deployment_id = httpx.get(f"{prefect}/api/deployments/name/{deployment}", timeout=10).json()["id"]

    def active() -> bool:
        return httpx.get(f"{prefect}/api/deployments/{deployment_id}", timeout=10).json()["schedules"][0]["active"]
    driver.get(f"{prefect}/deployments/deployment/{deployment_id}")
    seen = []
    for _ in range(2):
        before = active()
        _flip(driver, lambda: active() != before)
        seen.append(active())
    return seen[0], seen[1]


def _flip(driver, flipped) -> None:
    """Click the schedule's toggle until `flipped()`. The toggle renders before the page has loaded what it needs
    and is disabled meanwhile; a click that neither changed the toggle nor reached the API was lost, and is
    repeated (once the toggle shows the new state, the click is never repeated)."""
    toggle = ".deployment-schedule-fieldset fieldset.p-toggle:not([disabled]) label.p-toggle__control"
    deadline = time.monotonic() + PAGE_S
    while time.monotonic() < deadline:
        control = _wait(driver, _css(toggle), "the schedule toggle")
        was_checked = "p-toggle__control--checked" in control.get_attribute("class")
        control.click()
        try:
            _wait(driver, lambda d: flipped() or ("p-toggle__control--checked" in
                                                  control.get_attribute("class")) != was_checked,
                  "the toggle's effect", within_s=LOST_CLICK_S)
        except AssertionError:
            continue  # lost
        _wait(driver, lambda d: flipped(), "the toggle's effect in the API")
        return
    raise AssertionError(f"the schedule toggle had no effect on {driver.current_url}")


def read_version_page(driver, mlflow: str, version: str) -> str:
    """The text of version `version`'s page once its tags and its schema have rendered."""
    from selenium.webdriver.common.by import By
    driver.get(f"{mlflow}/#/models/drn/versions/{version}")
    _wait(driver, lambda d: "Inputs (1)" in d.find_element(By.TAG_NAME, "body").text, "the version's schema")
    return driver.find_element(By.TAG_NAME, "body").text


def mlflow_rollback_by_stage(driver, mlflow: str, version: str) -> tuple[int, float]:
    """Serve `version` the way an engineer does: its page, the new registry UI off (it hides stages), Stage ->
    Transition to Production, archive the existing one, OK. (clicks, time.monotonic() of the OK click)."""
    from selenium.webdriver.common.by import By
    driver.get(f"{mlflow}/#/models/drn/versions/{version}")
    clicks = 0
    switch = _wait(driver, _css("[aria-label='New model registry UI']"), "the new registry UI switch")
    if switch.get_attribute("aria-checked") == "true":
        switch.click()
        _wait(driver, _css("[role=dialog] button", "Disable"), "the confirmation").click()
        clicks += 2
    _wait(driver, lambda d: d.find_element(By.XPATH, "//*[text()='Stage:' or text()='Stage']"
                                                     "/following::*[text()='None' or text()='Archived'][1]"),
          "the stage menu").click()
    _wait(driver, _css("[role=menuitem]", "Production"), "Transition to Production").click()
    archive = _wait(driver, lambda d: next((box for dialog in d.find_elements(By.CSS_SELECTOR, "[role=dialog]")
                                            if dialog.is_displayed()
                                            for box in dialog.find_elements(By.CSS_SELECTOR, "input[type=checkbox]")),
                                           None), "archive existing versions")
    driver.execute_script("arguments[0].click()", archive)  # the styled checkbox hides its input
    assert archive.is_selected(), "archive existing versions did not tick"
    ok = _wait(driver, _css("[role=dialog] button", "OK"), "OK")
    ok.click()
    return clicks + 4, time.monotonic()
