"""The log store: what serving did (impressions, exploration rounds) and what users did (clicks, returns).

It also keeps the news metadata the logs refer to (so a major update can rebuild item features from the log store
alone) and named leases that keep two runs of one update kind from working at once, however they were started.

The minor update reads one exploration round, the major update a time window; both get `LoggedImpression`s, which
turn into `drn.mind.Impression`s so training reads logs exactly like MIND data. Historical logs (MIND folders that
offline training learned from) are imported beside what serving logged, marked as such (`source`), so serving's
feature state, rebuilt from the log store alone, holds the events a model was trained and evaluated with.
A SQLite file by default, PostgreSQL by URL. This is the only module of the project that imports SQLAlchemy.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time as clock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from drn.interleaving import TEAM_EXPLOIT, TEAM_EXPLORE, TEAM_NONE
from drn.mind import Impression, NewsItem

LOG_FILE = "logs.db"  # the SQLite file `LogStore.at` keeps under a data directory
NO_TEAM, EXPLOIT, EXPLORE = TEAM_NONE, TEAM_EXPLOIT, TEAM_EXPLORE  # `teams` values: which network put a served
#   item in its position (W, W~; in a multileaved round 1..n are the explore networks)
BATCH = 1000  # impressions per read when streaming a window, per multi-row insert, per import transaction
SERVED, IMPORTED = "served", "imported"  # `source` of an impression: logged by serving, or imported from a MIND log
T = TypeVar("T")
_WRITE = "drn_logstore_write"  # execution option: on SQLite, take the write lock at BEGIN (see _sqlite_durable)


class LogStoreError(Exception):
    """A write the log store refused; nothing was written."""


class DuplicateImpression(LogStoreError):
    pass


class UnknownImpression(LogStoreError):
    pass


class ClickNotServed(LogStoreError):
    pass


class UnknownRound(LogStoreError):
    pass


class RoundClosed(LogStoreError):
    pass


@dataclass(frozen=True)
class ImpressionRecord:
    """What serving did for one request: the list it showed, which network placed each item, with which model."""

    impression_id: str
    user: str
    time: float  # epoch seconds
    candidates: tuple[str, ...]  # the pool ranked
    served: tuple[str, ...]  # the list shown, in order
    teams: tuple[int, ...]  # per served position: EXPLOIT (W), EXPLORE (W~; 1..n when multileaved) or NO_TEAM
    model_version: str
    round_id: int | None = None  # the exploration round it was interleaved in
    explore_seed: int | None = None  # the seed W~ was generated with
    history: tuple[str, ...] = ()  # the user's clicks from before (MIND's column), when this impression gave them
    source: str = SERVED  # SERVED, or IMPORTED: a historical log's impression, which no version of this pipeline served
    propensities: tuple[float, ...] = ()  # per served position, the chance the list's sampler put that item there
    #   given the items above it (a Plackett-Luce round); empty when the list was not sampled


@dataclass(frozen=True)
class Click:
    news_id: str
    time: float


@dataclass(frozen=True)
class LoggedImpression:
    """An impression with the clicks it received (in time order): the unit the updates learn from."""

    record: ImpressionRecord
    clicks: tuple[Click, ...] = ()
    returned: float | None = None  # when the user came back after it (a /feedback return), if that was reported

    @property
    def clicked(self) -> frozenset[str]:
        return frozenset(c.news_id for c in self.clicks)

    def to_impression(self) -> Impression:
        """As MIND data: the served list labelled clicked or not, with the history the impression was logged with."""
        rec, clicked = self.record, self.clicked
        labels = tuple(int(n in clicked) for n in rec.served)
        return Impression(rec.impression_id, rec.user, rec.time, rec.history, rec.served, labels,
                          returned=self.returned)


@dataclass(frozen=True)
class Round:
    """One exploration round: W~ is a pure function of (model_version's weights, seed, alpha)."""

    round_id: int
    model_version: str
    seed: int
    alpha: float
    opened_at: float
    closed_at: float | None = None
    outcome: dict | None = None  # set by close_round; None when a newer round superseded it
    recipe: dict = field(default_factory=dict)  # how the round is served (drn.exploration.RoundRecipe as a dict);
    #   serving and the minor update both read it here, so nothing has to be set equal in two processes

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite only autoincrements INTEGER primary keys
_meta = sa.MetaData()
_rounds = sa.Table(
    "log_rounds", _meta,
    sa.Column("round_id", _ID, primary_key=True, autoincrement=True),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("alpha", sa.Double, nullable=False),
    sa.Column("opened_at", sa.Double, nullable=False),
    sa.Column("closed_at", sa.Double),
    sa.Column("outcome", sa.JSON(none_as_null=True)),
    sa.Column("recipe", sa.JSON(none_as_null=True)),
)
_impressions = sa.Table(
    "log_impressions", _meta,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),  # log order: breaks ties between equal times
    sa.Column("impression_id", sa.Text, nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("candidates", sa.JSON, nullable=False),
    sa.Column("served", sa.JSON, nullable=False),
    sa.Column("teams", sa.JSON, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("round_id", _ID, sa.ForeignKey(_rounds.c.round_id)),
    sa.Column("explore_seed", sa.BigInteger),
    sa.Column("history", sa.JSON(none_as_null=True)),  # NULL: none given
    sa.Column("source", sa.Text, nullable=False, server_default=SERVED),
    sa.Column("propensities", sa.JSON(none_as_null=True)),  # NULL: not sampled
    sa.Index("ix_log_impressions_time", "time", "seq"),
    sa.Index("ix_log_impressions_round", "round_id", "time", "seq"),
)
# columns newer than the first schema, per table: added to older files
ADDED_COLUMNS = {"log_impressions": ("history", "source", "propensities"), "log_rounds": ("recipe",),
                 "log_returns": ("impression_id",)}
_clicks = sa.Table(
    "log_clicks", _meta,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),
    sa.Column("impression_id", sa.Text, sa.ForeignKey(_impressions.c.impression_id), nullable=False),
    sa.Column("news_id", sa.Text, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.UniqueConstraint("impression_id", "news_id", name="uq_log_clicks_once"),  # a click counts once
)
_news = sa.Table(
    "log_news", _meta,
    sa.Column("news_id", sa.Text, primary_key=True),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("subcategory", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("entities", sa.JSON, nullable=False),
    sa.Column("abstract", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("published", sa.Double),
)
_leases = sa.Table(
    "log_leases", _meta,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),  # wall-clock epoch seconds; a crashed holder's lease lapses
)
_returns = sa.Table(
    "log_returns", _meta,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    # the impression the user came back after: the return's id (NULL in rows logged before returns had one)
    sa.Column("impression_id", sa.Text, sa.ForeignKey(_impressions.c.impression_id)),
    sa.Index("ix_log_returns_time", "time", "seq"),
    sa.Index("uq_log_returns_once", "impression_id", unique=True),  # a return counts once
)


def _sqlite_durable(engine: sa.Engine) -> None:
    """WAL so readers never block the writer, synchronous=FULL so an acknowledged write survives a crash.

    SQLAlchemy emits BEGIN itself: writes use BEGIN IMMEDIATE, so a transaction that reads then writes (a click's
    check, a round switch) holds the write lock from its start instead of failing on a lock upgrade.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver stops emitting its own BEGIN
        for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _add_missing_columns(conn: sa.Connection) -> None:
    """Bring a log store made by an earlier release up to this schema: `create_all` makes missing tables only, so the
    columns added since are added here (nullable or with a default, so the rows already logged stay valid)."""
    for table in (_impressions, _rounds, _returns):
        present = {column["name"] for column in sa.inspect(conn).get_columns(table.name)}
        for name in ADDED_COLUMNS[table.name]:
            if name not in present:
                ddl = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
    for index in _returns.indexes:  # an index on an added column is missing from older files too
        index.create(conn, checkfirst=True)


def _between(column: sa.ColumnElement, start: float | None, end: float | None) -> list[sa.ColumnElement]:
    """Half-open [start, end), so consecutive windows never share an event; None leaves that side open."""
    return ([column >= start] if start is not None else []) + ([column < end] if end is not None else [])


def _record(row: sa.Row) -> ImpressionRecord:
    return ImpressionRecord(row.impression_id, row.user_id, row.time, tuple(row.candidates), tuple(row.served),
                            tuple(row.teams), row.model_version, row.round_id, row.explore_seed,
                            tuple(row.history or ()), row.source, tuple(row.propensities or ()))


def _round(row: sa.Row) -> Round:
    return Round(row.round_id, row.model_version, row.seed, row.alpha, row.opened_at, row.closed_at, row.outcome,
                 dict(row.recipe or {}))


def _check(rec: ImpressionRecord) -> None:
    if len(rec.teams) != len(rec.served):
        raise ValueError(f"impression {rec.impression_id}: {len(rec.teams)} teams for {len(rec.served)} served items")
    if not all(isinstance(t, int) and t >= NO_TEAM for t in rec.teams):
        raise ValueError(f"impression {rec.impression_id}: teams must be -1 (none), 0 (W) or an explore network's "
                         f"number, got {rec.teams}")
    if rec.propensities and (len(rec.propensities) != len(rec.served)
                             or not all(0.0 < p <= 1.0 for p in rec.propensities)):
        raise ValueError(f"impression {rec.impression_id}: propensities must be one probability in (0, 1] per served "
                         f"item, got {rec.propensities}")
    if not set(rec.served) <= set(rec.candidates):
        raise ValueError(f"impression {rec.impression_id}: served items that are not candidates")


def _impression_row(rec: ImpressionRecord) -> tuple:
    """A log_impressions row in column order (`seq` left to the database)."""
    return (rec.impression_id, rec.user, rec.time, json.dumps(rec.candidates), json.dumps(rec.served),
            json.dumps(rec.teams), rec.model_version, rec.round_id, rec.explore_seed,
            json.dumps(rec.history) if rec.history else None, rec.source,
            json.dumps(rec.propensities) if rec.propensities else None)


def imported_id(imp: Impression) -> str:
    """The log store's id of a historical impression. MIND numbers impressions per file (1, 2, ...), so two folders
    share ids; with the user and the time the id names one impression across folders, and importing a folder again
    (or a split of it, `drn data split`) finds every impression already there."""
    return f"{IMPORTED}:{imp.impression_id}:{imp.user}:{imp.time!r}"


def _imported(imp: Impression) -> tuple[ImpressionRecord, list[tuple[str, str, float]]]:
    """A MIND impression as logged: every candidate shown (MIND lists what the user saw), no team, no round, no
    version of ours (model_version IMPORTED), its history kept; each clicked item once, at its click time (MIND has
    none: the impression's)."""
    key = imported_id(imp)
    record = ImpressionRecord(key, imp.user, imp.time, imp.candidates, imp.candidates,
                              (NO_TEAM,) * len(imp.candidates), IMPORTED, history=imp.history, source=IMPORTED)
    first: dict[str, float] = {}
    for time, news_id in imp.timed_clicks():
        first.setdefault(news_id, time)  # a click counts once, as log_clicks keeps it
    return record, [(key, news_id, time) for news_id, time in first.items()]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _news_rows(items: Iterable[NewsItem]) -> list[tuple]:
    """log_news rows in column order, one per id, the last description of an id winning: PostgreSQL refuses to
    update one row twice in one statement, and a batch of requests may well introduce the same item twice."""
    newest = {i.news_id: i for i in items}
    return [(i.news_id, i.category, i.subcategory, i.title, i.provider, json.dumps(list(i.entities)), i.abstract,
             i.url, i.published) for i in newest.values()]


class _RowsSql:
    """Multi-row INSERT statements into one table, in driver SQL: the columns in table order, the auto-increment
    `seq` left to the database. With `upsert_key`, a row whose key exists updates it; with `skip_key` (columns), such
    a row is left out."""

    def __init__(self, table: sa.Table, placeholder: str, upsert_key: str | None = None, skip_key: str | None = None):
        columns = [c.name for c in table.columns if c.name != "seq"]
        self._head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        self._row = f"({', '.join([placeholder] * len(columns))})"
        updated = ", ".join(f"{c} = excluded.{c}" for c in columns if c != upsert_key)
        self._tail = (f" ON CONFLICT ({upsert_key}) DO UPDATE SET {updated}" if upsert_key
                      else f" ON CONFLICT ({skip_key}) DO NOTHING" if skip_key else "")

    def execute(self, cursor: Any, rows: Sequence[tuple]) -> int:
        """One statement per BATCH rows; nothing for no rows. Returns how many rows were written."""
        written = 0
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            cursor.execute(self._head + ", ".join([self._row] * len(chunk)) + self._tail,
                           tuple(value for row in chunk for value in row))
            written += cursor.rowcount
        return written


class LogStore:
    """Impressions, clicks, returns and exploration rounds in one SQL database; safe to share between threads."""

    def __init__(self, url: str):
        """`sqlite:////abs/path/logs.db` or `postgresql+psycopg://host:port/db`; creates the tables if missing."""
        backend = sa.make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"log store URL must be sqlite or postgresql, got {backend!r}")
        self._engine = sa.create_engine(url, pool_pre_ping=backend == "postgresql")
        if backend == "sqlite":
            _sqlite_durable(self._engine)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        self._insert = sqlite.insert if backend == "sqlite" else postgresql.insert  # for ON CONFLICT
        placeholder = "?" if self._engine.dialect.paramstyle == "qmark" else "%s"
        self._impression_sql = _RowsSql(_impressions, placeholder)
        self._news_sql = _RowsSql(_news, placeholder, upsert_key="news_id")
        self._import_sql = _RowsSql(_impressions, placeholder, skip_key="impression_id")
        self._import_clicks_sql = _RowsSql(_clicks, placeholder, skip_key="impression_id, news_id")
        self._begin_write = "BEGIN IMMEDIATE" if backend == "sqlite" else None  # see _sqlite_durable
        self._integrity_error = self._engine.dialect.loaded_dbapi.IntegrityError
        # SQLite: each writing thread keeps one driver connection, outside the pool (a file does not hang up).
        # PostgreSQL: a server can drop an idle connection, so each write takes one from the pool, which pings it.
        self._keep_driver_connections = backend == "sqlite"
        self._driver = threading.local()  # this thread's kept connection, and the `_opened` it was opened in
        self._driver_connections: set[Any] = set()  # every kept one, closed by close()
        self._driver_lock = threading.Lock()
        self._opened = 0  # bumped by close(): connections kept before it are not used again
        with self._writer.begin() as conn:
            _meta.create_all(conn)
            _add_missing_columns(conn)

    @classmethod
    def at(cls, folder: str | os.PathLike) -> LogStore:
        """The embedded default: a SQLite file under the data directory."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(folder / LOG_FILE).resolve()}")

    def __repr__(self) -> str:
        return f"LogStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        with self._driver_lock:
            self._opened += 1
            for connection in self._driver_connections:
                connection.close()
            self._driver_connections.clear()
        self._engine.dispose()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # writes

    def log_impression(self, rec: ImpressionRecord) -> None:
        """Records what was served; an impression id is logged once (DuplicateImpression otherwise)."""
        self.log_impressions([rec])

    def log_impressions(self, records: Sequence[ImpressionRecord], news: Iterable[NewsItem] = ()) -> None:
        """Records many impressions, and the news metadata they introduce, in one transaction: all or nothing.

        Serving's group commit: one commit (one fsync on SQLite) for every request that arrived while the previous
        commit was on disk, instead of one per request. A duplicate impression id or an unknown round refuses the
        whole batch (DuplicateImpression / UnknownRound); the caller retries one by one to find whose it was.

        This is serving's hot write, and every moment its thread holds the GIL the event loop waits. So the rows go
        as multi-row statements straight through a driver connection (`_driver_transaction`: no SQLAlchemy
        execution machinery, and on SQLite no pool checkout and reset either), and the database's own constraints
        (unique id, the round's foreign key) do the checking; only a refused batch is looked at again, to say why."""
        for rec in records:
            _check(rec)
        ids = [rec.impression_id for rec in records]
        repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if repeated:
            raise DuplicateImpression(f"impressions repeated in one batch: {', '.join(repeated[:10])}")
        try:
            with self._driver_transaction() as cursor:
                self._news_sql.execute(cursor, _news_rows(news))
                self._impression_sql.execute(cursor, [_impression_row(rec) for rec in records])
        except self._integrity_error:
            self._why_refused(records)
            raise

    @contextlib.contextmanager
    def _driver_transaction(self) -> Iterator[Any]:
        """A write transaction on a driver connection: this thread's kept one on SQLite, a pooled one on PostgreSQL.
        A failure rolls it back; a connection that cannot roll back is never used again."""
        connection = self._driver_connection()
        try:
            with contextlib.closing(connection.cursor()) as cursor:
                if self._begin_write:
                    cursor.execute(self._begin_write)
                yield cursor
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except Exception:
                self._discard(connection)
                raise
            self._release(connection)
            raise
        self._release(connection)

    def _driver_connection(self) -> Any:
        if not self._keep_driver_connections:
            return self._engine.raw_connection()
        kept = getattr(self._driver, "kept", None)
        if kept is not None and kept[0] == self._opened:
            return kept[1]
        connection = self._engine.raw_connection()
        connection.detach()  # out of the pool: a kept connection must not hold one of its places
        with self._driver_lock:
            self._driver_connections.add(connection)
        self._driver.kept = (self._opened, connection)
        return connection

    def _release(self, connection: Any) -> None:
        if not self._keep_driver_connections:
            connection.close()  # back to the pool

    def _discard(self, connection: Any) -> None:
        if not self._keep_driver_connections:
            connection.invalidate()  # the pool opens another in its place
            return
        self._driver.kept = None
        with self._driver_lock:
            self._driver_connections.discard(connection)
        with contextlib.suppress(Exception):
            connection.close()

    def _why_refused(self, records: Sequence[ImpressionRecord]) -> None:
        """After the database refused a batch: raise DuplicateImpression or UnknownRound naming the culprit."""
        with self._engine.connect() as conn:
            ids = [rec.impression_id for rec in records]
            column = _impressions.c.impression_id
            logged = set(conn.scalars(sa.select(column).where(column.in_(ids))))
            if logged:
                raise DuplicateImpression(f"impressions already logged: {', '.join(sorted(logged)[:10])}")
            wanted = {rec.round_id for rec in records if rec.round_id is not None}
            known = set(conn.scalars(sa.select(_rounds.c.round_id).where(_rounds.c.round_id.in_(wanted))))
            missing = [rec for rec in records if rec.round_id is not None and rec.round_id not in known]
            if missing:
                raise UnknownRound(f"impression {missing[0].impression_id}: no round {missing[0].round_id}")

    def log_click(self, impression_id: str, news_id: str, time: float) -> bool:
        """True when recorded, False when this click was already logged (clients retry; a click counts once)."""
        return self.log_clicks([(impression_id, news_id, time)])[0]

    def log_clicks(self, clicks: Sequence[tuple[str, str, float]]) -> list[bool]:
        """(impression id, news id, time) clicks in one transaction (one commit), all or nothing; per click, True
        when recorded and False when already logged. UnknownImpression / ClickNotServed refuse the whole batch."""
        if not clicks:
            return []
        with self._writer.begin() as conn:
            return [self._click(conn, *click) for click in clicks]

    def _click(self, conn: sa.Connection, impression_id: str, news_id: str, time: float) -> bool:
        served = conn.scalar(sa.select(_impressions.c.served).where(_impressions.c.impression_id == impression_id))
        if served is None:
            raise UnknownImpression(f"no impression {impression_id}")
        if news_id not in served:
            raise ClickNotServed(f"impression {impression_id} did not show {news_id}")
        insert = (self._insert(_clicks).values(impression_id=impression_id, news_id=news_id, time=time)
                  .on_conflict_do_nothing(index_elements=["impression_id", "news_id"]).returning(_clicks.c.seq))
        return conn.execute(insert).first() is not None

    def log_returns(self, returns: Sequence[tuple[str, str, float]]) -> list[bool]:
        """(impression id, user, time) returns in one transaction; per return, True when recorded and False when
        the impression already has its return. UnknownImpression refuses the whole batch."""
        if not returns:
            return []
        with self._writer.begin() as conn:
            return [self._return(conn, *event) for event in returns]

    def _return(self, conn: sa.Connection, impression_id: str, user: str, time: float) -> bool:
        if conn.scalar(sa.select(_impressions.c.seq).where(_impressions.c.impression_id == impression_id)) is None:
            raise UnknownImpression(f"no impression {impression_id}")
        insert = (self._insert(_returns).values(impression_id=impression_id, user_id=user, time=time)
                  .on_conflict_do_nothing(index_elements=["impression_id"]).returning(_returns.c.seq))
        return conn.execute(insert).first() is not None

    def import_impressions(self, impressions: Iterable[Impression], *, batch: int = BATCH,
                           progress: Callable[[int, int | None], None] | None = None) -> int:
        """Historical impressions (a MIND log) with their clicks and their users' history, as source IMPORTED: events
        serving's feature state is rebuilt from and major updates may replay, but no exploration round's feedback.

        Idempotent: an impression already in the store (`imported_id`) is left as it is, so importing a folder
        again adds nothing, and an import cut short is completed by running it again. One transaction per `batch`
        impressions, so a log of millions neither holds the write lock long nor fills memory; `progress(done,
        None)` after each. Returns how many impressions were new."""
        added = done = 0
        for chunk in _chunks(map(_imported, impressions), batch):
            with self._driver_transaction() as cursor:
                added += self._import_sql.execute(cursor, [_impression_row(rec) for rec, _ in chunk])
                self._import_clicks_sql.execute(cursor, [click for _, clicks in chunk for click in clicks])
            done += len(chunk)
            if progress:
                progress(done, None)
        return added

    def log_news(self, items: Iterable[NewsItem]) -> int:
        """Insert or update news metadata (the newest description of an id wins); returns how many were written."""
        rows = _news_rows(items)
        with self._driver_transaction() as cursor:
            self._news_sql.execute(cursor, rows)
        return len(rows)

    # leases: at most one holder per name

    def acquire(self, name: str, holder: str, ttl_s: float, now: float | None = None,
                replacing: str | None = None) -> bool:
        """Take the lease `name` for `ttl_s` seconds if it is free or lapsed, or still held by `replacing` (a holder
        the caller knows to be dead); True when `holder` now holds it.

        One atomic upsert, so two processes asking at once cannot both win. The lease lapses after `ttl_s`, so a
        holder that crashed without releasing blocks others for at most that long, unless it is named `replacing`."""
        now = clock.time() if now is None else now
        insert = self._insert(_leases).values(name=name, holder=holder, expires_at=now + ttl_s)
        free = _leases.c.expires_at <= now
        take_over = insert.on_conflict_do_update(index_elements=["name"],
                                                 set_=dict(holder=holder, expires_at=now + ttl_s),
                                                 where=free if replacing is None
                                                 else sa.or_(free, _leases.c.holder == replacing))
        with self._writer.begin() as conn:
            return conn.execute(take_over.returning(_leases.c.name)).first() is not None

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease `name` (lapsed or not); None when nobody took it or it was released."""
        with self._engine.connect() as conn:
            return conn.scalar(sa.select(_leases.c.holder).where(_leases.c.name == name))

    def release(self, name: str, holder: str) -> bool:
        """Give the lease back; False when `holder` no longer held it (it lapsed and another took it)."""
        with self._writer.begin() as conn:
            gone = conn.execute(sa.delete(_leases).where(_leases.c.name == name, _leases.c.holder == holder))
        return gone.rowcount == 1

    # exploration rounds

    def open_round(self, model_version: str, seed: int, alpha: float, time: float,
                   recipe: Mapping[str, Any] | None = None) -> Round:
        """Starts a round; the open one (if any) is closed unscored, so at most one round is ever open. Without a
        `recipe` the round is served as the latest round was (a promotion keeps the minor update's choice)."""
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises round switches
                conn.exec_driver_sql(f"LOCK TABLE {_rounds.name} IN EXCLUSIVE MODE")
            if recipe is None:
                latest = sa.select(_rounds.c.recipe).order_by(_rounds.c.round_id.desc()).limit(1)
                recipe = conn.execute(latest).scalar() or {}
            conn.execute(sa.update(_rounds).where(_rounds.c.closed_at.is_(None)).values(closed_at=time))
            result = conn.execute(sa.insert(_rounds).values(model_version=model_version, seed=seed, alpha=alpha,
                                                            opened_at=time, recipe=dict(recipe)))
        return Round(result.inserted_primary_key[0], model_version, seed, alpha, time, recipe=dict(recipe))

    def current_round(self) -> Round | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_rounds).where(_rounds.c.closed_at.is_(None))).first()
        return _round(row) if row else None

    def latest_round(self) -> Round | None:
        """The newest round, open or closed: how the pipeline was last serving."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_rounds).order_by(_rounds.c.round_id.desc()).limit(1)).first()
        return _round(row) if row else None

    def close_round(self, round_id: int, outcome: dict, time: float) -> None:
        """Scores the open round. A round is closed once: RoundClosed otherwise, unless it already holds this very
        outcome (a retried call whose first answer was lost), which changes nothing."""
        with self._writer.begin() as conn:
            closing = sa.update(_rounds).where(_rounds.c.round_id == round_id, _rounds.c.closed_at.is_(None))
            if conn.execute(closing.values(closed_at=time, outcome=outcome)).rowcount == 1:
                return
            held = conn.execute(sa.select(_rounds.c.outcome).where(_rounds.c.round_id == round_id)).first()
            if held is None:
                raise UnknownRound(f"no round {round_id}")
            if held.outcome != json.loads(json.dumps(outcome)):
                raise RoundClosed(f"round {round_id} is already closed")

    def rounds(self) -> list[Round]:
        with self._engine.connect() as conn:
            return [_round(row) for row in conn.execute(sa.select(_rounds).order_by(_rounds.c.round_id))]

    # reads

    def impression(self, impression_id: str) -> ImpressionRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_impressions).where(_impressions.c.impression_id == impression_id)).first()
        return _record(row) if row else None

    def round_feedback(self, round_id: int) -> list[LoggedImpression]:
        """The impressions interleaved in one round, in time order, with their clicks: a minor update's input."""
        return list(self._logged([_impressions.c.round_id == round_id]))

    def window(self, start: float | None = None, end: float | None = None, *,
               batch: int = BATCH) -> Iterator[LoggedImpression]:
        """Impressions with start <= time < end in time order (ties in log order), each with all its clicks and
        the return reported after it.

        Streamed `batch` impressions at a time, each batch its own short read, so a replay of months of logs neither
        fills memory nor holds a transaction (or a SQLite checkpoint) open while the consumer trains.
        """
        return self._logged(_between(_impressions.c.time, start, end), batch)

    def _logged(self, where: list[sa.ColumnElement], batch: int = BATCH) -> Iterator[LoggedImpression]:
        order = (_impressions.c.time, _impressions.c.seq)
        after: tuple[float, int] | None = None
        while True:
            query = sa.select(_impressions).where(*where).order_by(*order).limit(batch)
            if after is not None:
                query = query.where(sa.tuple_(*order) > after)  # keyset paging: resumes exactly where it stopped
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
                ids = [row.impression_id for row in rows]
                clicks, returned = self._clicks_of(conn, ids), self._returns_of(conn, ids)
            yield from (LoggedImpression(_record(row), clicks.get(row.impression_id, ()), returned.get(row.impression_id))
                        for row in rows)
            if len(rows) < batch:
                return
            after = (rows[-1].time, rows[-1].seq)

    @staticmethod
    def _clicks_of(conn: sa.Connection, impression_ids: list[str]) -> dict[str, tuple[Click, ...]]:
        found: dict[str, list[Click]] = {}
        if impression_ids:
            query = (sa.select(_clicks.c.impression_id, _clicks.c.news_id, _clicks.c.time)
                     .where(_clicks.c.impression_id.in_(impression_ids)).order_by(_clicks.c.time, _clicks.c.seq))
            for impression_id, news_id, time in conn.execute(query):
                found.setdefault(impression_id, []).append(Click(news_id, time))
        return {impression_id: tuple(clicks) for impression_id, clicks in found.items()}

    @staticmethod
    def _returns_of(conn: sa.Connection, impression_ids: list[str]) -> dict[str, float]:
        if not impression_ids:
            return {}
        query = sa.select(_returns.c.impression_id, _returns.c.time).where(_returns.c.impression_id.in_(impression_ids))
        return dict(conn.execute(query).all())

    def news(self, ids: Sequence[str] | None = None) -> dict[str, NewsItem]:
        """News metadata by id: all of it, or that of `ids` (those known)."""
        query = sa.select(_news) if ids is None else sa.select(_news).where(_news.c.news_id.in_(list(ids)))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return {r.news_id: NewsItem(r.news_id, r.category, r.subcategory, r.title, r.provider, tuple(r.entities),
                                    r.abstract, r.url, r.published) for r in rows}

    def returns(self, start: float | None = None, end: float | None = None) -> list[tuple[str, float]]:
        """(user, time) of returns with start <= time < end, in time order."""
        query = (sa.select(_returns.c.user_id, _returns.c.time).where(*_between(_returns.c.time, start, end))
                 .order_by(_returns.c.time, _returns.c.seq))
        with self._engine.connect() as conn:
            return [(user, time) for user, time in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        tables = {"impressions": _impressions, "clicks": _clicks, "returns": _returns, "rounds": _rounds}
        with self._engine.connect() as conn:  # one read transaction: a consistent snapshot
            return {name: conn.scalar(sa.select(sa.func.count()).select_from(t)) for name, t in tables.items()}
