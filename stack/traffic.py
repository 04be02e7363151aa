"""The simulated world as a client of the real service: requests, clicks and returns over HTTP, on a compressed clock.

The world continues where the logs the first model was trained on end (the same world, so the users the model
learned about keep coming back). It is paced so that `speed` world seconds pass per wall second; serving is told
each event's world time (`context.time`, click and return times), which it trusts because the driver holds the
clock token. Clicks and returns are delivered when the world clock reaches them, never ahead of time, so the
service's feature state sees the past only. A few requests are in flight at once (`clients`); a request that gets
a 503 or a connection error is retried (counted), one that still fails is counted as failed.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable

import httpx

from drn.world import HOUR, SLATE_SIZE, Request, World, WorldConfig, logged_world
from serving.schemas import CLOCK_HEADER, MAX_FEEDBACK_EVENTS
from stack.up import WorldSpec

ATTEMPTS = 3  # tries per HTTP call: a log store busy for a moment (503) or a dropped connection is retried
RETRY_DELAY_S = 0.5
HTTP_TIMEOUT_S = 30.0
ERRORS_KEPT = 20  # example error messages kept for the summary


def live_world(spec: WorldSpec) -> World:
    """The world `drn world generate --users U --days D --seed S` logged, at the end of its logs.

    Re-running the same logging (drn.world.logged_world, as generate_logs does) gives the same world state, in
    about two seconds."""
    return logged_world(replace(WorldConfig(), n_users=spec.users), spec.seed, spec.log_days)[0]


@dataclass
class HourStats:
    impressions: int = 0
    shown: int = 0
    clicks: int = 0
    # The world's click model on each served list, and on the best list of the same length from the same candidates
    # (drn.world.World.expected_clicks): their ratio is free of the click noise, and far less moved than the CTR by
    # who asks at that hour and which candidates they get: it follows the ranking more closely.
    expected_clicks: float = 0.0
    oracle_expected_clicks: float = 0.0
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # served model label -> impressions

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else 0.0

    @property
    def oracle_share(self) -> float:
        return self.expected_clicks / self.oracle_expected_clicks if self.oracle_expected_clicks else 0.0


@dataclass
class TrafficStats:
    """What the driver saw; the demo summary and the live line are made from it."""

    start: float  # world time the traffic began
    wall_start: float  # epoch seconds at that moment (maps registry times onto the world clock)
    speed: float
    hours: dict[int, HourStats] = field(default_factory=lambda: defaultdict(HourStats))
    requests: int = 0
    feedback_calls: int = 0
    retries: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    max_lag_s: float = 0.0  # worst wall-clock delay behind the paced schedule
    now: float = 0.0  # the world clock
    served_version: str = "-"  # the model label of the latest response

    def world_time_of(self, epoch: float) -> float:
        return self.start + (epoch - self.wall_start) * self.speed

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(what)


def candidate(world: World, news_id: str) -> dict:
    """A candidate with the metadata serving builds item features from (sent for every candidate: the world does
    not know which items the service has seen, and repeating a description is cheap and harmless)."""
    item = world.item(news_id)
    return {"news_id": news_id, "category": item.category, "subcategory": item.subcategory,
            "provider": item.provider, "entities": list(item.entities), "published": item.published}


class Driver:
    """One world, one HTTP client, events in world-time order."""

    def __init__(self, world: World, client: httpx.AsyncClient, clients: int, speed: float):
        self.world, self.client, self.speed = world, client, speed
        self.slots = asyncio.Semaphore(clients)
        self.pending: list[tuple[float, int, str, dict]] = []  # (world time, tiebreak, "clicks"|"returns", event)
        self.order = itertools.count()
        self.stats = TrafficStats(start=world.now, wall_start=time.time(), speed=speed, now=world.now)
        self._wall0 = time.monotonic()
        self.tasks: set[asyncio.Task] = set()

    async def post(self, path: str, body: dict) -> dict | None:
        """POST with retries on 503 and transport errors; None (counted as failed) when every try failed."""
        last = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(RETRY_DELAY_S)
            try:
                reply = await self.client.post(path, json=body)
            except httpx.TransportError as err:
                last = f"{path}: {type(err).__name__}: {err}"
                continue
            if reply.status_code == 200:
                return reply.json()
            last = f"{path}: HTTP {reply.status_code}: {reply.text[:200]}"
            if reply.status_code != 503:
                break
        self.stats.fail(last)
        return None

    async def pace(self, world_time: float) -> None:
        """Sleep until the wall clock reaches `world_time` on the compressed clock."""
        due = self._wall0 + (world_time - self.stats.start) / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.stats.max_lag_s = max(self.stats.max_lag_s, -delay)
        self.stats.now = world_time

    async def deliver_until(self, world_time: float) -> None:
        """Send every click and return that happened up to `world_time`, in batches."""
        body: dict[str, list[dict]] = {"clicks": [], "returns": []}
        while self.pending and self.pending[0][0] <= world_time:
            _, _, kind, event = heapq.heappop(self.pending)
            body[kind].append(event)
            if len(body["clicks"]) + len(body["returns"]) == MAX_FEEDBACK_EVENTS:
                await self._feedback(body)
                body = {"clicks": [], "returns": []}
        if body["clicks"] or body["returns"]:
            await self._feedback(body)

    async def _feedback(self, body: dict) -> None:
        self.stats.feedback_calls += 1
        await self.post("/feedback", body)

    def later(self, world_time: float, kind: str, event: dict) -> None:
        heapq.heappush(self.pending, (world_time, next(self.order), kind, event))

    async def serve(self, request: Request) -> None:
        """One request: recommend, let the world's user react, queue the clicks and the return."""
        try:
            body = {"user": request.user, "candidates": [candidate(self.world, n) for n in request.candidates],
                    "k": SLATE_SIZE, "context": {"time": request.time}}
            reply = await self.post("/recommend", body)
            if reply is None:
                self.world.respond(request, request.candidates[:1])  # the user still exists; nothing is logged
                return
            hour = self.stats.hours[int((request.time - self.stats.start) // HOUR)]
            hour.expected_clicks += self.world.expected_clicks(request, reply["items"])  # before the user answers
            hour.oracle_expected_clicks += self.world.oracle_expected_clicks(request, len(reply["items"]))
            response = self.world.respond(request, reply["items"])
            hour.impressions += 1
            hour.shown += len(reply["items"])
            hour.clicks += len(response.clicks)
            hour.versions[reply["model_version"]] += 1
            self.stats.served_version = reply["model_version"]
            for news_id, when in response.clicks:
                self.later(when, "clicks", {"impression_id": reply["impression_id"], "user": request.user,
                                            "news_id": news_id, "time": when})
            self.later(response.return_time, "returns", {"impression_id": reply["impression_id"], "user": request.user,
                                                         "time": response.return_time})
        finally:
            self.slots.release()

    async def run(self, hours: float) -> TrafficStats:
        end = self.stats.start + hours * HOUR
        while True:
            request = self.world.next_request()
            if request.time >= end:
                self.world.push_back(request)
                break
            await self.pace(request.time)
            await self.deliver_until(request.time)
            await self.slots.acquire()
            self.stats.requests += 1
            task = asyncio.create_task(self.serve(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        await asyncio.gather(*self.tasks)
        await self.deliver_until(end)
        self.stats.now = end
        return self.stats


async def drive(api_url: str, clock_token: str, spec: WorldSpec, hours: float, speed: float, clients: int,
                on_start: Callable[[TrafficStats], None] = lambda stats: None) -> TrafficStats:
    """Run `hours` of world time against the service at `api_url`; `on_start` gets the live stats object."""
    world = live_world(spec)
    headers = {CLOCK_HEADER: clock_token}
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=HTTP_TIMEOUT_S, limits=limits) as client:
        driver = Driver(world, client, clients, speed)
        on_start(driver.stats)
        return await driver.run(hours)
