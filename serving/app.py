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

Threading: the online feature state is touched only on the event loop (routes are `async def`; scoring there
measured 5x faster than in Starlette's threadpool), so it needs no lock. Log store calls go to one writer thread:
SQLite takes one writer at a time, and a single thread keeps them in arrival order without lock waits. Impressions
are group-committed there (one transaction, one INSERT and one fsync for all that queued up meanwhile), and
each request is answered only once its own impression is durable. Registry calls and model loads run in worker
threads (see serving.holder). Configuration: serving.settings.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import logging
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from drn import lifecycle
from drn.features import FeatureState
from drn.logstore import ClickNotServed, ImpressionRecord, LogStore, UnknownImpression
from drn.mind import NewsItem
from drn.online import set_threads
from drn.registry import NOT_HELD, Registry, RegistryError
from serving.holder import ModelHolder
from serving.schemas import (CLOCK_HEADER, DEFAULT_K, RECOMMEND_REQUEST, Candidate, ClickEvent, FeedbackRequest,
                             FeedbackResponse, Problem, RecommendRequest, RecommendResponse, ReturnEvent, RollbackRequest,
                             adds_nothing_to, news_item)
from serving.settings import ServeSettings
from serving.signing import ImpressionSigner
from serving.telemetry import CONTENT_TYPE, MetricsMiddleware, Telemetry

log = logging.getLogger("drn.serving")
T = TypeVar("T")
CLOCK_HEADER_KEY = CLOCK_HEADER.lower().encode("latin-1")  # as ASGI lists header names
DESCRIBED_KEPT = 50_000  # items whose last description (or absence from the log store) is kept; past it, start over
GIL_SWITCH_INTERVAL_S = 0.0005  # Python's default 5 ms, one wait per SQLite call of a commit, set the p99 latency


class PendingImpression(NamedTuple):
    """An impression waiting for the writer thread's next group commit; `committed` resolves once it is durable."""

    record: ImpressionRecord
    news: list[NewsItem]  # items this request described for the first time (or differently)
    committed: asyncio.Future  # resolved on the event loop


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
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drn-logstore")
        self._pending: list[PendingImpression] = []  # appended on the event loop, taken by the writer thread
        self._queue_lock = threading.Lock()  # guards _pending and _draining
        self._draining = False  # the writer thread has been asked to drain and has not yet found the queue empty
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
            self.logs = await asyncio.to_thread(self.settings.stores.open_log_store)
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
        self.writer.shutdown(wait=True)
        if self._owns_logs and self.logs is not None:
            self.logs.close()

    # ---- helpers -------------------------------------------------------------------------------------------
    async def _store(self, call: Callable[..., T], *args: Any) -> T:
        """Run a log store call on the writer thread."""
        return await self._outcome(asyncio.get_running_loop().run_in_executor(self.writer, call, *args))

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
        """Log an impression (and the items it introduced) through the group commit; returns once it is durable.

        The writer thread commits everything queued in one transaction, then looks again: while one commit waits
        for its fsync, the requests arriving meanwhile gather into the next one. So one fsync per batch instead of
        one per request, one wake-up of the writer per busy spell, one call back into the event loop per batch,
        and still no answer before its own commit."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        with self._queue_lock:
            self._pending.append(PendingImpression(record, news, committed))
            wake, self._draining = not self._draining, True
        if wake:
            self.writer.submit(self._drain, loop)
        await self._outcome(committed)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: commit batches until the queue is empty, handing each batch's outcome to the loop.
        Should anything escape (a closed loop, no memory), the impressions in hand and in the queue fail with it and
        the next one wakes the writer again: otherwise no later request would ever be answered."""
        batch: list[PendingImpression] = []
        try:
            while True:
                with self._queue_lock:
                    batch, self._pending = self._pending, []
                    if not batch:
                        self._draining = False
                        return
                loop.call_soon_threadsafe(_settle, batch, self._commit(batch))
        except BaseException as e:
            with self._queue_lock:
                stranded, self._pending, self._draining = batch + self._pending, [], False
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, stranded, [e] * len(stranded))
            raise

    def _commit(self, batch: list[PendingImpression]) -> list[BaseException | None]:
        """Each impression's outcome (None: durable). When the batch fails, each is tried alone, so a failure reaches
        only the requests whose impressions fail on their own."""
        try:
            self.logs.log_impressions([p.record for p in batch], [item for p in batch for item in p.news])
            return [None] * len(batch)
        except Exception as e:
            if len(batch) == 1:
                return [e]
        outcomes: list[BaseException | None] = []
        for pending in batch:
            try:
                self.logs.log_impressions([pending.record], pending.news)
                outcomes.append(None)
            except Exception as alone:
                outcomes.append(alone)
        return outcomes

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
        return _matches(settings.clock_token, token)

    async def admin(authorization: str | None = Header(None)) -> None:
        if settings.admin_token is None:
            raise HTTPException(403, "admin routes are disabled (DRN_SERVE_ADMIN_TOKEN is not set)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not _matches(settings.admin_token, token):
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

    app.add_middleware(RecommendRoute, service=service, clock_token=settings.clock_token)
    app.add_middleware(MetricsMiddleware, telemetry=telemetry,
                       routes=frozenset(r.path for r in app.routes) | {RecommendRoute.PATH})
    app.openapi = _openapi_with_recommend(app)
    return app


class RecommendRoute:
    """POST /recommend as a plain ASGI app in front of FastAPI's routing; everything else passes through.

    The hot route skips the router, FastAPI's dependency solving, the Request object and the exception and exit-stack
    middlewares, a large share of the event loop's time per request; errors still get FastAPI's own
    handlers (the same 4xx bodies as any other route), and anything unexpected reaches the server-error middleware
    (a 500). The body is validated by `_parse` straight from its bytes; /docs shows it (`_openapi_with_recommend`)."""

    PATH = "/recommend"

    def __init__(self, app: Callable, service: Service, clock_token: str | None):
        self.app, self.service, self.clock_token = app, service, clock_token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
            clock = next((v.decode("latin-1") for k, v in scope["headers"] if k == CLOCK_HEADER_KEY), None)
            body = await _body(receive)
            answer = await self.service.recommend(_parse(RECOMMEND_REQUEST, body), _matches(self.clock_token, clock))
            response = Response(answer.model_dump_json(), media_type="application/json")
        except HTTPException as e:
            response = await http_exception_handler(Request(scope), e)
        except RequestValidationError as e:
            response = await request_validation_exception_handler(Request(scope), e)
        await response(scope, receive, send)


async def _body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPException(400, "client disconnected before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _openapi_with_recommend(app: FastAPI) -> Callable[[], dict]:
    """FastAPI's OpenAPI document, plus POST /recommend (served by `RecommendRoute`, outside FastAPI's routing)."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            ref = "#/components/schemas/{model}"
            body = RECOMMEND_REQUEST.json_schema(ref_template=ref)
            answer = RecommendResponse.model_json_schema(ref_template=ref)
            schemas.update({**body.pop("$defs", {}), **answer.pop("$defs", {}), "RecommendRequest": body,
                            "RecommendResponse": answer})
            document["paths"][RecommendRoute.PATH] = {"post": {
                "summary": "Rank candidates for a user; the impression is logged before the answer",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": ref.format(model="RecommendRequest")}}}},
                "responses": {"200": {"description": "The served list", "content": {"application/json": {
                    "schema": {"$ref": ref.format(model="RecommendResponse")}}}},
                    "422": {"description": "Validation error", "content": {"application/json": {
                        "schema": {"$ref": ref.format(model="HTTPValidationError")}}}}}}}
            _declare_refusals(document, ref)
            app.openapi_schema = document
        return app.openapi_schema
    return openapi


# What each route refuses besides a body that fails validation, each answered as a Problem ({"detail": "..."}); a
# 422 is then either kind. Declared so that the OpenAPI document says what the service answers (a fuzzer checks it).
REFUSALS = {
    ("/recommend", "post"): {400: "the client disconnected before sending the whole body",
                             422: "too many or duplicate candidates", 503: "the log store is unavailable"},
    ("/feedback", "post"): {400: "a body that is not JSON",
                            403: "an impression id this service did not issue, or another user's impression",
                            404: "an unknown impression",
                            422: "nothing to record, an item the impression did not show, an event before its "
                                 "impression or past the feedback window",
                            503: "the log store is unavailable"},
    ("/admin/reload", "post"): {401: "no or a wrong admin token", 403: "admin routes are disabled"},
    ("/admin/rollback", "post"): {400: "a body that is not JSON", 401: "no or a wrong admin token",
                                  403: "admin routes are disabled",
                                  409: "nothing to roll back to, an unknown version, or the version is served"},
}


def _declare_refusals(document: dict, ref: str) -> None:
    """Add REFUSALS to `document`, and /metrics as the Prometheus text it is."""
    document["components"]["schemas"]["Problem"] = Problem.model_json_schema(ref_template=ref)
    problem = {"$ref": ref.format(model="Problem")}
    for (path, method), refusals in REFUSALS.items():
        responses = document["paths"][path][method]["responses"]
        for status, why in refusals.items():
            schema = problem
            if status == 422:
                schema = {"anyOf": [{"$ref": ref.format(model="HTTPValidationError")}, problem]}
            responses[str(status)] = {"description": why, "content": {"application/json": {"schema": schema}}}
    document["paths"]["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition", "content": {CONTENT_TYPE.split(";")[0]: {
            "schema": {"type": "string"}}}}


def _parse(schema: TypeAdapter[T], raw: bytes) -> T:
    """The hot route's body validated straight from its bytes by pydantic's JSON parser, with the same checks and
    the same 422 as a FastAPI body parameter: FastAPI would build a dict first and validate that, which with 50
    candidates per request costs about twice as much."""
    try:
        return schema.validate_json(raw)
    except ValidationError as e:  # a body that is not UTF-8 JSON is an error about bytes: not echoed as `input`
        raise RequestValidationError([{**{k: v for k, v in err.items() if not isinstance(v, bytes)},
                                       "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)],
                                     body=None) from None


def _settle(batch: list[PendingImpression], outcomes: list[BaseException | None]) -> None:
    """On the event loop: resolve a committed batch's futures, except those whose requests were cancelled meanwhile
    (their impressions are logged anyway)."""
    for pending, error in zip(batch, outcomes):
        if pending.committed.done():
            continue
        if error is None:
            pending.committed.set_result(None)
        else:
            pending.committed.set_exception(error)


def _matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; nothing matches when no token is configured."""
    return expected is not None and given is not None and hmac.compare_digest(expected.encode(), given.encode())
