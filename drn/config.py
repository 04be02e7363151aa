"""Where the pipeline keeps its state: one place that reads the environment.

Every outside system has an embedded default under one data directory, so `drn flows run ...` works on a laptop
with nothing started, and each can be pointed elsewhere (a server, PostgreSQL) by one environment variable:

    DRN_HOME          data directory (default ./.drn in the working directory): SQLite files and artifacts
    DRN_MLFLOW_URI    MLflow tracking + registry URI   (default sqlite:///$DRN_HOME/mlflow.db; a PostgreSQL URL
                      such as postgresql+psycopg://user@db:5432/mlflow keeps artifacts in $DRN_HOME/mlartifacts)
    PREFECT_API_URL   Prefect API                      (unset: each run starts Prefect's temporary local server)
    DRN_LOGSTORE_URL  log store SQLAlchemy URL         (default sqlite:///$DRN_HOME/logs.db)
    DRN_MODEL_NAME    registered model name            (default drn)

Settings are read when a command or flow starts (not at import), so a worker and a test see the environment they
run in.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from drn.logstore import LOG_FILE

if TYPE_CHECKING:
    from drn.logstore import LogStore
    from drn.registry import Registry

MLFLOW_FILE = "mlflow.db"  # the embedded MLflow store under DRN_HOME (artifacts beside it in mlartifacts/)
MLFLOW_ARTIFACTS = "mlartifacts"
# MLflow URIs that name a database server: MLflow would otherwise put their artifacts in ./mlruns of whichever
# working directory first opens the store, so they go under DRN_HOME as SQLite's do.
SERVER_DATABASES = ("postgresql", "mysql", "mssql")
DEFAULT_MODEL_NAME = "drn"


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


@dataclass(frozen=True)
class Settings:
    home: Path
    mlflow_uri: str
    prefect_api_url: str | None  # None: Prefect runs flows against a temporary server it starts itself
    logstore_url: str
    model_name: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("DRN_HOME") or ".drn").resolve()
        return cls(
            home=home,
            mlflow_uri=env.get("DRN_MLFLOW_URI") or _sqlite_url(home / MLFLOW_FILE),
            prefect_api_url=env.get("PREFECT_API_URL") or None,
            logstore_url=env.get("DRN_LOGSTORE_URL") or _sqlite_url(home / LOG_FILE),
            model_name=env.get("DRN_MODEL_NAME") or DEFAULT_MODEL_NAME,
        )

    def ensure_home(self) -> None:
        """Create the data directory the embedded SQLite defaults live in."""
        self.home.mkdir(parents=True, exist_ok=True)

    def open_registry(self) -> Registry:
        """The model registry (imports MLflow and torch on first call: seconds)."""
        from drn.registry import Registry
        self.ensure_home()
        return Registry(self.mlflow_uri, self.model_name, artifact_root=self.mlflow_artifact_root())

    def mlflow_artifact_root(self) -> str | None:
        """Where new versions' artifacts go when drn opens the store itself: DRN_HOME/mlartifacts for a database
        server; None for SQLite (beside its file) and for a tracking server (the server decides)."""
        scheme = self.mlflow_uri.split(":", 1)[0].split("+", 1)[0].lower()
        return str(self.home / MLFLOW_ARTIFACTS) if scheme in SERVER_DATABASES else None

    def open_log_store(self) -> LogStore:
        from drn.logstore import LogStore
        self.ensure_home()
        return LogStore(self.logstore_url)

    def to_dict(self) -> dict[str, str | None]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
