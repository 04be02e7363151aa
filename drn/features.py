"""DRN's four feature groups, computed from one online feature state that is updated event by event.

Serving calls `features()` for a request, then `record_impression()` and `record_click()` as events arrive.
Training replays logs through exactly the same calls (`replay`), so a training sample is the vector serving
would have computed at that moment: no train/serve skew, and no look-ahead (an impression's own clicks and
everything after it are recorded only after its features are taken).

Vector layout (DRN.md's groups, adapted to what MIND and the simulated world provide):
- state  = user group + request context   -> the value tower V(s)
- action = news group + user-news group + item freshness (the per-item part of the paper's context group)
                                           -> with the state, the advantage tower A(s, a)
Categorical metadata is hashed into fixed buckets (crc32, stable across processes) so the vector size never
depends on the data; the schema names every block so a model version can be checked against serving.
"""
from __future__ import annotations

import copy
import heapq
import itertools
import math
import zlib
from bisect import bisect_right, insort
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from drn.mind import Impression, NewsItem

SCHEMA_VERSION = 1
HOUR = 3600.0
# Sliding windows of DRN.md's click counts ("last 1h / 6h / 24h / 1w"); user profiles add an all-time window
# that also holds the history a log gives without timestamps (MIND's history column).
WINDOWS: tuple[tuple[str, float], ...] = (("1h", HOUR), ("6h", 6 * HOUR), ("24h", 24 * HOUR), ("1w", 168 * HOUR))
PROFILE_WINDOWS: tuple[str, ...] = tuple(name for name, _ in WINDOWS) + ("all",)
# Hash buckets per metadata field. MIND has 17 categories and ~270 subcategories; collisions only merge rare ones.
CATEGORY_BUCKETS = 32
SUBCATEGORY_BUCKETS = 64
ENTITY_BUCKETS = 64
PROVIDER_BUCKETS = 16
METADATA_FIELDS: tuple[tuple[str, int], ...] = (
    ("category", CATEGORY_BUCKETS), ("subcategory", SUBCATEGORY_BUCKETS),
    ("entity", ENTITY_BUCKETS), ("provider", PROVIDER_BUCKETS))
METADATA_DIM = sum(size for _, size in METADATA_FIELDS)
SEGMENT_ONE_HOT = np.eye(len(METADATA_FIELDS), dtype=np.float32)[  # (bucket, field): which field a bucket is of
    np.repeat(np.arange(len(METADATA_FIELDS)), [size for _, size in METADATA_FIELDS])]
CTR_PRIOR_CLICKS, CTR_PRIOR_IMPRESSIONS = 1.0, 25.0  # smoothing of an item's click rate (~4%, MIND's rate)
FRESHNESS_DECAY_S = 4.1 * HOUR  # DRN.md: mean time from publication to last click was 4.1 h
# Users whose profiles are kept between their requests, most recently asked for first (each a few windows by
# METADATA_DIM floats, twice): the active users of a serving process; a replay over millions keeps only the latest.
PROFILES_KEPT = 4096
# A long-running service forgets an item idle this long (no description, event or use in a history) once its window
# counts are empty, so a news stream does not fill its memory: a week past the longest window. Checked every hour.
ITEM_IDLE_S = 2 * WINDOWS[-1][1]
ITEM_SWEEP_S = HOUR


def _blocks() -> dict[str, list[tuple[str, int]]]:
    """The named blocks of each part of the vector, in order: the single definition of the layout."""
    user = [(f"user.profile_{w}", METADATA_DIM) for w in PROFILE_WINDOWS]
    user += [(f"user.clicks_{w}", 1) for w, _ in WINDOWS] + [("user.clicks_all", 1)]
    user += [(f"user.impressions_{w}", 1) for w, _ in WINDOWS] + [("user.hours_since_last_request", 1)]
    context = [("context.hour_sin", 1), ("context.hour_cos", 1), ("context.weekday", 7)]
    news = [("news.metadata", METADATA_DIM), ("news.has_metadata", 1)]
    news += [(f"news.clicks_{w}", 1) for w, _ in WINDOWS] + [(f"news.impressions_{w}", 1) for w, _ in WINDOWS]
    news += [("news.ctr_24h", 1), ("news.ctr_1w", 1)]
    user_news = [(f"user_news.overlap_{w}", len(METADATA_FIELDS)) for w in PROFILE_WINDOWS]
    # clicked in the user's history or last week / times shown in the week since first shown: per-user memory of
    # items stays bounded on a long-running service (a week is longer than news stays a candidate)
    user_news += [("user_news.clicked_before", 1), ("user_news.shown_before", 1)]
    freshness = [("freshness.log_age_hours", 1), ("freshness.decay", 1)]
    return {"state": user + context, "action": news + user_news + freshness}


@dataclass(frozen=True)
class FeatureSchema:
    """Names, sizes and version of the feature vector; travels with every model version."""

    version: int = SCHEMA_VERSION
    blocks: Mapping[str, Sequence[tuple[str, int]]] = field(default_factory=_blocks)

    @property
    def state_dim(self) -> int:
        return sum(size for _, size in self.blocks["state"])

    @property
    def action_dim(self) -> int:
        return sum(size for _, size in self.blocks["action"])

    def index(self, name: str) -> tuple[str, slice]:
        """Which part ('state' or 'action') holds block `name`, and where."""
        for part, blocks in self.blocks.items():
            start = 0
            for block, size in blocks:
                if block == name:
                    return part, slice(start, start + size)
                start += size
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"version": self.version, "state_dim": self.state_dim, "action_dim": self.action_dim,
                "blocks": {part: [[n, s] for n, s in blocks] for part, blocks in self.blocks.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "FeatureSchema":
        return cls(int(data["version"]), {p: [(n, int(s)) for n, s in b] for p, b in data["blocks"].items()})

    def check_compatible(self, other: "FeatureSchema") -> None:
        """Refuse a model whose features were built differently from the ones this code computes."""
        if self.to_dict() != other.to_dict():
            raise ValueError(f"feature schema mismatch: model has version {other.version} "
                             f"({other.state_dim}+{other.action_dim} dims), code computes version {self.version} "
                             f"({self.state_dim}+{self.action_dim} dims)")


SCHEMA = FeatureSchema()


def _columns(first: str, last: str) -> slice:
    """The action columns from block `first` through block `last` (adjacent in the layout)."""
    return slice(SCHEMA.index(first)[1].start, SCHEMA.index(last)[1].stop)


# The columns of a candidate's row that change only when the item's description does (`FeatureBatch.item_stamps`
# says when): they lead the row, so a scorer can keep per-item work on them.
ITEM_STATIC = _columns("news.metadata", "news.has_metadata")
# Where `FeatureState.features` writes each part of a candidate's row (the layout stays defined by `_blocks`).
_METADATA = _columns("news.metadata", "news.metadata")
_KNOWN = _columns("news.has_metadata", "news.has_metadata")
_COUNTS = _columns(f"news.clicks_{WINDOWS[0][0]}", f"news.impressions_{WINDOWS[-1][0]}")  # clicks..., impressions...
_CTR = _columns("news.ctr_24h", "news.ctr_1w")
_OVERLAP = _columns(f"user_news.overlap_{PROFILE_WINDOWS[0]}", f"user_news.overlap_{PROFILE_WINDOWS[-1]}")
_CLICKED, _SHOWN = (SCHEMA.index(name)[1].start for name in ("user_news.clicked_before", "user_news.shown_before"))
_AGE, _DECAY = (SCHEMA.index(name)[1].start for name in ("freshness.log_age_hours", "freshness.decay"))


@dataclass
class FeatureBatch:
    """The features of one request: the shared state vector and one action row per candidate."""

    state: np.ndarray  # (state_dim,) float32
    action: np.ndarray  # (n_candidates, action_dim) float32
    candidates: tuple[str, ...]
    # Per candidate, its item's row in the state's item table and the stamp of the last write of its ITEM_STATIC
    # columns (unique in the process): a scorer may reuse work on those columns while the stamp is unchanged.
    # None for batches not taken from a FeatureState.
    item_rows: np.ndarray | None = None
    item_stamps: np.ndarray | None = None

    def column(self, name: str) -> np.ndarray:
        """A named block, e.g. `news.clicks_24h` -> (n,) for per-item blocks of size 1."""
        part, where = SCHEMA.index(name)
        values = self.state[where] if part == "state" else self.action[:, where]
        return values[..., 0] if values.shape[-1] == 1 else values


def _bucket(value: str, buckets: int) -> int:
    return zlib.crc32(value.encode("utf-8")) % buckets


def metadata_vector(item: NewsItem) -> np.ndarray:
    """Hashed one-hot of category, subcategory, provider; entities spread to sum 1. Zeros for unknown items."""
    vector = np.zeros(METADATA_DIM, dtype=np.float32)
    if not item.known:
        return vector
    start = 0
    for name, size in METADATA_FIELDS:
        values = item.entities if name == "entity" else (getattr(item, name),)
        for value in values:
            vector[start + _bucket(value, size)] += 1.0 / len(values)
        start += size
    return vector


@dataclass
class _UserState:
    """What one user did, kept for the longest window only (the all-time profile is one vector), so it stays
    bounded however long the service runs."""

    clicks: list[tuple[float, str]] = field(default_factory=list)  # in time order, last week only
    all_time_profile: np.ndarray = field(default_factory=lambda: np.zeros(METADATA_DIM, dtype=np.float32))
    all_time_clicks: int = 0
    clicked: dict[str, int] = field(default_factory=dict)  # per item: its history entries plus clicks in `clicks`
    shown: dict[str, int] = field(default_factory=dict)  # times shown, in the order first shown ...
    shown_at: list[float] = field(default_factory=list)  # ... and when first shown, in the same order
    impression_times: list[float] = field(default_factory=list)

    def forget_shown(self, before: float) -> None:
        """Forget the items first shown at or before `before` (the dict keeps first-shown order). The dict is
        rebuilt rather than deleted from: a dict never gives back the table its largest week needed, so over months
        of visits every user's would grow to their busiest week's size."""
        # the leading run at or before `before` (times are appended as requests arrive, not always in order)
        old = next((i for i, at in enumerate(self.shown_at) if at > before), len(self.shown_at))
        if old:
            del self.shown_at[:old]
            self.shown = dict(itertools.islice(self.shown.items(), old, None))

    def forget_clicks(self, before: float) -> None:
        """Drop the clicks at or before `before` from the week's list and from `clicked` (rebuilt, as `shown`)."""
        old = bisect_right(self.clicks, before, key=_click_time)
        if not old:
            return
        clicked = self.clicked
        for _, news_id in self.clicks[:old]:
            clicked[news_id] -= 1
        self.clicked = {news_id: count for news_id, count in clicked.items() if count}
        del self.clicks[:old]


class _Profiles(NamedTuple):
    """A user's per-window profiles, as features need them. They change only when a click arrives or leaves a
    window (or an item's metadata changes), far more rarely than the user asks for recommendations, so they are kept
    with the key they were computed for."""

    key: tuple[int, ...]  # (known items' metadata changes, clicks ever applied, clicks in each window)
    matrix: np.ndarray  # (profile windows, METADATA_DIM): fractions of the window's clicks per metadata value
    by_field: np.ndarray  # (METADATA_DIM, windows x fields): one product with it gives every user-news overlap


def _click_time(click: tuple[float, str]) -> float:
    return click[0]


def _count_since(times: list[float], since: float) -> int:
    return len(times) - bisect_right(times, since)


def _prune(times: list[float], before: float) -> None:
    """Drop times at or before `before` (the longest window's start), so state stays bounded as logs grow."""
    if times and times[0] <= before:
        del times[: bisect_right(times, before)]


_STAMPS = itertools.count(1)  # item description writes, numbered across every FeatureState of the process


class _ItemTable:
    """Per-item state as rows of arrays, so a request's candidates are read with one index instead of a Python loop.

    Row 0 is the unknown item (an id never described nor shown): zeros, never written. Window counts are kept as
    running counters: an event adds 1 to each of its windows' counters and waits in that window's heap (by time)
    until the clock has moved a window's span past it. So a count is "events with time > clock - span", the same
    as counting timestamps, but costs nothing per candidate at request time."""

    KINDS = ("clicks", "impressions")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        capacity = 1024
        self.metadata = np.zeros((capacity, METADATA_DIM), dtype=np.float32)
        self.known = np.zeros(capacity, dtype=bool)
        self.published = np.full(capacity, np.nan)  # epoch seconds, NaN when not given
        self.first_seen = np.full(capacity, np.nan)  # first impression, NaN before it
        self.counts = np.zeros((capacity, len(self.KINDS) * len(WINDOWS)), dtype=np.int64)  # clicks..., impressions...
        self.stamps = np.zeros(capacity, dtype=np.int64)  # per row, when `metadata` and `known` were last written
        # per row, the clock when last described or used; -inf: not since a clock was known; inf: no item
        self.touched = np.full(capacity, np.inf)
        self.ids: list[str | None] = [None] * capacity  # per row, its item's id
        self._free: list[int] = []  # rows of forgotten items, used again before the table grows
        # per counter column, a heap of (time, event number, rows) of the events still inside that column's window
        self._expiring: list[list[tuple[float, int, list[int]]]] = [[] for _ in range(self.counts.shape[1])]
        self._events = 0  # events counted so far: orders a heap's entries of equal time without comparing rows
        self._rows = 1

    def row(self, news_id: str) -> int:
        """The row of `news_id`, added (zeros) when it is new."""
        row = self.index.get(news_id)
        if row is None:
            if self._free:
                row = self._free.pop()
            else:
                if self._rows == len(self.known):
                    self._grow()
                row, self._rows = self._rows, self._rows + 1
            self.index[news_id], self.ids[row], self.touched[row] = row, news_id, -np.inf
        return row

    def describe(self, row: int, metadata: np.ndarray, known: bool) -> bool:
        """Write an item's description; a new stamp, and True, only when it differs from what the row held."""
        if known == self.known[row] and np.array_equal(metadata, self.metadata[row]):
            return False
        self.metadata[row], self.known[row], self.stamps[row] = metadata, known, next(_STAMPS)
        return True

    def rows(self, news_ids: Sequence[str]) -> np.ndarray:
        """Rows of a request's candidates; 0 (the unknown item) for ids never met, without adding them."""
        get = self.index.get
        return np.fromiter((get(n, 0) for n in news_ids), dtype=np.intp, count=len(news_ids))

    def count(self, rows: list[int], kind: int, time: float) -> None:
        """One event (kind 0: click, 1: impression) at `time` of each item at `rows` (distinct rows). The items of
        one event wait in each window's heap as one entry: a shown list is one push per window, not ten."""
        first = kind * len(WINDOWS)
        self.counts[rows, first:first + len(WINDOWS)] += 1
        self._events += 1
        for column in range(first, first + len(WINDOWS)):
            heapq.heappush(self._expiring[column], (time, self._events, rows))

    def expire(self, now: float) -> None:
        """Take events out of the windows they have left (time <= now - span)."""
        for column, heap in enumerate(self._expiring):
            cutoff = now - WINDOWS[column % len(WINDOWS)][1]
            while heap and heap[0][0] <= cutoff:
                self.counts[heapq.heappop(heap)[2], column] -= 1

    def touch(self, rows: list[int] | int, time: float) -> None:
        """The items at `rows` were described or used at `time` (the state's clock): they stay."""
        self.touched[rows] = np.maximum(self.touched[rows], time)

    def date_undated(self, time: float) -> None:
        """Items touched before the clock was known count as touched at `time`."""
        touched = self.touched[:self._rows]
        touched[touched == -np.inf] = time

    def forget_idle(self, before: float) -> list[str]:
        """Forget the items last touched at or before `before` whose windows are empty (so no heap holds their row).
        Their rows are zeroed and stamped afresh, so a cache kept per row does not take the next item for them."""
        touched = self.touched[:self._rows]
        idle = (touched <= before) & (touched > -np.inf) & ~self.counts[:self._rows].any(axis=1)
        rows = np.flatnonzero(idle)
        rows = rows[rows > 0]
        forgotten = [self.ids[row] for row in rows]
        for news_id, row in zip(forgotten, rows):
            del self.index[news_id]
            self.ids[row] = None
        self.metadata[rows], self.known[rows], self.published[rows], self.first_seen[rows] = 0.0, False, np.nan, np.nan
        self.touched[rows] = np.inf
        self.stamps[rows] = [next(_STAMPS) for _ in rows]
        self._free.extend(rows.tolist())
        return forgotten

    def _grow(self) -> None:
        blank = {"published": np.nan, "first_seen": np.nan, "touched": np.inf}
        for name in ("metadata", "known", "published", "first_seen", "counts", "stamps", "touched"):
            current = getattr(self, name)
            grown = np.full((2 * len(current), *current.shape[1:]), blank.get(name, 0), dtype=current.dtype)
            grown[: len(current)] = current
            setattr(self, name, grown)
        self.ids.extend([None] * len(self.ids))


class FeatureState:
    """The online feature state: what is known about items and users up to now.

    A replay keeps every item it meets. A long-running service calls `forget_idle_items` once it is warm: from then
    on items idle for `ITEM_IDLE_S` leave the state, and `take_forgotten` tells it which."""

    def __init__(self, news: Mapping[str, NewsItem] | None = None):
        self._items = _ItemTable()
        self._item_idle_s: float | None = None  # None: items are never forgotten
        self._next_sweep = float("-inf")
        self._forgotten: list[str] = []
        self._users: dict[str, _UserState] = {}
        self.now = float("-inf")  # time of the latest request seen; later clicks wait in `_pending` until due
        self._pending: list[tuple[float, int, str, str]] = []  # heap of (click time, arrival order, user, news id)
        self._arrivals = 0
        self._metadata_changes = 0  # known items whose metadata changed: part of the key of users' cached profiles
        self._profiles_kept: OrderedDict[str, _Profiles] = OrderedDict()  # by user, least recently asked for first
        for item in (news or {}).values():
            self.add_news(item)

    def forget_idle_items(self, idle_s: float = ITEM_IDLE_S) -> None:
        """From now on, forget items idle for `idle_s` of the clock (checked every ITEM_SWEEP_S). Items met before
        (a rebuild's catalogue) count as touched now."""
        self._item_idle_s, self._next_sweep = idle_s, self.now + ITEM_SWEEP_S
        if self.now > -math.inf:
            self._items.date_undated(self.now)

    def take_forgotten(self) -> list[str]:
        """The items forgotten since the last call."""
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    @property
    def items_held(self) -> int:
        return len(self._items.index)

    @property
    def users_held(self) -> int:
        return len(self._users)

    def knows_item(self, news_id: str) -> bool:
        return news_id in self._items.index

    def knows_user(self, user: str) -> bool:
        return user in self._users

    # ---- events -------------------------------------------------------------------------------------------
    def add_news(self, item: NewsItem) -> None:
        """Register or update an item's metadata (serving learns it from requests, training from news.tsv)."""
        items = self._items
        new = item.news_id not in items.index
        row = items.row(item.news_id)
        items.touch(row, self.now)
        if new or item.known or item.published is not None:
            if items.describe(row, metadata_vector(item), item.known) and not new:
                self._metadata_changes += 1  # users' kept profiles may hold the old vector
            if item.published is not None:
                items.published[row] = item.published

    def see_history(self, user: str, history: Iterable[str]) -> bool:
        """Seed a user met for the first time with clicks from before the log (they join the all-time profile).
        True when the user was new (seeded); a user already met keeps their state, so a repeated history counts once."""
        if user in self._users:
            return False
        state = self._users[user] = _UserState()
        for news_id in history:
            self._add_to_profile(state, news_id)
        return True

    def record_impression(self, user: str, shown: Sequence[str], time: float) -> None:
        """The list shown to the user at `time` (after its features were taken)."""
        self.advance(time)
        user_state = self._users.setdefault(user, _UserState())
        insort(user_state.impression_times, time)
        _prune(user_state.impression_times, time - WINDOWS[-1][1])
        items = self._items
        rows = [items.row(news_id) for news_id in dict.fromkeys(shown)]  # an item shown twice counts once
        first_seen = items.first_seen[rows]
        items.first_seen[rows] = np.where(np.isnan(first_seen), time, first_seen)
        items.count(rows, 1, time)
        items.touch(rows, time)
        user_state.forget_shown(time - WINDOWS[-1][1])
        seen = user_state.shown
        for news_id in shown:
            if news_id not in seen:
                user_state.shown_at.append(time)
            seen[news_id] = seen.get(news_id, 0) + 1

    def record_click(self, user: str, news_id: str, time: float) -> None:
        """A click at `time`; one stamped after the latest request (a simulator's answer) waits until it is due."""
        if time > self.now:
            heapq.heappush(self._pending, (time, self._arrivals, user, news_id))
            self._arrivals += 1
            return
        self._apply_click(user, news_id, time)

    def advance(self, time: float) -> None:
        """Move the clock to `time`, applying the clicks that happened by then (in time order)."""
        while self._pending and self._pending[0][0] <= time:
            due, _, user, news_id = heapq.heappop(self._pending)
            self._apply_click(user, news_id, due)
        self.now = max(self.now, time)
        self._items.expire(self.now)
        if self._item_idle_s is not None and self.now >= self._next_sweep:
            self._forgotten += self._items.forget_idle(self.now - self._item_idle_s)
            self._next_sweep = self.now + ITEM_SWEEP_S

    def _apply_click(self, user: str, news_id: str, time: float) -> None:
        user_state = self._users.setdefault(user, _UserState())
        row = self._items.row(news_id)
        self._items.count([row], 0, time)
        self._items.touch(row, time)
        insort(user_state.clicks, (time, news_id))
        self._add_to_profile(user_state, news_id)
        user_state.forget_clicks(time - WINDOWS[-1][1])

    # ---- features -----------------------------------------------------------------------------------------
    def features(self, user: str, candidates: Sequence[str], time: float) -> FeatureBatch:
        """Features of a request at `time`, from events up to `time` only (advances the clock and marks the candidates
        in use, nothing else).
        Item windows end at the state's clock, which is `time` unless a later request was already seen."""
        rows = self._items.rows(candidates)
        self._items.touch(rows, time)  # before the clock moves: a candidate is in use, however long since it was shown
        self.advance(time)
        user_state = self._users.get(user) or _UserState()
        profiles = self._profiles(user, user_state, time)
        state = np.concatenate([profiles.matrix.ravel(), self._user_counts(user_state, profiles.key, time),
                                _context(time)]).astype(np.float32)
        n = len(candidates)
        # The candidates' rows are written in place, part by part, into one float32 array (one allocation, no
        # concatenation, no float64 copy): this runs for every request.
        action = np.empty((n, SCHEMA.action_dim), dtype=np.float32)
        metadata = action[:, _METADATA] = self._items.metadata[rows]
        action[:, _OVERLAP] = metadata @ profiles.by_field
        clicked, shown = user_state.clicked, user_state.shown
        action[:, _CLICKED] = np.fromiter((c in clicked for c in candidates), dtype=np.float32, count=n)
        action[:, _SHOWN] = np.log1p(np.fromiter((shown.get(c, 0) for c in candidates), dtype=np.float64, count=n))
        self._news_block(rows, action)
        self._freshness_block(rows, time, action)
        return FeatureBatch(state, action, tuple(candidates), rows, self._items.stamps[rows])

    # ---- internals ----------------------------------------------------------------------------------------
    def _add_to_profile(self, state: _UserState, news_id: str) -> None:
        row = self._items.row(news_id)  # first: adding a row may replace the arrays
        self._items.touch(row, self.now)
        state.all_time_profile += self._items.metadata[row]
        state.all_time_clicks += 1
        state.clicked[news_id] = state.clicked.get(news_id, 0) + 1

    def _profiles(self, user: str, state: _UserState, time: float) -> _Profiles:
        """Per-window normalised profiles (fractions of clicks per metadata value), computed again only when the
        user's clicks per window have changed since their last request (for the PROFILES_KEPT latest users).

        The clicks are in time order and every window ends now, so each window's clicks are a suffix of the list:
        one cumulative sum from the newest click back gives every window's profile."""
        clicks = state.clicks
        early = bool(clicks) and clicks[-1][0] > time  # features asked for a time before the latest click
        if early:
            clicks = [(t, news_id) for t, news_id in clicks if t <= time]
        key = (self._metadata_changes, state.all_time_clicks,
               *(len(clicks) - bisect_right(clicks, time - span, key=_click_time) for _, span in WINDOWS))
        kept = self._profiles_kept.get(user)
        if not early and kept is not None and kept.key == key:
            self._profiles_kept.move_to_end(user)
            return kept
        matrix = np.zeros((len(PROFILE_WINDOWS), METADATA_DIM), dtype=np.float32)
        if clicks:
            # clicks past the longest window (kept until the user's next click) may name forgotten items: row 0
            index = self._items.index
            newest_first = self._items.metadata[[index.get(n, 0) for _, n in reversed(clicks)]].cumsum(axis=0)
            for w, count in enumerate(key[2:]):
                if count:
                    matrix[w] = newest_first[count - 1] / count
        if state.all_time_clicks:
            matrix[-1] = state.all_time_profile / state.all_time_clicks
        # by_field[:, (w, f)]: profile w on field f's buckets only, so metadata @ by_field is every candidate's
        # overlap with every profile, field by field
        by_field = (matrix.T[:, :, None] * SEGMENT_ONE_HOT[:, None, :]).reshape(METADATA_DIM, -1)
        profiles = _Profiles(key, matrix, by_field)
        if not early:
            self._profiles_kept[user] = profiles
            self._profiles_kept.move_to_end(user)
            if len(self._profiles_kept) > PROFILES_KEPT:
                self._profiles_kept.popitem(last=False)
        return profiles

    @staticmethod
    def _user_counts(state: _UserState, key: tuple[int, ...], time: float) -> np.ndarray:
        """log(1 + count) of clicks per window and all-time (from the key of the user's profiles) and of impressions
        per window, and log(1 + hours since the user's last request)."""
        impressions = [_count_since(state.impression_times, time - span) for _, span in WINDOWS]
        since_last = (time - state.impression_times[-1]) / HOUR if state.impression_times else 0.0
        return np.log1p([*key[2:], key[1], *impressions, max(since_last, 0.0)])

    def _news_block(self, rows: np.ndarray, action: np.ndarray) -> None:
        """Known flag, log click and impression counts per window, smoothed click rates over 24 h and 1 w."""
        counts = self._items.counts[rows]
        action[:, _KNOWN] = self._items.known[rows, None]
        action[:, _COUNTS] = np.log1p(counts)
        clicks, shows = counts[:, 2:4], counts[:, len(WINDOWS) + 2:len(WINDOWS) + 4]  # the 24 h and 1 w windows
        action[:, _CTR] = (clicks + CTR_PRIOR_CLICKS) / (shows + CTR_PRIOR_IMPRESSIONS)

    def _freshness_block(self, rows: np.ndarray, time: float, action: np.ndarray) -> None:
        """log(1 + age in hours) and exp(-age / 4.1 h); age from publication, else first sight, else 0."""
        published, first_seen = self._items.published[rows], self._items.first_seen[rows]
        born = np.where(np.isnan(published), first_seen, published)
        age_h = np.where(np.isnan(born), 0.0, np.maximum(time - born, 0.0) / HOUR)
        action[:, _AGE] = np.log1p(age_h)
        action[:, _DECAY] = np.exp(-age_h * HOUR / FRESHNESS_DECAY_S)


def _context(time: float) -> np.ndarray:
    stamp = datetime.fromtimestamp(time, tz=timezone.utc)
    hour = (stamp.hour + stamp.minute / 60.0) / 24.0 * 2 * math.pi
    weekday = np.zeros(7, dtype=np.float32)
    weekday[stamp.weekday()] = 1.0
    return np.concatenate([[math.sin(hour), math.cos(hour)], weekday])


@dataclass
class Sample:
    """One replayed impression with the features serving would have computed for it."""

    impression: Impression
    batch: FeatureBatch


def replay(impressions: Iterable[Impression], state: FeatureState) -> Iterator[Sample]:
    """Replay logs in time order through the online code path, yielding each impression's features first.

    Clicks are applied at their own times (a click logged at 10:30 is not seen by a 10:10 request of another
    user), exactly as serving met them. An impression's events are recorded only when the consumer asks for
    the next sample, so scoring before advancing is progressive validation.
    """
    for impression in impressions:
        state.see_history(impression.user, impression.history)
        yield Sample(impression, state.features(impression.user, impression.candidates, impression.time))
        record(impression, state)


def warmed(impressions: Iterable[Impression], news: Mapping[str, NewsItem] | None = None,
           start: FeatureState | None = None) -> FeatureState:
    """The state after the events of `impressions` (in time order): a new one over `news`, or a copy of `start`.
    How every consumer warms up (serving at start, evaluation, training's shards, the benchmarks)."""
    state = copy.deepcopy(start) if start is not None else FeatureState(news)
    for impression in impressions:
        record(impression, state)
    return state


def record(impression: Impression, state: FeatureState) -> None:
    """An impression's events (the user's earlier history, the list shown, its clicks at their own times), without
    computing its features: what warming a state up needs; `replay` does the same after each sample."""
    state.see_history(impression.user, impression.history)  # a no-op for a user already met
    state.record_impression(impression.user, impression.candidates, impression.time)
    for time, news_id in impression.timed_clicks():
        state.record_click(impression.user, news_id, time)
