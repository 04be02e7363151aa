"""The simulated news world: the environment DRN learns in, and the source of MIND-format historical logs.

News items arrive as a Poisson process and go stale within hours; users with slowly drifting interests come
back at random times, click with a known ground-truth probability, and come back sooner when they clicked more
(the "user activeness" that DRN's reward includes).

Two named worlds (`WORLDS`): "interaction", the default, whose click model has terms that no linear function of
the features can express (what a category is worth depends on the hour of day, how fast it goes stale on the
category, a provider's appeal on the category, and a user's interest in a category saturates with the clicks they
just made in it), and "logistic", the earlier world, where the click logit is linear in interest and quality. Everything is driven by seeded numpy Generators, one per
stream, so the same seed gives the same world, and the news pool and the users' interest drift do not depend on
the policy being evaluated (policies compared on one seed see the same news).

Live face: `World.next_request` / `World.respond`. Offline face: `generate_logs` writes behaviors.tsv + news.tsv.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from drn.mind import Impression, NewsItem, write_behaviors, write_news

HOUR = 3600.0
DAY = 24 * HOUR
SLATE_SIZE = 10  # items shown per request in the live world (a phone screen of news)


@dataclass(frozen=True)
class WorldConfig:
    """Every knob of the world. Defaults give MIND-like logs (see `generate_logs`)."""

    # clock
    start: float = 1573257600.0  # 2019-11-09 00:00 UTC: when the live face / the logs begin (MIND's collection week)
    warmup_days: float = 2.0  # unlogged days simulated before `start` with a random-order policy, to fill histories
    history_cap: int = 50  # at most this many (most recent) warm-up clicks per user form `history` (MIND's column)
    # population
    n_users: int = 500  # users U1..Un; each has one pending or scheduled request at any time
    n_categories: int = 15  # MIND has 17 categories
    subcategories_per_category: int = 6  # each subcategory belongs to one category (MIND: ~260 in all)
    entities_per_category: int = 20  # each entity belongs to one category; an item names 1-3 of its category's
    n_providers: int = 30  # provider i publishes at provider{i}.example (the url host the MIND reader keeps)
    # news pool
    items_per_hour: float = 50.0  # Poisson arrival rate of new items (world time)
    max_age_hours: float = 6.0  # only items younger than this are candidates
    freshness_half_life_hours: float = 3.0  # attractiveness halves every this many hours after publication
    min_candidates: int = 20  # each request offers a uniform number of candidates in [min, max] ...
    max_candidates: int = 50  # ... drawn uniformly without replacement from the live (young enough) items
    category_share_concentration: float = 2.0  # Dirichlet concentration of the categories' shares of new items
    # click model: P(click) = position_bias(rank) * sigmoid(logit) * freshness(age)
    click_logit_bias: float = -2.7  # logit intercept; sets the overall click rate (2-6% over random-order lists)
    quality_sd: float = 0.5  # item quality (global, same for all users) adds N(0, sd) to the logit
    category_popularity_sd: float = 0.5  # population-mean interest per category (global taste), N(0, sd)
    category_interest_sd: float = 1.2  # personal interest per category around the population mean
    subcategory_interest_sd: float = 0.6  # personal interest per subcategory
    entity_interest_sd: float = 0.6  # personal interest per entity (the item's entities are averaged)
    provider_interest_sd: float = 0.3  # personal interest per provider
    position_bias_power: float = 0.5  # position_bias(rank) = 1 / log2(rank + 2) ** power (rank 0 = top)
    # interaction terms of the click logit (all 0 in the "logistic" world): what a linear model cannot fit
    daily_cycle_amplitude: float = 0.8  # category c adds amplitude * cos(2 pi (hour - peak_c) / 24): morning
    #   and evening readers want different news (peak hours drawn uniformly per category)
    half_life_spread: float = 1.0  # category c's freshness half-life is the base one times exp(U(-spread, spread)):
    #   breaking news goes stale in an hour, features keep for hours
    provider_category_sd: float = 0.5  # a provider's appeal differs per category: N(0, sd) per (provider, category)
    satiation_per_click: float = 0.7  # each recent click of the user in the item's category lowers the logit by this
    satiation_memory_hours: float = 2.0  # recent clicks fade with this time constant (a user reads on, then moves on)
    # interest drift: an Ornstein-Uhlenbeck random walk around the population means, stepped for all users at once
    interest_memory_days: float = 30.0  # correlation of a user's interests d days apart is exp(-d / this)
    drift_tick_hours: float = 6.0  # interests step every this many hours of world time
    # returns: after a response with k clicks the next request comes Exp(mean = gap / (1 + per_click * k)) later
    return_gap_hours: float = 4.0  # mean gap after a response with no click
    return_rate_per_click: float = 0.5  # each click raises the return rate by this fraction of the base rate
    click_delay_seconds: float = 20.0  # mean time between successive clicks of one response (in shown order)


@dataclass(frozen=True)
class Request:
    """A user asks for news at `time`; the policy must order (a subset of) `candidates`."""

    request_id: str
    user: str
    time: float
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class Response:
    """What the user did with the shown list: (news_id, click time) in click order, and when they come back."""

    clicks: tuple[tuple[str, float], ...]
    return_time: float


def position_bias(rank: np.ndarray | int, power: float) -> np.ndarray | float:
    """Examination probability of 0-based `rank` (DCG-style discount, so the top slot is worth most)."""
    return 1.0 / np.log2(np.asarray(rank) + 2.0) ** power


@dataclass(frozen=True)
class _Streams:
    """Independent random streams, so e.g. the news pool does not change when a policy changes the clicks."""

    setup: np.random.Generator
    items: np.random.Generator
    drift: np.random.Generator
    requests: np.random.Generator
    clicks: np.random.Generator
    returns: np.random.Generator
    warmup: np.random.Generator
    interactions: np.random.Generator  # after the seven of the first world, so its streams stay what they were
    tastes: np.random.Generator  # redraws of users' interests (a drift experiment)

    @classmethod
    def from_seed(cls, seed: int) -> _Streams:
        children = np.random.SeedSequence(seed).spawn(9)
        return cls(*(np.random.default_rng(child) for child in children))


class World:
    """The live news world: an event heap of users' next request times over a growing, aging news pool."""

    def __init__(self, config: WorldConfig = WorldConfig(), seed: int = 0):
        self.config = config
        self._rng = _Streams.from_seed(seed)
        self._setup_taxonomy()
        self._setup_items()
        self._setup_users()
        self._setup_interactions()
        self._pos_bias = position_bias(np.arange(config.max_candidates), config.position_bias_power)
        self._pending: dict[str, Request] = {}
        self._issued = 0
        self.now = config.start - config.warmup_days * DAY
        self._next_tick = self.now + config.drift_tick_hours * HOUR
        self._publish_until(self.now)
        self._heap: list[tuple[float, int]] = []
        gaps = self._rng.returns.exponential(config.return_gap_hours * HOUR, config.n_users)
        for user, gap in enumerate(gaps):
            heapq.heappush(self._heap, (self.now + float(gap), user))
        self._history = self._warm_up()

    # ----- setup -----
    def _setup_taxonomy(self) -> None:
        """Names and the item-level category mix; feature columns of the interest matrix: cat | sub | prov | ent."""
        c = self.config
        rng = self._rng.setup
        self._cat_names = [f"c{i}" for i in range(c.n_categories)]
        self._sub_names = [f"c{i}s{j}" for i in range(c.n_categories) for j in range(c.subcategories_per_category)]
        self._ent_names = [f"E{i}" for i in range(c.n_categories * c.entities_per_category)]
        self._cat_share = rng.dirichlet(np.full(c.n_categories, c.category_share_concentration))
        self._sub_col = c.n_categories
        self._prov_col = self._sub_col + len(self._sub_names)
        self._ent_col = self._prov_col + c.n_providers
        n_cols = self._ent_col + len(self._ent_names)
        self._mean = np.zeros(n_cols)
        self._mean[: c.n_categories] = rng.normal(0.0, c.category_popularity_sd, c.n_categories)
        self._sd = np.concatenate([
            np.full(c.n_categories, c.category_interest_sd),
            np.full(len(self._sub_names), c.subcategory_interest_sd),
            np.full(c.n_providers, c.provider_interest_sd),
            np.full(len(self._ent_names), c.entity_interest_sd),
        ])

    def _setup_items(self) -> None:
        """Growable arrays; per item 6 interest columns (cat, sub, prov, 3 entity slots; unused slots weigh 0)."""
        cap = 1024
        self._n_items = 0
        self._published = np.zeros(cap)
        self._quality = np.zeros(cap)
        self._cols = np.zeros((cap, 6), dtype=np.int64)
        self._weights = np.zeros((cap, 6))
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._live_from = 0  # items [live_from, n_items) are younger than max_age at the current clock
        self._next_arrival = self.config.start - self.config.warmup_days * DAY - self.config.max_age_hours * HOUR

    def _setup_users(self) -> None:
        """Interests start at a draw from the drift's stationary distribution, so drift does not trend."""
        c = self.config
        self._users = tuple(f"U{i + 1}" for i in range(c.n_users))
        self._user_index = {u: i for i, u in enumerate(self._users)}
        self._interest = self._mean + self._sd * self._rng.setup.standard_normal((c.n_users, len(self._mean)))

    def _setup_interactions(self) -> None:
        """The global tables of the interaction terms, and each user's satiation per category (fading counts)."""
        c, rng = self.config, self._rng.interactions
        self._peak_hour = rng.uniform(0.0, 24.0, c.n_categories)
        spread = rng.uniform(-1.0, 1.0, c.n_categories) * c.half_life_spread
        self._half_life_s = c.freshness_half_life_hours * HOUR * np.exp(spread)
        self._provider_taste = rng.standard_normal((c.n_providers, c.n_categories)) * c.provider_category_sd
        self._satiation = np.zeros((c.n_users, c.n_categories))
        self._satiation_at = np.zeros(c.n_users)  # when each user's satiation row was last brought up to date

    # ----- clock -----
    def _publish_until(self, t: float) -> None:
        """Publish the items that arrived up to `t`, step interest drift, and drop too-old items from the pool."""
        rate = self.config.items_per_hour / HOUR
        while self._next_arrival <= t:
            self._publish(self._next_arrival)
            self._next_arrival += float(self._rng.items.exponential(1.0 / rate))
        while self._next_tick <= t:
            self._drift()
            self._next_tick += self.config.drift_tick_hours * HOUR
        oldest = t - self.config.max_age_hours * HOUR
        self._live_from = int(np.searchsorted(self._published[: self._n_items], oldest, side="right"))

    def _publish(self, t: float) -> None:
        c, rng = self.config, self._rng.items
        if self._n_items == len(self._published):
            self._grow()
        i = self._n_items
        cat = int(rng.choice(c.n_categories, p=self._cat_share))
        sub = cat * c.subcategories_per_category + int(rng.integers(c.subcategories_per_category))
        n_ent = int(rng.integers(1, 4))
        ents = cat * c.entities_per_category + rng.choice(c.entities_per_category, n_ent, replace=False)
        self._published[i] = t
        self._quality[i] = rng.normal(0.0, c.quality_sd)
        self._cols[i, :3] = (cat, self._sub_col + sub, self._prov_col + int(rng.integers(c.n_providers)))
        self._cols[i, 3:3 + n_ent] = self._ent_col + ents
        self._weights[i, :3] = 1.0
        self._weights[i, 3:3 + n_ent] = 1.0 / n_ent
        news_id = f"N{i + 1}"
        self._ids.append(news_id)
        self._index[news_id] = i
        self._n_items += 1

    def _grow(self) -> None:
        self._published = np.concatenate([self._published, np.zeros_like(self._published)])
        self._quality = np.concatenate([self._quality, np.zeros_like(self._quality)])
        self._cols = np.concatenate([self._cols, np.zeros_like(self._cols)])
        self._weights = np.concatenate([self._weights, np.zeros_like(self._weights)])

    def _drift(self) -> None:
        """One exact Ornstein-Uhlenbeck step for every user (policy-independent: it only follows the clock)."""
        c = self.config
        rho = math.exp(-c.drift_tick_hours / (c.interest_memory_days * 24))
        noise = self._rng.drift.standard_normal(self._interest.shape)
        self._interest = self._mean + rho * (self._interest - self._mean) + math.sqrt(1 - rho * rho) * self._sd * noise

    def _warm_up(self) -> list[tuple[str, ...]]:
        """Run the unlogged period with random-order lists; the clicks become the users' histories."""
        clicks: list[list[str]] = [[] for _ in self._users]
        while self._heap[0][0] < self.config.start:
            request = self.next_request()
            shown = self._rng.warmup.permutation(len(request.candidates))
            response = self.respond(request, [request.candidates[j] for j in shown])
            clicks[self._user_index[request.user]].extend(news_id for news_id, _ in response.clicks)
        self.now = self.config.start
        self._publish_until(self.now)
        cap = self.config.history_cap
        return [tuple(c[-cap:]) if cap else () for c in clicks]

    # ----- the live face -----
    def next_request(self) -> Request:
        """Advance the clock to the earliest scheduled user request and offer that user live candidates."""
        c, rng = self.config, self._rng.requests
        if not self._heap:
            raise RuntimeError("every user has an unanswered request: respond() to some before asking for more")
        t, user = heapq.heappop(self._heap)
        self.now = max(self.now, t)
        self._publish_until(self.now)
        n_live = self._n_items - self._live_from
        k = min(n_live, int(rng.integers(c.min_candidates, c.max_candidates + 1)))
        picks = self._live_from + rng.choice(n_live, k, replace=False)
        self._issued += 1
        request = Request(f"R{self._issued}", self._users[user], self.now, tuple(self._ids[i] for i in picks))
        self._pending[request.request_id] = request
        return request

    def push_back(self, request: Request) -> None:
        """Withdraw an unanswered request: its user asks again at the same time (a log that ends before it)."""
        del self._pending[request.request_id]
        heapq.heappush(self._heap, (request.time, self._user_index[request.user]))

    def respond(self, request: Request, shown: Sequence[str]) -> Response:
        """Draw the user's clicks on `shown` (top first) and schedule their next request accordingly."""
        self._check_response(request, shown)
        del self._pending[request.request_id]
        c = self.config
        user = self._user_index[request.user]
        items = self._rows(shown)
        p = self._click_chances(request, items)
        clicked = np.flatnonzero(self._rng.clicks.random(len(shown)) < p)
        times = request.time + np.cumsum(self._rng.clicks.exponential(c.click_delay_seconds, len(clicked)))
        clicks = tuple((shown[j], float(t)) for j, t in zip(clicked, times))
        if self.config.satiation_per_click:
            self._satiation[user] = self._satiation_now(user, request.time)
            self._satiation_at[user] = request.time
            np.add.at(self._satiation[user], self._cols[items[clicked], 0], 1.0)
        mean_gap = c.return_gap_hours * HOUR / (1.0 + c.return_rate_per_click * len(clicks))
        last = clicks[-1][1] if clicks else request.time
        return_time = max(self.now, last + float(self._rng.returns.exponential(mean_gap)))
        heapq.heappush(self._heap, (return_time, user))
        return Response(clicks, return_time)

    def expected_clicks(self, request: Request, shown: Sequence[str]) -> float:
        """The clicks `respond(request, shown)` would draw on average, drawing nothing: what a list is worth to its
        user, free of the click noise. Ask before `respond` (answering moves the user's satiation on)."""
        self._check_response(request, shown)
        return float(self._click_chances(request, self._rows(shown)).sum())

    def oracle_expected_clicks(self, request: Request, k: int) -> float:
        """The most clicks any list of `k` of the request's candidates could expect: the click model's own ranking
        (position bias falls with the rank, so the most relevant items go on top)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        relevance = self._relevance(self._user_index[request.user], self._rows(request.candidates), request.time)
        best = np.sort(relevance)[::-1][:k]
        return float(self._pos_bias[: len(best)] @ best)

    def _rows(self, news_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self._index[n] for n in news_ids), dtype=np.int64, count=len(news_ids))

    def _click_chances(self, request: Request, items: np.ndarray) -> np.ndarray:
        """P(click) of each of `items` shown in that order to the request's user at its time: what `respond` draws."""
        return self._pos_bias[: len(items)] * self._relevance(self._user_index[request.user], items, request.time)

    def _check_response(self, request: Request, shown: Sequence[str]) -> None:
        pending = self._pending.get(request.request_id)
        if pending is None:
            issued = request.request_id[1:].isdigit() and 0 < int(request.request_id[1:]) <= self._issued
            raise ValueError(f"request {request.request_id!r} was "
                             + ("already answered" if issued else "not issued by this world"))
        if pending != request:
            raise ValueError(f"request {request.request_id!r} differs from the one this world issued")
        if not shown:
            raise ValueError("shown is empty: show at least one candidate")
        if len(set(shown)) != len(shown):
            raise ValueError("shown lists an item twice")
        unknown = set(shown).difference(request.candidates)
        if unknown:
            raise ValueError(f"shown has ids that are not candidates of {request.request_id}: {sorted(unknown)[:5]}")

    def _relevance(self, user: int, items: np.ndarray, time: float, interactions: bool = True) -> np.ndarray:
        """sigmoid(bias + personal interest + quality + interactions) * freshness: what the user would click at the
        top slot. Without `interactions`: the same model with its interaction terms left out (one half-life)."""
        c = self.config
        z = self._interest[user]
        logit = c.click_logit_bias + self._quality[items] + (z[self._cols[items]] * self._weights[items]).sum(axis=1)
        category = self._cols[items, 0]
        half_life = self._half_life_s[category] if interactions else c.freshness_half_life_hours * HOUR
        if interactions:
            logit += self._interaction_logit(user, items, category, time)
        age = time - self._published[items]
        freshness = np.where(age >= 0, 0.5 ** (np.maximum(age, 0) / half_life), 0.0)
        return freshness / (1.0 + np.exp(-logit))

    @property
    def latest_request(self) -> Request | None:
        """The request issued last, while it is unanswered (what a policy is being asked to rank now)."""
        latest = f"R{self._issued}"
        return self._pending.get(latest)

    def _interaction_logit(self, user: int, items: np.ndarray, category: np.ndarray, time: float) -> np.ndarray:
        """Hour x category, provider x category and the user's satiation in the category (fading recent clicks)."""
        c = self.config
        hour = (time % DAY) / HOUR
        logit = c.daily_cycle_amplitude * np.cos(2 * math.pi * (hour - self._peak_hour[category]) / 24.0)
        logit += self._provider_taste[self._cols[items, 2] - self._prov_col, category]
        if c.satiation_per_click:
            logit -= c.satiation_per_click * self._satiation_now(user, time)[category]
        return logit

    def _satiation_now(self, user: int, time: float) -> np.ndarray:
        """The user's fading count of recent clicks per category, as of `time` (no earlier than its last update)."""
        elapsed = max(time - self._satiation_at[user], 0.0)
        return self._satiation[user] * math.exp(-elapsed / (self.config.satiation_memory_hours * HOUR))

    def click_probability(self, user: str, news_id: str, position: int, time: float,
                          interactions: bool = True) -> float:
        """Ground truth P(click) at 0-based `position` and `time` (with the user's interests as of the clock now):
        what an oracle ranks by. `interactions=False`: as if the click model had no interaction terms, to measure
        what they are worth."""
        if position < 0:
            raise ValueError(f"position is a 0-based rank, got {position}")
        items = np.array([self._item_index(news_id)])
        relevance = self._relevance(self._user_index[user], items, time, interactions)[0]
        return float(position_bias(position, self.config.position_bias_power) * relevance)

    def _item_index(self, news_id: str) -> int:
        try:
            return self._index[news_id]
        except KeyError:
            raise KeyError(f"no item {news_id!r} has been published") from None

    def item(self, news_id: str) -> NewsItem:
        """Metadata of a published item, in the project's MIND data type (with the publish time the world knows)."""
        i = self._item_index(news_id)
        cat, sub, prov = self._cols[i, :3]
        n_ent = int(np.count_nonzero(self._weights[i, 3:]))
        category, subcategory = self._cat_names[cat], self._sub_names[sub - self._sub_col]
        return NewsItem(
            news_id=news_id, category=category, subcategory=subcategory,
            title=f"{category}/{subcategory} story {i + 1}",
            provider=f"provider{prov - self._prov_col}.example",
            entities=tuple(self._ent_names[e - self._ent_col] for e in self._cols[i, 3:3 + n_ent]),
            published=float(self._published[i]),
        )

    def redraw_tastes(self, share: float) -> list[str]:
        """A sudden drift: `share` of the users (drawn at random) get new interests from the population's
        distribution, as if other people took over their accounts; returns who. Drift then goes on as before."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        rng = self._rng.tastes
        chosen = np.sort(rng.choice(len(self._users), int(round(share * len(self._users))), replace=False))
        self._interest[chosen] = self._mean + self._sd * rng.standard_normal((len(chosen), len(self._mean)))
        return [self._users[i] for i in chosen]

    def history(self, user: str) -> tuple[str, ...]:
        """The user's clicks before `start` (the warm-up), oldest first, at most `history_cap`."""
        return self._history[self._user_index[user]]

    @property
    def users(self) -> tuple[str, ...]:
        """Every user id (U1..Un), for policies and checks that iterate over the population."""
        return self._users


# The named worlds of the benchmark, the demo and `drn world generate`.
WORLDS: dict[str, WorldConfig] = {
    "interaction": WorldConfig(),
    "logistic": WorldConfig(click_logit_bias=-2.5, daily_cycle_amplitude=0.0, half_life_spread=0.0,
                            provider_category_sd=0.0, satiation_per_click=0.0),
}
DEFAULT_WORLD = "interaction"


def world_config(name: str = DEFAULT_WORLD, **overrides) -> WorldConfig:
    """A named world with some fields replaced (e.g. n_users); an unknown name is refused with the choices."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; choose one of {sorted(WORLDS)}")
    return replace(WORLDS[name], **overrides)


def mean_hours_to_last_click(impressions: Iterable[Impression], published: Mapping[str, float],
                             window: tuple[float, float]) -> float:
    """Mean time from publication to last logged click, over clicked items published inside `window`.

    DRN.md's staleness figure (4.1 h). Choose the window so that items could not be clicked outside the logs
    (e.g. [logs start, logs end - max age]); otherwise truncation biases the figure.
    """
    last: dict[str, float] = {}
    for imp in impressions:
        for news_id in imp.clicked:
            last[news_id] = max(last.get(news_id, imp.time), imp.time)
    gaps = [t - published[n] for n, t in last.items() if window[0] <= published[n] < window[1]]
    return float(np.mean(gaps)) / HOUR if gaps else float("nan")


Observer = Callable[[World, Request, tuple[str, ...]], None]  # see log_random_order


def log_random_order(world: World, end: float, order_rng: np.random.Generator,
                     progress: Callable[[int, int], None] | None = None,
                     observe: Observer | None = None) -> list[Impression]:
    """Run the world until `end` with a logging policy that shows every candidate in a random order.

    Every candidate gets a label (as in MIND); click times are kept on the impressions (MIND files drop them).
    The world is left at `end`, ready to go on live. `progress(hours_done, hours_total)` ticks per world hour.
    `observe(world, request, shown)` is called before each answer, while the world is as its clicks will be drawn in
    (to read the true click chances, `World.click_probability`, which draws nothing: the logs stay the same).
    """
    start = world.now
    impressions: list[Impression] = []
    hours_total, hours_done = int(round((end - start) / HOUR)), 0
    while True:
        request = world.next_request()
        while progress and hours_done < hours_total and request.time >= start + (hours_done + 1) * HOUR:
            hours_done += 1
            progress(hours_done, hours_total)
        if request.time >= end:
            world.push_back(request)
            break
        shown = tuple(request.candidates[j] for j in order_rng.permutation(len(request.candidates)))
        if observe:
            observe(world, request, shown)
        clicks = dict(world.respond(request, shown).clicks)
        impressions.append(Impression(str(len(impressions) + 1), request.user, request.time,
                                      world.history(request.user), shown, tuple(int(n in clicks) for n in shown),
                                      tuple(clicks[n] for n in shown if n in clicks)))
    return impressions


def logged_world(config: WorldConfig, seed: int, days: float, progress: Callable[[int, int], None] | None = None,
                 observe: Observer | None = None) -> tuple[World, list[Impression]]:
    """The world after `days` days of random-order logging, and those logs: what `generate_logs` writes, and the
    point a live run (benchmark, demo) continues from. The logging order has its own stream, so the same
    (config, seed, days) always gives the same world state, and the first d days of a longer log are the d-day log."""
    world = World(config, seed)
    impressions = log_random_order(world, config.start + days * DAY, np.random.default_rng([seed, 1]), progress,
                                   observe)
    return world, impressions


def generate_logs(out_dir: str | Path, days: int, users: int, seed: int, config: WorldConfig | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Write `days` days of MIND logs (behaviors.tsv, news.tsv) of a random-order logging policy; return counts.

    The logging policy shows every candidate in a random order, so every candidate gets a label (as in MIND).
    `progress(hours_done, hours_total)` is called once per simulated hour.
    """
    config = replace(config or WorldConfig(), n_users=users)
    end = config.start + days * DAY
    world, impressions = logged_world(config, seed, days, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_behaviors(out / "behaviors.tsv", impressions)
    referenced = {n for imp in impressions for n in imp.candidates + imp.history}
    news = [world.item(n) for n in sorted(referenced, key=lambda n: int(n[1:]))]
    write_news(out / "news.tsv", news)
    n_candidates = sum(len(imp.candidates) for imp in impressions)
    n_clicks = sum(sum(imp.labels) for imp in impressions)
    published = {item.news_id: item.published for item in news}
    return {
        "impressions": len(impressions),
        "users": len({imp.user for imp in impressions}),
        "news": len(news),
        "candidates": n_candidates,
        "clicks": n_clicks,
        "click_rate": n_clicks / max(n_candidates, 1),
        "candidates_per_impression": n_candidates / max(len(impressions), 1),
        "mean_hours_to_last_click": mean_hours_to_last_click(
            impressions, published, (config.start, end - config.max_age_hours * HOUR)),
        "start": config.start,
        "end": end,
    }
