"""Shared fixtures: the MIND sample beside the repository (skipped with a reason where it is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIND_SAMPLE = Path(os.environ.get("DRN_MIND_SAMPLE", REPO.parent / "shared" / "data" / "mind-sample"))


@pytest.fixture(scope="session")
def mind_dir() -> Path:
    if not (MIND_SAMPLE / "behaviors.tsv").is_file():
        pytest.skip(f"MIND sample not found at {MIND_SAMPLE} (set DRN_MIND_SAMPLE to its folder)")
    return MIND_SAMPLE


@pytest.fixture(scope="session")
def mind(mind_dir):
    from drn.mind import load_dataset
    return load_dataset(mind_dir)


@pytest.fixture(scope="session")
def mind_split(mind):
    from drn.evaluate import time_split
    return time_split(mind, test_days=1)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (a temporary SQLite database) for the whole run: it takes 20-30 s to start here."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the UI journeys (tests/browser.py); skipped with the reason where it cannot run."""
    from browser import chromium
    driver, why = chromium()
    if driver is None:
        pytest.skip(why)
    yield driver
    driver.quit()
