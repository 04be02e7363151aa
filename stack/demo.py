"""`drn demo`: the stack (`drn up`) plus the simulated world sending real HTTP traffic on a compressed clock, minor
and major updates on schedules compressed by the same factor, a live status line, and at the end a summary
(OUT/summary.json), a plot of CTR over world time with promotions marked (OUT/ctr.png), both also logged to MLflow
(experiment "demo").

At `speed` world seconds per wall second, T_D = 30 world minutes becomes 30/speed wall minutes and T_R = 60 world
minutes 60/speed: the default speed 150 runs a world day in 9.6 minutes (the default 30 world hours in 12), a minor
update every 12 s, a major one every 24 s (a run still busy when the next is due makes Prefect cancel the newcomer:
see flows/deployments.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx

from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from drn.world import HOUR
from stack import demo_defaults, observe
from stack.processes import StackError
from stack.settings import StackSettings
from stack.traffic import TrafficStats, drive
from stack.up import UpOptions, WorldSpec, addresses, up

STATUS_EVERY_S = 1.0  # the live line is redrawn this often (on a terminal; every PLAIN_EVERY_S to a file)
PLAIN_EVERY_S = 15.0
DECISION_EVERY_S = 5.0  # the Prefect API is asked for the latest update decision this often
EXPERIMENT = "demo"
MARKER = "demo-world.json"  # under DRN_HOME: this data directory already carries a demo world's traffic
KIND_COLORS = {"offline": "tab:gray", "minor": "tab:green", "major": "tab:blue", "rollback": "tab:red"}


@dataclass(frozen=True)
class DemoOptions:
    hours: float = demo_defaults.HOURS  # simulated span
    speed: float = demo_defaults.SPEED  # world seconds per wall second
    clients: int = demo_defaults.CLIENTS  # requests in flight at once
    keep_up: bool = False  # leave the stack up after the summary until Ctrl-C (to try a rollback in the UI)
    world: WorldSpec = WorldSpec()
    idle_hours: float = demo_defaults.IDLE_HOURS  # world hours the pipeline runs on after the traffic stops

    def up_options(self, clock_token: str) -> UpOptions:
        return UpOptions(minor_every_min=MINOR_EVERY_MIN / self.speed, major_every_min=MAJOR_EVERY_MIN / self.speed,
                         world=self.world, clock_token=clock_token)


def claim_home(settings: StackSettings, options: DemoOptions) -> None:
    """The world restarts at the end of its logs, so a data directory can carry one demo's traffic only."""
    marker = settings.home / MARKER
    if marker.exists():
        raise StackError(f"{settings.home} already holds a demo run's traffic (see {marker}); "
                         "use a fresh --out / --home")
    settings.home.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"started": time.time(), **asdict(options)}, default=str))


def world_clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%a %H:%M")


def status_line(stats: TrafficStats, decision: str | None) -> str:
    hour = int((stats.now - stats.start) // HOUR)
    last = stats.hours.get(hour - 1) or stats.hours.get(hour)
    ctr = f"{last.ctr:.4f}" if last and last.shown else "-"
    update = decision or "none yet"
    return (f"world {world_clock(stats.now)}  requests {stats.requests}  CTR(last hour) {ctr}  "
            f"served v{stats.served_version}  last update: {update}  failed {stats.failed}")


async def show_status(stats_box: list[TrafficStats], prefect_api: str) -> None:
    """Redraw the live line until cancelled; a Prefect API hiccup only leaves the decision as it was."""
    tty = sys.stderr.isatty()
    decision, asked, printed = None, 0.0, 0.0
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            if not stats_box:
                continue
            if time.monotonic() - asked >= DECISION_EVERY_S:
                asked = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    decision = await observe.latest_decision(client, prefect_api)
            line = status_line(stats_box[0], decision)
            if tty:
                print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
            elif time.monotonic() - printed >= PLAIN_EVERY_S:
                printed = time.monotonic()
                print(line, file=sys.stderr, flush=True)


async def traffic_with_status(settings: StackSettings, options: DemoOptions, token: str) -> TrafficStats:
    box: list[TrafficStats] = []
    status = asyncio.create_task(show_status(box, settings.prefect_api))
    try:
        return await drive(settings.api_url, token, options.world, options.hours, options.speed, options.clients,
                           on_start=box.append)
    finally:
        status.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status
        if sys.stderr.isatty():
            print(file=sys.stderr)


def edge_count(hours_seen: int) -> int:
    """How many hours each end of the comparison pools: EDGE_HOURS, or half of a shorter span."""
    return max(1, min(demo_defaults.EDGE_HOURS, hours_seen // 2))


def edge_rate(per_hour: list[dict], first: bool, part: str = "clicks", whole: str = "shown") -> float:
    """`part` over `whole` across the first (or last) EDGE_HOURS of the hours, pooled: by default the CTR. A span
    shorter than twice that compares its halves."""
    n = edge_count(len(per_hour))
    rows = per_hour[:n] if first else per_hour[-n:]
    total = sum(r[whole] for r in rows)
    return sum(r[part] for r in rows) / total if total else 0.0


def edge_oracle_share(per_hour: list[dict], first: bool) -> float:
    """The served lists' expected clicks as a share of the best lists', over the first (or last) hours."""
    return edge_rate(per_hour, first, "expected_clicks", "oracle_expected_clicks")


def edges_alike(hours: float) -> bool:
    """Whether the last EDGE_HOURS of a span of `hours` fall on the same hours of the day as its first ones."""
    edge = demo_defaults.EDGE_HOURS
    return hours > edge and (hours - edge) % demo_defaults.DAY_HOURS == 0


def summarise(stats: TrafficStats, versions: list[dict], history: list[dict],
              flow_runs: dict[str, dict[str, int]], options: DemoOptions, wall_s: float,
              rounds: dict[str, dict[str, int]] | None = None) -> dict:
    per_hour = [{"hour": h, "impressions": s.impressions, "shown": s.shown, "clicks": s.clicks, "ctr": s.ctr,
                 "expected_clicks": s.expected_clicks, "oracle_expected_clicks": s.oracle_expected_clicks,
                 "oracle_share": s.oracle_share, "versions": dict(s.versions)} for h, s in sorted(stats.hours.items())]
    during = [{**r, "world_hour": (stats.world_time_of(r["at"]) - stats.start) / HOUR} for r in history
              if r["at"] >= stats.wall_start]
    registered: dict[str, int] = {}
    for v in versions:
        registered[v["kind"]] = registered.get(v["kind"], 0) + 1
    promoted: dict[str, int] = {}
    for r in history:
        promoted[f"{r['action']}:{r['kind']}"] = promoted.get(f"{r['action']}:{r['kind']}", 0) + 1
    impressions = sum(r["impressions"] for r in per_hour)
    shown, clicks = sum(r["shown"] for r in per_hour), sum(r["clicks"] for r in per_hour)
    return {
        "options": {k: v for k, v in asdict(options).items() if k != "keep_up"},
        "wall_s": round(wall_s, 1),
        "traffic": {"requests": stats.requests, "impressions": impressions, "shown": shown, "clicks": clicks,
                    "ctr": clicks / shown if shown else 0.0, "failed_requests": stats.failed,
                    "retries": stats.retries, "feedback_calls": stats.feedback_calls,
                    "max_lag_s": round(stats.max_lag_s, 2), "errors": stats.errors},
        "edge_hours": edge_count(len(per_hour)),
        "edges_same_hours_of_day": edges_alike(options.hours),
        "ctr_first_hours": edge_rate(per_hour, first=True),
        "ctr_last_hours": edge_rate(per_hour, first=False),
        "oracle_share_first_hours": edge_oracle_share(per_hour, first=True),
        "oracle_share_last_hours": edge_oracle_share(per_hour, first=False),
        "per_hour": per_hour,
        "versions_registered_by_kind": registered,
        "promotions_by_action_and_kind": promoted,
        "promotions_during_demo": during,
        "rounds_by_kind_and_outcome": rounds or {},
        "versions": versions,
        "flow_runs": flow_runs,
    }


def plot(summary: dict, path: Path) -> None:
    """CTR per world hour, promotions during the run as vertical lines coloured by the kind of version served."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    hours = [r["hour"] + 0.5 for r in summary["per_hour"]]
    ax.plot(hours, [r["ctr"] for r in summary["per_hour"]], marker="o", linewidth=1.8, color="black",
            label="CTR (clicks / shown) per world hour")
    share = ax.twinx()  # closer to the ranking's quality than CTR: no click noise, less moved by the hour
    share.plot(hours, [r["oracle_share"] for r in summary["per_hour"]], marker=".", linewidth=1.2, color="tab:green",
               linestyle="--")
    share.set_ylabel("expected clicks, share of the best list's", color="tab:green")
    ax.plot([], [], marker=".", linestyle="--", color="tab:green", label="expected clicks / best list's (right)")
    labelled: set[str] = set()
    for p in summary["promotions_during_demo"]:
        kind = "rollback" if p["action"] != "promote" else p["kind"]
        ax.axvline(p["world_hour"], color=KIND_COLORS.get(kind, "tab:purple"), alpha=0.6, linewidth=1.0,
                   label=None if kind in labelled else f"{kind} promoted")
        labelled.add(kind)
    ax.set_xlabel("world hours since the demo went live")
    ax.set_ylabel("CTR")
    ax.set_title(f"drn demo: {summary['traffic']['impressions']} impressions, "
                 f"speed x{summary['options']['speed']:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_mlflow(mlflow_url: str, summary: dict, files: list[Path]) -> str:
    """One run in experiment "demo": the options as params, CTR per world hour as a metric with step = hour, the
    summary and the plot as artifacts. Returns the run id."""
    from drn.registry import log_report_run
    options = summary["options"]
    params = {**{k: v for k, v in options.items() if k != "world"},
              **{f"world.{k}": v for k, v in options["world"].items()}}
    metrics = {"ctr": summary["traffic"]["ctr"], "failed_requests": summary["traffic"]["failed_requests"],
               **{key: summary[key] for key in ("ctr_first_hours", "ctr_last_hours", "oracle_share_first_hours",
                                                 "oracle_share_last_hours")}}
    series = {f"{name}_per_world_hour": [(row["hour"], row[name]) for row in summary["per_hour"]]
              for name in ("ctr", "oracle_share")}
    return log_report_run(mlflow_url, EXPERIMENT, f"demo {options['hours']:g} h x{options['speed']:g}",
                          params, metrics, series, files)


def print_summary(summary: dict, say: Callable[[str], None]) -> None:
    t = summary["traffic"]
    say(f"demo done in {summary['wall_s']:.0f} s: {t['impressions']} impressions, {t['clicks']} clicks, "
        f"CTR {t['ctr']:.4f}, failed requests {t['failed_requests']} (retries {t['retries']})")
    alike = ("the same hours of the day, a day apart" if summary["edges_same_hours_of_day"] else
             "not the same hours of the day: the daily cycle moves the comparison")
    say(f"CTR first {summary['edge_hours']} hours {summary['ctr_first_hours']:.4f} -> last {summary['edge_hours']} "
        f"hours {summary['ctr_last_hours']:.4f} ({alike})")
    say(f"served lists' expected clicks as a share of the best lists' (the world's click model, no click noise): "
        f"first hours {summary['oracle_share_first_hours']:.3f} -> last hours {summary['oracle_share_last_hours']:.3f}")
    say(f"versions registered by kind {summary['versions_registered_by_kind']}; "
        f"promotions {summary['promotions_by_action_and_kind']}")
    say(f"rounds by kind and outcome {summary['rounds_by_kind_and_outcome']}")


def wait_for_interrupt(stack, say: Callable[[str], None]) -> None:
    say("--keep-up: everything stays up; roll back in the MLflow UI (stage Production) and watch /model; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        while not stack.exited():
            time.sleep(1.0)


def run_demo(settings: StackSettings, options: DemoOptions, out: Path, say: Callable[[str], None]) -> dict:
    """Start the stack, run the world against it, summarise; stop everything (unless --keep-up, then on Ctrl-C)."""
    out.mkdir(parents=True, exist_ok=True)
    claim_home(settings, options)
    token = secrets.token_hex(16)
    started = time.monotonic()
    with up(settings, options.up_options(token), say) as stack:
        for name, url in addresses(settings).items():
            say(f"{name:>10}  {url}")
        say(f"world: {options.hours:g} h at x{options.speed:g} (minor update every "
            f"{MINOR_EVERY_MIN * 60 / options.speed:.1f} s, major every {MAJOR_EVERY_MIN * 60 / options.speed:.1f} s)")
        stats = asyncio.run(traffic_with_status(settings, options, token))
        if options.idle_hours > 0:
            say(f"traffic stopped: the updates run on for {options.idle_hours:g} world hours "
                f"({options.idle_hours * 3600 / options.speed:.0f} s) before the summary")
            time.sleep(options.idle_hours * 3600 / options.speed)
        versions, history = observe.registry_story(settings.mlflow_url)
        summary = summarise(stats, versions, history, observe.flow_run_states(settings.prefect_api), options,
                            time.monotonic() - started, observe.round_story(settings.store_environment()))
        summary_file, png = out / "summary.json", out / "ctr.png"
        plot(summary, png)
        summary["plot"] = str(png.resolve())
        summary_file.write_text(json.dumps(summary, indent=1, default=str))
        summary["mlflow_run"] = log_to_mlflow(settings.mlflow_url, summary, [summary_file, png])
        summary_file.write_text(json.dumps(summary, indent=1, default=str))
        print_summary(summary, say)
        if options.keep_up:
            wait_for_interrupt(stack, say)
    return summary
