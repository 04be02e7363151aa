"""How long each flow takes, end to end, on a small simulated world: the median of `--repeats` runs of the sequence

    offline-training -> minor-update (a round the explore network wins) -> minor-update (a round it loses)
    -> major-update -> rollback

each repeat in a fresh DRN_HOME (MLflow + log store on SQLite), all against one Prefect server: the temporary one
Prefect starts for the process (its start-up is timed separately), or PREFECT_API_URL when set. Prints a JSON
summary and the `drn models` table of the last repeat.

    .venv/bin/python benchmarks/flow_timings.py --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drn.interleaving import team_draft  # noqa: E402
from drn.logstore import EXPLORE, ImpressionRecord, LogStore  # noqa: E402
from drn.mind import load_dataset  # noqa: E402

SERVED = 10  # items per interleaved list
CLICK_P = {"winner": 0.5, "loser": 0.1}  # P(click) of the first item of the preferred / the other team


def log_round(logs: LogStore, world: Path, explore_wins: bool, impressions: int, seed: int) -> None:
    """Serving's traffic for the open round: team-draft lists of two rankings of logged candidates, and clicks
    that favour the explore team (or the exploit team) the way a user preferring that network would."""
    rng = np.random.default_rng(seed)
    round_ = logs.current_round()
    now = time.time()
    for i, imp in enumerate(load_dataset(world).impressions[-impressions:]):
        a, b = list(imp.candidates), list(rng.permutation(imp.candidates))
        merged = team_draft(a, b, SERVED, rng)
        impression_id = f"bench-{round_.round_id}-{i}"
        logs.log_impression(ImpressionRecord(impression_id, imp.user, now + i, imp.candidates, merged.served,
                                             merged.teams, round_.model_version, round_.round_id, round_.seed))
        for team in (0, 1):
            preferred = (team == EXPLORE) == explore_wins
            if rng.random() < CLICK_P["winner" if preferred else "loser"]:
                logs.log_click(impression_id, merged.served[merged.teams.index(team)], now + i + 1)


def one_sequence(world: Path, home: Path, train: dict, seed: int) -> dict[str, float]:
    from drn.config import Settings
    from flows.major_update import major_update
    from flows.minor_update import minor_update
    from flows.offline_training import offline_training
    from flows.rollback import rollback

    os.environ["DRN_HOME"] = str(home)
    settings = Settings.from_env()
    timings: dict[str, float] = {}

    def timed(name: str, run, *args, **kwargs) -> dict:
        start = time.perf_counter()
        result = run(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        print(f"{name}: {result['decision']} ({timings[name]:.1f} s)", file=sys.stderr)
        return result

    timed("offline-training", offline_training, str(world), train_config=train, seed=seed)
    with settings.open_log_store() as logs:
        log_round(logs, world, explore_wins=True, impressions=200, seed=seed)
        timed("minor-update (explore won)", minor_update)
        log_round(logs, world, explore_wins=False, impressions=200, seed=seed + 1)
        timed("minor-update (explore lost)", minor_update)
    timed("major-update", major_update, train_config=train, min_impressions=100)
    timed("rollback", rollback, reason="benchmark")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=20, help="simulated users")
    parser.add_argument("--days", type=int, default=2, help="days of MIND logs for offline training")
    parser.add_argument("--epochs", type=int, default=1, help="training passes (offline and major)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from drn.world import generate_logs
    from drn_cli.flows_commands import format_table, model_rows
    from prefect import flow

    workdir = Path(tempfile.mkdtemp(prefix="drn-bench-"))
    world = workdir / "world"
    generate_logs(world, days=args.days, users=args.users, seed=0)

    start = time.perf_counter()
    flow(name="warm-up")(lambda: None)()  # the temporary server starts on the first run
    server_s = time.perf_counter() - start
    runs = [one_sequence(world, workdir / f"home{i}", {"epochs": args.epochs}, seed=i) for i in range(args.repeats)]
    from drn.config import Settings
    print(format_table(model_rows(Settings.from_env().open_registry().versions())))
    print(json.dumps({
        "world": {"users": args.users, "days": args.days, "impressions": len(load_dataset(world).impressions)},
        "epochs": args.epochs, "repeats": args.repeats, "prefect_server_start_s": round(server_s, 1),
        "median_s": {name: round(statistics.median(r[name] for r in runs), 1) for name in runs[0]},
    }, indent=2))


if __name__ == "__main__":
    main()
