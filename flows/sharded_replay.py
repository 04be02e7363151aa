"""Replay feature building on a Dask cluster: the major update's most expensive step, shardable beyond one machine.

The log is cut into contiguous time-ordered shards (`drn.sharding`); one task per shard reads the log store itself
(PostgreSQL at scale: workers share it, nothing large travels through the scheduler) and computes its shard's
features through the online code path, from the feature state of everything logged before it; the flow gathers
them in order. The result equals one sequential replay from the state before `start`, which is what the major
update trains on: with DRN_DASK_ADDRESS set, its flow calls this one (flows/major_update.py).

Task runner: `DaskTaskRunner(address=$DRN_DASK_ADDRESS)` when that variable names a running scheduler
(`dask scheduler` + `dask worker tcp://...` on other machines), else a local cluster of `DRN_DASK_WORKERS` worker
processes (default 2) started for the run. Both are read when this module is imported (the runner only
describes the cluster; it starts with the flow run), so a worker's environment decides.
"""
from __future__ import annotations

import os
from typing import Mapping

from prefect import flow, unmapped
from prefect_dask import DaskTaskRunner

from drn.config import Settings
from drn.features import Sample
from drn.sharding import shard_bounds, shard_samples
from flows import common

KIND = "sharded-replay"
DEFAULT_SHARDS = 4
LOCAL_WORKERS = 2  # worker processes of the local cluster, one thread each


def task_runner(environ: Mapping[str, str] | None = None) -> DaskTaskRunner:
    """A scheduler named by DRN_DASK_ADDRESS, else a local multi-process cluster for the run."""
    env = os.environ if environ is None else environ
    if env.get("DRN_DASK_ADDRESS"):
        return DaskTaskRunner(address=env["DRN_DASK_ADDRESS"])
    workers = int(env.get("DRN_DASK_WORKERS") or LOCAL_WORKERS)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@common.compute_task
def build_shard(settings: Settings, earlier: int, lo: int, hi: int) -> list[Sample]:
    """Features of impressions [lo, hi) of the log after its first `earlier` ones (those before the replay's start),
    from the state of everything logged before them, read by the worker from the log store."""
    logs = common.log_store(settings)
    impressions = [logged.to_impression() for _, logged in zip(range(earlier + hi), logs.window())]
    return shard_samples(impressions, logs.news(), earlier + lo, earlier + hi)


@flow(name=KIND, log_prints=True, task_runner=task_runner())
def sharded_replay(start: float | None = None, shards: int = DEFAULT_SHARDS, count: int | None = None) -> list[Sample]:
    """Replay features of the first `count` impressions logged since `start` (None: all of them), `shards` tasks in
    parallel."""
    settings = Settings.from_env()
    logs = common.log_store(settings)
    earlier = sum(1 for _ in logs.window(None, start)) if start is not None else 0  # counted once, not per shard
    logged = sum(1 for _ in logs.window(start))
    bounds = shard_bounds(logged if count is None else min(count, logged), shards)
    futures = build_shard.map(unmapped(settings), unmapped(earlier), [lo for lo, _ in bounds],
                              [hi for _, hi in bounds])
    samples = [sample for future in futures for sample in future.result()]
    print(f"{len(samples)} impressions replayed in {len(bounds)} shards")
    return samples
