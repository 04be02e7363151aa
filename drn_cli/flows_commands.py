"""`drn flows run|serve`, `drn promote`, `drn rollback`, `drn resume`, `drn models`, `drn config`: operating the
pipeline.

`promote` and `rollback` talk to the registry and the log store directly (no Prefect server to start: a rollback
is seconds), through the same `drn.lifecycle` steps the flows use. Prefect, MLflow and torch are imported inside
the handlers.
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN

# flows.deployments.FLOWS, not imported (Prefect is slow to import)
FLOW_NAMES = ("offline-training", "minor-update", "major-update", "rollback", "resume")
KEY_METRICS = ("auc", "mrr", "ndcg_at_10")  # columns of `drn models`
COLUMNS = ("version", "kind", "parent", "stage", "aliases", *KEY_METRICS, "promoted_at")


def _settings():
    from drn.config import Settings
    return Settings.from_env()


def _who() -> str:
    return f"cli:{getpass.getuser()}"


@contextlib.contextmanager
def _registry_errors() -> Iterator[None]:
    """A refused registry operation (unknown version, nothing to roll back to) is bad input: one line, exit 2."""
    from drn.registry import RegistryError
    try:
        yield
    except RegistryError as err:
        raise ValueError(str(err)) from err


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it parses (numbers, null, {"epochs": 1}), else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_flows_run(args: argparse.Namespace) -> object:
    from flows.deployments import FLOWS
    return FLOWS[args.name](**parse_params(args.param))


def cmd_flows_serve(args: argparse.Namespace) -> object:
    from datetime import timedelta

    from flows.deployments import serve_all
    if _settings().prefect_api_url is None:
        print("drn flows serve: PREFECT_API_URL is not set: serving against a temporary Prefect server that stops "
              "with this process (start one with infra/start-prefect-server.sh)", file=sys.stderr)
    serve_all(timedelta(minutes=args.minor_every), timedelta(minutes=args.major_every))
    return None


def cmd_promote(args: argparse.Namespace) -> object:
    from drn import lifecycle
    settings = _settings()
    with _registry_errors(), settings.open_log_store() as logs:
        round_ = lifecycle.promote(settings.open_registry(), logs, args.version, who=_who(), why=args.reason,
                                   now=time.time(), by_hand=True)
    return {"served": args.version, "round": round_.round_id, "promotion": "held until `drn resume`"}


def cmd_rollback(args: argparse.Namespace) -> object:
    from drn import lifecycle
    settings = _settings()
    with _registry_errors(), settings.open_log_store() as logs:
        if args.hold_hours is not None and args.hold_hours <= 0:
            raise ValueError("--hold-hours must be > 0 (leave it out to hold until `drn resume`)")
        until = None if args.hold_hours is None else time.time() + args.hold_hours * 3600.0
        registry = settings.open_registry()
        version = lifecycle.rollback(registry, logs, args.to, who=_who(), why=args.reason, now=time.time(),
                                     hold_until=until)
    return {"served": version, "promotion": registry.promotion_hold().describe()}


def cmd_resume(args: argparse.Namespace) -> object:
    hold = _settings().open_registry().resume(who=_who(), why=args.reason)
    return {"resumed": hold is not None, "was": hold.describe() if hold is not None else "not held"}


def model_rows(versions) -> list[dict[str, Any]]:
    """One row per version (oldest first) with the columns of `drn models`."""
    def when(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
    return [{"version": v.version, "kind": v.kind, "parent": v.parent, "stage": v.stage, "aliases": v.aliases,
             **{m: v.metrics.get(m) for m in KEY_METRICS}, "promoted_at": when(v.promoted_at)} for v in versions]


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        return (",".join(value) or "-") if isinstance(value, list) else str(value)
    cells = [[cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(COLUMNS)]
    lines = [COLUMNS] + cells
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def cmd_models(args: argparse.Namespace) -> object:
    registry = _settings().open_registry()
    rows = model_rows(registry.versions())
    if args.json:
        return rows
    hold = registry.promotion_hold()
    print(format_table(rows) if rows else "no model versions yet")
    print(f"\n{hold.message()}" if hold is not None else "\nautomatic promotion: on (not held)")
    return None


def cmd_config(args: argparse.Namespace) -> object:
    return _settings().to_dict()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the operating commands to the `drn` parser."""
    flows = sub.add_parser("flows", help="the Prefect flows").add_subparsers(dest="flows_command", required=True)
    run = flows.add_parser("run", help="run one flow once (Prefect's temporary server unless PREFECT_API_URL is set)")
    run.add_argument("name", choices=FLOW_NAMES)
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="a flow parameter; JSON values are parsed (repeatable)")
    run.set_defaults(handler=cmd_flows_run)
    serve = flows.add_parser("serve", help="serve all five deployments (minor every T_D, major every T_R)")
    serve.add_argument("--minor-every", type=float, default=MINOR_EVERY_MIN,
                    help=f"T_D in minutes (default {MINOR_EVERY_MIN:g})")
    serve.add_argument("--major-every", type=float, default=MAJOR_EVERY_MIN,
                    help=f"T_R in minutes (default {MAJOR_EVERY_MIN:g})")
    serve.set_defaults(handler=cmd_flows_serve)

    promote = sub.add_parser("promote", help="serve a model version by hand (holds automatic promotion, like a "
                                             "rollback) and open an exploration round")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    promote.set_defaults(handler=cmd_promote)
    back = sub.add_parser("rollback", help="serve an earlier version (default: the previously served one)")
    back.add_argument("--to", default=None, metavar="VERSION")
    back.add_argument("--reason", required=True)
    back.add_argument("--hold-hours", type=float, default=None,
                      help="resume automatic promotion after this many hours (default: hold until `drn resume`)")
    back.set_defaults(handler=cmd_rollback)
    resume = sub.add_parser("resume", help="resume automatic promotion after a rollback held it")
    resume.add_argument("--reason", required=True)
    resume.set_defaults(handler=cmd_resume)

    models = sub.add_parser("models", help="model versions: lineage, stage, key metrics")
    models.add_argument("--json", action="store_true", help="JSON instead of a table")
    models.set_defaults(handler=cmd_models)
    config = sub.add_parser("config", help="the effective configuration")
    config.set_defaults(handler=cmd_config)
