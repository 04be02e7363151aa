"""`drn up`, `drn down`, `drn demo`: the stack's commands. Everything heavier than argparse is imported when a
command runs, so `drn --help` stays fast."""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from stack import demo_defaults

WATCH_S = 1.0  # how often `drn up` looks whether its parts still run


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _sigterm_as_interrupt() -> None:
    """`kill <pid of drn up>` stops the stack the same way Ctrl-C does; and Ctrl-C (SIGINT) stops it even when the
    shell that started it ignores SIGINT (a background job of a script), which Python would otherwise inherit."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _settings(args: argparse.Namespace, default_home: Path | None = None):
    """Flags over environment; `default_home` (the demo's OUT/home) only when neither names a data directory."""
    import os

    from stack.settings import StackSettings
    home = args.home or os.environ.get("DRN_HOME") or (str(default_home) if default_home else None)
    stores = {name: getattr(args, name, None) for name in ("mlflow_uri", "logstore_url", "prefect_database_url")}
    return StackSettings.from_env(home=home, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
                                  api_port=args.api_port, **stores)


def _fail(err: Exception) -> None:
    """Turn a stack problem into the CLI's one-line error (main prints ValueError as `drn: error: ...`)."""
    raise ValueError(str(err)) from err


def cmd_up(args: argparse.Namespace) -> object:
    from stack.processes import StackError
    from stack.up import UpOptions, addresses, up
    _sigterm_as_interrupt()
    settings = _settings(args)
    try:
        stack = up(settings, UpOptions(minor_every_min=args.minor_every, major_every_min=args.major_every,
                                       data_dir=Path(args.data) if args.data else None), say)
    except StackError as err:
        _fail(err)
    except KeyboardInterrupt:
        say("interrupted while starting: stopped what had started")
        return None
    with stack:
        for name, url in addresses(settings).items():
            say(f"{name:>10}  {url}")
        say("running; Ctrl-C or `drn down` stops everything")
        try:
            while not stack.exited():
                time.sleep(WATCH_S)
            say(f"stopped: {', '.join(stack.exited())} exited (see {settings.log_dir}); stopping the rest")
        except KeyboardInterrupt:
            say("stopping")
    return None


def cmd_down(args: argparse.Namespace) -> object:
    from stack.processes import read_pids, stop_groups
    settings = _settings(args)
    pids = read_pids(settings.pid_file)
    if not pids:
        _fail(ValueError(f"nothing to stop: no pid file at {settings.pid_file}"))
    stop_groups(pids, say=say)
    settings.pid_file.unlink(missing_ok=True)
    return {"stopped": pids}


def cmd_demo(args: argparse.Namespace) -> object:
    from stack.demo import DemoOptions, run_demo
    from stack.processes import StackError
    _sigterm_as_interrupt()
    from stack.up import WorldSpec
    given = {"users": args.users, "seed": args.seed}
    if args.idle_hours < 0:
        raise ValueError("--idle-hours must be >= 0")
    options = DemoOptions(hours=args.hours, speed=args.speed, clients=args.clients, keep_up=args.keep_up,
                          world=WorldSpec(**{k: v for k, v in given.items() if v is not None}),
                          idle_hours=args.idle_hours)
    try:
        return run_demo(_settings(args, default_home=Path(args.out) / "home"), options, Path(args.out), say)
    except StackError as err:
        _fail(err)
    except KeyboardInterrupt:
        say("interrupted: stopped everything; the data directory keeps what was logged")
        return None


def _stack_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="data directory (DRN_HOME, default ./.drn)")
    parser.add_argument("--prefect-port", type=int, help="Prefect server and UI (DRN_PREFECT_PORT, default 4200)")
    parser.add_argument("--mlflow-port", type=int, help="MLflow server and UI (DRN_MLFLOW_PORT, default 5000)")
    parser.add_argument("--api-port", type=int, help="recommendation API (DRN_SERVE_PORT, default 8000)")


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mlflow-uri", metavar="URL", help="MLflow store (DRN_MLFLOW_URI, default SQLite under the "
                                                          "data directory; e.g. postgresql+psycopg://user@db/mlflow)")
    parser.add_argument("--logstore-url", metavar="URL", help="log store (DRN_LOGSTORE_URL, default SQLite; e.g. "
                                                            "postgresql+psycopg://user@db/drn)")
    parser.add_argument("--prefect-database-url", metavar="URL",
                        help="Prefect server's database (DRN_PREFECT_DATABASE_URL, default SQLite; e.g. "
                             "postgresql://user@db/prefect, run with asyncpg)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `up`, `down` and `demo` to the `drn` parser."""
    up = sub.add_parser("up", help="start Prefect, MLflow, the flows and serving; train a first model if needed")
    _stack_flags(up)
    _store_flags(up)
    up.add_argument("--minor-every", type=float, default=MINOR_EVERY_MIN,
                    help=f"T_D in minutes (default {MINOR_EVERY_MIN:g})")
    up.add_argument("--major-every", type=float, default=MAJOR_EVERY_MIN,
                    help=f"T_R in minutes (default {MAJOR_EVERY_MIN:g})")
    up.add_argument("--data", metavar="DIR", help="a MIND folder (behaviors.tsv, news.tsv) the first model trains on "
                                                 "when none is served (default: logs of the simulated world)")
    up.set_defaults(handler=cmd_up)
    down = sub.add_parser("down", help="stop what `drn up` / `drn demo` started (reads DRN_HOME's pid file)")
    _stack_flags(down)
    down.set_defaults(handler=cmd_down)
    demo = sub.add_parser("demo", help="`drn up` plus a simulated world sending HTTP traffic on a compressed clock")
    _stack_flags(demo)
    _store_flags(demo)
    demo.add_argument("--out", default="out/demo", help="summary.json, ctr.png (and, unless --home, the data dir)")
    demo.add_argument("--hours", type=float, default=demo_defaults.HOURS,
                      help=f"simulated world hours (default {demo_defaults.HOURS:g}: a day, and the hours of the "
                           "day the CTR comparison's first hours were, a day later)")
    demo.add_argument("--speed", type=float, default=demo_defaults.SPEED,
                      help=f"world seconds per wall second (default {demo_defaults.SPEED:g})")
    demo.add_argument("--clients", type=int, default=demo_defaults.CLIENTS,
                      help=f"concurrent HTTP requests (default {demo_defaults.CLIENTS})")
    demo.add_argument("--users", type=int, help="users of the simulated world (default 400: ~3,700 requests a day)")
    demo.add_argument("--seed", type=int, help="seed of the simulated world (default 0)")
    demo.add_argument("--idle-hours", type=float, default=demo_defaults.IDLE_HOURS,
                      help="world hours the updates run on after the traffic stops, before the summary "
                           f"(default {demo_defaults.IDLE_HOURS:g})")
    demo.add_argument("--keep-up", action="store_true", help="leave everything up after the summary, until Ctrl-C")
    demo.set_defaults(handler=cmd_demo)
