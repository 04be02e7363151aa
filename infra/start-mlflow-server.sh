#!/usr/bin/env bash
# A local MLflow tracking + registry server on loopback: the same SQLite store and artifact folder that drn uses
# by default under DRN_HOME, so the UI shows the versions the flows registered. Point drn at the server instead with
#   export DRN_MLFLOW_URI=http://127.0.0.1:${MLFLOW_PORT:-5000}
set -euo pipefail
DRN_HOME="$(realpath -m "${DRN_HOME:-.drn}")"
mkdir -p "$DRN_HOME/mlartifacts"
# MLflow 3 otherwise starts background job workers that ignore SIGTERM and take CPU; the pipeline uses none.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "sqlite:///$DRN_HOME/mlflow.db" \
  --artifacts-destination "$DRN_HOME/mlartifacts" --serve-artifacts
