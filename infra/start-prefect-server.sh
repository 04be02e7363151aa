#!/usr/bin/env bash
# A local Prefect server on loopback, its database DRN_PREFECT_DATABASE_URL (an async SQLAlchemy URL, e.g.
# postgresql+asyncpg://user@db:5432/prefect; the database must exist) or else SQLite under DRN_HOME; point flows at
# it with
#   export PREFECT_API_URL=http://127.0.0.1:${PREFECT_PORT:-4200}/api
set -euo pipefail
DRN_HOME="$(realpath -m "${DRN_HOME:-.drn}")"
mkdir -p "$DRN_HOME/prefect"
export PREFECT_HOME="$DRN_HOME/prefect"
export PREFECT_API_DATABASE_CONNECTION_URL="${DRN_PREFECT_DATABASE_URL:-sqlite+aiosqlite:///$DRN_HOME/prefect/prefect.db}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec prefect server start --host 127.0.0.1 --port "${PREFECT_PORT:-4200}"
