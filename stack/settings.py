"""Where the stack runs: one data directory, three loopback ports and three stores, from flags over environment
over defaults.

    DRN_HOME           data directory of every part (default ./.drn): SQLite files, artifacts, logs, the pid file
    DRN_PREFECT_PORT   Prefect server and UI              (default 4200)
    DRN_MLFLOW_PORT    MLflow tracking server and UI      (default 5000)
    DRN_SERVE_PORT     the recommendation API, /docs      (default 8000; the variable `drn serve` reads too)

The stores (each default is a SQLite file under DRN_HOME; any may be PostgreSQL instead):

    DRN_MLFLOW_URI            --mlflow-uri            MLflow's tracking + registry store: the MLflow server's
                                                      --backend-store-uri, and what the flows and serving open
                                                      (e.g. postgresql+psycopg://user@db:5432/mlflow)
    DRN_LOGSTORE_URL          --logstore-url          the log store (e.g. postgresql+psycopg://user@db:5432/drn)
    DRN_PREFECT_DATABASE_URL  --prefect-database-url  the Prefect server's database (e.g. postgresql://user@db:5432/
                                                      prefect; Prefect's async driver, asyncpg, is put in the URL)

Every part gets the store URLs in its environment. A PostgreSQL database must exist (empty is fine: each part
creates its schema, MLflow's before its server starts); the three stores may share one server but not one database.

Everything binds to 127.0.0.1: the stack is a workstation setup; exposing a part is a deliberate production choice
(see README, "Beyond one machine").
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_API_PORT = 8000
PID_FILE = "stack.pids.json"  # under DRN_HOME: what `drn down` stops
LOG_DIR = "stack-logs"  # under DRN_HOME: one log file per started part


@dataclass(frozen=True)
class StackSettings:
    home: Path
    prefect_port: int = DEFAULT_PREFECT_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    api_port: int = DEFAULT_API_PORT
    mlflow_uri: str | None = None  # None: sqlite under home (drn.config's default)
    logstore_url: str | None = None  # None: sqlite under home
    prefect_database_url: str | None = None  # None: sqlite under home/prefect (infra/start-prefect-server.sh)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, home: str | None = None,
                 prefect_port: int | None = None, mlflow_port: int | None = None,
                 api_port: int | None = None, mlflow_uri: str | None = None, logstore_url: str | None = None,
                 prefect_database_url: str | None = None) -> StackSettings:
        """Flags (keyword arguments that are not None) win over the environment, which wins over the defaults."""
        env = os.environ if environ is None else environ
        prefect_db = prefect_database_url or env.get("DRN_PREFECT_DATABASE_URL") or None
        return cls(
            home=Path(home or env.get("DRN_HOME") or ".drn").resolve(),
            prefect_port=prefect_port or int(env.get("DRN_PREFECT_PORT") or DEFAULT_PREFECT_PORT),
            mlflow_port=mlflow_port or int(env.get("DRN_MLFLOW_PORT") or DEFAULT_MLFLOW_PORT),
            api_port=api_port or int(env.get("DRN_SERVE_PORT") or DEFAULT_API_PORT),
            mlflow_uri=mlflow_uri or env.get("DRN_MLFLOW_URI") or None,
            logstore_url=logstore_url or env.get("DRN_LOGSTORE_URL") or None,
            prefect_database_url=prefect_async_url(prefect_db) if prefect_db else None,
        )

    def store_environment(self) -> dict[str, str]:
        """DRN_HOME and the store URLs that are set: what every part, and drn.config.Settings, reads."""
        named = {"DRN_MLFLOW_URI": self.mlflow_uri, "DRN_LOGSTORE_URL": self.logstore_url,
                 "DRN_PREFECT_DATABASE_URL": self.prefect_database_url}
        return {"DRN_HOME": str(self.home), **{k: v for k, v in named.items() if v}}

    @property
    def prefect_api(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def prefect_ui(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / PID_FILE

    @property
    def log_dir(self) -> Path:
        return self.home / LOG_DIR

    def ports(self) -> dict[str, int]:
        return {"Prefect": self.prefect_port, "MLflow": self.mlflow_port, "API": self.api_port}


def prefect_async_url(url: str) -> str:
    """The Prefect server's database URL with the async driver Prefect needs: postgresql[+any]:// becomes
    postgresql+asyncpg://, sqlite:// becomes sqlite+aiosqlite://; anything else is Prefect's to judge."""
    scheme, sep, rest = url.partition("://")
    driver = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
              "sqlite": "sqlite+aiosqlite"}.get(scheme.split("+", 1)[0].lower())
    return f"{driver}{sep}{rest}" if driver and sep else url
