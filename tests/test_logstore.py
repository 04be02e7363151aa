"""The log store on SQLite and on PostgreSQL: round trips, refusals, rounds, ordered streaming reads, durability,
concurrent writers. PostgreSQL tests run in a fresh schema each and skip when no server answers."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from drn.logstore import (ADDED_COLUMNS, EXPLOIT, EXPLORE, IMPORTED, NO_TEAM, SERVED, ClickNotServed,
                          DuplicateImpression, ImpressionRecord, LogStore, RoundClosed, UnknownImpression, UnknownRound,
                          imported_id)
from drn.mind import Impression

PG_URL = os.environ.get("DRN_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[1]


def _pg_admin() -> sa.Engine:
    """An engine on the test server (as the OS user, else as postgres), or a skip that says why not."""
    errors = []
    for user in (None, "postgres"):
        url = sa.make_url(PG_URL)
        url = url.set(username=user) if user else url
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3}, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect():
                return engine
        except sa.exc.OperationalError as err:
            errors.append(str(err.orig).strip().splitlines()[0])
            engine.dispose()
    pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set DRN_TEST_PG_URL): {'; '.join(errors)}")


@pytest.fixture(scope="module")
def pg_admin():
    engine = _pg_admin()
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A database no other test sees: a fresh file, or a fresh schema reached through the URL's search_path."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'logs.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    schema = f"logstore_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield admin.url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(url):
    with LogStore(url) as s:
        yield s


def rec(impression_id: str, time: float, served=("n1", "n2"), round_id=None, user="u1") -> ImpressionRecord:
    teams = tuple(EXPLOIT if i % 2 == 0 else EXPLORE for i in range(len(served)))
    return ImpressionRecord(impression_id, user, time, ("n0",) + tuple(served), tuple(served), teams, "v1",
                            round_id, None if round_id is None else 7)


def ids(logged) -> list[str]:
    return [li.record.impression_id for li in logged]


def test_round_trip(store, url):
    r = store.open_round("v1", seed=7, alpha=0.1, time=5.0)
    record = ImpressionRecord("i1", "u1", 10.25, ("n0", "n1", "n2", "n3"), ("n2", "n1", "n3"),
                              (EXPLOIT, EXPLORE, NO_TEAM), "v1", r.round_id, 2**40, history=("h1",))
    store.log_impression(record)
    assert store.log_click("i1", "n1", 11.5) is True
    assert store.log_returns([("i1", "u1", 12.0)])[0] is True

    assert store.impression("i1") == record
    assert store.impression("nope") is None
    [logged] = list(store.window())
    assert logged.record == record and [(c.news_id, c.time) for c in logged.clicks] == [("n1", 11.5)]
    assert logged.returned == 12.0  # the reported return rides with the impression it followed, into training
    assert logged.to_impression() == Impression("i1", "u1", 10.25, ("h1",), ("n2", "n1", "n3"), (0, 1, 0),
                                                returned=12.0)
    assert record.source == SERVED
    assert store.returns() == [("u1", 12.0)]
    assert store.counts() == {"impressions": 1, "clicks": 1, "returns": 1, "rounds": 1}
    assert "logs.db" in repr(store) or "postgresql" in repr(store)


def test_bad_impressions_refused(store):
    store.log_impression(rec("i1", 1.0))
    with pytest.raises(DuplicateImpression):
        store.log_impression(rec("i1", 2.0, served=("n3",)))
    with pytest.raises(UnknownRound):
        store.log_impression(rec("i2", 2.0, round_id=99))
    with pytest.raises(ValueError, match="teams"):
        store.log_impression(ImpressionRecord("i3", "u", 3.0, ("a", "b"), ("a", "b"), (0,), "v1"))
    with pytest.raises(ValueError, match="not candidates"):
        store.log_impression(ImpressionRecord("i4", "u", 3.0, ("a",), ("a", "z"), (0, 1), "v1"))
    assert store.impression("i1") == rec("i1", 1.0)
    assert store.counts()["impressions"] == 1


def test_a_batch_of_impressions_is_all_or_nothing(store):
    from drn.mind import NewsItem
    r = store.open_round("v1", seed=7, alpha=0.1, time=0.0)
    store.log_impressions([rec("i1", 1.0, round_id=r.round_id), rec("i2", 2.0)],
                          [NewsItem("n1", "a"), NewsItem("n1", "b")])
    assert ids(store.window()) == ["i1", "i2"] and store.news()["n1"].category == "b"  # the last description wins
    logged_before, twice_in_one_batch = [rec("i3", 3.0), rec("i1", 4.0)], [rec("i4", 4.0), rec("i4", 5.0)]
    for batch in (logged_before, twice_in_one_batch):
        with pytest.raises(DuplicateImpression, match=r"i1|i4"):
            store.log_impressions(batch, [NewsItem("n9")])
    with pytest.raises(UnknownRound):
        store.log_impressions([rec("i5", 5.0), rec("i6", 6.0, round_id=99)])
    assert ids(store.window()) == ["i1", "i2"] and "n9" not in store.news()  # nothing of a refused batch is kept
    store.log_impressions([])


def test_a_broken_kept_write_connection_is_replaced(tmp_path):
    """On SQLite each writing thread keeps its driver connection; when it breaks, that write fails and the next one
    gets a new connection. A store used again after close() opens a new one too."""
    with LogStore.at(tmp_path) as store:
        store.log_impression(rec("i1", 1.0))
        store._driver.kept[1].dbapi_connection.close()
        with pytest.raises(Exception, match="closed"):
            store.log_impression(rec("i2", 2.0))
        store.log_impression(rec("i2", 2.0))
        store.close()
        store.log_impression(rec("i3", 3.0))
        assert ids(store.window()) == ["i1", "i2", "i3"]


def test_clicks_are_idempotent(store):
    store.log_impression(rec("i1", 1.0))
    assert store.log_click("i1", "n2", 2.0) is True
    assert store.log_click("i1", "n2", 3.0) is False
    assert store.log_click("i1", "n1", 4.0) is True
    assert store.counts()["clicks"] == 2
    [logged] = list(store.window())
    assert [(c.news_id, c.time) for c in logged.clicks] == [("n2", 2.0), ("n1", 4.0)]
    assert logged.to_impression().labels == (1, 1)


def test_a_batch_of_clicks_is_all_or_nothing(store):
    store.log_impression(rec("i1", 1.0, served=("n1", "n2", "n3")))
    assert store.log_clicks([("i1", "n1", 2.0), ("i1", "n1", 2.5), ("i1", "n2", 3.0)]) == [True, False, True]
    with pytest.raises(ClickNotServed):  # its first click is new: a partial commit would count 3
        store.log_clicks([("i1", "n3", 4.0), ("i1", "n0", 4.0)])
    store.log_impression(rec("i2", 1.5, user="u2"))
    assert store.log_returns([("i1", "u1", 5.0), ("i2", "u2", 6.0), ("i1", "u1", 7.0)]) == [True, True, False]
    with pytest.raises(UnknownImpression):  # its first return is new: a partial commit would count it
        store.log_returns([("i3", "u1", 8.0), ("nope", "u1", 8.0)])
    assert store.counts()["clicks"] == 2 and store.returns() == [("u1", 5.0), ("u2", 6.0)]


def test_bad_clicks_refused_and_nothing_written(store):
    store.log_impression(rec("i1", 1.0, served=("n1",)))  # n0 was a candidate, but not shown
    before = store.counts()
    with pytest.raises(UnknownImpression):
        store.log_click("nope", "n1", 2.0)
    with pytest.raises(ClickNotServed):
        store.log_click("i1", "n0", 2.0)
    assert store.counts() == before
    assert list(store.window())[0].clicks == ()


def test_rounds_open_close_current(store):
    assert store.current_round() is None and store.rounds() == []
    first = store.open_round("v1", seed=11, alpha=0.1, time=100.0)
    assert store.current_round() == first and first.is_open
    second = store.open_round("v2", seed=12, alpha=0.2, time=200.0)
    assert second.round_id != first.round_id and store.current_round() == second
    store.close_round(second.round_id, {"wins": 3, "losses": 1}, time=300.0)
    assert store.current_round() is None
    superseded, scored = store.rounds()
    assert (superseded.round_id, superseded.closed_at, superseded.outcome) == (first.round_id, 200.0, None)
    assert (scored.model_version, scored.seed, scored.alpha, scored.opened_at) == ("v2", 12, 0.2, 200.0)
    assert (scored.closed_at, scored.outcome) == (300.0, {"wins": 3, "losses": 1})
    with pytest.raises(RoundClosed):
        store.close_round(first.round_id, {"wins": 0}, time=400.0)
    with pytest.raises(UnknownRound):
        store.close_round(999, {}, time=400.0)
    store.close_round(second.round_id, {"wins": 3, "losses": 1}, time=500.0)  # a retry of the close: nothing changes
    with pytest.raises(RoundClosed):
        store.close_round(second.round_id, {"wins": 1, "losses": 3}, time=500.0)
    assert store.rounds() == [superseded, scored]


def test_round_feedback(store):
    r1 = store.open_round("v1", 1, 0.1, 0.0)
    for i, t in enumerate([30.0, 10.0, 20.0]):  # logged out of time order
        store.log_impression(rec(f"a{i}", t, round_id=r1.round_id))
    store.log_impression(rec("none", 15.0))
    r2 = store.open_round("v2", 2, 0.1, 40.0)
    store.log_impression(rec("b0", 50.0, round_id=r2.round_id))
    store.log_click("a1", "n2", 13.0)
    store.log_click("a1", "n1", 12.0)

    feedback = store.round_feedback(r1.round_id)
    assert ids(feedback) == ["a1", "a2", "a0"]
    assert [c.news_id for c in feedback[0].clicks] == ["n1", "n2"]
    assert ids(store.round_feedback(r2.round_id)) == ["b0"]
    assert store.round_feedback(999) == []


def mind_log(first_id: int = 1, user: str = "U7", start: float = 100.0) -> list[Impression]:
    """Three MIND impressions of one user, ids numbered per file as MIND numbers them; the second has two clicks."""
    history = ("h1", "h2")
    return [Impression(str(first_id), user, start, history, ("n1", "n2", "n3"), (0, 1, 0)),
            Impression(str(first_id + 1), user, start + 5.0, history, ("n2", "n4"), (1, 1)),
            Impression(str(first_id + 2), user, start + 9.0, history, ("n5",), (0,))]


def test_imported_impressions_keep_history_and_clicks_and_import_once(store):
    log = mind_log()
    assert store.import_impressions(log) == 3
    assert store.import_impressions(log) == 0  # the same folder again adds nothing
    assert store.counts() == {"impressions": 3, "clicks": 3, "returns": 0, "rounds": 0}
    logged = list(store.window())
    assert [li.to_impression() for li in logged] == [  # as MIND gave them, ids made unique across folders
        Impression(imported_id(imp), imp.user, imp.time, imp.history, imp.candidates, imp.labels) for imp in log]
    assert all(li.record.source == IMPORTED and li.record.round_id is None for li in logged)
    assert set(logged[0].record.teams) == {NO_TEAM} and logged[0].record.served == ("n1", "n2", "n3")
    assert [(c.news_id, c.time) for c in logged[1].clicks] == [("n2", 105.0), ("n4", 105.0)]  # MIND: at its time
    # another folder numbers its impressions 1, 2, 3 as well: they are other impressions, not repeats
    assert store.import_impressions(mind_log(user="U8", start=200.0)) == 3


def test_an_import_cut_short_is_completed_by_importing_again(store):
    log = mind_log() + mind_log(first_id=4, start=300.0)
    seen = []
    assert store.import_impressions(log[:4], batch=2, progress=lambda done, total: seen.append(done)) == 4
    assert seen == [2, 4]  # one transaction, and one progress report, per batch
    assert store.import_impressions(log, batch=4) == 2 and store.counts()["clicks"] == 6


def test_imported_impressions_are_no_round_feedback(store):
    r = store.open_round("v1", 1, 0.1, 0.0)
    store.log_impression(rec("served", 107.0, round_id=r.round_id))
    store.import_impressions(mind_log())
    assert ids(store.round_feedback(r.round_id)) == ["served"]
    assert [li.record.source for li in store.window()] == [IMPORTED, IMPORTED, SERVED, IMPORTED]  # one time order


def test_an_older_log_store_gains_the_new_columns(tmp_path):
    path = tmp_path / "logs.db"
    with LogStore(f"sqlite:///{path}") as store:
        store.open_round("v1", 5, 0.1, 0.5)
        store.log_impression(rec("old", 1.0))
    with sqlite3.connect(path) as conn:  # the file as the release before these columns left it
        for table, columns in ADDED_COLUMNS.items():
            for column in columns:
                if table != "log_returns":  # SQLite drops no column of a foreign key: made anew below
                    conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("DROP TABLE log_returns")
        conn.execute("CREATE TABLE log_returns (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
                     "time FLOAT NOT NULL)")
        conn.execute("INSERT INTO log_returns (user_id, time) VALUES ('u1', 1.5)")  # a return without an id
    with LogStore(f"sqlite:///{path}") as store:
        assert store.impression("old") == rec("old", 1.0)  # history () and source "served"
        assert store.current_round().recipe == {}  # read as the defaults (drn.learners.RoundRecipe)
        assert [store.log_returns([("old", "u1", 2.0)])[0] for _ in range(2)] == [True, False]  # the index is back
        assert store.returns() == [("u1", 1.5), ("u1", 2.0)]
        store.import_impressions(mind_log())
        assert [li.record.source for li in store.window()] == [SERVED, IMPORTED, IMPORTED, IMPORTED]


def test_a_rounds_recipe_is_read_back_and_carried_to_the_next_round(store):
    recipe = {"learner": "dbgd", "noise": "tensor", "interleaving": "probabilistic"}
    opened = store.open_round("v1", 11, 0.2, 1.0, recipe)
    assert opened.recipe == recipe and store.current_round().recipe == recipe
    promoted = store.open_round("v2", 12, 0.2, 2.0)  # a promotion opens a round without saying how: as before
    assert promoted.recipe == recipe and store.current_round() == promoted
    assert store.open_round("v2", 13, 0.2, 3.0, {"noise": "element"}).recipe == {"noise": "element"}


def test_window_order_and_bounds(store):
    for name, t in [("c", 3.0), ("a", 1.0), ("d", 4.0), ("b1", 2.0), ("b2", 2.0), ("e", 5.0)]:
        store.log_impression(rec(name, t))
    for impression_id, user, t in [("b1", "u2", 2.5), ("a", "u1", 0.5), ("e", "u3", 5.0)]:
        store.log_returns([(impression_id, user, t)])
    store.log_click("e", "n1", 9.0)

    assert ids(store.window()) == ["a", "b1", "b2", "c", "d", "e"]  # equal times keep log order
    assert ids(store.window(2.0, 4.0)) == ["b1", "b2", "c"]  # half-open
    assert ids(store.window(start=4.0)) == ["d", "e"]
    assert ids(store.window(end=2.0)) == ["a"]
    assert ids(store.window(2.0, 4.0, batch=1)) == ["b1", "b2", "c"]
    assert ids(store.window(batch=2)) == ids(store.window(batch=1000))
    assert store.returns() == [("u1", 0.5), ("u2", 2.5), ("u3", 5.0)]
    assert store.returns(1.0, 5.0) == [("u2", 2.5)]


def test_window_streams_in_batches(store):
    for i in range(6):
        store.log_impression(rec(f"i{i}", float(i)))
    stream = store.window(batch=2)
    assert next(stream).record.impression_id == "i0"
    store.log_click("i4", "n1", 10.0)  # after the read began: only a lazily streamed window can see it
    store.log_impression(rec("late", 4.5))
    rest = list(stream)
    assert ids(rest) == ["i1", "i2", "i3", "i4", "late", "i5"]
    assert rest[3].clicked == {"n1"}


WRITER = """
import os, sys
from drn.logstore import ImpressionRecord, LogStore
store = LogStore(sys.argv[1])
r = store.open_round("v1", 5, 0.1, 1.0)
for i in range(20):
    store.log_impression(ImpressionRecord(f"i{i}", "u", float(i), ("a", "b"), ("a", "b"), (0, 1), "v1", r.round_id, 5))
store.log_click("i3", "b", 30.0)
store.log_returns([("i3", "u", 31.0)])
print("acknowledged", flush=True)
os._exit(0)  # no close, no clean shutdown: only what was acknowledged may be relied on
"""


def test_durable_across_processes(url):
    done = subprocess.run([sys.executable, "-c", WRITER, url], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "acknowledged" in done.stdout, done.stderr
    with LogStore(url) as fresh:
        assert fresh.counts() == {"impressions": 20, "clicks": 1, "returns": 1, "rounds": 1}
        assert ids(fresh.window()) == [f"i{i}" for i in range(20)]
        assert fresh.impression("i3").explore_seed == 5
        assert fresh.round_feedback(fresh.current_round().round_id)[3].clicked == {"b"}


@pytest.mark.parametrize("shared", [True, False], ids=["one-instance", "two-instances"])
def test_concurrent_writers_lose_nothing(url, shared):
    n = 25
    stores = [LogStore(url)] * 2 if shared else [LogStore(url), LogStore(url)]
    barrier = threading.Barrier(2)

    def work(name: str, store: LogStore) -> int:
        for i in range(n):
            store.log_impression(rec(f"{name}{i}", float(i), user=name))
            store.log_returns([(f"{name}{i}", name, float(i))])
        barrier.wait()  # then both click every impression: each click must be counted exactly once
        return sum(store.log_click(f"{who}{i}", "n1", 100.0) for who in "ab" for i in range(n))

    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(work, name, s) for name, s in zip("ab", stores)]
            recorded = [f.result(timeout=60) for f in futures]
        assert sum(recorded) == 2 * n
        assert stores[0].counts() == {"impressions": 2 * n, "clicks": 2 * n, "returns": 2 * n, "rounds": 0}
        assert all(li.clicked == {"n1"} for li in stores[1].window())
    finally:
        for s in set(stores):
            s.close()


@pytest.mark.timeout(20)
def test_sqlite_readers_do_not_block_the_writer(tmp_path):
    store = LogStore.at(tmp_path / "data")
    path = tmp_path / "data" / "logs.db"
    store.log_impression(rec("i0", 0.0))
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM log_impressions").fetchone() == (1,)  # holds a read snapshot
        store.log_impression(rec("i1", 1.0))  # a rollback journal would wait here for the reader
        assert store.log_click("i1", "n1", 2.0)
        assert reader.execute("SELECT count(*) FROM log_impressions").fetchone() == (1,)
        reader.execute("COMMIT")
    finally:
        reader.close()
        store.close()
    with LogStore.at(tmp_path / "data") as again:
        assert again.counts()["impressions"] == 2


def test_rejects_other_databases():
    with pytest.raises(ValueError, match="sqlite or postgresql"):
        LogStore("mysql://localhost/x")


def test_news_upsert_round_trip(store):
    from drn.mind import NewsItem
    first = NewsItem("N1", "sports", "soccer", "A title", "p.example", ("E1", "E2"), "abs", "https://p.example/N1", 10.0)
    assert store.log_news([first, NewsItem("N2")]) == 2
    assert store.news() == {"N1": first, "N2": NewsItem("N2")}
    renamed = NewsItem("N1", "sports", "soccer", "New title", "p.example", ("E1",), published=None)
    store.log_news([renamed])
    assert store.news()["N1"] == renamed and len(store.news()) == 2
    assert store.log_news([]) == 0


def test_lease_is_exclusive_until_released_or_lapsed(store):
    assert store.acquire("minor", "a", ttl_s=60, now=100.0)
    assert not store.acquire("minor", "b", ttl_s=60, now=120.0)  # held
    assert store.acquire("major", "b", ttl_s=60, now=120.0)  # another name is independent
    assert not store.release("minor", "b")  # only the holder releases
    assert store.release("minor", "a")
    assert store.acquire("minor", "b", ttl_s=60, now=121.0)
    assert store.acquire("minor", "c", ttl_s=60, now=181.0)  # b's lease lapsed: c takes over
    assert not store.release("minor", "b")


def test_a_lease_is_taken_over_only_from_the_holder_named_dead(store):
    assert store.acquire("minor", "dead", ttl_s=600, now=100.0) and store.lease_holder("minor") == "dead"
    assert not store.acquire("minor", "b", ttl_s=60, now=120.0, replacing="someone-else")  # held by another
    assert store.acquire("minor", "b", ttl_s=60, now=120.0, replacing="dead")
    assert store.lease_holder("minor") == "b" and not store.acquire("minor", "c", ttl_s=60, now=121.0,
                                                                     replacing="dead")  # b is not the dead one
    assert store.release("minor", "b") and store.lease_holder("minor") is None


def test_lease_has_one_winner_among_concurrent_stores(url):
    def grab(i: int) -> bool:
        with LogStore(url) as s:
            return s.acquire("minor", f"h{i}", ttl_s=600)
    LogStore(url).close()  # tables exist before the race
    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(grab, range(8))) == 1
