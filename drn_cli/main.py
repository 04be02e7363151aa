"""The `drn` command line (its own room: it may call drn, flows, serving and stack). JSON on stdout, progress on
stderr, one clear line and exit 2 on bad input.

Heavy libraries (torch, MLflow, Prefect) are imported inside the commands that need them, so `drn --help`
and the data commands start fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from drn_cli import flows_commands, serve_commands, stack_commands

Handler = Callable[[argparse.Namespace], object]
# drn.world (numpy) is imported by the commands only, so the names are listed here for --help
WORLD_HELP = "simulated world: interaction (default: clicks depend on feature interactions) or logistic"


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
    from drn.world import DEFAULT_WORLD, generate_logs, world_config
    return generate_logs(Path(args.out), days=args.days, users=args.users, seed=args.seed,
                         config=world_config(args.world or DEFAULT_WORLD), progress=Progress("world generate"))


def cmd_data_stats(args: argparse.Namespace) -> object:
    from drn.evaluate import stats
    return stats(_load(args.dir))


def cmd_data_split(args: argparse.Namespace) -> object:
    from drn.evaluate import write_split
    return write_split(Path(args.dir), Path(args.out), args.test_days)


POLICY_NAMES = ("random", "popularity", "linucb", "drn")


def build_policy(name: str, seed: int, epochs: int | None):
    """An unfitted policy by name (`fit` on the train logs comes next; DRN trains double-DQN there, choosing its
    step size and passes on the train logs' last day unless `epochs` fixes them)."""
    from drn.baselines import BASELINES
    if name == "drn":
        from drn.agent import DRNPolicy
        from drn.model import set_threads
        from drn.training import TrainConfig
        set_threads()
        config = TrainConfig(seed=seed) if epochs is None else TrainConfig(epochs=epochs, seed=seed)
        return DRNPolicy(train_config=config, choose_settings=epochs is None,
                         progress=lambda line: print(f"train drn: {line}", file=sys.stderr, flush=True))
    if name not in BASELINES:
        raise UsageError(f"unknown policy {name!r} (choose from {', '.join(POLICY_NAMES)})")
    return BASELINES[name](seed=seed) if name == "random" else BASELINES[name]()


def cmd_evaluate(args: argparse.Namespace) -> object:
    from drn.evaluate import evaluate
    from drn.progress import Progress
    train, test = _load(args.train), _load(args.test)
    policy = build_policy(args.policy, args.seed, args.epochs)
    policy.fit(train)
    result = evaluate(policy, train, test, progress=Progress(f"evaluate {args.policy}"))
    return {**result, "training": policy.training_summary} if args.policy == "drn" else result


def cmd_bench_learning(args: argparse.Namespace) -> object:
    from drn.bench import BenchConfig, bench_learning
    from drn.world import DEFAULT_WORLD, world_config
    world_config(args.world or DEFAULT_WORLD)  # an unknown name stops here, before any seed runs
    if args.seeds < 1 or args.impressions < 10 or not 0.0 <= args.drift_share <= 1.0:
        raise UsageError("--seeds must be >= 1, --impressions >= 10 and --drift-share in [0, 1]")
    config = BenchConfig(seeds=args.seeds, impressions=args.impressions, users=args.users, log_days=args.log_days,
                         workers=args.workers, world=args.world or DEFAULT_WORLD,
                         drift_share=args.drift_share)
    return bench_learning(config, Path(args.out))


def cmd_bench_tune(args: argparse.Namespace) -> object:
    from drn.bench import BenchConfig
    from drn.tuning import TUNING_SEEDS, tune_minor
    impressions = BenchConfig.impressions if args.impressions is None else args.impressions
    if impressions < 10 or args.workers < 1:
        raise UsageError("--impressions must be >= 10 and --workers >= 1")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else TUNING_SEEDS
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    config = BenchConfig(impressions=impressions, workers=args.workers)
    return tune_minor(tuple(args.learners.split(",")), config, Path(args.out), seeds)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="drn", description="DRN news recommender pipeline")
    sub = root.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="the simulated news world").add_subparsers(dest="world_command", required=True)
    gen = world.add_parser("generate", help="write MIND-format logs of the simulated world")
    gen.add_argument("--out", required=True)
    gen.add_argument("--days", type=int, default=5)
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--world", default=None, help=WORLD_HELP)
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
    ev.add_argument("--epochs", type=int, default=None,
                    help="DRN training passes over the train logs, with TrainConfig's step size (default: both "
                         "chosen on the train logs' last day, never on --test)")
    ev.set_defaults(handler=cmd_evaluate)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    learning = bench.add_parser("learning", help="every policy side by side in the live world")
    learning.add_argument("--seeds", type=int, default=3)
    learning.add_argument("--impressions", type=int, default=6000, help="live requests per policy and seed")
    learning.add_argument("--users", type=int, default=500)
    learning.add_argument("--log-days", type=int, default=3, help="offline log days DRN trains on first")
    learning.add_argument("--workers", type=int, default=2, help="seeds run in parallel processes")
    learning.add_argument("--world", default=None, help=WORLD_HELP)
    learning.add_argument("--drift-share", type=float, default=0.0,
                          help="share of the users whose tastes are redrawn halfway through each live run (0: none)")
    learning.add_argument("--out", required=True)
    learning.set_defaults(handler=cmd_bench_learning)
    tune = bench.add_parser("tune", help="the minor learners' knobs and the major update's step rate, chosen on "
                                         "tuning seeds the learning bench never reports (drn.tuning)")
    tune.add_argument("--learners", default="mgd,pdgd,sgd",
                      help="comma-separated, of drn.tuning.GRIDS ('major': the major update's steps per impression)")
    tune.add_argument("--seeds", default=None, help="comma-separated tuning seeds (default drn.tuning.TUNING_SEEDS)")
    tune.add_argument("--impressions", type=int, default=None,
                      help="live requests per run (default: the learning bench's)")
    tune.add_argument("--workers", type=int, default=2, help="seeds run in parallel processes")
    tune.add_argument("--out", required=True)
    tune.set_defaults(handler=cmd_bench_tune)
    flows_commands.register(sub)
    serve_commands.register(sub)
    stack_commands.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.handler(args)
        if result is not None:  # None: the command printed its own output (a table)
            _print_json(result)
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"drn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
