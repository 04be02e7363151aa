"""The HTTP service: rank candidates with the promoted DRN (interleaved with its explore network during a round), log
what was served and what users did, and follow the registry without restarts.

    POST /recommend       user, candidates (+ metadata of new items), k, context.time -> served list, impression id
    POST /feedback        clicks (impression id, news id) and returns (user); a repeated click counts once
    GET  /healthz         liveness and what is wrong (registry unreachable, a version that did not load)
    GET  /model           version, stage, exploration round and seed, when loaded, feature schema version
    GET  /metrics         Prometheus text format
    POST /admin/reload    look at the registry now, retrying a version that failed    (bearer DRN_SERVE_ADMIN_TOKEN)
    POST /admin/rollback  serve the previous (or a given) version, open a round for it (bearer DRN_SERVE_ADMIN_TOKEN)

Threading: the online feature state is touched only on the event loop (routes are `async def`; torch scoring there
measured 5x faster than in Starlette's threadpool), so it needs no lock. Log store calls go to one writer thread:
SQLite takes one writer at a time, and a single thread keeps them in arrival order without lock waits. Impressions
are group-committed there (one transaction and one fsync for all that queued up during the previous commit), and
each request is answered only once its own impression is durable. Registry calls and model loads run in worker
threads (see serving.holder). Configuration: serving.settings.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from drn import lifecycle
from drn.features import FeatureState, replay
from drn.interleaving import interleaver
from drn.logstore import ClickNotServed, ImpressionRecord, LogStore, UnknownImpression
from drn.mind import NewsItem
from drn.online import set_threads
from drn.registry import Registry, RegistryError
from serving.holder import ModelHolder
from serving.schemas import (Candidate, ClickEvent, FeedbackRequest, FeedbackResponse, RecommendRequest,
                             RecommendResponse, ReturnEvent, RollbackRequest)
from serving.settings import ServeSettings
from serving.signing import ImpressionSigner
from serving.telemetry import CONTENT_TYPE, MetricsMiddleware, Telemetry

log = logging.getLogger("drn.serving")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
CLOCK_HEADER = "X-DRN-Clock-Token"


class PendingImpression(NamedTuple):
    """An impression waiting for the writer thread's next group commit; `committed` resolves once it is durable."""

    record: ImpressionRecord
    news: list[NewsItem]  # items this request described for the first time (or differently)
    committed: Future


def rebuild_feature_state(logs: LogStore) -> tuple[FeatureState, dict[str, NewsItem], int]:
    """The online feature state as it was before a restart: the news table, then every logged impression and its
    clicks replayed in time order through the same code training uses. Returns (state, news, impressions)."""
    news = logs.news()
    state = FeatureState(news)
    count = 0
    for count, _ in enumerate(replay((logged.to_impression() for logged in logs.window()), state), start=1):
        pass
    return state, news, count


class Service:
    """The state behind the routes: stores, feature state, the model holder, the impression signer."""

    def __init__(self, settings: ServeSettings, open_registry: Callable[[], Registry], logs: LogStore | None,
                 telemetry: Telemetry):
        self.settings, self.telemetry = settings, telemetry
        self.signer = ImpressionSigner(settings.secret)
        self.interleave = interleaver(settings.interleaving)
        self.rng = np.random.default_rng()  # team draft's coin flips; not seeded: rounds are compared, not replayed
        self._open_registry = open_registry
        self._owns_logs = logs is None
        self.logs = logs
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drn-logstore")
        self._pending: deque[PendingImpression] = deque()  # appended on the event loop, drained by the writer
        self.state = FeatureState()
        self.news: dict[str, NewsItem] = {}  # what the log store knows of each item: only changes are written
        self.holder: ModelHolder | None = None
        self._follow: asyncio.Task | None = None

    async def start(self) -> None:
        set_threads()
        if self.logs is None:
            self.logs = await asyncio.to_thread(self.settings.stores.open_log_store)
        started = time.perf_counter()
        self.state, self.news, count = await asyncio.to_thread(rebuild_feature_state, self.logs)
        log.info("feature state rebuilt from %d logged impressions in %.1f s", count, time.perf_counter() - started)
        self.holder = ModelHolder(self._open_registry, self.logs, self.settings.follow, self.settings.explore_noise,
                                  self.telemetry)
        await self.holder.refresh()  # start with the promoted model (or popularity, saying why) before serving
        self._follow = asyncio.create_task(self.holder.follow(self.settings.poll_s))

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

    def _describe(self, candidates: list[Candidate]) -> list[NewsItem]:
        """Items whose description in this request adds to what is known; they are applied to the feature state
        now (features need them) and written to the log store with the impression."""
        changed = []
        for candidate in candidates:
            known = self.news.get(candidate.news_id)
            if known is not None and candidate.adds_nothing_to(known):
                continue
            item = candidate.news_item(known)
            if item != (known or NewsItem(candidate.news_id)):
                self.state.add_news(item)
                changed.append(item)
        return changed

    async def _log_served(self, record: ImpressionRecord, news: list[NewsItem]) -> None:
        """Log an impression (and the items it introduced) through the group commit; returns once it is durable.

        Every request queues its impression and asks the writer thread for a commit; the first commit to run takes
        all that are queued. So while one commit waits for its fsync, the requests arriving meanwhile gather into
        the next one: one fsync per batch instead of one per request, and still no answer before its own commit."""
        committed: Future = Future()
        self._pending.append(PendingImpression(record, news, committed))
        self.writer.submit(self._commit_pending)
        await self._outcome(asyncio.wrap_future(committed))

    def _commit_pending(self) -> None:
        """On the writer thread: commit every queued impression in one transaction. When that fails, each is tried
        alone, so a failure reaches only the requests whose impressions fail on their own."""
        batch = []
        while self._pending:
            pending = self._pending.popleft()
            pending.committed.set_running_or_notify_cancel()  # from now on the waiting request cannot cancel it
            batch.append(pending)
        if not batch:
            return  # an earlier call took this one's impressions into its batch
        try:
            self._commit(batch)
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0].committed, e)
                return
            for pending in batch:
                try:
                    self._commit([pending])
                except Exception as alone:
                    _settle(pending.committed, alone)

    def _commit(self, batch: list[PendingImpression]) -> None:
        self.logs.log_impressions([p.record for p in batch], [item for p in batch for item in p.news])
        for pending in batch:
            _settle(pending.committed)

    # ---- routes --------------------------------------------------------------------------------------------
    async def recommend(self, body: RecommendRequest, trusted: bool) -> RecommendResponse:
        ids = [c.news_id for c in body.candidates]
        if len(ids) > self.settings.max_candidates:
            raise HTTPException(422, f"{len(ids)} candidates; at most {self.settings.max_candidates} per request")
        repeated = sorted(n for n, times in Counter(ids).items() if times > 1)
        if repeated:
            raise HTTPException(422, f"duplicate candidates: {', '.join(repeated[:10])}")
        now = self._time(body.context.time, trusted)
        news = self._describe(body.candidates)
        model = self.holder.current  # one model for the whole request, whatever swaps meanwhile
        batch = self.state.features(body.user, ids, now)
        ranked = model.rank(batch, body.k, self.interleave, self.rng)
        record = ImpressionRecord(self.signer.new_id(), body.user, now, tuple(ids), ranked.served, ranked.teams,
                                  model.label, model.round.round_id if model.explore else None,
                                  model.round.seed if model.explore else None)
        await self._log_served(record, news)
        self.news.update((item.news_id, item) for item in news)
        self.state.record_impression(body.user, ranked.served, now)
        self.telemetry.impressions.labels(model.source).inc()
        return RecommendResponse(impression_id=record.impression_id, items=list(ranked.served),
                                 model_version=model.label, source=model.source, round_id=record.round_id, time=now)

    def _log_feedback(self, clicks: list[ClickEvent], returns: list[ReturnEvent],
                      trusted: bool) -> list[tuple[str, str, float, bool]]:
        """On the writer thread: check every click against its logged impression, then write them all in one
        transaction (so a bad click in a batch writes nothing). Returns (user, news id, time, new) per click."""
        checked = []
        for click in clicks:
            record = self.logs.impression(click.impression_id)
            if record is None:
                raise HTTPException(404, f"unknown impression {click.impression_id}")
            if click.news_id not in record.served:
                raise HTTPException(422, f"impression {click.impression_id} did not show {click.news_id}")
            when = click.time if trusted and click.time is not None else max(time.time(), record.time)
            if when < record.time:
                raise HTTPException(422, f"click at {when} precedes its impression at {record.time}")
            checked.append((click, record.user, when))
        try:
            new = self.logs.log_clicks([(click.impression_id, click.news_id, when) for click, _, when in checked])
        except (UnknownImpression, ClickNotServed) as e:  # checked above; kept for a store changed meanwhile
            raise HTTPException(422, str(e)) from e
        self.logs.log_returns([(event.user, self._time(event.time, trusted)) for event in returns])
        return [(user, click.news_id, when, is_new) for (click, user, when), is_new in zip(checked, new)]

    async def feedback(self, body: FeedbackRequest, trusted: bool) -> FeedbackResponse:
        if not body.clicks and not body.returns:
            raise HTTPException(422, "no clicks and no returns: nothing to record")
        forged = [c.impression_id for c in body.clicks if not self.signer.valid(c.impression_id)]
        if forged:
            raise HTTPException(403, f"impression ids not issued by this service: {', '.join(forged[:10])}")
        written = await self._store(self._log_feedback, body.clicks, body.returns, trusted)
        for user, news_id, when, new in written:
            if new:  # a retried click is already in the feature state
                self.state.record_click(user, news_id, when)
        new_clicks = sum(new for *_, new in written)
        self.telemetry.clicks.labels("new").inc(new_clicks)
        self.telemetry.clicks.labels("duplicate").inc(len(written) - new_clicks)
        return FeedbackResponse(clicks_recorded=new_clicks, clicks_duplicate=len(written) - new_clicks,
                                returns_recorded=len(body.returns))

    def health(self) -> dict:
        holder = self.holder
        problems = [p for p in (holder.registry_error, holder.load_error) if p]
        model = holder.current
        return {"status": "degraded" if problems else "ok", "source": model.source, "model_version": model.label,
                "cold_start": model.exploit is None, "registry_error": holder.registry_error,
                "load_error": holder.load_error, "last_registry_sync": holder.last_sync}

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

    app = FastAPI(title="DRN serving", lifespan=lifespan)
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

    # The hot route reads its header and body itself (the body validated by `_parse` as RecommendRequest) instead
    # of through FastAPI's dependency and body machinery; the price is that /docs shows the request body untyped.
    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: Request) -> Response:
        is_trusted = _matches(settings.clock_token, request.headers.get(CLOCK_HEADER))
        answer = await service.recommend(_parse(RecommendRequest, await request.body()), is_trusted)
        return Response(answer.model_dump_json(), media_type="application/json")

    @app.post("/feedback", response_model=FeedbackResponse)
    async def feedback(body: FeedbackRequest, is_trusted: bool = Depends(trusted)) -> FeedbackResponse:
        return await service.feedback(body, is_trusted)

    @app.get("/healthz")
    async def healthz() -> dict:
        return service.health()

    @app.get("/model")
    async def model() -> dict:
        return {**service.holder.current.describe(), "follow": settings.follow}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", dependencies=[Depends(admin)])
    async def reload() -> dict:
        return (await service.holder.refresh(force=True)).describe()

    @app.post("/admin/rollback", dependencies=[Depends(admin)])
    async def rollback(body: RollbackRequest) -> dict:
        return await service.rollback(body)

    app.add_middleware(MetricsMiddleware, telemetry=telemetry, routes=frozenset(r.path for r in app.routes))
    return app


def _parse(model: type[M], raw: bytes) -> M:
    """The hot route's body validated straight from its bytes by pydantic's JSON parser, with the same checks and
    the same 422 as a FastAPI body parameter: FastAPI would build a dict first and validate that, which with 50
    candidates per request costs about twice as much."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)],
                                     body=raw) from None


def _settle(future: Future, error: BaseException | None = None) -> None:
    """Resolve a queued impression's future, unless its request was cancelled (the impression is logged anyway)."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; nothing matches when no token is configured."""
    return expected is not None and given is not None and hmac.compare_digest(expected.encode(), given.encode())
