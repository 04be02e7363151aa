"""/metrics in the Prometheus text format, with prometheus_client (installed with Prefect) on a registry of its own
per app, so two services in one process (tests) never share counters.

Requests are counted and timed by a plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task per
request); the route label is the path for the service's own routes and "other" for anything else, so a scan of
random URLs cannot blow up the number of series.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from serving.holder import ServedModel

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Request latency buckets (seconds): the 20 ms p99 target sits between the 10 and 25 ms buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("drn_serving_requests", "HTTP requests by route and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("drn_serving_request_seconds", "Time from request to response, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("drn_serving_errors", "Failures that did not stop serving, by kind.", ["kind"],
                              registry=r)
        self.swaps = Counter("drn_serving_model_swaps", "Times the served model object was replaced "
                             "(new version, new exploration round, or back to popularity).", registry=r)
        self.model = Gauge("drn_serving_model_info", "1 for the model now served.",
                           ["version", "source", "round_id"], registry=r)
        self.impressions = Counter("drn_serving_impressions", "Impressions served and logged, by ranking source.",
                                   ["source"], registry=r)
        self.clicks = Counter("drn_serving_clicks", "Clicks received: new, or a duplicate counted once.",
                              ["outcome"], registry=r)
        self.items_held = Gauge("drn_serving_items_held", "Items the feature state holds (idle ones are forgotten).",
                                registry=r)
        self.users_held = Gauge("drn_serving_users_held", "Users the feature state holds.", registry=r)

    def model_changed(self, model: ServedModel) -> None:
        self.swaps.inc()
        self.model.clear()
        self.model.labels(model.label, model.source, str(model.round.round_id if model.round else "")).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request; the status of a crashed request is 500."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry, routes: frozenset[str]):
        self.app, self.telemetry, self.routes = app, telemetry, routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.telemetry.requests.labels(route, str(status)).inc()
            self.telemetry.latency.labels(route).observe(time.perf_counter() - start)
            if status >= 500:
                self.telemetry.errors.labels("http_5xx").inc()
