"""The major update's gate on logged traffic: the candidate interleaved against the served model in a gate round,
served, logged and scored as the pipeline does it (serving's ranking, the log store, the minor update's rule every
T_D), is promoted when it is the better model in the world and refused when it is the worse one."""
from __future__ import annotations

import numpy as np
import pytest

from drn import lifecycle
from drn.bundle import bundle_of
from drn.exploration import ALPHA
from drn.features import FeatureState
from drn.learners import RoundRecipe
from drn.logstore import ImpressionRecord, LogStore
from drn.model import set_threads
from drn.world import SLATE_SIZE, World, WorldConfig
from serving.holder import ServedModel
from test_agent import _greedy_ctr, _linear

SERVED, CANDIDATE = "1", "2"
T_D = 100  # impressions between two looks of the minor update at the round
# The served model of test_agent: it reads personal overlap and freshness, which matter in the world, but also
# prefers old news. The better candidate drops that preference; the worse one doubles it.
READS = {"user_news.overlap_all": 1.0, "user_news.overlap_24h": 0.5, "freshness.decay": 1.0, "news.clicks_1h": 0.3}
SERVED_NET = {**READS, "freshness.log_age_hours": 1.5}
BETTER_NET = READS
WORSE_NET = {**READS, "freshness.log_age_hours": 3.0}


def gate_round(served, candidate, tmp_path, seed: int, max_impressions: int = 5000) -> lifecycle.MinorDecision:
    """Serve the world through a gate round until the minor update's rule decides it; the decision."""
    with LogStore.at(tmp_path) as logs:
        round_ = lifecycle.challenge(logs, SERVED, CANDIDATE, ALPHA, now=0.0)
        recipe = RoundRecipe.from_dict(round_.recipe)
        model = ServedModel(SERVED, "Production", bundle_of(served), served, (candidate,), round_, 0.0,
                            recipe)
        world, state, rng = World(WorldConfig(n_users=300), seed=seed), FeatureState(), np.random.default_rng(seed)
        for n in range(1, max_impressions + 1):
            request = world.next_request()
            for news_id in request.candidates:
                state.add_news(world.item(news_id))
            listed = model.rank(state.features(request.user, request.candidates, request.time), SLATE_SIZE, rng)
            logs.log_impression(ImpressionRecord(request.request_id, request.user, request.time, request.candidates,
                                                 listed.served, listed.teams, SERVED, round_.round_id, round_.seed))
            state.record_impression(request.user, listed.served, request.time)
            for news_id, time in world.respond(request, listed.served).clicks:
                state.record_click(request.user, news_id, time)
                logs.log_click(request.request_id, news_id, time)
            if n % T_D == 0:
                decision = lifecycle.minor_update(model.bundle, SERVED, round_, logs.round_feedback(round_.round_id))
                if not decision.pending:
                    return decision
    raise AssertionError(f"the gate round did not decide in {max_impressions} impressions")


@pytest.mark.parametrize("candidate, promoted", [(BETTER_NET, True), (WORSE_NET, False)], ids=["better", "worse"])
def test_the_gate_promotes_a_better_candidate_and_refuses_a_worse_one(tmp_path, candidate, promoted):
    set_threads()
    served, challenger = _linear(SERVED_NET), _linear(candidate)
    assert (_greedy_ctr(challenger) > _greedy_ctr(served)) == promoted  # what "better" means: more clicks served
    for seed in (11, 12, 13):
        decision = gate_round(served, challenger, tmp_path / str(seed), seed)
        assert decision.challenger == CANDIDATE and decision.bundle is None
        assert decision.promote == promoted, (seed, decision.reason)
