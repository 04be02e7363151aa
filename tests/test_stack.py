"""The stack's own logic, without starting anything: settings precedence, the busy-port refusal, stopping process
groups, the demo's world continuation and summary."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from drn.mind import read_news
from stack import processes
from stack.demo import DemoOptions, edge_count, edge_oracle_share, edge_rate, edges_alike, status_line
from stack.settings import StackSettings
from stack.traffic import HourStats, TrafficStats, live_world
from stack.up import WorldSpec, served_version


def test_flags_win_over_environment_over_defaults(tmp_path):
    env = {"DRN_HOME": str(tmp_path / "env"), "DRN_PREFECT_PORT": "4300", "DRN_SERVE_PORT": "8100"}
    settings = StackSettings.from_env(env, prefect_port=4400)
    assert settings.home == (tmp_path / "env").resolve()
    assert (settings.prefect_port, settings.mlflow_port, settings.api_port) == (4400, 5000, 8100)
    assert settings.prefect_api == "http://127.0.0.1:4400/api"
    assert StackSettings.from_env({}, home=str(tmp_path / "flag")).home == (tmp_path / "flag").resolve()


def test_a_busy_port_is_refused_in_one_line_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(processes.StackError, match=f"MLflow port {port}"):
            processes.check_ports_free({"MLflow": port})


def test_a_listener_is_told_apart_from_another_groups():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert processes.listens_in_group(port, os.getpgrp())
        assert not processes.listens_in_group(port, os.getpgrp() + 1)


def test_stop_groups_ends_a_part_and_its_children(tmp_path):
    part = processes.Part("sleeper", [sys.executable, "-c",
                                      "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"], {})
    process = processes.start(part, tmp_path)
    processes.write_pids(tmp_path / "pids.json", {"sleeper": process.pid})
    processes.stop_groups(processes.read_pids(tmp_path / "pids.json"), grace_s=5)
    assert process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)


def test_served_version_reads_drn_models_output():
    rows = [{"version": "1", "stage": "Archived"}, {"version": "2", "stage": "Production"}]
    assert served_version(json.dumps(rows)) == "2"
    assert served_version("[]") is None


def test_the_live_world_continues_where_generated_logs_end(tmp_path):
    spec = WorldSpec(users=20, log_days=2, seed=4)
    subprocess.run([sys.executable, "-m", "drn_cli.main", "world", "generate", "--out", str(tmp_path), "--users",
                    "20", "--days", "2", "--seed", "4"], check=True, capture_output=True)
    world = live_world(spec)
    end = world.config.start + 2 * 86400
    request = world.next_request()
    assert world.now >= end and request.time >= end
    logged = read_news(tmp_path / "news.tsv")
    assert len(logged) > 100
    assert all(world.item(n).category == item.category and world.item(n).entities == item.entities
               for n, item in logged.items())  # the same world: the logs' items, as the live world knows them


def test_edge_rates_and_status_line():
    rows = [{"hour": h, "shown": 100, "clicks": c, "expected_clicks": e, "oracle_expected_clicks": 10.0}
            for h, (c, e) in enumerate([(2, 3.0), (4, 1.0), (6, 5.0), (8, 6.0)])]
    assert edge_rate(rows, first=True) == 0.03 and edge_rate(rows, first=False) == 0.07  # a short span: its halves
    assert edge_oracle_share(rows, first=True) == 0.2 and edge_oracle_share(rows, first=False) == 0.55
    day_and_edge = [{"hour": h, "shown": 100, "clicks": 1 if h < 6 else 5 if h >= 24 else 9} for h in range(30)]
    assert edge_count(len(day_and_edge)) == 6
    assert edge_rate(day_and_edge, first=True) == 0.01 and edge_rate(day_and_edge, first=False) == 0.05
    # the default span puts the last hours on the first ones' hours of the day, a day later
    assert edges_alike(DemoOptions().hours) and not edges_alike(24.0) and edges_alike(54.0)
    stats = TrafficStats(start=0.0, wall_start=0.0, speed=100.0, now=2 * 3600.0 + 60, requests=7,
                         served_version="3")
    stats.hours[1] = HourStats(impressions=7, shown=70, clicks=7)
    line = status_line(stats, "minor-update: promoted")
    assert "requests 7" in line and "CTR(last hour) 0.1000" in line and "served v3" in line
    assert "minor-update: promoted" in line


def test_prefect_calls_are_retried_while_its_database_is_locked(monkeypatch):
    import httpx

    from stack import observe
    monkeypatch.setattr(observe, "RETRY_DELAY_S", 0.0)
    answers = iter([httpx.Response(503), httpx.Response(503), httpx.Response(200, json={"id": "d1"})])
    client = httpx.Client(base_url="http://prefect/api", transport=httpx.MockTransport(lambda request: next(answers)))
    assert observe.prefect_call(client, "GET", "/deployments/name/minor-update/drn") == {"id": "d1"}
    failing = httpx.Client(base_url="http://prefect/api", transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    with pytest.raises(httpx.HTTPStatusError):
        observe.prefect_call(failing, "PATCH", "/deployments/d1", {"parameters": {}})


PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


def test_store_urls_from_flags_and_environment_reach_every_part(tmp_path, monkeypatch):
    from drn.config import Settings
    from drn_cli.main import parser
    from drn_cli import stack_commands
    from stack import up
    monkeypatch.setenv("DRN_MLFLOW_URI", f"{PG}/mlflow")
    monkeypatch.delenv("DRN_LOGSTORE_URL", raising=False)
    monkeypatch.delenv("DRN_PREFECT_DATABASE_URL", raising=False)
    args = parser().parse_args(["up", "--home", str(tmp_path), "--logstore-url", f"{PG}/logs",
                                "--prefect-database-url", "postgresql://postgres@127.0.0.1:5432/prefect"])
    settings = stack_commands._settings(args)
    assert settings.prefect_database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect"
    stores = Settings.from_env({**os.environ, **settings.store_environment()})
    assert (stores.mlflow_uri, stores.logstore_url) == (f"{PG}/mlflow", f"{PG}/logs")
    parts = [up.prefect_server(settings), up.mlflow_server(settings, stores), up.flow_server(settings, up.UpOptions()),
             up.serving(settings, up.UpOptions())]
    for part in parts:
        assert {k: part.env[k] for k in ("DRN_MLFLOW_URI", "DRN_LOGSTORE_URL", "DRN_PREFECT_DATABASE_URL")} == {
            "DRN_MLFLOW_URI": f"{PG}/mlflow", "DRN_LOGSTORE_URL": f"{PG}/logs",
            "DRN_PREFECT_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect"}, part.name
    mlflow_argv = parts[1].argv
    assert mlflow_argv[mlflow_argv.index("--backend-store-uri") + 1] == f"{PG}/mlflow"
    # without any: SQLite under the data directory, and no store variable handed to the parts
    plain = StackSettings.from_env({}, home=str(tmp_path))
    assert plain.store_environment() == {"DRN_HOME": str(tmp_path.resolve())}
    assert up.mlflow_server(plain, Settings.from_env(plain.store_environment())).argv[
        mlflow_argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_prefect_needs_the_async_driver_in_its_database_url():
    from stack.settings import prefect_async_url
    assert prefect_async_url("postgresql://u@db:5432/p") == "postgresql+asyncpg://u@db:5432/p"
    assert prefect_async_url("postgresql+psycopg://u:pw@db/p") == "postgresql+asyncpg://u:pw@db/p"
    assert prefect_async_url("postgresql+asyncpg://u@db/p") == "postgresql+asyncpg://u@db/p"
    assert prefect_async_url("sqlite:////abs/prefect.db") == "sqlite+aiosqlite:////abs/prefect.db"
    assert prefect_async_url("mysql://db/p") == "mysql://db/p"  # not ours to fix: Prefect refuses it itself


@pytest.mark.parametrize("script, tool", [("start-prefect-server.sh", "prefect"), ("start-mlflow-server.sh", "mlflow")])
def test_the_start_scripts_use_a_store_url_when_given(tmp_path, script, tool):
    """The infra scripts by hand: the store URL when one is set, else SQLite under DRN_HOME (the tool itself
    replaced by one that prints what it was given)."""
    from stack.up import INFRA
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / tool).write_text('#!/bin/sh\necho "db=$PREFECT_API_DATABASE_CONNECTION_URL args=$*"\n')
    (bin_dir / tool).chmod(0o755)
    home = tmp_path / "home"
    variable = "DRN_PREFECT_DATABASE_URL" if tool == "prefect" else "DRN_MLFLOW_URI"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{tool}"

    def run(extra):
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DRN_HOME": str(home), **extra}
        return subprocess.run(["bash", str(INFRA / script)], env=env, capture_output=True, text=True,
                              check=True).stdout
    given, default = run({variable: url}), run({})
    if tool == "prefect":
        assert f"db={url} " in given and f"db=sqlite+aiosqlite:///{home}/prefect/prefect.db " in default
    else:
        assert f"--backend-store-uri {url} " in given
        assert f"--backend-store-uri sqlite:///{home}/mlflow.db " in default
        assert f"--backend-store-uri sqlite:///{home}/mlflow.db " in run({variable: "http://127.0.0.1:5000"})
