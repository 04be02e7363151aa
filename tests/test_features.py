import math
from dataclasses import replace

import numpy as np
import pytest

from drn.features import HOUR, ITEM_IDLE_S, PROFILES_KEPT, SCHEMA, WINDOWS, FeatureSchema, FeatureState, replay
from drn.mind import NewsItem

T0 = 1_573_257_600.0  # 2019-11-09 00:00 UTC


def _with_delayed_clicks(impressions, max_delay_h=3.0):
    """Give every click its own time, up to a few hours after its impression (as live feedback arrives)."""
    rng = np.random.default_rng(1)
    return [replace(imp, click_times=tuple(imp.time + rng.uniform(0, max_delay_h * HOUR) for _ in imp.clicked))
            for imp in impressions]


def _serve_event_by_event(impressions, news):
    """What serving does: a request's features, then the list it showed; each click when it arrives."""
    events = []
    for order, imp in enumerate(impressions):
        events.append((imp.time, 0, order, imp))
        events += [(t, 1, order, (imp.user, n)) for t, n in imp.timed_clicks()]
    state, served = FeatureState(news), []
    # Clicks at time t are known before a request at the same t (kind 1 sorts after kind 0 only at equal order).
    for time, kind, _, payload in sorted(events, key=lambda e: (e[0], -e[1], e[2])):
        if kind == 1:
            state.record_click(payload[0], payload[1], time)
            continue
        state.see_history(payload.user, payload.history)
        served.append(state.features(payload.user, payload.candidates, payload.time))
        state.record_impression(payload.user, payload.candidates, payload.time)
    return served


def test_replayed_features_equal_online_features(mind):
    imps = _with_delayed_clicks(mind.impressions[:600])
    online = _serve_event_by_event(imps, mind.news)
    replayed = [s.batch for s in replay(imps, FeatureState(mind.news))]
    assert len(online) == len(replayed) == 600
    for a, b in zip(online, replayed):
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.action, b.action)
    assert any(b.column("news.clicks_1h").sum() > 0 for b in replayed)  # the check saw real click counts


def test_features_never_use_future_events(mind):
    imps = _with_delayed_clicks(mind.impressions[:400])
    full = [s.batch for s in replay(imps, FeatureState(mind.news))]
    for i in (50, 199, 399):
        future_changed = imps[: i + 1] + [replace(imp, labels=tuple(1 for _ in imp.candidates), click_times=None)
                                          for imp in imps[i + 1:]]
        own_changed = imps[:i] + [replace(imps[i], labels=tuple(1 - y for y in imps[i].labels), click_times=None)]
        for variant in (imps[: i + 1], future_changed, own_changed):
            batch = [s.batch for s in replay(variant, FeatureState(mind.news))][i]
            np.testing.assert_array_equal(batch.state, full[i].state)
            np.testing.assert_array_equal(batch.action, full[i].action)


def test_vector_sizes_follow_the_schema_and_schema_round_trips():
    batch = FeatureState().features("U1", ["N1", "N2", "N3"], T0)
    assert batch.state.shape == (SCHEMA.state_dim,) and batch.action.shape == (3, SCHEMA.action_dim)
    assert batch.state.dtype == np.float32 and batch.action.dtype == np.float32
    assert FeatureSchema.from_dict(SCHEMA.to_dict()) == SCHEMA
    other = FeatureSchema(2, {"state": [("x", 3)], "action": [("y", 4)]})
    with pytest.raises(ValueError, match="feature schema mismatch"):
        SCHEMA.check_compatible(other)


def test_click_windows_user_profiles_and_freshness():
    sports = NewsItem("N1", "sports", "golf", provider="p1.example", entities=("Q1",), published=T0)
    finance = NewsItem("N2", "finance", "markets", provider="p2.example", published=T0 - 10 * HOUR)
    state = FeatureState({"N1": sports, "N2": finance})
    state.record_impression("U1", ["N1", "N2"], T0 + 60)
    state.record_click("U1", "N1", T0 + 120)
    soon = state.features("U1", ["N1", "N2"], T0 + 0.5 * HOUR)
    later = state.features("U1", ["N1", "N2"], T0 + 3 * HOUR)
    assert soon.column("news.clicks_1h").tolist() == [pytest.approx(math.log1p(1)), 0.0]
    assert later.column("news.clicks_1h").tolist() == [0.0, 0.0]
    assert later.column("news.clicks_6h")[0] == pytest.approx(math.log1p(1))
    overlap = soon.column("user_news.overlap_1h")  # (candidates, [category, subcategory, entity, provider])
    assert overlap[0].tolist() == [1.0, 1.0, 1.0, 1.0] and overlap[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert soon.column("user_news.clicked_before").tolist() == [1.0, 0.0]
    assert soon.column("freshness.log_age_hours").tolist() == pytest.approx([math.log1p(0.5), math.log1p(10.5)])
    week_later = state.features("U1", ["N1"], T0 + 200 * HOUR)
    assert week_later.column("news.clicks_1w")[0] == 0.0
    assert week_later.column("user_news.overlap_all")[0].tolist() == [1.0, 1.0, 1.0, 1.0]  # all-time profile stays


def test_unknown_items_get_zero_metadata_and_history_counts_in_all_time_profile():
    state = FeatureState({"N1": NewsItem("N1", "sports", "golf")})
    state.see_history("U1", ["N1", "N-unknown"])
    batch = state.features("U1", ["N1", "N-unknown"], T0)
    assert batch.column("news.has_metadata").tolist() == [1.0, 0.0]
    assert batch.column("user_news.overlap_all")[0][0] == pytest.approx(0.5)  # 1 of 2 history clicks is sports
    assert batch.column("user.clicks_all") == pytest.approx(math.log1p(2))


def test_state_stays_bounded_as_logs_grow():
    state = FeatureState()
    for hour in range(24 * 30):
        t = T0 + hour * HOUR
        state.record_impression("U1", ["N1"], t)
        state.record_click("U1", "N1", t)
    # one click and one impression an hour, each counted in 4 windows until it leaves them
    hourly_events_in_windows = sum(int(span // HOUR) + 1 for _, span in WINDOWS)
    assert sum(len(heap) for heap in state._items._expiring) <= 2 * hourly_events_in_windows
    assert len(state._users["U1"].clicks) <= 7 * 24 + 1


def test_a_users_memory_of_items_is_bounded_by_the_week():
    """New news every hour for a month: what a user was shown and clicked stays a week's worth, history stays."""
    state, within_the_week = FeatureState(), None
    state.see_history("U1", ["H1"])
    for hour in range(24 * 30):
        t = T0 + hour * HOUR
        if hour == 7 * 24 - 1:  # shown daily since hour 0: still inside its first week
            within_the_week = state.features("U1", ["N-daily"], t).column("user_news.shown_before")[0]
        shown = [f"N{hour}-{i}" for i in range(10)]
        state.record_impression("U1", shown + ["N-daily"] * (hour % 24 == 0), t)
        state.record_click("U1", shown[0], t + 60.0)
    user = state._users["U1"]
    assert len(user.shown) == len(user.shown_at) <= 10 * (7 * 24 + 1) + 1
    assert len(user.clicked) <= 7 * 24 + 2  # the week's clicks and the history
    now = T0 + 24 * 30 * HOUR
    batch = state.features("U1", ["H1", "N719-0", "N1-0", "N-daily"], now)
    assert batch.column("user_news.clicked_before").tolist() == [1.0, 1.0, 0.0, 0.0]  # an hour old / a month old
    # N-daily is counted again from the week it was last met anew (hour 672): shown then and at hour 696
    assert batch.column("user_news.shown_before").tolist() == pytest.approx([0.0, math.log1p(1), 0.0, math.log1p(2)])
    assert within_the_week == pytest.approx(math.log1p(7))


def _asked_once(events, user: str, candidates: list[str], time: float):
    """The features of a state that saw `events` (callables on it) and is asked only now: nothing kept before."""
    fresh = FeatureState()
    for event in events:
        event(fresh)
    return fresh.features(user, candidates, time)


def test_kept_profiles_follow_clicks_windows_and_descriptions():
    """A user's profiles are kept between requests; they must match a state asked for the first time after a click
    arrives, after a click leaves a window, after a clicked item's description changes, and after the user's kept
    profiles were pushed out by others."""
    candidates = ["N1", "N2", "N3"]
    def click(news_id: str, time: float):  # applied at once, while N1 still has the description it had then
        return lambda s: (s.advance(time), s.record_click("U1", news_id, time))

    events = [lambda s: s.add_news(NewsItem("N1", "sports", "football", entities=("E1",))),
              lambda s: s.add_news(NewsItem("N2", "news", "world")), click("N1", 0.0)]
    state = FeatureState()
    for event in events:
        event(state)

    def check(time: float) -> None:
        kept, fresh = state.features("U1", candidates, time), _asked_once(events, "U1", candidates, time)
        np.testing.assert_array_equal(kept.state, fresh.state)
        np.testing.assert_array_equal(kept.action, fresh.action)

    check(60.0)
    check(2 * HOUR)  # the click left the 1 h window
    for event in (click("N2", 2 * HOUR + 1), lambda s: s.add_news(NewsItem("N1", "tech"))):
        event(state)
        events.append(event)
        check(3 * HOUR)
    for other in range(PROFILES_KEPT + 10):  # more users than profiles are kept
        state.features(f"U{other + 2}", candidates, 3 * HOUR)
    assert len(state._profiles_kept) == PROFILES_KEPT
    check(3 * HOUR)


def test_item_rows_and_stamps_follow_descriptions():
    state = FeatureState({"N1": NewsItem("N1", "sports")})
    first = state.features("U1", ["N1", "N9"], 1.0)
    assert first.item_rows[1] == 0 and first.item_stamps[1] == 0  # never described: the unknown item's row
    state.add_news(NewsItem("N1", "news"))
    again = state.features("U1", ["N1", "N9"], 2.0)
    assert again.item_rows[0] == first.item_rows[0] and again.item_stamps[0] > first.item_stamps[0]


def _stream_day(state: FeatureState, day: int, items_per_day: int = 40) -> list[str]:
    """One day of a news stream: that day's items described, shown to a user and one clicked, hour by hour."""
    fresh = [f"D{day}-{i}" for i in range(items_per_day)]
    for hour in range(24):
        now = day * 24 * HOUR + hour * HOUR
        for news_id in fresh[hour % 4::4]:
            state.add_news(NewsItem(news_id, f"cat{hash(news_id) % 5}", "sub"))
        shown = fresh[hour % 4::4][:5]
        state.features(f"U{hour}", shown, now)
        state.record_impression(f"U{hour}", shown, now)
        state.record_click(f"U{hour}", shown[0], now)
    return fresh


def test_a_long_running_state_forgets_idle_items_and_holds_a_bounded_table():
    kept, forgetting = FeatureState(), FeatureState()
    forgetting.forget_idle_items()
    capacities = []
    for day in range(60):
        for state in (kept, forgetting):
            _stream_day(state, day)
        capacities.append(len(forgetting._items.known))
    assert kept.items_held == 60 * 40  # a replay keeps every item
    idle_days = ITEM_IDLE_S / (24 * HOUR)
    assert forgetting.items_held <= (idle_days + 2) * 40  # a news stream's held items level off ...
    assert capacities[-1] == capacities[30]  # ... and rows of forgotten items are used again: the table stopped growing
    forgotten = forgetting.take_forgotten()
    assert "D0-0" in forgotten and not forgetting.knows_item("D0-0") and kept.knows_item("D0-0")
    assert forgetting.take_forgotten() == []
    recent = "D59-0"
    a, b = (s.features("U1", [recent, "D58-3"], 60 * 24 * HOUR) for s in (kept, forgetting))
    np.testing.assert_array_equal(a.action, b.action)  # items in use have the features they would have had


def test_a_forgotten_item_is_a_new_item_again_and_an_item_in_use_is_not_forgotten():
    state = FeatureState()
    state.forget_idle_items()
    state.add_news(NewsItem("OLD", "sports"))
    state.record_impression("U1", ["OLD", "ASKED"], 0.0)
    state.record_click("U1", "OLD", 0.0)
    for hour in range(1, int(ITEM_IDLE_S / HOUR) + 3):  # "ASKED" stays a candidate every hour, never shown again
        state.features("U2", ["ASKED"], hour * HOUR)
    assert not state.knows_item("OLD") and state.knows_item("ASKED")
    assert state.take_forgotten() == ["OLD"]
    later = state.now
    reused = state.features("U3", ["OLD"], later)
    assert reused.item_rows[0] == 0 and reused.column("news.has_metadata")[0] == 0  # unknown until described again
    state.add_news(NewsItem("OLD", "sports"))
    state.record_impression("U3", ["OLD"], later)
    fresh = FeatureState()
    fresh.add_news(NewsItem("OLD", "sports"))
    fresh.record_impression("U3", ["OLD"], later)
    again, new = (s.features("U4", ["OLD"], later + 60.0) for s in (state, fresh))
    np.testing.assert_array_equal(again.action, new.action)  # no counts or first sight left over from before


def test_a_users_memory_shrinks_back_after_a_busy_week():
    """A busy week (500 items shown, 100 clicked), then a quiet one: the user's containers shrink to the quiet
    week's size, not keep the busy week's tables (a dict never gives back its table by deletion)."""
    import sys
    state = FeatureState()
    for i in range(100):
        t = T0 + i * 60.0
        shown = [f"B{i}-{j}" for j in range(5)]
        state.record_impression("U1", shown, t)
        state.record_click("U1", shown[0], t + 1.0)
    quiet = T0 + 3 * 7 * 24 * HOUR
    state.record_impression("U1", ["Q1"], quiet)
    state.record_click("U1", "Q1", quiet + 1.0)
    state.features("U1", ["Q1"], quiet + 2.0)  # the click is applied, and the busy week's clicks leave
    user = state._users["U1"]
    assert list(user.shown) == ["Q1"] and list(user.clicked) == ["Q1"]
    assert sys.getsizeof(user.shown) == sys.getsizeof({"Q1": 1})
    assert sys.getsizeof(user.clicked) == sys.getsizeof({"Q1": 1})
