"""Rollback: serve an earlier version again (by default the one served before the current one), hold automatic
promotion, and open a fresh exploration round around it. The same step as `drn rollback` and as a stage change in
the MLflow UI. Resume: lift the hold (the same as `drn resume`), from the Prefect UI."""
from __future__ import annotations

import time

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.registry import Hold, iso_time
from flows import common

KIND = "rollback"
LEASE_S = 5 * 60.0  # a rollback takes seconds


@common.io_task
def roll_back(settings: Settings, to: str | None, reason: str, alpha: float,
              hold_until: float | None) -> tuple[str | None, str]:
    """(version served before, version served now)."""
    before = common.registry(settings).served()
    now_served = lifecycle.rollback(common.registry(settings), common.log_store(settings), to, who=common.who(),
                                    why=reason, now=time.time(), alpha=alpha, hold_until=hold_until)
    return (before.version if before else None), now_served


@flow(name=KIND, log_prints=True)
def rollback(reason: str, to: str | None = None, alpha: float = ALPHA, hold_hours: float | None = None) -> dict:
    """Serve version `to` (default: the previously served one) because of `reason`; automatic promotion is held
    until the resume flow (or `drn resume`) runs, or for `hold_hours` when given."""
    settings = Settings.from_env()
    until = None if hold_hours is None else time.time() + hold_hours * 3600.0
    with common.exclusive(settings, KIND, LEASE_S) as busy:
        if busy:
            return common.skipped(KIND, busy)
        before, version = roll_back(settings, to, reason, alpha, until)
        hold = common.promotion_hold(settings)
        return common.report(KIND, "rolled back", f"{reason}; {hold.message()}",
                             {"version": version, "previous": before})


@common.io_task
def lift_hold(settings: Settings, reason: str) -> Hold | None:
    return common.registry(settings).resume(who=common.who(), why=reason)


@flow(name="resume", log_prints=True)
def resume(reason: str) -> dict:
    """Resume automatic promotion after a rollback held it, because of `reason`."""
    was = lift_hold(Settings.from_env(), reason)
    if was is None:
        return common.report("resume", "not held", "automatic promotion was not held", {})
    return common.report("resume", "resumed", reason, {"held_since": iso_time(was.since), "held_by": was.who,
                                                       "held_why": was.why})
