"""The survival model of user activeness, checked against DRN.md's formulas and numbers."""
from __future__ import annotations

import math

import pytest

from drn.activeness import (
    BETA, LAMBDA0, S0, SA, UserActiveness, survival, total_reward,
)

DAY = 86_400.0


def test_paper_defaults():
    assert (S0, LAMBDA0, SA, BETA) == (0.5, 1.2e-5, 0.32, 0.05)


def test_survival_is_exp_of_minus_hazard_times_t():
    assert survival(0.0) == 1.0
    assert survival(DAY) == math.exp(-1.2e-5 * DAY)
    assert survival(3600.0, lambda0=1e-3) == math.exp(-3.6)
    with pytest.raises(ValueError):
        survival(-1.0)


def test_sa_brings_a_daily_user_back_to_s0():
    assert round(S0 * survival(DAY) + SA, 2) == S0


def test_new_user_is_at_s0_and_the_first_request_adds_nothing():
    tracker = UserActiveness()
    assert tracker.activeness("u", 1e9) == S0
    assert tracker.observe_return("u", 1e9) == S0
    assert tracker.activeness("u", 1e9) == S0


def test_activeness_decays_between_returns():
    tracker = UserActiveness()
    tracker.observe_return("u", 100.0)
    assert tracker.activeness("u", 100.0 + 3600.0) == pytest.approx(S0 * math.exp(-LAMBDA0 * 3600.0), rel=1e-12)
    assert tracker.activeness("u", 100.0 + 7 * DAY) < tracker.activeness("u", 100.0 + DAY)


def test_a_return_decays_then_jumps_by_sa():
    tracker = UserActiveness()
    tracker.observe_return("u", 0.0)
    expected = S0 * math.exp(-LAMBDA0 * 5 * 3600.0) + SA
    assert tracker.observe_return("u", 5 * 3600.0) == pytest.approx(expected, rel=1e-12)
    later = expected * math.exp(-LAMBDA0 * DAY) + SA
    assert tracker.observe_return("u", 5 * 3600.0 + DAY) == pytest.approx(later, rel=1e-12)


def test_activeness_is_capped_at_one():
    tracker = UserActiveness()
    values = [tracker.observe_return("u", 60.0 * i) for i in range(6)]
    assert values[1] == pytest.approx(min(1.0, S0 * math.exp(-LAMBDA0 * 60.0) + SA))
    assert values[-1] == 1.0
    assert max(values) == 1.0


def test_users_are_independent_and_parameters_apply():
    tracker = UserActiveness(s0=0.3, lambda0=1e-4, sa=0.1)
    tracker.observe_return("u", 0.0)
    tracker.observe_return("u", 1000.0)
    assert tracker.activeness("v", 1000.0) == 0.3
    assert tracker.activeness("u", 1000.0) == pytest.approx(0.3 * math.exp(-0.1) + 0.1)


def test_time_must_not_go_backwards():
    tracker = UserActiveness()
    tracker.observe_return("u", 100.0)
    with pytest.raises(ValueError, match="backwards"):
        tracker.observe_return("u", 50.0)
    with pytest.raises(ValueError, match="backwards"):
        tracker.activeness("u", 50.0)


def test_reward_is_activeness_right_after_the_next_return_and_changes_nothing():
    tracker = UserActiveness()
    tracker.observe_return("u", 0.0)
    soon, late = tracker.reward("u", 0.0, 3600.0), tracker.reward("u", 0.0, 3 * DAY)
    assert soon == pytest.approx(min(1.0, S0 * math.exp(-LAMBDA0 * 3600.0) + SA))
    assert late == pytest.approx(S0 * math.exp(-LAMBDA0 * 3 * DAY) + SA)
    assert soon > late
    assert tracker.activeness("u", 0.0) == S0
    with pytest.raises(ValueError):
        tracker.reward("u", 100.0, 50.0)


def test_total_reward_weights_activeness_by_beta():
    assert total_reward(1.0, 0.5) == pytest.approx(1.0 + 0.05 * 0.5)
    assert total_reward(0.0, 0.8, beta=0.5) == pytest.approx(0.4)
