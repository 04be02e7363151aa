"""Freshness (issue 16, item 2): from a click being acknowledged to serving answering with a version that learned
from it, end to end through the minor-update flow, MLflow and serving's follow, with each step's share.

Starts the whole stack as `drn up --minor-every-min 0.5` does (Prefect server, MLflow server, the deployments, `drn
serve`, the first model trained on the simulated world's logs) under a fresh data directory, on free loopback ports,
with every other setting at its default. The simulated world then sends traffic as in the demo, at `--speed` world
seconds per wall second (default 60: the world's T_D of 30 minutes lasts as long as the 30 s schedule), while this
script polls serving's /model every POLL_S and notes when each version starts being served.

A minor version learned from the clicks of the round it was decided on (its tag `interleaving.round`) that were
acknowledged before the flow run that decided it started. For each such click the time to freshness is split into:
- round: from the acknowledgement to the slot of the run that decided the round (a round with too little evidence
  stays open and waits for the next slot);
- scheduling: from the slot to the run's start (Prefect's scheduler and the runner's poll);
- flow: from the run's start to the version registered in MLflow (the log store read, the decision, the upload);
- promotion: from registered to the promotion recorded;
- follow: from the promotion to serving's /model naming the version (serving's registry poll and the load).
Clicks of rounds that ended without a step are learned by no minor version; their share is reported too.

    .venv/bin/python benchmarks/freshness.py --out out/freshness.json

Prints a Markdown table and writes the JSON and a plot (one bar per promoted version, stacked by step).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stack import observe  # noqa: E402
from stack.processes import free_port  # noqa: E402
from stack.settings import StackSettings  # noqa: E402
from stack.traffic import Driver, live_world  # noqa: E402
from stack.up import UpOptions, WorldSpec, up  # noqa: E402
from serving.schemas import CLOCK_HEADER  # noqa: E402

SCHEDULE_S = 30.0  # the minor update's schedule the issue asks about
SPEED = 60.0  # world seconds per wall second: the world's 30-minute T_D then lasts the 30 s schedule
MINUTES = 15.0  # wall minutes of traffic
CLIENTS = 4  # requests in flight at once, as in the demo
POLL_S = 0.1  # how often /model is asked which version is served
TARGET_S = 45.0  # the target for the time to freshness
STEPS = ("round", "scheduling", "flow", "promotion", "follow")


@dataclass
class Observed:
    """What the client side saw: acknowledgement times of clicks, the round each impression was served in, and when
    each version was first named by /model."""

    round_of: dict[str, int | None] = field(default_factory=dict)  # impression id -> round id
    click_acks: list[tuple[float, str]] = field(default_factory=list)  # (wall time of the 200, impression id)
    first_served: dict[str, float] = field(default_factory=dict)  # version -> wall time /model first named it


class RecordingDriver(Driver):
    """The demo's driver, noting each impression's round and the wall time each click was acknowledged."""

    def __init__(self, *args, observed: Observed, **kwargs):
        super().__init__(*args, **kwargs)
        self.observed = observed

    async def post(self, path: str, body: dict) -> dict | None:
        reply = await super().post(path, body)
        if reply is not None and path == "/recommend":
            self.observed.round_of[reply["impression_id"]] = reply["round_id"]
        elif reply is not None and path == "/feedback":
            acked = time.time()
            self.observed.click_acks.extend((acked, click["impression_id"]) for click in body["clicks"])
        return reply


async def watch_model(api_url: str, observed: Observed, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0) as client:
        while not stop.is_set():
            try:
                version = (await client.get("/model")).json()["version"]
            except (httpx.TransportError, ValueError, KeyError):
                version = None
            if version is not None and version not in observed.first_served:
                observed.first_served[version] = time.time()
            await asyncio.sleep(POLL_S)


async def traffic(settings: StackSettings, token: str, world: WorldSpec, minutes: float, speed: float,
                  observed: Observed) -> int:
    """Send `minutes` of the world's traffic while watching /model; the number of requests sent."""
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_model(settings.api_url, observed, stop))
    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=settings.api_url, headers={CLOCK_HEADER: token}, timeout=30.0,
                                 limits=limits) as client:
        driver = RecordingDriver(live_world(world), client, CLIENTS, speed, observed=observed)
        stats = await driver.run(minutes * 60.0 * speed / 3600.0)
    await asyncio.sleep(SCHEDULE_S * 2)  # the last rounds' runs and serving's follow
    stop.set()
    await watcher
    return stats.requests


def minor_runs(prefect_api: str) -> list[dict]:
    """The minor-update flow runs that ran: slot (expected start), start, end, epoch seconds."""
    with httpx.Client(base_url=prefect_api, timeout=30.0) as client:
        body = {"flows": {"name": {"any_": ["minor-update"]}}, **observe.NOT_SCHEDULED, "limit": observe.PAGE}
        runs = observe.prefect_call(client, "POST", "/flow_runs/filter", body)

    def epoch(text: str | None) -> float | None:
        return datetime.fromisoformat(text).timestamp() if text else None
    return sorted(({"slot": epoch(r["expected_start_time"]), "start": epoch(r["start_time"]),
                    "end": epoch(r["end_time"])} for r in runs if r["start_time"]), key=lambda r: r["start"])


def split(ack: float, run: dict, created: float, promoted: float, served: float) -> dict[str, float]:
    """The click's time to freshness, step by step; each boundary no earlier than the one before."""
    bounds = [ack]
    for t in (run["slot"], run["start"], created, promoted, served):
        bounds.append(max(bounds[-1], t))
    return {step: bounds[i + 1] - bounds[i] for i, step in enumerate(STEPS)}


def measure(settings: StackSettings, observed: Observed) -> dict:
    """Each promoted minor version, its round's clicks and their steps; the clicks learned by no minor version."""
    from drn.registry import Registry
    registry = Registry(settings.mlflow_url)
    promoted_at = {rec["version"]: rec["at"] for rec in registry.history() if rec["action"] == "promote"}
    runs = minor_runs(settings.prefect_api)
    clicks_by_round: dict[int | None, list[float]] = {}
    for acked, impression in observed.click_acks:
        clicks_by_round.setdefault(observed.round_of.get(impression), []).append(acked)
    versions, learned_rounds = [], set()
    for info in registry.versions():
        round_id = info.tags.get("interleaving.round")
        if info.kind != "minor" or round_id is None or info.version not in promoted_at \
                or info.version not in observed.first_served:
            continue
        run = next((r for r in runs if r["start"] <= info.created_at <= (r["end"] or float("inf"))), None)
        if run is None:  # registered by no minor run this script saw (a run past the first PAGE)
            continue
        acks = [a for a in clicks_by_round.get(int(round_id), []) if a < run["start"]]
        learned_rounds.add(int(round_id))
        steps = [split(a, run, info.created_at, promoted_at[info.version], observed.first_served[info.version])
                 for a in acks]
        versions.append({"version": info.version, "round": int(round_id), "clicks": len(acks),
                         "late_clicks": len(clicks_by_round.get(int(round_id), [])) - len(acks),
                         "steps": steps})
    return {"versions": versions, "clicks_acknowledged": len(observed.click_acks),
            "clicks_learned_by_a_minor_version": sum(v["clicks"] for v in versions),
            "clicks_outside_a_round": len(clicks_by_round.get(None, [])), "minor_runs": len(runs)}


def summarise(measured: dict) -> dict:
    steps = [s for v in measured["versions"] for s in v["steps"]]
    totals = sorted(sum(s.values()) for s in steps)
    if not totals:
        return {"clicks": 0}
    mean_total = statistics.fmean(totals)
    return {"clicks": len(totals), "p50_s": statistics.median(totals), "p90_s": totals[int(0.9 * (len(totals) - 1))],
            "min_s": totals[0], "max_s": totals[-1], "mean_s": mean_total,
            "mean_step_s": {k: statistics.fmean(s[k] for s in steps) for k in STEPS},
            "share": {k: statistics.fmean(s[k] for s in steps) / mean_total for k in STEPS},
            "freshest_click_per_version_s": [min(sum(s.values()) for s in v["steps"]) for v in measured["versions"]
                                             if v["steps"]]}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"minor update every {result['schedule_s']:g} s, world at x{result['speed']:g}, "
             f"{result['requests']} requests in {result['minutes']:g} min, {result['minor_runs']} minor runs, "
             f"{len(result['versions'])} minor versions promoted and served",
             f"clicks acknowledged: {result['clicks_acknowledged']}; learned by a served minor version: "
             f"{result['clicks_learned_by_a_minor_version']}"]
    if not s["clicks"]:
        return "\n".join(lines + ["no click reached a served minor version in this run"])
    lines += ["", "| click to served version | seconds |", "| --- | --- |",
              *(f"| {name} | {s[key]:.1f} |" for name, key in
                (("median", "p50_s"), ("90th percentile", "p90_s"), ("freshest", "min_s"), ("oldest", "max_s"))),
              "", "| step | mean s | share |", "| --- | --- | --- |",
              *(f"| {k} | {s['mean_step_s'][k]:.1f} | {s['share'][k]:.0%} |" for k in STEPS),
              "", f"target: median <= {TARGET_S:g} s: {'met' if s['p50_s'] <= TARGET_S else 'not met'}"]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [v for v in result["versions"] if v["steps"]]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(shown) + 1.5))
    left = [0.0] * len(shown)
    for step in STEPS:
        widths = [statistics.fmean(s[step] for s in v["steps"]) for v in shown]
        ax.barh([f"v{v['version']}" for v in shown], widths, left=left, label=step)
        left = [a + b for a, b in zip(left, widths)]
    ax.axvline(TARGET_S, color="k", linestyle="--", linewidth=1, label=f"target {TARGET_S:g} s")
    ax.set_xlabel("seconds from a click's acknowledgement to the version served (mean over its round's clicks)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=MINUTES, help="wall minutes of traffic")
    parser.add_argument("--speed", type=float, default=SPEED, help="world seconds per wall second")
    parser.add_argument("--out", type=Path, default=Path("out/freshness.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="drn-freshness-"))
    settings = StackSettings(home, prefect_port=free_port(), mlflow_port=free_port(), api_port=free_port())
    token, world, observed = secrets.token_hex(16), WorldSpec(), Observed()
    with up(settings, UpOptions(minor_every_min=SCHEDULE_S / 60.0, world=world, clock_token=token), say):
        say(f"traffic for {args.minutes:g} min at x{args.speed:g}, minor update every {SCHEDULE_S:g} s")
        requests = asyncio.run(traffic(settings, token, world, args.minutes, args.speed, observed))
        measured = measure(settings, observed)
    result = {"schedule_s": SCHEDULE_S, "speed": args.speed, "minutes": args.minutes, "requests": requests,
              "home": str(home), **measured, "summary": summarise(measured)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if result["summary"]["clicks"]:
        plot(result, args.out.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
