"""Soak: does a long-running service's memory level off? Many users, a news stream, weeks of simulated time.

Starts `drn serve` (one promoted version, an open exploration round) on a fresh DRN_HOME, then sends --requests
/recommend calls from --users users over --days of simulated time (the clock token sets event times), each followed
by a /feedback call with its clicks and the user's return after their previous impression. News arrive as a stream
(--items-per-hour), and each request ranks 50 candidates drawn from the items of the last 6 hours, with their
metadata. Every user is met in the first --users requests (in a random order); after that users are drawn at
random, so from then on a service whose state is bounded per user and per live item should stop growing. The
service's resident memory (RSS) is sampled every --sample-every requests.

    .venv/bin/python benchmarks/soak.py --out out/soak

Writes soak.json (every sample), soak.md (the table) and soak.png (memory against requests) under --out. Bounded by
--requests and --max-minutes: it stops at whichever comes first and reports how far it got.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_bench import setup_home, wait_ready  # noqa: E402

from serving.schemas import CLOCK_HEADER  # noqa: E402

CANDIDATES, K = 50, 10  # per request, as in serving_bench
LIVE_S = 6 * 3600.0  # an item is a candidate for this long after publication (the simulated world's default)
CLICK_PROBABILITY = 0.05  # per shown item: about MIND's click rate
CLIENTS = 8  # concurrent connections
CLOCK_TOKEN = "soak-clock-token-0123456789"
START = 1_760_000_000.0  # simulated epoch of the first request


def news(j: int) -> dict:
    """Item j of the stream, published every 1 / items-per-hour; metadata spread over MIND-like vocabularies."""
    return {"news_id": f"S{j}", "category": f"cat{j % 17}", "subcategory": f"sub{j % 260}", "provider": f"p{j % 40}",
            "entities": [f"E{j % 997}", f"E{(j * 7) % 991}"]}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def held(url: str) -> dict[str, int]:
    """The items and users serving's feature state holds, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    gauges = dict(line.split() for line in text.splitlines() if line.startswith(("drn_serving_items_held ",
                                                                                 "drn_serving_users_held ")))
    return {"items_held": int(float(gauges["drn_serving_items_held"])),
            "users_held": int(float(gauges["drn_serving_users_held"]))}


class Soak:
    """The request schedule (deterministic per seed) and what the clients saw."""

    def __init__(self, args: argparse.Namespace, server_pid: int, url: str):
        self.args, self.server_pid, self.url = args, server_pid, url
        rng = np.random.default_rng(args.seed)
        first = rng.permutation(args.users)
        rest = rng.integers(0, args.users, max(args.requests - args.users, 0))
        self.users = np.concatenate([first, rest])[:args.requests]
        self.clicks_rng = np.random.default_rng(args.seed + 1)
        self.step_s = args.days * 86400.0 / args.requests
        self.item_gap_s = 3600.0 / args.items_per_hour
        self.next = 0
        self.last: dict[int, tuple[str, float]] = {}  # user -> (their latest impression id, its time)
        self.counts = {"recommend": 0, "feedback": 0, "clicks": 0, "returns": 0, "failed": 0}
        self.samples: list[dict] = []
        self.deadline = time.monotonic() + 60.0 * args.max_minutes
        self.started = time.monotonic()

    def candidates(self, now: float) -> list[dict]:
        newest = int((now - START + LIVE_S) / self.item_gap_s)
        oldest = max(newest - int(LIVE_S / self.item_gap_s), 0)
        picked = self.clicks_rng.choice(np.arange(oldest, newest + 1), size=CANDIDATES, replace=False)
        return [{**news(int(j)), "published": START - LIVE_S + int(j) * self.item_gap_s} for j in picked]

    def sample(self) -> None:
        now = START + self.next * self.step_s
        self.samples.append({"requests": self.next, "simulated_days": (now - START) / 86400.0,
                             "rss_mb": rss_mb(self.server_pid), "users_met": min(self.next, self.args.users),
                             "items_published": int((now - START + LIVE_S) / self.item_gap_s), **held(self.url),
                             "wall_s": time.monotonic() - self.started, **self.counts})
        last = self.samples[-1]
        print(f"{self.next:>8} requests  day {(now - START) / 86400.0:5.1f}  rss {last['rss_mb']:7.1f} MB  items held "
              f"{last['items_held']:,}  failed {self.counts['failed']}", flush=True)

    def failed(self, reply: httpx.Response) -> None:
        self.counts["failed"] += 1
        if self.counts["failed"] <= 5:
            print(f"failed: {reply.request.url.path} {reply.status_code} {reply.text[:300]}", flush=True)

    async def client(self, http: httpx.AsyncClient) -> None:
        headers = {CLOCK_HEADER: CLOCK_TOKEN}
        while self.next < len(self.users) and time.monotonic() < self.deadline:
            i, self.next = self.next, self.next + 1
            if i % self.args.sample_every == 0:
                self.sample()
            user, now = int(self.users[i]), START + i * self.step_s
            reply = await http.post("/recommend", headers=headers, json={
                "user": f"U{user}", "candidates": self.candidates(now), "k": K, "context": {"time": now}})
            self.counts["recommend"] += 1
            if reply.status_code != 200:
                self.failed(reply)
                continue
            body = reply.json()
            shown = body["items"]
            clicked = [n for n in shown if self.clicks_rng.random() < CLICK_PROBABILITY]
            events: dict[str, list] = {"clicks": [{"impression_id": body["impression_id"], "user": f"U{user}",
                                                   "news_id": n, "time": now + 30.0} for n in clicked],
                                       "returns": []}
            previous = self.last.get(user)
            if previous is not None and previous[1] < now:  # a request of theirs answered out of order is not one
                if now - previous[1] < self.args.return_within_s:
                    events["returns"].append({"impression_id": previous[0], "user": f"U{user}", "time": now})
            if previous is None or previous[1] < now:
                self.last[user] = (body["impression_id"], now)
            if events["clicks"] or events["returns"]:
                fed = await http.post("/feedback", headers=headers, json=events)
                self.counts["feedback"] += 1
                if fed.status_code != 200:
                    self.failed(fed)
                    continue
                self.counts["clicks"] += fed.json()["clicks_recorded"]
                self.counts["returns"] += fed.json()["returns_recorded"]

    async def run(self, url: str) -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as http:
            await asyncio.gather(*(self.client(http) for _ in range(CLIENTS)))
        self.sample()


def growth(samples: list[dict], users: int) -> dict:
    """Memory per 10,000 requests once every user has been met, over the first and the second half of that span, and
    over the span where idle items are being forgotten."""
    after = [s for s in samples if s["requests"] >= users]
    if len(after) < 3:
        return {}
    mid = after[len(after) // 2]

    def per_10k(a: dict, b: dict) -> float:
        return (b["rss_mb"] - a["rss_mb"]) / max(b["requests"] - a["requests"], 1) * 10_000

    forgetting = [s for s in after if s["items_held"] < s["items_published"]]  # idle items being forgotten
    steady = {"mb_per_10k_requests_once_items_are_forgotten": per_10k(forgetting[0], forgetting[-1]),
              "items_held_range_once_forgotten": [min(s["items_held"] for s in forgetting),
                                                  max(s["items_held"] for s in forgetting)]} if len(forgetting) > 1 else {}
    return {"all_users_met_at_mb": after[0]["rss_mb"], "end_mb": after[-1]["rss_mb"],
            "mb_per_10k_requests_first_half": per_10k(after[0], mid),
            "mb_per_10k_requests_second_half": per_10k(mid, after[-1]), **steady}


def plot(samples: list[dict], users: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    requests = [s["requests"] for s in samples]
    ax.plot(requests, [s["rss_mb"] for s in samples], marker=".", label="resident memory")
    ax.axvline(users, color="grey", linestyle="--", label="every user met")
    ax.set_xlabel("requests")
    ax.set_ylabel("serving's resident memory (MB)")
    ax.set_title("Soak: drn serve's memory over a long run")
    items = ax.twinx()
    items.plot(requests, [s["items_held"] for s in samples], color="tab:orange", label="items held")
    items.plot(requests, [s["items_published"] for s in samples], color="tab:orange", linestyle=":",
               label="items published")
    items.set_ylabel("items")
    lines = ax.get_legend_handles_labels(), items.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(result: dict) -> str:
    rows = ["| requests | simulated days | users met | items published | items held | RSS (MB) | failed |",
            "| --- " * 7 + "|"]
    rows += [f"| {s['requests']:,} | {s['simulated_days']:.1f} | {s['users_met']:,} | {s['items_published']:,} | "
             f"{s['items_held']:,} | {s['rss_mb']:.0f} | {s['failed']} |" for s in result["samples"]]
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/soak"))
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--days", type=float, default=21.0, help="simulated time the requests span")
    ap.add_argument("--items-per-hour", type=float, default=50.0, help="news stream (the simulated world's rate)")
    ap.add_argument("--sample-every", type=int, default=10_000)
    ap.add_argument("--return-within-s", type=float, default=6 * 86400.0,
                    help="a return is sent when the user's previous impression is at most this old (inside the "
                         "service's feedback window, a week by default)")
    ap.add_argument("--max-minutes", type=float, default=90.0, help="stop here even if requests remain")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="drn-soak-"))
    os.environ.update(DRN_HOME=str(home), DRN_LOGSTORE_URL=f"sqlite:///{home / 'logs.db'}",
                      DRN_SERVE_SECRET="soak-secret-0123456789abcdef", DRN_SERVE_CLOCK_TOKEN=CLOCK_TOKEN)
    version, _, _ = setup_home(home, history=0)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "drn_cli.main", "serve", "--port", str(args.port),
                               "--log-level", "warning"], cwd=Path(__file__).resolve().parents[1])
    try:
        wait_ready(url, server)
        soak = Soak(args, server.pid, url)
        asyncio.run(soak.run(url))
    finally:
        server.terminate()
        server.wait(30)
    result = {"version": version, "requests_planned": args.requests, "users": args.users, "days": args.days,
              "items_per_hour": args.items_per_hour, "candidates": CANDIDATES, "k": K, "clients": CLIENTS,
              "counts": soak.counts, "completed": soak.next >= args.requests, "samples": soak.samples,
              "growth": growth(soak.samples, args.users), "cpus": os.cpu_count()}
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    (args.out / "soak.md").write_text(markdown(result))
    plot(soak.samples, args.users, args.out / "soak.png")
    print(markdown(result))
    print(json.dumps({"counts": soak.counts, "growth": result["growth"], "completed": result["completed"]}, indent=2))


if __name__ == "__main__":
    main()
