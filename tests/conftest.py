"""Shared fixtures: the MIND sample beside the repository (skipped with a reason where it is absent), the stores of
the integration tests and the Prefect server.

`pytest --stores=postgres` runs the tests that ask `store_urls` for their MLflow and log stores, and every flow on
the session's Prefect server, against fresh PostgreSQL databases (tests/store_backends.py); they skip with the reason when
no PostgreSQL answers. The default, `--stores=sqlite`, keeps SQLite files in each test's folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import store_backends as stores

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


def pytest_addoption(parser):
    parser.addoption("--stores", choices=(stores.SQLITE, stores.POSTGRES), default=stores.SQLITE,
                     help="where the integration tests keep MLflow's store, the log store and the Prefect server's "
                          "database: SQLite files (default) or fresh databases on DRN_TEST_PG_URL's PostgreSQL")


@pytest.fixture(scope="session")
def store_urls(request) -> stores.StoreUrls:
    """Where a test's MLflow and log stores live, as --stores says; what it created on PostgreSQL is dropped."""
    urls = stores.StoreUrls(request.config.getoption("--stores"))
    yield urls
    urls.close()


@pytest.fixture(scope="session")
def postgres(store_urls) -> stores.Postgres:
    """The PostgreSQL test server (tests/store_backends.py) whatever --stores says, or a skip that says why not."""
    return store_urls.postgres()


@pytest.fixture(scope="session")
def prefect_server(request):
    """One Prefect server for the whole run (it takes 20-30 s to start): Prefect's test server on a temporary
    SQLite database, or under --stores=postgres `prefect server start` on a fresh PostgreSQL database. Yields
    the server's database URL (None: the test harness's SQLite file)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if request.config.getoption("--stores") == stores.POSTGRES:
        pg = request.getfixturevalue("postgres")
        database = pg.url_of(pg.create("prefect"), driver="postgresql+asyncpg")
        with stores.prefect_server(database):
            yield database
        return
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield None


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium for the UI journeys (tests/browser.py); skipped with the reason where it cannot run."""
    from browser import chromium
    driver, why = chromium()
    if driver is None:
        pytest.skip(why)
    yield driver
    driver.quit()
