"""Offline evaluation by progressive validation, and the data helpers the CLI exposes (stats, time split)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from drn.features import FeatureState, replay, warmed
from drn.metrics import RankingMetrics
from drn.mind import Dataset, load_dataset, write_behaviors
from drn.policy import Policy

DAY = 86400.0


def evaluate(policy: Policy, train: Dataset, test: Dataset, progress: Callable[[int, int], None] | None = None,
             start: FeatureState | None = None) -> dict:
    """Replay train to warm the online state (from `start`, copied, when given), then score each test impression
    before its clicks are revealed.

    The policy must already be fitted; its weights stay frozen here (only the feature state moves on).
    """
    state = warmed(train.impressions, {**train.news, **test.news}, start)
    metrics = RankingMetrics()
    for done, sample in enumerate(replay(test.impressions, state), start=1):
        if sample.impression.labels is not None:
            metrics.add(sample.impression.labels, policy.scores(sample.batch))
        if progress:
            progress(done, len(test.impressions))
    return metrics.result()


def stats(dataset: Dataset) -> dict:
    """The counts `drn data stats` prints: what a reader checks first about a log."""
    impressions = dataset.impressions
    news_ids = {n for imp in impressions for n in imp.candidates} | {n for imp in impressions for n in imp.history}
    sizes = np.array([len(imp.candidates) for imp in impressions]) if impressions else np.zeros(1)
    clicks = sum(sum(imp.labels or ()) for imp in impressions)
    return {
        "impressions": len(impressions),
        "users": len({imp.user for imp in impressions}),
        "news": len(news_ids),
        "news_with_metadata": sum(1 for n in news_ids if n in dataset.news),
        "candidates_per_impression": round(float(sizes.mean()), 3),
        "click_rate": round(clicks / max(int(sizes.sum()), 1), 5),
        "clicks": int(clicks),
        "first_time": min((imp.time for imp in impressions), default=None),
        "last_time": max((imp.time for imp in impressions), default=None),
    }


def time_split(dataset: Dataset, test_days: int = 1) -> tuple[Dataset, Dataset]:
    """Train on the calendar days (UTC) before the last `test_days` days of the log, test on those days."""
    if not dataset.impressions:
        raise ValueError("cannot split an empty log")
    cut = (dataset.impressions[-1].time // DAY - (test_days - 1)) * DAY
    train = [imp for imp in dataset.impressions if imp.time < cut]
    test = [imp for imp in dataset.impressions if imp.time >= cut]
    if not train or not test:
        raise ValueError(f"a {test_days}-day test window leaves an empty side: the log spans too little time")
    return Dataset(train, dataset.news), Dataset(test, dataset.news)


def write_split(source: Path, out: Path, test_days: int = 1) -> dict:
    """Write OUT/train and OUT/test as MIND folders (news.tsv copied to both)."""
    train, test = time_split(load_dataset(source), test_days)
    for name, part in (("train", train), ("test", test)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        write_behaviors(folder / "behaviors.tsv", part.impressions)
        if (source / "news.tsv").is_file():
            shutil.copyfile(source / "news.tsv", folder / "news.tsv")
    return {"train": len(train.impressions), "test": len(test.impressions), "out": str(out)}
