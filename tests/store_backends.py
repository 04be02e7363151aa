"""Where the integration tests keep their stores: SQLite files under a test's folder (the default), or fresh
PostgreSQL databases (`pytest --stores=postgres`, and tests/test_postgres.py in every run).

The server is DRN_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test, trust auth); each store a
test asks for is a database of its own, created for it and dropped (WITH FORCE) when the asking fixture ends. MLflow's
databases are copies of one template whose schema MLflow migrated once: a migration run by several processes on one
fresh database at once breaks, and a copy skips the seconds a migration takes. The Prefect server is a real
`prefect server start` on a free loopback port with its own database.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx
import sqlalchemy as sa

from stack.processes import free_port

PG_URL = os.environ.get("DRN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PREFECT_START_TIMEOUT_S = 90.0  # `prefect server start` migrates a fresh database first; slow on busy cores
SQLITE, POSTGRES = "sqlite", "postgres"


class Unreachable(Exception):
    """No PostgreSQL answers at PG_URL; the message says why (a test skips with it)."""


class Postgres:
    """Fresh databases on the test server, each dropped by `drop` (or `close`, for what is left)."""

    def __init__(self, url: str = PG_URL):
        self.url = sa.make_url(url)
        self.admin = sa.create_engine(self.url, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT")
        try:
            with self.admin.connect():
                pass
        except sa.exc.OperationalError as err:
            self.admin.dispose()
            raise Unreachable(f"PostgreSQL not reachable at {url} (set DRN_TEST_PG_URL): "
                              f"{str(err.orig).strip().splitlines()[0]}") from err
        self.created: list[str] = []
        self._mlflow_template: str | None = None

    def url_of(self, name: str, driver: str | None = None) -> str:
        url = self.url.set(database=name)
        if driver:
            url = url.set(drivername=driver)
        return url.render_as_string(hide_password=False)

    def create(self, prefix: str, template: str | None = None) -> str:
        """A new database; its name."""
        name = f"drn_{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            if name == self._mlflow_template:
                conn.exec_driver_sql(f"ALTER DATABASE {name} WITH IS_TEMPLATE false")
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.created.remove(name)

    def mlflow_database(self) -> str:
        """A new database holding MLflow's current schema and nothing else; its name."""
        if self._mlflow_template is None:
            name = self.create("mlflow_template")
            from mlflow import MlflowClient  # the store migrates its schema on first use
            MlflowClient(tracking_uri=self.url_of(name), registry_uri=self.url_of(name)).search_experiments()
            with self.admin.connect() as conn:
                # a database is copied only while nobody is connected to it: end MLflow's pooled connections
                conn.exec_driver_sql(f"ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
                conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
            self._mlflow_template = name
        return self.create("mlflow", template=self._mlflow_template)

    def close(self) -> None:
        for name in list(reversed(self.created)):
            self.drop(name)
        self.admin.dispose()


class StoreUrls:
    """The URLs a test's stores live at: SQLite files under `folder`, or (kind POSTGRES) fresh databases that are
    dropped when the pytest `request` (the asking fixture's or test's) finishes."""

    def __init__(self, kind: str):
        self.kind = kind
        self._pg: Postgres | None = None

    def postgres(self) -> Postgres:
        """The test server, connected on first use; a pytest skip with the reason when it does not answer."""
        if self._pg is None:
            import pytest
            try:
                self._pg = Postgres()
            except Unreachable as why:
                pytest.skip(str(why))
        return self._pg

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()

    def _database(self, request, make: Callable[[Postgres], str]) -> str:
        pg = self.postgres()
        name = make(pg)
        request.addfinalizer(lambda: pg.drop(name))
        return pg.url_of(name)

    def mlflow(self, request, folder: Path) -> str:
        if self.kind == SQLITE:
            return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"
        return self._database(request, Postgres.mlflow_database)

    def logstore(self, request, folder: Path) -> str:
        if self.kind == SQLITE:
            return f"sqlite:///{Path(folder).resolve() / 'logs.db'}"
        return self._database(request, lambda pg: pg.create("logs"))

    def environment(self, request, folder: Path) -> dict[str, str]:
        """DRN_MLFLOW_URI and DRN_LOGSTORE_URL for a fresh DRN_HOME at `folder` (on SQLite: none, the defaults)."""
        if self.kind == SQLITE:
            return {}
        return {"DRN_MLFLOW_URI": self.mlflow(request, folder), "DRN_LOGSTORE_URL": self.logstore(request, folder)}

    def stack_flags(self, request) -> list[str]:
        """`drn up` / `drn demo` flags naming the three stores (on SQLite: none, the defaults under --home). The
        MLflow database is left empty: `drn up` creates its schema before its parts share it."""
        if self.kind == SQLITE:
            return []
        mlflow, logs = (self._database(request, lambda pg: pg.create(prefix)) for prefix in ("mlflow", "logs"))
        prefect = self._database(request, lambda pg: pg.create("prefect"))
        return ["--mlflow-uri", mlflow, "--logstore-url", logs, "--prefect-database-url", prefect]


@contextlib.contextmanager
def prefect_server(database_url: str, timeout_s: float = PREFECT_START_TIMEOUT_S) -> Iterator[str]:
    """`prefect server start` on a free loopback port with its database at `database_url` (an async SQLAlchemy URL,
    e.g. postgresql+asyncpg://...); this process's Prefect settings point at it while the block runs. Its API URL."""
    import prefect.settings
    from prefect.context import _temporary_global_settings_context, get_settings_context
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home, \
            open(Path(home) / "server.log", "wb") as log:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=home, PREFECT_API_DATABASE_CONNECTION_URL=database_url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_healthy(api, server, timeout_s, Path(home) / "server.log")
            with contextlib.ExitStack() as stack:
                stack.enter_context(prefect.settings.temporary_settings(
                    updates={prefect.settings.PREFECT_API_URL: api}))
                # code in a context copied before this block (as prefect_test_harness does) sees the server too
                stack.enter_context(_temporary_global_settings_context(get_settings_context()))
                saved = os.environ.get("PREFECT_API_URL")
                os.environ["PREFECT_API_URL"] = api  # processes this one starts (Dask workers) use it too
                try:
                    yield api
                finally:
                    _drain_prefect_workers()
                    if saved is None:
                        os.environ.pop("PREFECT_API_URL", None)
                    else:
                        os.environ["PREFECT_API_URL"] = saved
        finally:
            _stop_group(server)


def _stop_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the server's own process group (it may start children), SIGKILL after `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_healthy(api: str, server: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"prefect server not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _drain_prefect_workers() -> None:
    """Send the logs and events still buffered before the server goes (as prefect_test_harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result
    run_coro_as_sync(drain())
