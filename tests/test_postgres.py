"""The production configuration of the stores, in every run: MLflow's tracking + registry store, the log store and
the Prefect server's database all on PostgreSQL (artifacts in a local folder here, an object store in production),
driven through the same lifecycle steps and flows as on SQLite. Needs the server at DRN_TEST_PG_URL (default
127.0.0.1:5432, trust auth); skipped with the reason when it is unreachable. `pytest --stores=postgres` runs the
other integration tests on PostgreSQL too (tests/conftest.py)."""
from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

import store_backends
from drn import lifecycle
from drn.bundle import bundle_of
from drn.config import Settings
from drn.logstore import LogStore
from drn.model import build_network
from drn.registry import Registry

pytestmark = pytest.mark.integration


def _database(postgres: store_backends.Postgres, request, make) -> str:
    name = make(postgres)
    request.addfinalizer(lambda: postgres.drop(name))
    return postgres.url_of(name)


@pytest.fixture
def database(postgres, request):
    """A fresh database (MLflow migrates its own schema into it), dropped afterwards."""
    return _database(postgres, request, lambda pg: pg.create("test"))


@pytest.fixture(scope="module")
def prefect_database(request, postgres):
    """A Prefect server whose database is PostgreSQL, current for this module; that database's URL. Under
    --stores=postgres the session's server is one already; otherwise this module starts its own."""
    if request.config.getoption("--stores") == store_backends.POSTGRES:
        yield request.getfixturevalue("prefect_server")
        return
    name = postgres.create("prefect")
    request.addfinalizer(lambda: postgres.drop(name))
    database = postgres.url_of(name, driver="postgresql+asyncpg")
    with store_backends.prefect_server(database):
        yield database


def _query(async_url: str, sql: str, **params) -> list:
    """Rows read straight from a Prefect server's database (through the synchronous driver)."""
    engine = sa.create_engine(sa.make_url(async_url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def _two_promoted(registry: Registry, logs: LogStore) -> tuple[str, str]:
    first, second = (registry.register(bundle_of(build_network(seed=seed)), kind=kind, parent=parent,
                                       data_window=(0.0, 1.0), params={}, metrics={"auc": 0.5})
                     for seed, kind, parent in ((0, "offline", None), (1, "major", "1")))
    lifecycle.promote(registry, logs, first, who="test", why="first", now=time.time())
    lifecycle.promote(registry, logs, second, who="test", why="better", now=time.time())
    return first, second


def test_register_promote_and_roll_back_on_postgresql(database, tmp_path):
    registry = Registry(database, "drn", artifact_root=str(tmp_path / "artifacts"))
    with LogStore(database) as logs:
        first, second = _two_promoted(registry, logs)
        assert registry.served().version == second and logs.current_round().model_version == second
        assert lifecycle.rollback(registry, logs, None, who="test", why="worse", now=time.time()) == first
        assert registry.served().version == first and logs.current_round().model_version == first
        assert [r["action"] for r in registry.history()] == ["promote", "promote", "rollback", "hold"]


def test_a_flow_runs_with_every_store_on_postgresql(postgres, prefect_database, tmp_path, monkeypatch, request):
    """The rollback flow on a Prefect server whose database is PostgreSQL, with MLflow and the log store on
    PostgreSQL as DRN_MLFLOW_URI and DRN_LOGSTORE_URL name them; the run is recorded in the server's database."""
    from flows.rollback import rollback
    monkeypatch.setenv("DRN_HOME", str(tmp_path / "drn"))
    monkeypatch.setenv("DRN_MLFLOW_URI", _database(postgres, request, store_backends.Postgres.mlflow_database))
    monkeypatch.setenv("DRN_LOGSTORE_URL", _database(postgres, request, lambda pg: pg.create("logs")))
    monkeypatch.delenv("DRN_MODEL_NAME", raising=False)
    settings = Settings.from_env()
    registry, logs = settings.open_registry(), settings.open_log_store()
    try:
        first, _ = _two_promoted(registry, logs)
        state = rollback(reason="worse on PostgreSQL", return_state=True)
        assert state.is_completed(), state
        assert state.result()["decision"] == "rolled back" and state.result()["version"] == first
        assert registry.served().version == first and logs.current_round().model_version == first
        # a database server's artifacts stay under DRN_HOME, not in ./mlruns of the working directory
        location = registry.client.get_experiment(registry.experiment_id).artifact_location
        assert location == (tmp_path / "drn" / "mlartifacts").resolve().as_uri()
        assert registry.client.get_model_version(registry.model_name, first).source.startswith(location)
        assert registry.load(first).config == bundle_of(build_network(seed=0)).config
    finally:
        logs.close()
    run_id = state.state_details.flow_run_id
    rows = _query(prefect_database, "SELECT f.name, r.state_type::text FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                                    "WHERE r.id = :id", id=run_id)
    assert [tuple(row) for row in rows] == [("rollback", "COMPLETED")]


def test_a_paused_schedule_is_read_back_paused_from_a_postgresql_prefect_server(prefect_database):
    from prefect.client.orchestration import get_client

    from flows.deployments import DEPLOYMENT
    from test_flows import pause_and_serve_again
    name = f"minor-update/{DEPLOYMENT}"
    with get_client(sync_client=True) as client:
        applied = pause_and_serve_again(client, name)
        try:
            assert client.read_deployment_by_name(name).paused
            assert _query(prefect_database, "SELECT paused FROM deployment WHERE id = :id",
                          id=applied.id) == [(True,)]
        finally:
            client.resume_deployment(applied.id)  # the session's server is shared under --stores=postgres
    assert _query(prefect_database, "SELECT paused FROM deployment WHERE id = :id", id=applied.id) == [(False,)]


def test_an_unreachable_server_is_named_in_the_skip_reason():
    """The skip reason names the server when PostgreSQL does not answer (the path every skip above takes)."""
    with pytest.raises(store_backends.Unreachable, match="127.0.0.1:1"):
        store_backends.Postgres(f"postgresql+psycopg://postgres@127.0.0.1:1/{uuid.uuid4().hex[:8]}")


def test_a_stage_change_by_name_that_archives_the_others_works_on_postgresql(database, tmp_path):
    """What the MLflow UI sends (the version as a string, archive the others): MLflow 3.17 alone fails it on
    PostgreSQL (mlflow#24592); drn.registry installs the comparison it needs in the store's database."""
    registry = Registry(database, "drn", artifact_root=str(tmp_path / "artifacts"))
    with LogStore(database) as logs:
        first, second = _two_promoted(registry, logs)
    registry.client.transition_model_version_stage("drn", str(first), "Production", archive_existing_versions=True)
    assert {v.version: v.stage for v in registry.versions()} == {first: "Production", second: "Archived"}
