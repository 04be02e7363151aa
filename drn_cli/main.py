"""The `drn` command line (its own room: it may call drn, flows and serving). JSON on stdout, progress on stderr,
one clear line and exit 2 on bad input.

Heavy libraries (torch, MLflow, Prefect) are imported inside the commands that need them, so `drn --help`
and the data commands start fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

Handler = Callable[[argparse.Namespace], object]


class UsageError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _load(folder: str):
    from drn.mind import load_dataset
    return load_dataset(Path(folder))


def cmd_world_generate(args: argparse.Namespace) -> object:
    from drn.progress import Progress
    from drn.world import generate_logs
    return generate_logs(Path(args.out), days=args.days, users=args.users, seed=args.seed,
                         progress=Progress("world generate"))


def cmd_data_stats(args: argparse.Namespace) -> object:
    from drn.evaluate import stats
    return stats(_load(args.dir))


def cmd_data_split(args: argparse.Namespace) -> object:
    from drn.evaluate import write_split
    return write_split(Path(args.dir), Path(args.out), args.test_days)


def build_policy(name: str, seed: int, train_dir: str | None = None):
    """A fitted policy by name (the DRN agent trains on `train_dir` first)."""
    from drn.baselines import BASELINES
    if name not in BASELINES:
        raise UsageError(f"unknown policy {name!r} (choose from {', '.join(BASELINES)})")
    policy = BASELINES[name](seed=seed) if name == "random" else BASELINES[name]()
    return policy


def cmd_evaluate(args: argparse.Namespace) -> object:
    from drn.evaluate import evaluate
    from drn.progress import Progress
    train, test = _load(args.train), _load(args.test)
    policy = build_policy(args.policy, args.seed)
    policy.fit(train)
    return evaluate(policy, train, test, progress=Progress(f"evaluate {args.policy}"))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="drn", description="DRN news recommender pipeline")
    sub = root.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the simulated news world").add_subparsers(dest="world_command", required=True)
    gen = world.add_parser("generate", help="write MIND-format logs of the simulated world")
    gen.add_argument("--out", required=True)
    gen.add_argument("--days", type=int, default=5)
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=cmd_world_generate)

    data = sub.add_parser("data", help="MIND-format logs").add_subparsers(dest="data_command", required=True)
    st = data.add_parser("stats", help="counts of a MIND folder")
    st.add_argument("dir")
    st.set_defaults(handler=cmd_data_stats)
    sp = data.add_parser("split", help="time split into OUT/train and OUT/test")
    sp.add_argument("dir")
    sp.add_argument("--out", required=True)
    sp.add_argument("--test-days", type=int, default=1)
    sp.set_defaults(handler=cmd_data_split)

    ev = sub.add_parser("evaluate", help="offline metrics by progressive validation")
    ev.add_argument("--policy", required=True)
    ev.add_argument("--train", required=True)
    ev.add_argument("--test", required=True)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(handler=cmd_evaluate)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _print_json(args.handler(args))
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"drn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
