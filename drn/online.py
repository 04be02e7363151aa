"""The online loop in-process: a policy serves the simulated world and learns from its clicks on world time (the
DRN agent, drn.agent, runs its minor and major updates inside `learn`).

This is the whole DRN loop without servers, for experiments and tests; the flows and the HTTP service run the
same drn functions around a registry and a log store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from drn.activeness import UserActiveness
from drn.features import FeatureState
from drn.mind import Impression
from drn.policy import Policy
from drn.world import SLATE_SIZE, World


@dataclass
class LiveResult:
    """Per-impression outcomes of a live run, in world-time order."""

    times: list[float] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    activeness: list[float] = field(default_factory=list)  # the user's activeness right after this request

    def extend(self, later: LiveResult) -> None:
        """Append a later part of the same run."""
        for name in ("times", "clicks", "shown", "activeness"):
            getattr(self, name).extend(getattr(later, name))

    def ctr(self, skip_fraction: float = 0.0) -> float:
        start = int(len(self.clicks) * skip_fraction)
        return float(np.sum(self.clicks[start:]) / max(np.sum(self.shown[start:]), 1))

    def mean_activeness(self, skip_fraction: float = 0.0) -> float:
        start = int(len(self.activeness) * skip_fraction)
        return float(np.mean(self.activeness[start:]))


def run_live(policy: Policy, world: World, state: FeatureState, impressions: int, k: int = SLATE_SIZE,
             activeness: UserActiveness | None = None,
             progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Serve `impressions` requests of the world with `policy`, through the same feature code as serving."""
    result, known = LiveResult(), set()
    activeness = activeness or UserActiveness()
    for done in range(1, impressions + 1):
        request = world.next_request()
        for news_id in request.candidates:
            if news_id not in known:
                state.add_news(world.item(news_id))
                known.add(news_id)
        batch = state.features(request.user, request.candidates, request.time)
        shown_idx = policy.recommend(batch, k)
        shown = tuple(request.candidates[i] for i in shown_idx)
        response = world.respond(request, shown)
        click_time = dict(response.clicks)
        state.record_impression(request.user, shown, request.time)
        for news_id, time in response.clicks:
            state.record_click(request.user, news_id, time)
        labels = tuple(int(n in click_time) for n in shown)
        impression = Impression(request.request_id, request.user, request.time, (), shown, labels,
                                tuple(click_time[n] for n in shown if n in click_time))
        policy.learn(batch, shown_idx, [bool(y) for y in labels], impression)
        result.times.append(request.time)
        result.clicks.append(sum(labels))
        result.shown.append(len(shown))
        result.activeness.append(activeness.observe_return(request.user, request.time))
        if progress:
            progress(done, impressions)
    return result
