"""Interleaving: merge the exploit ranking (network W) and the explore ranking (network W~) into one served
list, then read from the clicks which network users preferred.

This is DBGD's comparison step (DRN.md, "Exploration"). Team 0 is list A = the exploit network W, team 1 is
list B = the explore network W~. Two interleavers share one interface `f(ranking_a, ranking_b, k, rng)`:
- team draft (Radlinski et al., CIKM 2008): the project default, simple and unbiased for equal rankers;
- probabilistic (Hofmann et al., CIKM 2011): the paper's choice; every position is drawn from a softmax
  over a randomly picked list, so any item can land anywhere and lists that disagree are compared fairly.

Click credit: a click counts for the team that contributed the clicked item. For probabilistic
interleaving this is the credit of Hofmann 2011 (the list the item was drawn from); Hofmann et al.'s later
marginalised credit (TOIS 2013), which needs both full rankings at outcome time, is not implemented.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import accumulate
from typing import Callable, Iterable, Sequence

import numpy as np

from drn.options import option

TEAM_EXPLOIT = 0  # list A: ranked by the served (promoted) network W
TEAM_EXPLORE = 1  # list B: ranked by the perturbed network W~
TEAM_NONE = -1  # a position no ranker was credited with (W alone, a sampled list)
TAU = 3.0  # probabilistic interleaving: P(item at rank r) ∝ 1 / r**TAU (Hofmann 2011; DRN.md)


class Method(StrEnum):
    """How two rankers' lists merge into the served one."""

    TEAM_DRAFT = "team_draft"  # simpler and the common default
    PROBABILISTIC = "probabilistic"  # the paper's (Hofmann 2011)


DEFAULT_METHOD = Method.TEAM_DRAFT

# When does a round decide? (the paper gives no rule; these are the project's, all configurable, used alike by the
# minor-update flow and the in-process loop). The round stays open until enough impressions were decisive (won by
# one side): that stopping rule looks at how many impressions were decisive, never at who won them, so under "both
# networks are equal" the wins of a decided round are Binomial(n, 1/2) and the sign test's error rate holds as stated.
MIN_DECISIVE = 20  # a round decides once this many impressions were won by one side; until then it stays open
MAX_ROUND_IMPRESSIONS = 5000  # ... unless it holds this many impressions first: closed "insufficient", no step
SIGNIFICANCE = 0.2  # two-sided sign test: where explore is no better, a decided round steps with chance <= 0.1
# A major update's gate round asks more: its candidate goes live unless the served model is shown better, so the
# round must be able to show it. Held at MIN_DECISIVE, gate rounds ended in ties and refused nearly every candidate.
GATE_DECISIVE = 200  # decides at this many decisive impressions: the sign test at SIGNIFICANCE then refuses, with
#   power about 0.9, a candidate the served model outclicks in 59% of them; an equal one is refused with chance <= 0.1
GATE_EARLY_SIGNIFICANCE = 0.001  # ... or at any earlier look (from MIN_DECISIVE on) when p is below this
#   (Haybittle-Peto): a clear win or loss need not wait, and so strict a bound barely moves the error rates above


@dataclass(frozen=True)
class Interleaved:
    """The served list and, per position, the team (0 exploit, 1 explore) that contributed the item."""

    served: tuple[str, ...]
    teams: tuple[int, ...]
    propensities: tuple[float, ...] = ()  # a sampled list (PDGD): each position's chance given the items above it

    def __post_init__(self) -> None:
        if len(self.served) != len(self.teams):
            raise ValueError(f"{len(self.served)} served items but {len(self.teams)} team labels")
        if self.propensities and len(self.propensities) != len(self.served):
            raise ValueError(f"{len(self.served)} served items but {len(self.propensities)} propensities")


def untagged(ids: Sequence[str], order: Sequence[int]) -> Interleaved:
    """The items of `order` (indices into `ids`) as one ranker's list: no position credited to a team."""
    return Interleaved(tuple(ids[i] for i in order), (TEAM_NONE,) * len(order))


@dataclass(frozen=True)
class Outcome:
    """The verdict of one interleaving round, kept on the model version it produced."""

    method: Method
    impressions: int
    clicks_a: int  # clicks credited to the exploit network
    clicks_b: int  # clicks credited to the explore network
    wins_a: int  # impressions where the exploit network got more clicks
    wins_b: int  # impressions where the explore network got more clicks
    ties: int  # impressions with equal credit (including impressions without clicks)
    p_value: float  # two-sided sign test of wins_a vs wins_b
    winner: str  # "exploit" | "explore" | "tie" (decided) | "pending" (kept open) | "insufficient" (closed, undecided)

    @property
    def explore_won(self) -> bool:
        """True exactly when DBGD should step towards the explore network."""
        return self.winner == "explore"

    @property
    def pending(self) -> bool:
        """The round has too few decisive impressions yet: keep it open and serve it on."""
        return self.winner == "pending"


def _checked(ranking: Sequence[str], name: str) -> tuple[str, ...]:
    items = tuple(ranking)
    if len(set(items)) != len(items):
        raise ValueError(f"{name} has duplicate items")
    return items


def _served_length(lists: tuple[tuple[str, ...], ...], k: int) -> int:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return min(k, len(set(lists[0]) | set(lists[1])))


def team_draft(ranking_a: Sequence[str], ranking_b: Sequence[str], k: int, rng: np.random.Generator) -> Interleaved:
    """Team-draft interleaving: the team with fewer picks (a coin on ties) adds its best item not yet served.

    When one list has nothing left to add, the other keeps picking, so the list always has min(k, |A ∪ B|) items.
    """
    lists = (_checked(ranking_a, "ranking_a"), _checked(ranking_b, "ranking_b"))
    length = _served_length(lists, k)
    served: list[str] = []
    teams: list[int] = []
    used: set[str] = set()
    picks = [0, 0]
    cursors = [0, 0]  # per team: everything before it is already served (one pass over each list in all)

    def best_unused(team: int) -> str | None:
        ranking = lists[team]
        while cursors[team] < len(ranking) and ranking[cursors[team]] in used:
            cursors[team] += 1
        return ranking[cursors[team]] if cursors[team] < len(ranking) else None

    while len(served) < length:
        if picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = int(rng.integers(2))
        pick = best_unused(team)
        if pick is None:
            team = 1 - team
            pick = best_unused(team)
        served.append(pick)
        teams.append(team)
        used.add(pick)
        picks[team] += 1
    return Interleaved(tuple(served), tuple(teams))


def team_draft_multileave(rankings: Sequence[Sequence[str]], k: int, rng: np.random.Generator) -> Interleaved:
    """Team-draft multileaving (Schuth et al., CIKM 2014) of n rankings: in every pass the teams pick in a fresh
    random order, each adding its best item not yet served; team i is ranking i (0: the exploit network).

    With two rankings it is team draft's rule (the team with fewer picks first, a coin on ties)."""
    lists = [_checked(ranking, f"rankings[{i}]") for i, ranking in enumerate(rankings)]
    if not lists or k < 0:
        raise ValueError(f"multileaving needs at least one ranking and k >= 0, got {len(lists)} and {k}")
    length = min(k, len(set().union(*lists)))
    served: list[str] = []
    teams: list[int] = []
    used: set[str] = set()
    cursors = [0] * len(lists)
    while len(served) < length:
        for team in rng.permutation(len(lists)):
            ranking = lists[team]
            while cursors[team] < len(ranking) and ranking[cursors[team]] in used:
                cursors[team] += 1
            if cursors[team] == len(ranking) or len(served) == length:
                continue
            pick = ranking[cursors[team]]
            served.append(pick)
            teams.append(int(team))
            used.add(pick)
    return Interleaved(tuple(served), tuple(teams))


def probabilistic(ranking_a: Sequence[str], ranking_b: Sequence[str], k: int, rng: np.random.Generator,
                  tau: float = TAU) -> Interleaved:
    """Probabilistic interleaving: per position pick a list by a fair coin, then draw one of its unused items
    with P ∝ 1 / rank**tau (rank = 1-based position in that list, renormalised over the unused items).

    If the picked list is used up, the draw comes from the other list; the team is the list drawn from.
    """
    lists = (_checked(ranking_a, "ranking_a"), _checked(ranking_b, "ranking_b"))
    length = _served_length(lists, k)
    served: list[str] = []
    teams: list[int] = []
    used: set[str] = set()
    while len(served) < length:
        team = int(rng.integers(2))
        ranks = [r for r, d in enumerate(lists[team]) if d not in used]
        if not ranks:
            team = 1 - team
            ranks = [r for r, d in enumerate(lists[team]) if d not in used]
        cumulative = list(accumulate((r + 1.0) ** -tau for r in ranks))
        drawn = bisect_right(cumulative, rng.random() * cumulative[-1])
        rank = ranks[min(drawn, len(ranks) - 1)]  # min: guards the float edge u * total == total
        served.append(lists[team][rank])
        teams.append(team)
        used.add(lists[team][rank])
    return Interleaved(tuple(served), tuple(teams))


Interleaver = Callable[[Sequence[str], Sequence[str], int, np.random.Generator], Interleaved]
METHODS: dict[Method, Interleaver] = {Method.TEAM_DRAFT: team_draft, Method.PROBABILISTIC: probabilistic}


def interleaver(method: Method = DEFAULT_METHOD) -> Interleaver:
    """The interleaving function named by configuration."""
    return METHODS[option(Method, method, "interleaving method")]


def credit(teams: Sequence[int], clicked_positions: Iterable[int]) -> tuple[int, int]:
    """Clicks credited to (exploit, explore) in one impression; positions are 0-based, repeats count once.

    A click on a position neither team placed (a log's -1) earns no credit."""
    a = b = 0
    for pos in set(clicked_positions):
        if not 0 <= pos < len(teams):
            raise ValueError(f"clicked position {pos} outside the {len(teams)} served items")
        if teams[pos] == TEAM_EXPLOIT:
            a += 1
        elif teams[pos] == TEAM_EXPLORE:
            b += 1
    return a, b


def sign_test_p(wins_a: int, wins_b: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if both networks were equal."""
    n, low = wins_a + wins_b, min(wins_a, wins_b)
    if n == 0:
        return 1.0
    log_half_n = n * math.log(0.5)
    tail = math.fsum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
                     for i in range(low + 1))
    return min(1.0, 2.0 * tail)


def round_outcome(impressions: Iterable[tuple[Sequence[int], Iterable[int]]], method: Method = DEFAULT_METHOD, *,
                  min_decisive: int = MIN_DECISIVE, max_impressions: int = MAX_ROUND_IMPRESSIONS,
                  significance: float = SIGNIFICANCE) -> Outcome:
    """Who won a round of impressions, each given as (teams, clicked positions).

    Each impression is won by the team with more credited clicks. With `min_decisive` won impressions or more,
    the round is decided: the team with more wins if a two-sided sign test gives p < `significance`, else "tie".
    With fewer it is "pending" (keep it open), or "insufficient" once it holds `max_impressions` impressions.
    Both methods use the same click credit (see the module docstring); `method` names the interleaver.
    """
    method = option(Method, method, "interleaving method")
    interleaver(method)  # an unknown name fails here, not later in the flow
    count = clicks_a = clicks_b = wins_a = wins_b = 0
    for teams, clicked in impressions:
        a, b = credit(teams, clicked)
        count += 1
        clicks_a += a
        clicks_b += b
        wins_a += a > b
        wins_b += b > a
    p_value = sign_test_p(wins_a, wins_b)
    if wins_a + wins_b < min_decisive:
        winner = "pending" if count < max_impressions else "insufficient"
    elif p_value < significance:
        winner = "exploit" if wins_a > wins_b else "explore"
    else:
        winner = "tie"
    return Outcome(method, count, clicks_a, clicks_b, wins_a, wins_b, count - wins_a - wins_b, p_value, winner)


def gate_outcome(impressions: Iterable[tuple[Sequence[int], Iterable[int]]], method: Method = DEFAULT_METHOD, *,
                 decisive: int = GATE_DECISIVE, early_from: int = MIN_DECISIVE,
                 max_impressions: int = MAX_ROUND_IMPRESSIONS, significance: float = SIGNIFICANCE,
                 early_significance: float = GATE_EARLY_SIGNIFICANCE) -> Outcome:
    """A gate round's verdict: `round_outcome` at `decisive` decisive impressions, or at an earlier look (from
    `early_from` decisive ones) once the sign test's p is below `early_significance`."""
    outcome = round_outcome(impressions, method, min_decisive=decisive, max_impressions=max_impressions,
                            significance=significance)
    undecided = outcome.winner in ("pending", "insufficient")
    if undecided and outcome.wins_a + outcome.wins_b >= early_from and outcome.p_value < early_significance:
        return replace(outcome, winner="exploit" if outcome.wins_a > outcome.wins_b else "explore")
    return outcome


def credit_curve(impressions: Iterable[tuple[Sequence[int], Iterable[int]]]) -> list[tuple[int, int, int]]:
    """(impressions so far, impressions won by exploit, by explore) after each impression of a round: how its
    evidence built up, the curve on a minor update's run."""
    curve, wins_a, wins_b = [], 0, 0
    for count, (teams, clicked) in enumerate(impressions, start=1):
        a, b = credit(teams, clicked)
        wins_a, wins_b = wins_a + (a > b), wins_b + (b > a)
        curve.append((count, wins_a, wins_b))
    return curve
