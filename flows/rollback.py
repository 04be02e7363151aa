"""Rollback: serve an earlier version again (by default the one served before the current one) and open a fresh
exploration round around it. The same step as `drn rollback` and as a stage change in the MLflow UI."""
from __future__ import annotations

import time

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from flows import common

KIND = "rollback"
LEASE_S = 5 * 60.0  # a rollback takes seconds


@common.io_task
def roll_back(settings: Settings, to: str | None, reason: str, alpha: float) -> tuple[str | None, str]:
    """(version served before, version served now)."""
    before = common.registry(settings).served()
    now_served = lifecycle.rollback(common.registry(settings), common.log_store(settings), to, who=common.who(),
                                    why=reason, now=time.time(), alpha=alpha)
    return (before.version if before else None), now_served


@flow(name=KIND, log_prints=True)
def rollback(reason: str, to: str | None = None, alpha: float = ALPHA) -> dict:
    """Serve version `to` (default: the previously served one) because of `reason`."""
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S) as held:
        if not held:
            return common.report(KIND, "skipped", "another rollback is running", {})
        before, version = roll_back(settings, to, reason, alpha)
        return common.report(KIND, "rolled back", reason, {"version": version, "previous": before})
