"""Feature building for replay split into shards that can run on different machines (a Dask cluster in a major
update at scale), with exactly the features one sequential replay gives.

A shard is a contiguous slice of the time-ordered log. Features are point-in-time: an impression's features depend
on every earlier event (windowed item counts, the user's all-time profile), so a shard rebuilds the state by
recording everything before it through the same code path (`drn.features.record`, features not computed), then
replays its own slice.
Shards are therefore independent and pure (same inputs, same samples), and the result equals one sequential replay;
the price is that shard k also records the k earlier shards' events, so the speed-up comes from computing each
shard's own features in parallel, not from splitting the state.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from drn.features import Sample, replay, warmed
from drn.mind import Impression, NewsItem


def shard_bounds(n_impressions: int, shards: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of `shards` near-equal contiguous slices (fewer when there are fewer impressions)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    cuts = [round(i * n_impressions / shards) for i in range(shards + 1)]
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]


def shard_samples(impressions: Sequence[Impression], news: Mapping[str, NewsItem], lo: int, hi: int) -> list[Sample]:
    """The samples of impressions[lo:hi] (time-ordered log), as a full sequential replay would compute them."""
    return list(replay(impressions[lo:hi], warmed(impressions[:lo], news)))
