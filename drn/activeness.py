"""User activeness: DRN's survival model of how likely a user is to come back (DRN.md, "Reward and user activeness").

Activeness S decays with a constant hazard between visits, S(t) = S_last * exp(-lambda0 * (t - t_last)), and
jumps by Sa (capped at 1) on every return. It enters the reward as r_total = r_click + beta * r_active.

The project's choices where the paper is silent:
- A user's first request starts their curve at S0; it is an arrival, not a return, so it adds no Sa.
- Every later request counts as a return (no session grouping of requests close in time).
- The activeness reward of a request is the user's activeness right after their next return: it rewards
  recommendations that bring the user back soon (S decays less before the jump). A request with no later
  request in the log is censored: its reward is None, or, given a `horizon` (the end of the log), the activeness
  decayed to the horizon without a return (a user who stayed away that long earns the low value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Hashable

S0 = 0.5  # activeness of a new user
LAMBDA0 = 1.2e-5  # constant hazard per second: expected return after 1 / LAMBDA0 ≈ 23 h
SA = 0.32  # jump on a return, chosen so S0 * exp(-LAMBDA0 * 24 h) + SA ≈ S0 (a daily user stays at S0)
S_MAX = 1.0  # activeness is a probability: the jump is capped here
BETA = 0.05  # weight of the activeness reward in r_total = r_click + BETA * r_active


def survival(t: float, lambda0: float = LAMBDA0) -> float:
    """S(t) = exp(-integral_0^t lambda) for the constant hazard lambda0 (t in seconds since the last return)."""
    if t < 0:
        raise ValueError(f"survival time must be >= 0, got {t}")
    return math.exp(-lambda0 * t)


def total_reward(r_click: float, r_active: float, beta: float = BETA) -> float:
    """DRN's reward: the click plus the weighted activeness."""
    return r_click + beta * r_active


@dataclass
class _State:
    s: float  # activeness right after the last event
    t: float  # time of the last event (epoch seconds)


class UserActiveness:
    """Activeness per user, fed with request times in order (per user); times are epoch seconds."""

    def __init__(self, s0: float = S0, lambda0: float = LAMBDA0, sa: float = SA):
        self.s0, self.lambda0, self.sa = s0, lambda0, sa
        self._users: dict[Hashable, _State] = {}

    def _decayed(self, state: _State, t: float) -> float:
        if t < state.t:
            raise ValueError(f"time went backwards: {t} is before the user's last event at {state.t}")
        return state.s * survival(t - state.t, self.lambda0)

    def _jumped(self, s: float) -> float:
        return min(S_MAX, s + self.sa)

    def observe_return(self, user: Hashable, t: float) -> float:
        """Record a request of `user` at `t` and return their activeness right after it."""
        state = self._users.get(user)
        if state is None:
            self._users[user] = _State(self.s0, t)
            return self.s0
        state.s, state.t = self._jumped(self._decayed(state, t)), t
        return state.s

    def activeness(self, user: Hashable, t: float) -> float:
        """Activeness at `t`: decayed since the user's last event, S0 for a user not seen yet."""
        state = self._users.get(user)
        return self.s0 if state is None else self._decayed(state, t)

    def reward(self, user: Hashable, t_request: float, t_next_return: float) -> float:
        """Activeness right after the next return at `t_next_return`, for the request at `t_request`.

        Call it after `observe_return(user, t_request)`; it does not change the state.
        """
        if t_next_return < t_request:
            raise ValueError(f"next return {t_next_return} is before the request at {t_request}")
        s = self.activeness(user, t_request) * survival(t_next_return - t_request, self.lambda0)
        return self._jumped(s)
