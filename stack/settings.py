"""Where the stack runs: one data directory and three loopback ports, from flags over environment over defaults.

    DRN_HOME           data directory of every part (default ./.drn): SQLite files, artifacts, logs, the pid file
    DRN_PREFECT_PORT   Prefect server and UI              (default 4200)
    DRN_MLFLOW_PORT    MLflow tracking server and UI      (default 5000)
    DRN_SERVE_PORT     the recommendation API, /docs      (default 8000; the variable `drn serve` reads too)

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, home: str | None = None,
                 prefect_port: int | None = None, mlflow_port: int | None = None,
                 api_port: int | None = None) -> StackSettings:
        """Flags (keyword arguments that are not None) win over the environment, which wins over the defaults."""
        env = os.environ if environ is None else environ
        return cls(
            home=Path(home or env.get("DRN_HOME") or ".drn").resolve(),
            prefect_port=prefect_port or int(env.get("DRN_PREFECT_PORT") or DEFAULT_PREFECT_PORT),
            mlflow_port=mlflow_port or int(env.get("DRN_MLFLOW_PORT") or DEFAULT_MLFLOW_PORT),
            api_port=api_port or int(env.get("DRN_SERVE_PORT") or DEFAULT_API_PORT),
        )

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
