"""Replay feature building sharded over a local multi-process Dask cluster (prefect-dask's DaskTaskRunner) gives
exactly the features of one sequential replay, and the major update trains on them as on its own replay."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from drn import lifecycle
from drn.bundle import bundle_of, network_of
from drn.features import FeatureState, replay, warmed
from drn.logstore import ImpressionRecord, LogStore
from drn.mind import load_dataset
from drn.model import NetworkConfig, build_network
from drn.sharding import shard_bounds, shard_samples
from drn.training import TrainConfig
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


def _split(url: str, share: float = 0.4):
    """(news, before, since): the log cut at the impression `share` of the way through, as a major update replays
    it (everything before its start makes the feature state; it trains on what came since)."""
    with LogStore(url) as logs:
        everything = list(logs.window())
        start = everything[int(len(everything) * share)].record.time
        return logs.news(), list(logs.window(None, start)), list(logs.window(start)), start


def test_a_major_update_trained_on_shards_equals_one_trained_by_sequential_replay(logged):
    _, url = logged
    news, before, since, _ = _split(url)
    cut = lifecycle.training_share(len(since))
    impressions = [imp.to_impression() for imp in before + since[:cut]]
    samples = [s for lo, hi in shard_bounds(cut, 3)
               for s in shard_samples(impressions, news, len(before) + lo, len(before) + hi)]
    promoted = bundle_of(build_network(NetworkConfig(), seed=0))
    config = TrainConfig(epochs=1, seed=0)
    sharded = lifecycle.major_update(promoted, since, news, config, before=before, samples=samples)
    sequential_ = lifecycle.major_update(promoted, since, news, config, before=before)
    assert sharded.metrics == sequential_.metrics and sharded.training["steps"] == sequential_.training["steps"] > 0
    for name, weights in network_of(sequential_.bundle).state_dict().items():
        assert torch.equal(network_of(sharded.bundle).state_dict()[name], weights), name
    with pytest.raises(ValueError, match="samples for"):
        lifecycle.major_update(promoted, since, news, config, before=before, samples=samples[:-1])


@pytest.mark.integration
def test_with_a_dask_address_the_major_updates_replay_runs_on_that_cluster(logged, monkeypatch, prefect_server):
    """DRN_DASK_ADDRESS set: the major-update flow's replay runs as sharded tasks on the named cluster (prefect-dask)
    and gives the samples of one sequential replay from the state before the update's start."""
    from distributed import LocalCluster
    folder, url = logged
    news, before, since, start = _split(url)
    count = lifecycle.training_share(len(since))
    state = warmed((imp.to_impression() for imp in before), news)
    whole = list(replay([imp.to_impression() for imp in since[:count]], state))
    monkeypatch.setenv("DRN_HOME", str(folder))
    monkeypatch.setenv("DRN_LOGSTORE_URL", url)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv("DRN_DASK_ADDRESS", cluster.scheduler_address)
        import flows.sharded_replay
        importlib.reload(flows.sharded_replay)  # its task runner is read from the environment at import
        assert flows.sharded_replay.sharded_replay.task_runner.address == cluster.scheduler_address
        from flows.major_update import clustered_replay
        samples = clustered_replay(start, count)
    assert len(samples) == len(whole) == count
    assert all(same(a, b) for a, b in zip(samples, whole))
    monkeypatch.delenv("DRN_DASK_ADDRESS")
    assert clustered_replay(start, count) is None  # unset: the train task replays by itself
    runner = flows.sharded_replay.task_runner({"DRN_DASK_WORKERS": "2"})  # no address: a local cluster per run
    assert runner.cluster_kwargs["processes"] and runner.cluster_kwargs["n_workers"] == 2
