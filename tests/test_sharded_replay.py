"""Replay feature building sharded over a local multi-process Dask cluster (prefect-dask's DaskTaskRunner) gives
exactly the features of one sequential replay."""
from __future__ import annotations

import numpy as np
import pytest

from drn.features import FeatureState, replay
from drn.logstore import ImpressionRecord, LogStore
from drn.mind import load_dataset
from drn.sharding import shard_bounds, shard_samples
from drn.world import generate_logs

SERVED = 10  # items per logged list


@pytest.fixture(scope="module")
def logged(tmp_path_factory, store_urls, request):
    """A log store holding two days of a small simulated world as served impressions with their clicks."""
    folder = tmp_path_factory.mktemp("sharded")
    generate_logs(folder / "world", days=2, users=30, seed=5)
    data = load_dataset(folder / "world")
    url = store_urls.logstore(request, folder)
    with LogStore(url) as logs:
        logs.log_news(data.news.values())
        for imp in data.impressions:
            served = imp.candidates[:SERVED]
            logs.log_impression(ImpressionRecord(f"i{imp.impression_id}", imp.user, imp.time, imp.candidates,
                                                 served, (-1,) * len(served), "1"))
            for offset, news_id in enumerate(n for n, label in zip(imp.candidates, imp.labels)
                                             if label and n in served):
                logs.log_click(f"i{imp.impression_id}", news_id, imp.time + 1 + offset)
    return folder, url


def sequential(url: str) -> list:
    with LogStore(url) as logs:
        return list(replay((logged.to_impression() for logged in logs.window()), FeatureState(logs.news())))


def same(a, b) -> bool:
    return (a.impression.impression_id == b.impression.impression_id
            and np.array_equal(a.batch.state, b.batch.state) and np.array_equal(a.batch.action, b.batch.action))


def test_shard_bounds_cover_the_log_in_order():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError):
        shard_bounds(5, 0)


def test_shards_equal_one_sequential_replay(logged):
    _, url = logged
    whole = sequential(url)
    with LogStore(url) as logs:
        impressions = [logged.to_impression() for logged in logs.window()]
        news = logs.news()
    parts = [s for lo, hi in shard_bounds(len(impressions), 3) for s in shard_samples(impressions, news, lo, hi)]
    assert len(parts) == len(whole) > 100
    assert all(same(a, b) for a, b in zip(parts, whole))


@pytest.mark.integration
def test_flow_on_a_local_dask_cluster_equals_sequential_replay(logged, monkeypatch, prefect_server):
    folder, url = logged
    monkeypatch.setenv("DRN_HOME", str(folder))
    monkeypatch.setenv("DRN_LOGSTORE_URL", url)
    from flows.sharded_replay import sharded_replay, task_runner
    runner = task_runner({"DRN_DASK_WORKERS": "2"})
    assert runner.cluster_kwargs["processes"] and runner.cluster_kwargs["n_workers"] == 2
    samples = sharded_replay.with_options(task_runner=runner)(shards=4)
    whole = sequential(url)
    assert len(samples) == len(whole)
    assert all(same(a, b) for a, b in zip(samples, whole))
