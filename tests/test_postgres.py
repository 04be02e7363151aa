"""The production configuration of the stores: MLflow's tracking + registry store and the log store both on
PostgreSQL (artifacts in a local folder here, an object store in production), driven through the same lifecycle
steps the flows use. Needs the server at 127.0.0.1:5432 (trust auth, database `test`); skipped with the reason when
it is unreachable."""
from __future__ import annotations

import os
import time
import uuid

import pytest
import sqlalchemy as sa

from drn import lifecycle
from drn.logstore import LogStore
from drn.model import build_network
from drn.registry import Registry

PG_URL = os.environ.get("DRN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database():
    """A fresh database (MLflow migrates its own schema into it), dropped afterwards."""
    admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as err:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set DRN_TEST_PG_URL): "
                    f"{str(err.orig).strip().splitlines()[0]}")
    name = f"drn_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def test_register_promote_and_roll_back_on_postgresql(database, tmp_path):
    registry = Registry(database, "drn", artifact_root=str(tmp_path / "artifacts"))
    with LogStore(database) as logs:
        first, second = (registry.register(lifecycle.bundle_of(build_network(seed=seed)), kind=kind, parent=parent,
                                           data_window=(0.0, 1.0), params={}, metrics={"auc": 0.5})
                         for seed, kind, parent in ((0, "offline", None), (1, "major", "1")))
        lifecycle.promote(registry, logs, first, who="test", why="first", now=time.time())
        lifecycle.promote(registry, logs, second, who="test", why="better", now=time.time())
        assert registry.served().version == second and logs.current_round().model_version == second
        assert lifecycle.rollback(registry, logs, None, who="test", why="worse", now=time.time()) == first
        assert registry.served().version == first and logs.current_round().model_version == first
        assert [r["action"] for r in registry.history()] == ["promote", "promote", "rollback", "hold"]
