"""Interleaving: served-list invariants, click credit, and that a simulated user's clicks pick the better ranker."""
from __future__ import annotations

import numpy as np
import pytest

from drn.interleaving import (
    GATE_DECISIVE, METHODS, MIN_DECISIVE, SIGNIFICANCE, TAU, Interleaved, credit, gate_outcome, interleaver,
    probabilistic, round_outcome, sign_test_p, team_draft,
)

# The simulated user: relevant items clicked with P_RELEVANT, others with P_OTHER, both times a position bias.
P_RELEVANT = 0.6
P_OTHER = 0.05
POOL = tuple(f"n{i}" for i in range(20))
RELEVANT = frozenset(POOL[i] for i in (3, 7, 11, 14, 18))
K = 10
IMPRESSIONS_PER_ROUND = 200
ROUNDS = 20


def position_bias(pos: int) -> float:
    return 1.0 / np.log2(pos + 2.0)


def simulate_clicks(served: tuple[str, ...], rng: np.random.Generator) -> list[int]:
    probs = [(P_RELEVANT if d in RELEVANT else P_OTHER) * position_bias(i) for i, d in enumerate(served)]
    return [i for i, p in enumerate(probs) if rng.random() < p]


def play_rounds(method: str, ranking_a: tuple[str, ...], ranking_b: tuple[str, ...], seed: int) -> list:
    rng = np.random.default_rng(seed)
    interleave = interleaver(method)
    outcomes = []
    for _ in range(ROUNDS):
        round_log = []
        for _ in range(IMPRESSIONS_PER_ROUND):
            merged = interleave(ranking_a, ranking_b, K, rng)
            round_log.append((merged.teams, simulate_clicks(merged.served, rng)))
        outcomes.append(round_outcome(round_log, method))
    return outcomes


IDEAL = tuple(sorted(POOL, key=lambda d: d not in RELEVANT))  # relevant items first
WORSE = tuple(IDEAL[5 + i // 2] if i % 2 == 0 else IDEAL[i // 2] for i in range(10)) + IDEAL[10:]  # relevant at 1,3,..,9
SHUFFLED = tuple(np.random.default_rng(7).permutation(POOL).tolist())  # a ranker that ignores relevance


def test_worse_ranker_puts_relevant_items_at_odd_ranks():
    assert [i for i, d in enumerate(WORSE) if d in RELEVANT] == [1, 3, 5, 7, 9]
    assert sorted(WORSE) == sorted(POOL)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_better_exploit_ranker_wins_most_rounds(method):
    outcomes = play_rounds(method, IDEAL, WORSE, seed=1)
    assert sum(o.winner == "exploit" for o in outcomes) >= 0.9 * ROUNDS
    assert not any(o.explore_won for o in outcomes)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_better_explore_ranker_wins_most_rounds(method):
    outcomes = play_rounds(method, WORSE, IDEAL, seed=2)
    assert sum(o.explore_won for o in outcomes) >= 0.9 * ROUNDS
    assert all(o.clicks_b > o.clicks_a for o in outcomes)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_identical_rankers_tie(method):
    outcomes = play_rounds(method, SHUFFLED, SHUFFLED, seed=3)
    assert sum(o.winner == "tie" for o in outcomes) >= 0.8 * ROUNDS
    wins_a, wins_b = sum(o.wins_a for o in outcomes), sum(o.wins_b for o in outcomes)
    assert abs(wins_a - wins_b) <= 0.1 * (wins_a + wins_b)
    assert sign_test_p(wins_a, wins_b) > 0.01


A = ("a", "b", "c", "d", "e", "f")
B = ("c", "x", "a", "y", "z")  # overlaps A in a and c


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("k", [0, 1, 4, 9, 50])
def test_served_list_has_no_duplicates_and_the_right_length(method, k):
    rng = np.random.default_rng(11)
    union = set(A) | set(B)
    for _ in range(50):
        merged = interleaver(method)(A, B, k, rng)
        assert len(merged.served) == min(k, len(union))
        assert len(set(merged.served)) == len(merged.served)
        assert set(merged.served) <= union
        assert set(merged.teams) <= {0, 1}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_items_are_credited_to_the_list_they_came_from(method):
    a, b = tuple(f"a{i}" for i in range(6)), tuple(f"b{i}" for i in range(6))
    rng = np.random.default_rng(5)
    for _ in range(50):
        merged = interleaver(method)(a, b, 8, rng)
        for item, team in zip(merged.served, merged.teams):
            assert team == (0 if item in a else 1)


def test_team_draft_keeps_teams_balanced_and_in_rank_order():
    a, b = tuple(f"a{i}" for i in range(6)), tuple(f"b{i}" for i in range(6))
    rng = np.random.default_rng(6)
    for _ in range(50):
        merged = team_draft(a, b, 10, rng)
        for n in range(1, len(merged.teams) + 1):
            ones = sum(merged.teams[:n])
            assert abs((n - ones) - ones) <= 1
        team_a = [d for d, t in zip(merged.served, merged.teams) if t == 0]
        assert team_a == list(a[:len(team_a)])


def test_team_draft_continues_from_the_other_list_when_one_is_used_up():
    merged = team_draft(("a",), ("b", "c", "d"), 4, np.random.default_rng(0))
    assert sorted(merged.served) == ["a", "b", "c", "d"]
    assert merged.teams.count(0) == 1


def test_probabilistic_first_position_follows_the_rank_softmax():
    a, b = tuple(f"a{i}" for i in range(5)), tuple(f"b{i}" for i in range(5))
    rng = np.random.default_rng(8)
    draws = 6000
    firsts = [probabilistic(a, b, 1, rng).served[0] for _ in range(draws)]
    expected = 0.5 / sum(r ** -TAU for r in range(1, 6))  # coin for list A, then rank 1 of A
    assert abs(firsts.count("a0") / draws - expected) < 0.025
    expected_a1 = 0.5 * 2 ** -TAU / sum(r ** -TAU for r in range(1, 6))
    assert abs(firsts.count("a1") / draws - expected_a1) < 0.015


@pytest.mark.parametrize("method", sorted(METHODS))
def test_deterministic_by_seed(method):
    def run(seed):
        rng = np.random.default_rng(seed)
        return [interleaver(method)(A, B, 6, rng) for _ in range(20)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_duplicate_items_in_a_ranking_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        team_draft(("a", "a"), ("b",), 2, np.random.default_rng(0))


def test_unknown_method_is_rejected():
    assert interleaver() is team_draft
    assert interleaver("probabilistic") is probabilistic
    with pytest.raises(ValueError, match="team_draft"):
        interleaver("balanced")


def test_credit_counts_clicks_per_team():
    assert credit((0, 1, 1, 0), [0, 2, 3]) == (2, 1)
    assert credit((0, 1, 1, 0), [2, 2]) == (0, 1)
    assert credit((0, 1), []) == (0, 0)
    with pytest.raises(ValueError, match="outside"):
        credit((0, 1), [2])


def test_interleaved_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        Interleaved(("a", "b"), (0,))


def test_sign_test_matches_the_binomial():
    assert sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)
    assert sign_test_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(600, 400) < 1e-9


def test_round_outcome_counts_and_verdict():
    explore_wins = [((0, 1), [1])] * 30 + [((0, 1), [0])] * 5 + [((0, 1), [0, 1])] * 10 + [((0, 1), [])] * 10
    outcome = round_outcome(explore_wins)
    assert (outcome.impressions, outcome.wins_a, outcome.wins_b, outcome.ties) == (55, 5, 30, 20)
    assert (outcome.clicks_a, outcome.clicks_b) == (15, 40)
    assert outcome.winner == "explore" and outcome.explore_won and not outcome.pending
    assert outcome.method == "team_draft"


def test_round_outcome_ties_when_the_difference_is_not_significant():
    close = [((0, 1), [1])] * 12 + [((0, 1), [0])] * 10 + [((0, 1), [])] * 40
    assert round_outcome(close).winner == "tie"
    assert round_outcome(close, significance=1.0).winner == "explore"  # plain majority


def test_a_round_stays_open_until_enough_impressions_are_decisive():
    few = [((0, 1), [1])] * (MIN_DECISIVE - 1) + [((0, 1), [])] * 100
    assert round_outcome(few).winner == "pending" and round_outcome(few).pending
    assert round_outcome(few + [((0, 1), [1])]).winner == "explore"
    assert round_outcome(few, min_decisive=MIN_DECISIVE - 1).winner == "explore"
    no_clicks = [((0, 1), [])] * 500
    assert round_outcome(no_clicks).winner == "pending"
    assert round_outcome(no_clicks, max_impressions=500).winner == "insufficient"


def test_the_stated_error_rate_holds_where_explore_is_no_better():
    """Rounds of equal networks (each impression decisive with chance 0.3, either side alike), each looked at
    after a random number of impressions as a schedule would: the share that steps stays at most SIGNIFICANCE / 2."""
    rng = np.random.default_rng(0)
    steps = decided = 0
    for _ in range(4000):
        size = int(rng.integers(20, 200))
        wins = rng.random(size) < 0.3
        sides = rng.integers(2, size=size)
        impressions = [((0, 1), [int(side)] if won else []) for won, side in zip(wins, sides)]
        outcome = round_outcome(impressions)
        decided += not outcome.pending
        steps += outcome.explore_won
    assert decided > 2000
    assert steps / decided <= SIGNIFICANCE / 2 + 0.01


def test_a_gate_round_decides_at_its_size_or_earlier_on_a_clear_result():
    exploit, explore, none = ((0, 1), [0]), ((0, 1), [1]), ((0, 1), [])
    close = [explore] * 60 + [exploit] * 40 + [none] * 100  # p = .057: an exploration round's verdict, not yet a gate's
    assert round_outcome(close).winner == "explore" and gate_outcome(close).pending
    assert gate_outcome(close, decisive=100).winner == "explore"
    clear = [explore] * 40 + [exploit] * 5  # p < .001 after 45 decisive impressions
    assert gate_outcome(clear).winner == "explore"
    assert gate_outcome([exploit] * 40 + [explore] * 5).winner == "exploit"
    assert gate_outcome(clear[:MIN_DECISIVE - 1]).pending  # never before MIN_DECISIVE decisive impressions
    even = [explore, exploit] * (GATE_DECISIVE // 2)
    assert gate_outcome(even[:-1]).pending and gate_outcome(even).winner == "tie"
    assert gate_outcome([none] * 300, max_impressions=300).winner == "insufficient"


def _gate_round(rng: np.random.Generator, served_wins: float, look_every: int = 100) -> str:
    """A gate round looked at every `look_every` impressions until it decides; each impression decisive with chance
    0.3, the served model (team 0) winning a decisive one with chance `served_wins`."""
    impressions: list = []
    while True:
        for _ in range(look_every):
            decisive = rng.random() < 0.3
            impressions.append(((0, 1), [int(rng.random() >= served_wins)] if decisive else []))
        outcome = gate_outcome(impressions)
        if not outcome.pending:
            return outcome.winner


def test_a_gate_round_refuses_an_equal_candidate_rarely_and_a_worse_one_mostly():
    """Its error rate with the early looks stays near SIGNIFICANCE / 2 for an equal candidate, and it refuses a
    candidate the served model outclicks in 59% of decisive impressions in most rounds (GATE_DECISIVE's power)."""
    rng = np.random.default_rng(0)
    equal = [_gate_round(rng, 0.5) for _ in range(400)]
    worse = [_gate_round(rng, 0.59) for _ in range(400)]
    print(f"refused: equal candidate {equal.count('exploit') / len(equal):.3f}, "
          f"worse {worse.count('exploit') / len(worse):.3f}")  # the figures in benchmarks/LEARNING.md (pytest -s)
    assert equal.count("exploit") / len(equal) <= SIGNIFICANCE / 2 + 0.03
    assert worse.count("exploit") / len(worse) >= 0.85


def test_round_outcome_rejects_unknown_method():
    with pytest.raises(ValueError):
        round_outcome([], "balanced")


def test_clicks_on_positions_no_team_placed_earn_no_credit():
    from drn.interleaving import credit
    assert credit((0, 1, -1, -1), [2, 3]) == (0, 0)
    assert credit((0, 1, -1), [0, 1, 2]) == (1, 1)
