"""The HTTP service: rank candidates with the promoted DRN (interleaved with its explore network during a round), log
what was served and what users did, and follow the registry without restarts.

    POST /recommend       user, candidates (+ metadata of new items), k, context.time, history -> served list, id
    POST /feedback        clicks (impression id, user, news id) and returns (the impression the user came back
                          after, user); a repeated click or return counts once
    GET  /healthz         liveness and what is wrong (registry unreachable, a version that did not load)
    GET  /model           version, stage, exploration round and seed, when loaded, feature schema version, and
                          whether promotion is held after a rollback
    GET  /metrics         Prometheus text format
    POST /admin/reload    look at the registry now, retrying a version that failed    (bearer DRN_SERVE_ADMIN_TOKEN)
    POST /admin/rollback  serve the previous (or a given) version, open a round for it (bearer DRN_SERVE_ADMIN_TOKEN)

Threading: the online feature state is touched only on the event loop (routes are `async def`: torch in
Starlette's threadpool pays a thread hop and a GIL wait per request), so it needs no lock. Log store calls go to
one writer thread, where impressions are group-committed (serving.writer). Registry calls and model loads run in
worker threads (serving.holder). POST /recommend is served in front of FastAPI's routing (serving.fast_route).
Configuration: serving.settings.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import sys
import time
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import Response

from drn import lifecycle
from drn.features import FeatureState
from drn.logstore import ClickNotServed, ImpressionRecord, LogStore, UnknownImpression
from drn.mind import NewsItem
from drn.model import set_threads
from drn.registry import NOT_HELD, Registry, RegistryError
from serving.fast_route import FastRoute
from serving.holder import ModelHolder
from serving.openapi import openapi_document
from serving.writer import LogWriter
from serving.schemas import (CLOCK_HEADER, DEFAULT_K, RECOMMEND_REQUEST, Candidate, ClickEvent, FeedbackRequest,
                             FeedbackResponse, RecommendRequest, RecommendResponse, ReturnEvent, RollbackRequest,
                             adds_nothing_to, news_item)
from serving.settings import ServeSettings
from serving.signing import ImpressionSigner, token_matches
from serving.telemetry import CONTENT_TYPE, MetricsMiddleware, Telemetry

log = logging.getLogger("drn.serving")
T = TypeVar("T")
DESCRIBED_KEPT = 50_000  # items whose last description (or absence from the log store) is kept; past it, start over
GIL_SWITCH_INTERVAL_S = 0.0005  # Python's default 5 ms, one wait per SQLite call of a commit, set the p99 latency


def rebuild_feature_state(logs: LogStore) -> tuple[FeatureState, dict[str, NewsItem], int]:
    """The online feature state as it was before a restart: the news table, then every logged impression (served or
    imported from the logs offline training learned from) with its history and clicks, recorded in time order through
    the same code training uses (their features are not computed: nothing needs them). So a version goes live with
    the user and item state it was evaluated with. Returns (state, news, impressions)."""
    news = logs.news()
    counter = itertools.count()
    state = lifecycle.warm_state(news, (logged for logged, _ in zip(logs.window(), counter)))
    return state, news, next(counter)  # zip draws from the counter once per impression read


class Service:
    """The state behind the routes: stores, feature state, the model holder, the impression signer."""

    def __init__(self, settings: ServeSettings, open_registry: Callable[[], Registry], logs: LogStore | None,
                 telemetry: Telemetry):
        self.settings, self.telemetry = settings, telemetry
        self.signer = ImpressionSigner(settings.secret)
        self.rng = np.random.default_rng()  # team draft's coin flips; not seeded: rounds are compared, not replayed
        self._open_registry = open_registry
        self._owns_logs = logs is None
        self.logs = logs
        self.writer = LogWriter(logs)
        self.state = FeatureState()
        self.news: dict[str, NewsItem] = {}  # what the log store knows of each item: only changes are written
        self._described: dict[str, Candidate] = {}  # per item, a description found to add nothing to `news`
        self._unlogged: set[str] = set()  # ids looked for in the log store and not found there
        self.holder: ModelHolder | None = None
        self._follow: asyncio.Task | None = None

    async def start(self) -> None:
        set_threads()
        # The writer thread needs the GIL back after each SQLite call (which releases it); while the event loop
        # thread computes it gets it only when the loop thread is made to let go, after the switch interval.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if self.logs is None:
            self.logs = self.writer.logs = await asyncio.to_thread(self.settings.stores.open_log_store)
        started = time.perf_counter()
        self.state, self.news, count = await asyncio.to_thread(rebuild_feature_state, self.logs)
        log.info("feature state rebuilt from %d logged impressions in %.1f s", count, time.perf_counter() - started)
        self.state.forget_idle_items()
        self.telemetry.items_held.set_function(lambda: self.state.items_held)
        self.telemetry.users_held.set_function(lambda: self.state.users_held)
        self.holder = ModelHolder(self._open_registry, self.logs, self.settings.follow, self.telemetry)
        await self.holder.refresh()  # start with the promoted model (or popularity, saying why) before serving
        # What exists now (MLflow, SQLAlchemy, torch, the rebuilt state: half a million objects) lives as long as
        # the process: out of the collector's sight, a full collection no longer walks it. Such a walk (hundreds of
        # ms: serving_bench's `full_gc_ms`) came every few thousand requests and set the p99 latency.
        gc.freeze()
        self._follow = asyncio.create_task(self.holder.follow(self.settings.poll_s, self.settings.registry_poll_s))

    async def stop(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        self.writer.shutdown()
        if self._owns_logs and self.logs is not None:
            self.logs.close()

    # ---- helpers -------------------------------------------------------------------------------------------
    async def _store(self, call: Callable[..., T], *args: Any) -> T:
        """Run a log store call on the writer thread."""
        return await self._outcome(self.writer.run(call, *args))

    async def _outcome(self, result: Awaitable[T]) -> T:
        """Await a log store result. 4xx raised by the call pass through; a store failure is a 503 (the request
        changed nothing the client can rely on, and it may retry)."""
        try:
            return await result
        except HTTPException:
            raise
        except Exception as e:
            self.telemetry.errors.labels("logstore_unavailable").inc()
            log.exception("log store call failed")
            raise HTTPException(503, f"log store unavailable: {type(e).__name__}") from e

    def _time(self, given: float | None, trusted: bool) -> float:
        """The client's time only for callers holding the clock token; server time for everyone else."""
        return given if trusted and given is not None else time.time()

    async def _recall(self, user: str, ids: list[str], history: tuple[str, ...]) -> None:
        """Put in `news` (and the feature state) what the log store knows of the request's items that `news` lacks,
        and of a new user's history: the items a news stream left idle were forgotten, and one named again is laid
        over, and seeds a profile with, what was known of it. Ids the store does not know are kept in `_unlogged`, so
        they are looked for once, not per request."""
        wanted = [n for n in ids if n not in self.news and n not in self._unlogged]
        if history and not self.state.knows_user(user):
            wanted += [n for n in history if not self.state.knows_item(n) and n not in self._unlogged]
        wanted = list(dict.fromkeys(wanted))  # a history may name an item twice, or a candidate
        if not wanted:
            return
        found = await self._store(self.logs.news, wanted)
        if len(self._unlogged) >= DESCRIBED_KEPT:
            self._unlogged.clear()
        for news_id in wanted:
            item = found.get(news_id)
            if item is None:
                self._unlogged.add(news_id)
            elif news_id not in self.news:  # another request may have put it there meanwhile
                self.news[news_id] = item
                self.state.add_news(item)

    def _drop_forgotten(self) -> None:
        """Drop from `news` and the description cache the items the feature state has just forgotten."""
        for news_id in self.state.take_forgotten():
            self.news.pop(news_id, None)
            self._described.pop(news_id, None)

    def _describe(self, candidates: list[Candidate]) -> list[NewsItem]:
        """Items whose description in this request adds to what is known; they are applied to the feature state
        now (features need them) and written to the log store with the impression.

        The common case is a client repeating, request after request, the description it sent before: that is one
        dict comparison with the description last found to add nothing (forgotten when the item changes)."""
        changed = []
        for candidate in candidates:
            news_id = candidate["news_id"]
            if self._described.get(news_id) == candidate:
                continue
            known = self.news.get(news_id)
            if known is not None and adds_nothing_to(candidate, known):
                if len(self._described) >= DESCRIBED_KEPT:  # a news stream's old items would fill it for ever
                    self._described.clear()
                self._described[news_id] = candidate
                continue
            item = news_item(candidate, known)
            if item != (known or NewsItem(news_id)):
                self.state.add_news(item)
                changed.append(item)
        return changed

    async def _log_served(self, record: ImpressionRecord, news: list[NewsItem]) -> None:
        """Log an impression (and the items it introduced) through the group commit; returns once it is durable."""
        await self._outcome(self.writer.log_impression(record, news))

    # ---- routes --------------------------------------------------------------------------------------------
    async def recommend(self, body: RecommendRequest, trusted: bool) -> RecommendResponse:
        ids = [c["news_id"] for c in body["candidates"]]
        if len(ids) > self.settings.max_candidates:
            raise HTTPException(422, f"{len(ids)} candidates; at most {self.settings.max_candidates} per request")
        repeated = sorted(n for n, times in Counter(ids).items() if times > 1) if len(set(ids)) < len(ids) else []
        if repeated:
            raise HTTPException(422, f"duplicate candidates: {', '.join(repeated[:10])}")
        now = self._time(body.get("context", {}).get("time"), trusted)
        history = tuple(body.get("history", ()))
        await self._recall(body["user"], ids, history)
        news = self._describe(body["candidates"])
        # A user met for the first time is seeded with the history before their features are taken (as replay does);
        # the impression keeps only a history that was used, so a rebuild seeds the same user the same way.
        seeded = bool(history) and self.state.see_history(body["user"], history)
        model = self.holder.current  # one model for the whole request, whatever swaps meanwhile
        batch = self.state.features(body["user"], ids, now)
        self._drop_forgotten()
        ranked = model.rank(batch, body.get("k", DEFAULT_K), self.rng)
        round_ = model.round
        record = ImpressionRecord(self.signer.new_id(), body["user"], now, tuple(ids), ranked.served, ranked.teams,
                                  model.label, round_.round_id if round_ else None, round_.seed if round_ else None,
                                  history if seeded else (), propensities=ranked.propensities)
        await self._log_served(record, news)
        for item in news:
            self.news[item.news_id] = item
            self._described.pop(item.news_id, None)
            self._unlogged.discard(item.news_id)
        self.state.record_impression(body["user"], ranked.served, now)
        self._drop_forgotten()
        self.telemetry.impressions.labels(model.source).inc()
        return RecommendResponse(impression_id=record.impression_id, items=list(ranked.served),
                                 model_version=model.label, source=model.source, round_id=record.round_id, time=now)

    def _checked(self, event: ClickEvent | ReturnEvent, trusted: bool,
                 records: dict[str, ImpressionRecord | None]) -> tuple[ImpressionRecord, float]:
        """The event's impression and time, once the impression is found logged, served to the event's user, and
        the event within the feedback window after it (so a replayed old event never reaches training). `records`:
        the impressions this call has read (a batch often holds several events of one impression)."""
        if event.impression_id not in records:
            records[event.impression_id] = self.logs.impression(event.impression_id)
        record = records[event.impression_id]
        if record is None:
            raise HTTPException(404, f"unknown impression {event.impression_id}")
        if record.user != event.user:
            raise HTTPException(403, f"impression {event.impression_id} was not served to {event.user}")
        when = event.time if trusted and event.time is not None else max(time.time(), record.time)
        if when < record.time:
            raise HTTPException(422, f"event at {when} precedes its impression at {record.time}")
        if when - record.time > self.settings.feedback_window_s:
            raise HTTPException(422, f"event {when - record.time:.0f} s after impression {event.impression_id}: "
                                     f"past the feedback window of {self.settings.feedback_window_s:.0f} s")
        return record, when

    def _log_feedback(self, clicks: list[ClickEvent], returns: list[ReturnEvent],
                      trusted: bool) -> tuple[list[tuple[str, str, float, bool]], list[bool]]:
        """On the writer thread: check every event against its logged impression before anything is written (so a
        bad event in a batch writes nothing), then the clicks in one transaction and the returns in one.
        Returns ((user, news id, time, new) per click, new per return)."""
        checked, records = [], {}
        for click in clicks:
            record, when = self._checked(click, trusted, records)
            if click.news_id not in record.served:
                raise HTTPException(422, f"impression {click.impression_id} did not show {click.news_id}")
            checked.append((click, when))
        came_back = [(event.impression_id, event.user, self._checked(event, trusted, records)[1]) for event in returns]
        try:
            new = self.logs.log_clicks([(click.impression_id, click.news_id, when) for click, when in checked])
            new_returns = self.logs.log_returns(came_back)
        except (UnknownImpression, ClickNotServed) as e:  # checked above; kept for a store changed meanwhile
            raise HTTPException(422, str(e)) from e
        return [(click.user, click.news_id, when, is_new) for (click, when), is_new in zip(checked, new)], new_returns

    async def feedback(self, body: FeedbackRequest, trusted: bool) -> FeedbackResponse:
        if not body.clicks and not body.returns:
            raise HTTPException(422, "no clicks and no returns: nothing to record")
        forged = [e.impression_id for e in (*body.clicks, *body.returns) if not self.signer.valid(e.impression_id)]
        if forged:
            raise HTTPException(403, f"impression ids not issued by this service: {', '.join(forged[:10])}")
        written, new_returns = await self._store(self._log_feedback, body.clicks, body.returns, trusted)
        for user, news_id, when, new in written:
            if new:  # a retried click is already in the feature state
                self.state.record_click(user, news_id, when)
        new_clicks, returned = sum(new for *_, new in written), sum(new_returns)
        self.telemetry.clicks.labels("new").inc(new_clicks)
        self.telemetry.clicks.labels("duplicate").inc(len(written) - new_clicks)
        return FeedbackResponse(clicks_recorded=new_clicks, clicks_duplicate=len(written) - new_clicks,
                                returns_recorded=returned, returns_duplicate=len(new_returns) - returned)

    def health(self) -> dict:
        holder = self.holder
        problems = [p for p in (holder.registry_error, holder.load_error) if p]
        model = holder.current
        return {"status": "degraded" if problems else "ok", "source": model.source, "model_version": model.label,
                "cold_start": model.exploit is None, "registry_error": holder.registry_error,
                "load_error": holder.load_error, "last_registry_sync": holder.last_sync}

    async def promotion(self) -> dict:
        """Whether a rollback holds automatic promotion (since when, by whom, why), asked of the registry now."""
        try:
            hold = await self.holder.with_registry(lambda registry: registry.promotion_hold())
        except Exception as e:  # the registry unreachable: /model still answers, saying so
            return {"held": None, "error": f"{type(e).__name__}: {e}"}
        return hold.describe() if hold is not None else NOT_HELD

    async def rollback(self, body: RollbackRequest) -> dict:
        try:
            version = await self.holder.with_registry(lambda registry: lifecycle.rollback(
                registry, self.logs, body.to, who="serving:/admin/rollback", why=body.why, now=time.time()))
        except RegistryError as e:  # nothing served, nothing to roll back to, already served, unknown version
            raise HTTPException(409, str(e)) from e
        return {"rolled_back_to": version, **(await self.holder.refresh(force=True)).describe()}


def create_app(settings: ServeSettings, *, open_registry: Callable[[], Registry] | None = None,
               logs: LogStore | None = None) -> FastAPI:
    """The app. `open_registry` and `logs` default to the stores named by `settings.stores`; tests pass their own.
    The registry is opened in a worker thread on first use (importing MLflow takes seconds)."""
    telemetry = Telemetry()
    service = Service(settings, open_registry or settings.stores.open_registry, logs, telemetry)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # The service's own metrics are /metrics; FastAPI's OpenTelemetry hooks (idle unless a global provider is set)
    # are switched off, which also spares every request their check for one.
    app = FastAPI(title="DRN serving", lifespan=lifespan, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.service = service

    # The dependencies are `async def` although they do no I/O: FastAPI runs a plain `def` dependency in its
    # threadpool, a thread hop (and a wait for the GIL back) on every request.
    async def trusted(token: str | None = Header(None, alias=CLOCK_HEADER)) -> bool:
        return token_matches(settings.clock_token, token)

    async def admin(authorization: str | None = Header(None)) -> None:
        if settings.admin_token is None:
            raise HTTPException(403, "admin routes are disabled (DRN_SERVE_ADMIN_TOKEN is not set)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(settings.admin_token, token):
            raise HTTPException(401, "admin routes need 'Authorization: Bearer <DRN_SERVE_ADMIN_TOKEN>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/feedback", response_model=FeedbackResponse)
    async def feedback(body: FeedbackRequest, is_trusted: bool = Depends(trusted)) -> FeedbackResponse:
        return await service.feedback(body, is_trusted)

    @app.get("/healthz")
    async def healthz() -> dict:
        return service.health()

    @app.get("/model")
    async def model() -> dict:
        return {**service.holder.current.describe(), "follow": settings.follow,
                "promotion": await service.promotion()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", dependencies=[Depends(admin)])
    async def reload() -> dict:
        return (await service.holder.refresh(force=True)).describe()

    @app.post("/admin/rollback", dependencies=[Depends(admin)])
    async def rollback(body: RollbackRequest) -> dict:
        return await service.rollback(body)

    # the hot route, in front of FastAPI's routing (serving.fast_route); the OpenAPI document declares it
    app.add_middleware(FastRoute, path="/recommend", schema=RECOMMEND_REQUEST, handler=service.recommend,
                       clock_token=settings.clock_token)
    app.add_middleware(MetricsMiddleware, telemetry=telemetry,
                       routes=frozenset(r.path for r in app.routes) | {"/recommend"})
    app.openapi = openapi_document(app, "/recommend")
    return app
