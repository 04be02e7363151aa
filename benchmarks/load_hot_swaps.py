"""Load with hot swaps (issue 14, item 2): /recommend and /feedback from several clients while the served version is
promoted and rolled back every few seconds; afterwards every acknowledged impression and click must be in the log
store, exactly.

Starts `drn serve` (uvicorn) in a subprocess on 127.0.0.1 against a fresh DRN_HOME: an MLflow store on SQLite with
--versions registered DRN versions of the default size, v1 promoted, and a SQLite log store. Then, at once:
- --clients asyncio clients, each its own keep-alive connection, send /recommend (50 candidates, k 10) and, for
  about half of the answers, /feedback with one click on an item that answer served;
- a swapper that every --swap-every seconds either promotes the next version through the registry API, as a person
  does with `drn promote` (a by-hand promotion from this process, writing the same MLflow and log store files), or
  rolls back through serving's POST /admin/rollback (with the admin token), alternately.
The run ends after --seconds or --requests /recommend calls, whichever comes first. Then serving is stopped
(SIGTERM) and the log store is read: the impression ids and (impression, item) clicks it holds must equal the
acknowledged ones (a 200 answer). Every answer that is not a 200, and every transport error, counts as a failure.

    .venv/bin/python benchmarks/load_hot_swaps.py --out out/load_hot_swaps.json

Exits 1 when a request failed or the log store differs from what was acknowledged. Prints a JSON and a Markdown
summary: requests, requests/s held, p50 / p99 per route, swaps done, versions seen in answers, how soon after each
swap answers came from the new version, failures, the count match.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drn import lifecycle  # noqa: E402
from drn.bundle import bundle_of
from drn.logstore import LogStore  # noqa: E402
from drn.model import NetworkConfig, build_network  # noqa: E402
from drn.registry import Registry  # noqa: E402
from stack.processes import free_port  # noqa: E402

CANDIDATES, K = 50, 10
USERS, NEWS_POOL = 500, 300
PUBLISHED = 1_760_000_000.0  # fixed publication times: a repeated description is not news to the service
CLICK_SHARE = 0.5  # share of answers that get one click back
ADMIN_TOKEN = "load-hot-swaps-admin-token"
READY_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 30.0  # per request: a swap must not make one wait this long, and a hang is then a failure


def _news(i: int) -> dict:
    return {"news_id": f"N{i}", "category": f"cat{i % 17}", "subcategory": f"sub{i % 60}", "provider": f"p{i % 9}",
            "entities": [f"E{i % 31}"], "published": PUBLISHED - 3600.0 * (i % 48)}


def setup_home(versions: int) -> list[str]:
    """`versions` default-size DRN versions registered, v1 promoted with its round open."""
    registry = Registry(os.environ["DRN_MLFLOW_URI"])
    numbers = [registry.register(bundle_of(build_network(NetworkConfig(), seed=seed)), kind="offline",
                                 parent=None, data_window=None, params={"seed": seed}, metrics={})
               for seed in range(versions)]
    with LogStore(os.environ["DRN_LOGSTORE_URL"]) as logs:
        lifecycle.promote(registry, logs, numbers[0], who="load_hot_swaps", why="start", now=time.time())
    return numbers


def wait_ready(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"drn serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).json()["source"] == "drn":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("drn serve did not become ready")


class Tally:
    """What the clients saw: acknowledged impressions and clicks, latencies per route, failures, versions."""

    def __init__(self) -> None:
        self.impressions: dict[str, str] = {}  # acknowledged impression id -> model_version of its answer
        self.clicks: set[tuple[str, str]] = set()  # acknowledged (impression id, news id)
        self.latency: dict[str, list[float]] = {"/recommend": [], "/feedback": []}
        self.failures: Counter = Counter()  # "route status" or "route ExceptionName"
        self.answers: list[tuple[float, str]] = []  # (time sent, model_version) of each /recommend answer
        self.sent = 0


async def client(url: str, seed: int, tally: Tally, stop_at: float, max_requests: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S) as http:
        while time.monotonic() < stop_at and tally.sent < max_requests:
            tally.sent += 1
            body = {"user": f"U{rng.randrange(USERS)}", "k": K,
                    "candidates": [_news(i) for i in rng.sample(range(NEWS_POOL), CANDIDATES)]}
            sent = time.monotonic()
            try:
                reply = await http.post("/recommend", json=body)
            except httpx.HTTPError as e:
                tally.failures[f"/recommend {type(e).__name__}"] += 1
                continue
            tally.latency["/recommend"].append(time.monotonic() - sent)
            if reply.status_code != 200:
                tally.failures[f"/recommend {reply.status_code}"] += 1
                continue
            answer = reply.json()
            tally.impressions[answer["impression_id"]] = answer["model_version"]
            tally.answers.append((sent, answer["model_version"]))
            if rng.random() >= CLICK_SHARE or not answer["items"]:
                continue
            click = (answer["impression_id"], rng.choice(answer["items"]))
            sent = time.monotonic()
            try:
                reply = await http.post("/feedback", json={"clicks": [{"impression_id": click[0], "user": body["user"],
                                                                        "news_id": click[1]}]})
            except httpx.HTTPError as e:
                tally.failures[f"/feedback {type(e).__name__}"] += 1
                continue
            tally.latency["/feedback"].append(time.monotonic() - sent)
            if reply.status_code != 200 or reply.json()["clicks_recorded"] != 1:
                tally.failures[f"/feedback {reply.status_code}"] += 1
                continue
            tally.clicks.add(click)


async def swapper(url: str, versions: list[str], every_s: float, stop_at: float, swaps: list[dict]) -> None:
    """Alternately: promote the next version by hand through the registry API (this process), then roll back
    through serving's /admin/rollback. Appends each swap to `swaps`: when, how, to which version, any error."""
    registry = await asyncio.to_thread(Registry, os.environ["DRN_MLFLOW_URI"])
    logs = await asyncio.to_thread(LogStore, os.environ["DRN_LOGSTORE_URL"])
    others = versions[1:]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, headers=headers) as http:
            while True:
                await asyncio.sleep(every_s)
                if time.monotonic() + every_s / 2 > stop_at:  # leave time to see the last swap served
                    return
                at = time.monotonic()
                if len(swaps) % 2 == 0:
                    to = others[(len(swaps) // 2) % len(others)]
                    try:
                        await asyncio.to_thread(lifecycle.promote, registry, logs, to, who="load_hot_swaps",
                                                why="hot swap under load", now=time.time(), by_hand=True)
                        swaps.append({"at": at, "how": "registry promote", "to": to, "error": None})
                    except Exception as e:
                        swaps.append({"at": at, "how": "registry promote", "to": to,
                                      "error": f"{type(e).__name__}: {e}"})
                else:
                    reply = await http.post("/admin/rollback", json={"why": "hot swap under load"})
                    ok = reply.status_code == 200
                    swaps.append({"at": at, "how": "/admin/rollback",
                                  "to": reply.json()["rolled_back_to"] if ok else None,
                                  "error": None if ok else f"{reply.status_code}: {reply.text[:200]}"})
    finally:
        logs.close()


def followed_after(swaps: list[dict], answers: list[tuple[float, str]]) -> list[float | None]:
    """Per swap: seconds from the swap's start to the first request, sent after it, answered by its version
    (None when none was before the next swap)."""
    out = []
    ends = [s["at"] for s in swaps[1:]] + [float("inf")]
    for swap, end in zip(swaps, ends):
        seen = [sent for sent, version in answers if swap["at"] <= sent < end and version == swap["to"]]
        out.append(min(seen) - swap["at"] if seen else None)
    return out


def logged(url: str) -> tuple[set[str], set[tuple[str, str]], dict[str, int]]:
    with LogStore(url) as logs:
        impressions, clicks = set(), set()
        for item in logs.window():
            impressions.add(item.record.impression_id)
            clicks.update((item.record.impression_id, c.news_id) for c in item.clicks)
        return impressions, clicks, logs.counts()


def percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(values) * 1e3, q)) if values else None


async def load(url: str, versions: list[str], clients: int, seconds: float, requests: int,
               swap_every_s: float) -> tuple[Tally, list[dict], float]:
    tally, swaps = Tally(), []
    start = time.monotonic()
    stop_at = start + seconds
    swaps_task = asyncio.create_task(swapper(url, versions, swap_every_s, stop_at, swaps))
    await asyncio.gather(*(client(url, 1000 + i, tally, stop_at, requests) for i in range(clients)))
    elapsed = time.monotonic() - start
    if not swaps_task.done():  # the request budget ended the run before the clock did
        swaps_task.cancel()
    await asyncio.gather(swaps_task, return_exceptions=True)
    if swaps_task.done() and not swaps_task.cancelled() and swaps_task.exception() is not None:
        raise swaps_task.exception()
    return tally, swaps, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="JSON results (its folder is made if missing)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load, at most")
    ap.add_argument("--requests", type=int, default=50_000, help="/recommend calls, at most")
    ap.add_argument("--swap-every", type=float, default=3.0, help="seconds between swaps")
    ap.add_argument("--versions", type=int, default=3, help="registered versions the swaps cycle through (>= 2)")
    ap.add_argument("--poll-s", type=float, default=0.5, help="serving's look at the open round (drn serve --poll-s)")
    args = ap.parse_args()
    if args.versions < 2:
        ap.error("--versions must be at least 2")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="drn-load-hot-swaps-"))
    os.environ.update(DRN_HOME=str(home), DRN_MLFLOW_URI=f"sqlite:///{home / 'mlflow.db'}",
                      DRN_LOGSTORE_URL=f"sqlite:///{home / 'logs.db'}", DRN_SERVE_ADMIN_TOKEN=ADMIN_TOKEN,
                      DRN_SERVE_SECRET="load-hot-swaps-secret-0123456789")
    versions = setup_home(args.versions)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = home / "serve.log"
    with open(server_log, "wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "drn_cli.main", "serve", "--port", str(port), "--poll-s",
                                   repr(args.poll_s), "--registry-poll-s", repr(max(args.poll_s, 1.0)),
                                   "--log-level", "warning"], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        tally, swaps, elapsed = asyncio.run(load(url, versions, args.clients, args.seconds, args.requests,
                                                 args.swap_every))
        final_health = httpx.get(f"{url}/healthz", timeout=5).json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    impressions, clicks, counts = logged(os.environ["DRN_LOGSTORE_URL"])
    acked = set(tally.impressions)
    follow = followed_after(swaps, tally.answers)
    seen_follow = [f for f in follow if f is not None]
    requests = len(tally.latency["/recommend"]) + len(tally.latency["/feedback"])
    failures = sum(tally.failures.values())
    swap_errors = [s for s in swaps if s["error"]]
    result = {
        "clients": args.clients, "seconds": elapsed, "swap_every_s": args.swap_every, "poll_s": args.poll_s,
        "versions_registered": versions, "cpus": os.cpu_count(),
        "requests": {"recommend": len(tally.latency["/recommend"]), "feedback": len(tally.latency["/feedback"]),
                     "total": requests},
        "requests_per_s": requests / elapsed,
        "latency_ms": {route: {"p50": percentile_ms(v, 50), "p99": percentile_ms(v, 99), "max": percentile_ms(v, 100)}
                       for route, v in tally.latency.items()},
        "failures": failures, "failures_by_kind": dict(tally.failures),
        "swaps": len(swaps), "swap_errors": swap_errors,
        "swaps_by_kind": dict(Counter(s["how"] for s in swaps if not s["error"])),
        "versions_seen": dict(Counter(tally.impressions.values())),
        "swap_followed_s": {"swaps_seen": len(seen_follow), "swaps_not_seen": len(follow) - len(seen_follow),
                            "median": statistics.median(seen_follow) if seen_follow else None,
                            "max": max(seen_follow) if seen_follow else None},
        "acknowledged": {"impressions": len(acked), "clicks": len(tally.clicks)},
        "logged": {"impressions": counts["impressions"], "clicks": counts["clicks"]},
        "acknowledged_missing": {"impressions": len(acked - impressions), "clicks": len(tally.clicks - clicks)},
        "logged_not_acknowledged": {"impressions": len(impressions - acked), "clicks": len(clicks - tally.clicks)},
        "final_health": final_health,
    }
    result["counts_match"] = impressions == acked and clicks == tally.clicks
    result["passed"] = result["counts_match"] and failures == 0 and not swap_errors and len(swaps) > 0
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    lat = result["latency_ms"]
    print(f"\n| clients | seconds | requests (recommend + feedback) | req/s | /recommend p50 / p99 ms | "
          f"/feedback p50 / p99 ms | swaps (errors) | versions seen (impressions) | swap seen after, median / max s "
          f"| failures | acknowledged = logged (impressions, clicks) |\n"
          f"| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {args.clients} | {elapsed:.1f} | {requests} ({result['requests']['recommend']} + "
          f"{result['requests']['feedback']}) | {result['requests_per_s']:.0f} | "
          f"{_ms(lat['/recommend']['p50'])} / {_ms(lat['/recommend']['p99'])} | "
          f"{_ms(lat['/feedback']['p50'])} / {_ms(lat['/feedback']['p99'])} | {len(swaps)} ({len(swap_errors)}) | "
          f"{', '.join(f'v{v}: {n}' for v, n in sorted(result['versions_seen'].items()))} | "
          f"{_s(result['swap_followed_s']['median'])} / {_s(result['swap_followed_s']['max'])} | {failures} | "
          f"{result['counts_match']} ({len(acked)} = {counts['impressions']}, {len(tally.clicks)} = "
          f"{counts['clicks']}) |")
    print(f"passed: {result['passed']} (serving's log: {server_log})")
    return 0 if result["passed"] else 1


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
