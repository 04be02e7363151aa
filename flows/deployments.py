"""The five deployments, served from one process: `drn flows serve`.

minor-update every T_D (30 min), major-update every T_R (60 min), offline-training, rollback and resume on demand (from
the UI, `prefect deployment run`, or `drn flows run`). One run at a time per kind: each deployment has a
concurrency limit of 1 whose extra runs wait for the slot (`ENQUEUE`: Prefect's AwaitingConcurrencySlot, not
Cancelled), and each flow also holds a log store lease for its kind, which covers runs started outside this server.
A scheduled run that gets its slot after a later run of its deployment already started (it waited behind a long
run, or it is one of the late runs after an outage) ends at once as Completed named Skipped: after an outage the
update runs once, not once per missed slot.

Paused deployments stay paused when this is restarted. In Prefect 3.9, `flow.to_deployment(paused=None)` is
validated to `paused=False` and applying (what `serve` does) upserts the deployment with it, so re-serving silently
resumes a schedule an engineer paused in the UI. `deployments()` therefore reads each existing deployment's `paused`
flag through the client and passes it on. `serve` is also called with `pause_on_shutdown=False`: Prefect's default
pauses every served deployment on shutdown, which would make a stop indistinguishable from a pause by a person and,
with the flag preserved, would leave all schedules paused after a restart.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Mapping

from prefect import Flow, serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound

from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from flows.major_update import major_update
from flows.minor_update import minor_update
from flows.offline_training import offline_training
from flows.rollback import resume, rollback

DEPLOYMENT = "drn"  # deployment name of every flow: the UI shows e.g. "minor-update/drn"
MINOR_EVERY = timedelta(minutes=MINOR_EVERY_MIN)
MAJOR_EVERY = timedelta(minutes=MAJOR_EVERY_MIN)
FLOWS: dict[str, Flow] = {f.name: f for f in (offline_training, minor_update, major_update, rollback, resume)}
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
# How early the runner starts a due run (Prefect's default is 10 s). Early starts mean that with a short T_D (the
# demo's 12 s) the next run starts while the previous one still runs, and then waits out Prefect's slot retry (30 s).
RUNNER_PREFETCH_S = 1.0


def paused_states(names: list[str]) -> dict[str, bool]:
    """Whether each existing deployment `<flow>/<deployment>` is paused, or has every schedule switched off (the
    toggle beside a schedule in the UI; re-applying would switch it on again), so re-serving keeps it from running
    on schedule; absent ones (first serve) are left out."""
    found: dict[str, bool] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            switched_off = bool(existing.schedules) and not any(s.active for s in existing.schedules)
            found[name] = bool(existing.paused) or switched_off
    return found


def deployments(minor_every: timedelta = MINOR_EVERY, major_every: timedelta = MAJOR_EVERY,
                paused: Mapping[str, bool] | None = None) -> list[RunnerDeployment]:
    """The five deployments; `paused` (default: read from the server) keeps each one's paused flag."""
    if paused is None:
        paused = paused_states([f"{name}/{DEPLOYMENT}" for name in FLOWS])
    schedule = {minor_update.name: minor_every, major_update.name: major_every}
    return [flow.to_deployment(DEPLOYMENT, interval=schedule.get(name), tags=["drn"],
                               paused=paused.get(f"{name}/{DEPLOYMENT}", False),
                               concurrency_limit=ONE_AT_A_TIME)
            for name, flow in FLOWS.items()]


def serve_all(minor_every: timedelta = MINOR_EVERY, major_every: timedelta = MAJOR_EVERY) -> None:
    """Register the deployments (keeping paused ones paused) and run their scheduled and requested runs; blocks."""
    serve(*deployments(minor_every, major_every), pause_on_shutdown=False, prefetch_seconds=RUNNER_PREFETCH_S)
