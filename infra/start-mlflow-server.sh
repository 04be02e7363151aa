#!/usr/bin/env bash
# A local MLflow tracking + registry server on loopback: the same store and artifact folder that drn uses under
# DRN_HOME, so the UI shows the versions the flows registered. The store is DRN_MLFLOW_URI when that names a
# database (e.g. postgresql+psycopg://user@db:5432/mlflow), else SQLite under DRN_HOME. Point drn at the server
# instead with
#   export DRN_MLFLOW_URI=http://127.0.0.1:${MLFLOW_PORT:-5000}
set -euo pipefail
DRN_HOME="$(realpath -m "${DRN_HOME:-.drn}")"
mkdir -p "$DRN_HOME/mlartifacts"
case "${DRN_MLFLOW_URI:-}" in
  ""|http://*|https://*) BACKEND="sqlite:///$DRN_HOME/mlflow.db" ;;  # a server URI is where drn points, not a store
  *) BACKEND="$DRN_MLFLOW_URI" ;;
esac
# MLflow 3 otherwise starts background job workers that ignore SIGTERM and take CPU; the pipeline uses none.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$DRN_HOME/mlartifacts" --serve-artifacts
