"""`drn up`: the Prefect server, the MLflow server, the flow deployments and the serving module, on loopback, under
one data directory; a first model trained and promoted when none is served.

Order, and why:
1. ports checked before anything starts (one line when one is taken);
2. the Prefect server starts (20-40 s here) while `drn models` creates the MLflow store once (a file lock makes
   that safe, but a fresh SQLite store migrated by several processes at once is slow and noisy) and says what is
   served;
3. the MLflow server starts on that store;
4. when nothing is served: the offline-training flow runs against the Prefect server (so the run shows in the UI)
   on the user's MIND folder (`drn up --data DIR`) or, without one, on logs of the simulated world that
   `drn world generate` writes; it imports them into the log store and promotes the first version;
5. `drn flows serve` (the five deployments, minor and major updates on their schedules) and `drn serve`, whose
   feature state is rebuilt from the log store: the first version goes live with the logs' users and items, the
   same way as after `drn flows run offline-training --param data_dir=...` by hand.
Every part is a subprocess in its own process group, recorded in the pid file at once, so a failure half-way, a
Ctrl-C or `drn down` stops exactly what was started. SQLite files and artifacts stay.

The three stores are SQLite files under DRN_HOME unless DRN_MLFLOW_URI / --mlflow-uri, DRN_LOGSTORE_URL /
--logstore-url and DRN_PREFECT_DATABASE_URL / --prefect-database-url name others, e.g. PostgreSQL databases
(stack/settings.py); every part gets them in its environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx

from drn.config import Settings
from drn.schedule import MAJOR_EVERY_MIN, MINOR_EVERY_MIN
from stack import processes
from stack.processes import Part, StackError
from stack.settings import HOST, StackSettings

INFRA = Path(__file__).resolve().parents[1] / "infra"
START_TIMEOUT_S = 180.0  # per part: the Prefect server alone takes tens of seconds on a small machine
HTTP_TIMEOUT_S = 5.0
REPORT_EVERY_S = 10.0  # a progress line while a part is still starting
SERVE_POLL_S = 1.0  # serving looks at the round and the registry this often: a stage change shows within a second
RUNNER_POLL_S = 2.0  # the flow runner asks the Prefect server for due runs this often (Prefect's default is 10 s)
MLFLOW_WORKERS = 1  # uvicorn workers of the MLflow server: the UI and a few API calls; its default of 4 costs CPU
# MLflow 3's server also starts a job runner with huey consumer processes for its GenAI jobs by default: unused
# here, seconds of CPU each at start, and they outlive a SIGTERM. Off.
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
FIRST_LOGS = "world-logs"  # under DRN_HOME: the simulated world's logs the first model is trained on
DEPLOYMENT_PROBE = "minor-update/drn"  # a deployment `drn flows serve` upserts when it starts serving


@dataclass(frozen=True)
class WorldSpec:
    """The simulated world the first model is trained on and, in the demo, the one that then sends traffic."""

    users: int = 400  # a day is ~3,700 requests: a few per second on the demo's compressed clock
    log_days: int = 2  # logged days before going live (the last one evaluates the first model)
    seed: int = 0


@dataclass(frozen=True)
class UpOptions:
    minor_every_min: float = MINOR_EVERY_MIN  # T_D, wall-clock minutes between minor updates
    major_every_min: float = MAJOR_EVERY_MIN  # T_R, wall-clock minutes between major updates
    world: WorldSpec = WorldSpec()
    clock_token: str | None = None  # lets a simulated world set event times (DRN_SERVE_CLOCK_TOKEN); None: nobody
    data_dir: Path | None = None  # a MIND folder the first model trains on; None: the simulated world's logs


Say = Callable[[str], None]


class Stack:
    """The started parts; `stop()` (or leaving the `with` block) stops them all and removes the pid file."""

    def __init__(self, settings: StackSettings, say: Say):
        self.settings, self.say = settings, say
        self.processes: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, part: Part) -> None:
        self.processes[part.name] = processes.start(part, self.settings.log_dir)
        self.pids[part.name] = self.processes[part.name].pid
        processes.write_pids(self.settings.pid_file, self.pids)

    def run_step(self, part: Part) -> str:
        """Run a one-off step (list the models, generate logs, train the first model) to its end, recorded in the
        pid file meanwhile so that `drn down` stops it too; its stdout, or StackError when it fails."""
        process = processes.start(part, self.settings.log_dir, capture_stdout=True)
        self.pids[part.name] = process.pid
        processes.write_pids(self.settings.pid_file, self.pids)
        stdout, _ = process.communicate()
        del self.pids[part.name]
        processes.write_pids(self.settings.pid_file, self.pids)
        if process.returncode != 0:
            raise StackError(f"{part.name} failed (exit {process.returncode}); "
                             f"see {self.settings.log_dir / part.name}.log")
        return stdout.decode()

    def exited(self) -> list[str]:
        """Parts whose process ended (a crash, or `drn down` from another shell)."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        processes.stop_groups(self.pids, say=self.say)
        self.settings.pid_file.unlink(missing_ok=True)
        self.pids.clear()

    def wait_ready(self, name: str, ready: Callable[[], bool]) -> None:
        """Poll `ready` until it holds; StackError when the part exits or does not come up in time."""
        started = last_report = time.monotonic()
        while not _safely(ready):
            if self.processes[name].poll() is not None:
                raise StackError(f"{name} exited with code {self.processes[name].returncode}; "
                                 f"see {self.settings.log_dir / name}.log")
            waited = time.monotonic() - started
            if waited > START_TIMEOUT_S:
                raise StackError(f"{name} not ready after {START_TIMEOUT_S:.0f} s; "
                                 f"see {self.settings.log_dir / name}.log")
            if time.monotonic() - last_report >= REPORT_EVERY_S:
                self.say(f"  {name}: starting ({waited:.0f} s)")
                last_report = time.monotonic()
            time.sleep(processes.POLL_S)
        self.say(f"  {name}: ready ({time.monotonic() - started:.0f} s)")


def _safely(check: Callable[[], bool]) -> bool:
    """A health probe that cannot connect yet is simply not ready."""
    try:
        return check()
    except httpx.HTTPError:
        return False


def _ok(url: str) -> bool:
    return httpx.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200


def _serves(stack: Stack, name: str, port: int, health_url: str) -> Callable[[], bool]:
    """Ready when `name`'s own process group listens on `port` and the health endpoint answers 200."""
    return lambda: processes.listens_in_group(port, stack.pids[name]) and _ok(health_url)


def part_env(settings: StackSettings) -> dict[str, str]:
    """What every part shares: the data directory and stores, the Prefect server, no telemetry to the outside."""
    return {**settings.store_environment(), "PREFECT_API_URL": settings.prefect_api,
            "PREFECT_HOME": str(settings.home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1"}


def drn_argv(*args: str) -> list[str]:
    return processes.python_argv("-m", "drn_cli.main", *args)


def prefect_server(settings: StackSettings) -> Part:
    """infra/start-prefect-server.sh: the same start a person uses by hand (its database DRN_PREFECT_DATABASE_URL,
    in part_env when set, else SQLite under DRN_HOME/prefect)."""
    return Part("prefect-server", ["bash", str(INFRA / "start-prefect-server.sh")],
                {**part_env(settings), "PREFECT_PORT": str(settings.prefect_port),
                 "PATH": f"{Path(processes.python_argv()[0]).parent}:{os.environ.get('PATH', '')}"})


def mlflow_server(settings: StackSettings, stores: Settings) -> Part:
    """The tracking server and UI on the store the flows and serving write (DRN_MLFLOW_URI, SQLite by default),
    artifacts of runs logged through it (the demo's) under DRN_HOME/mlartifacts beside the versions' own."""
    return Part("mlflow-server", processes.python_argv(
        "-m", "mlflow", "server", "--host", HOST, "--port", str(settings.mlflow_port),
        "--backend-store-uri", stores.mlflow_uri, "--artifacts-destination", str(settings.home / "mlartifacts"),
        "--serve-artifacts", "--workers", str(MLFLOW_WORKERS)), {**part_env(settings), **MLFLOW_ENV})


def flow_server(settings: StackSettings, options: UpOptions) -> Part:
    return Part("flows", drn_argv("flows", "serve", "--minor-every", repr(options.minor_every_min),
                                  "--major-every", repr(options.major_every_min)),
                {**part_env(settings), "PREFECT_RUNNER_POLL_FREQUENCY": repr(RUNNER_POLL_S)})


def serving(settings: StackSettings, options: UpOptions) -> Part:
    env = part_env(settings)
    if options.clock_token:
        env["DRN_SERVE_CLOCK_TOKEN"] = options.clock_token
    return Part("serving", drn_argv("serve", "--port", str(settings.api_port), "--poll-s", repr(SERVE_POLL_S),
                                    "--registry-poll-s", repr(SERVE_POLL_S), "--log-level", "warning"), env)


def served_version(models_json: str) -> str | None:
    """The version in stage Production in `drn models --json` output; None when nothing is served."""
    return next((row["version"] for row in json.loads(models_json) if row["stage"] == "Production"), None)


def check_data_dir(folder: Path) -> Path:
    """The MIND folder `drn up --data` names, checked before anything starts; StackError in one line if unusable."""
    folder = folder.expanduser().resolve()
    missing = [name for name in ("behaviors.tsv", "news.tsv") if not (folder / name).is_file()]
    if missing:
        raise StackError(f"--data {folder}: not a MIND folder (missing {', '.join(missing)})")
    return folder


def train_first_model(stack: Stack, world: WorldSpec, data_dir: Path | None = None) -> None:
    """Run the offline-training flow against the Prefect server on `data_dir` or, without one, on logs of the
    simulated world generated first."""
    env = part_env(stack.settings)
    if data_dir is not None:
        logs = data_dir
        stack.say(f"  no model served: training the first one on your logs in {logs}")
    else:
        logs = stack.settings.home / FIRST_LOGS
        stack.say(f"  no model served: generating {world.log_days} days of the simulated world ({world.users} "
                  f"users) in {logs}")
        stack.run_step(Part("world-generate", drn_argv("world", "generate", "--out", str(logs), "--days",
                                                       str(world.log_days), "--users", str(world.users),
                                                       "--seed", str(world.seed)), env))
    stack.say("  training the first model (flow offline-training; watch it in the Prefect UI)")
    result = json.loads(stack.run_step(Part("offline-training", drn_argv(
        "flows", "run", "offline-training", "--param", f"data_dir={logs}", "--param", f"seed={world.seed}"), env)))
    stack.say(f"  offline training: {result.get('decision')} v{result.get('version')} ({result.get('why')})")


def _deployment_served_since(settings: StackSettings, since: datetime) -> Callable[[], bool]:
    """Ready once `drn flows serve` has upserted its deployments (their `updated` moves past our start)."""
    def check() -> bool:
        reply = httpx.get(f"{settings.prefect_api}/deployments/name/{DEPLOYMENT_PROBE}", timeout=HTTP_TIMEOUT_S)
        return reply.status_code == 200 and datetime.fromisoformat(reply.json()["updated"]) >= since
    return check


def up(settings: StackSettings, options: UpOptions, say: Say) -> Stack:
    """Start everything (see the module docstring); the caller stops it with `Stack.stop` or a `with` block."""
    processes.check_ports_free(settings.ports())
    data_dir = check_data_dir(options.data_dir) if options.data_dir is not None else None
    settings.home.mkdir(parents=True, exist_ok=True)
    stores = Settings.from_env({**os.environ, **settings.store_environment()})
    stack = Stack(settings, say)
    try:
        say(f"data directory {settings.home} (logs of each part in {settings.log_dir})")
        stack.start(prefect_server(settings))
        served = served_version(stack.run_step(Part("models", drn_argv("models", "--json"), part_env(settings))))
        stack.start(mlflow_server(settings, stores))
        stack.wait_ready("prefect-server", _serves(stack, "prefect-server", settings.prefect_port,
                                                   f"{settings.prefect_api}/health"))
        stack.wait_ready("mlflow-server", _serves(stack, "mlflow-server", settings.mlflow_port,
                                                  f"{settings.mlflow_url}/health"))
        if served is None:
            train_first_model(stack, options.world, data_dir)
        elif data_dir is not None:
            say(f"  v{served} is served already: --data {data_dir} not used (train on it with `drn flows run "
                f"offline-training --param data_dir={data_dir}`)")
        since = datetime.now(timezone.utc)
        stack.start(flow_server(settings, options))
        stack.start(serving(settings, options))
        stack.wait_ready("flows", _deployment_served_since(settings, since))
        stack.wait_ready("serving", _serves(stack, "serving", settings.api_port, f"{settings.api_url}/healthz"))
    except BaseException:
        stack.stop()
        raise
    return stack


def addresses(settings: StackSettings) -> dict[str, str]:
    return {"prefect_ui": settings.prefect_ui, "mlflow_ui": settings.mlflow_url, "api_docs": f"{settings.api_url}/docs",
            "api": settings.api_url, "home": str(settings.home), "pid_file": str(settings.pid_file)}
