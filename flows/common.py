"""What every flow shares: the stores it talks to, I/O tasks with retries, the one-run-per-kind lease, the report.

Flows stay thin: each task wraps one `drn` call. Tasks that touch the registry or the log store retry (a locked
SQLite file, a blip of a database server); computing tasks do not (a retry would only repeat a bug). Task inputs
are models and stores, not data to cache: every task runs with `cache_policy=NO_CACHE`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import uuid
from typing import Any, Iterator, Mapping, Sequence

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterId,
                                            FlowRunFilterStartTime, FlowRunFilterState, FlowRunFilterStateName)
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from drn import lifecycle
from drn.bundle import ModelBundle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.interleaving import GATE_DECISIVE
from drn.learners import RoundRecipe
from drn.logstore import LogStore, Round
from drn.selection import SELECTION_METRIC
from drn.registry import Hold, PromotionHeld, Registry, VersionInfo

IO_RETRIES = 2  # attempts after the first for registry / log store calls
IO_RETRY_DELAY_S = 2.0  # seconds between those attempts

io_task = functools.partial(task, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S, cache_policy=NO_CACHE)
compute_task = functools.partial(task, cache_policy=NO_CACHE)


# --------------------------------------------------------------------------------------------------- the stores
@functools.lru_cache(maxsize=None)
def registry(settings: Settings) -> Registry:
    """One registry client per configuration and process (opening one checks the store, which takes a while)."""
    return settings.open_registry()


@functools.lru_cache(maxsize=None)
def log_store(settings: Settings) -> LogStore:
    return settings.open_log_store()


def who() -> str:
    """The name promotions are recorded under: the flow run, or the process when run outside Prefect."""
    return f"prefect:{flow_run.get_flow_name()}/{flow_run.get_name()}" if flow_run.get_id() else "drn"


# ------------------------------------------------------------------------------------------------------- tasks
@io_task
def served_model(settings: Settings) -> tuple[VersionInfo, ModelBundle] | None:
    """The promoted version and its checked bundle, or None when nothing is promoted yet.

    A stage change made by hand (the MLflow UI) is first recorded as such and alias champion moved onto the served
    version (`Registry.reconcile`): every update flow starts here, so the history and the alias catch up with an
    engineer's rollback within one minor-update period, not only at the next `drn rollback`."""
    registry(settings).reconcile()
    info = registry(settings).served()
    return None if info is None else (info, registry(settings).load(info.version))


@io_task
def register(settings: Settings, candidate: ModelBundle, *, kind: str, parent: str | None,
             data_window: tuple[float, float] | None, params: Mapping[str, Any], metrics: Mapping[str, float],
             tags: Mapping[str, str], description: str,
             series: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> str:
    """Register the version with its run's curves (`series`) and their plot."""
    series = {name: points for name, points in (series or {}).items() if points}
    figure = curves_figure(series, f"{kind} update" + (f" of v{parent}" if parent else "")) if series else None
    try:
        return registry(settings).register(candidate, kind=kind, parent=parent, data_window=data_window,
                                           params=params, metrics=metrics, tags=tags, description=description,
                                           series=series, plots={"curves": figure} if figure else None)
    finally:
        if figure is not None:
            import matplotlib.pyplot as plt
            plt.close(figure)


@io_task
def annotate(settings: Settings, version: str, tags: Mapping[str, str]) -> None:
    registry(settings).annotate(version, tags)


GATE_VERDICT = "gate.verdict"  # version tag: how a candidate's gate ended (refused, held, its gate round's outcome)
HELD = "held after rollback"  # the decision of an update that would have promoted while a rollback holds


@io_task
def promote(settings: Settings, version: str, *, expected_served: str | None, why: str,
            alpha: float = ALPHA) -> tuple[str, str]:
    """Serve `version` and open a round around it, unless the served version changed since the flow read it
    (another update or a rollback came between: promoting would silently undo that change) or a rollback holds
    promotion. (decision, why): "promoted", "registered" or HELD.

    Safe to retry: when an earlier attempt already served `version`, the registry records nothing new and only
    the round is opened again."""
    current = registry(settings).served()
    if (current.version if current else None) not in (expected_served, version):
        return "registered", f"{why}; not served: the served version changed from v{expected_served} meanwhile"
    try:
        lifecycle.promote(registry(settings), log_store(settings), version, who=who(), why=why, now=time.time(),
                          alpha=alpha)
    except PromotionHeld as held:
        return HELD, f"{why}; not served: {held}"
    return "promoted", why


@io_task
def promotion_hold(settings: Settings) -> Hold | None:
    return registry(settings).promotion_hold()


@io_task
def gate_round(settings: Settings, version: str) -> Round | None:
    """The open gate round around the served `version`, if one is running."""
    round_ = log_store(settings).current_round()
    running = round_ is not None and round_.model_version == version
    return round_ if running and RoundRecipe.from_dict(round_.recipe).challenger is not None else None


@io_task
def challenge(settings: Settings, version: str, *, expected_served: str, alpha: float = ALPHA,
              recipe: RoundRecipe | None = None, decisive: int = GATE_DECISIVE) -> bool:
    """Open a gate round of `version` against the served one (served as `recipe` says; None: a major candidate's,
    decided at `decisive` decisive impressions, drn.lifecycle.challenge), unless the served version changed since
    the flow read it (then the comparison would be with another model than the one it was trained from). True if
    opened."""
    current = registry(settings).served()
    if current is None or current.version != expected_served:
        return False
    lifecycle.challenge(log_store(settings), expected_served, version, alpha, time.time(), recipe, decisive)
    return True


def challenge_if_screened(settings: Settings, version: str, verdict: lifecycle.GateResult, served_version: str,
                          alpha: float, decisive: int = GATE_DECISIVE) -> tuple[str, str]:
    """The last step of a major update: a gate round for a registered candidate that passed the screen."""
    if not verdict.passed:
        annotate(settings, version, {GATE_VERDICT: f"refused before its gate round: {verdict.reason}"})
        return "registered", verdict.reason
    hold = promotion_hold(settings)
    if hold is not None:
        annotate(settings, version, {GATE_VERDICT: f"screened, no gate round: {HELD}"})
        return HELD, f"screened ({verdict.reason}), not challenged: {hold.message()}"
    if not challenge(settings, version, expected_served=served_version, alpha=alpha, decisive=decisive):
        return "registered", f"passed the screen, but the served version changed from v{served_version} meanwhile"
    return "challenging", (f"screened ({verdict.reason}); now interleaved against v{served_version} on live traffic, "
                           f"promoted unless v{served_version} wins that round ({decisive} decisive impressions, "
                           f"fewer on a clear result)")


def promote_if_passed(settings: Settings, version: str, verdict: lifecycle.GateResult, previous: str | None,
                      alpha: float) -> tuple[str, str]:
    """The last step of a training flow: promote a registered version that passed its gate. (decision, why)."""
    if not verdict.passed:
        return "registered", verdict.reason
    return promote(settings, version, expected_served=previous, why=verdict.reason, alpha=alpha)


def candidate_series(candidate: lifecycle.TrainedModel) -> dict[str, list[tuple[int, float]]]:
    """A trained version's curves: the training loss per gradient step and, when offline training chose its
    settings, the validation metric after each pass for every step size tried."""
    series = {"train.loss": list(candidate.training.get("loss_curve", []))}
    choice = candidate.training.get("choice")  # a dict when validation chose, else how the settings were set
    for tried in choice.get("tried", ()) if isinstance(choice, dict) else ():
        name = f"validation.{SELECTION_METRIC}.lr_{tried['learning_rate']:g}"
        series.setdefault(name, []).append((int(tried["epochs"]), float(tried[SELECTION_METRIC])))
    return series


def curves_figure(series: Mapping[str, Sequence[tuple[int, float]]], title: str):
    """One panel per curve, the run's plot artifact (plots/curves.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(len(series), 1, figsize=(7, 2.4 * len(series)), squeeze=False)
    for ax, (name, points) in zip(axes[:, 0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 30 else None)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def gate_tags(candidate: lifecycle.TrainedModel, verdict: lifecycle.GateResult,
              served_version: str | None) -> dict[str, str]:
    """A trained version's gate, for its page: the verdict and the comparison in words."""
    return {"gate": verdict.reason, "gate.comparison": lifecycle.comparison(
        candidate.metrics, candidate.baseline, served_version, int(candidate.metrics["impressions"]))}


MLFLOW_AT = "_at_"  # stands for '@' in metric names, which MLflow refuses (ndcg@10 is stored as ndcg_at_10)


def stored_candidate(info: VersionInfo) -> tuple[dict[str, float], dict[str, float] | None]:
    """A registered version's own metrics and the promoted model's on the same data, read back from its run (what
    `candidate_metrics` stored): what its gate is decided on."""
    def name(key: str) -> str:
        return key.replace(MLFLOW_AT, "@")
    own = {name(k): v for k, v in info.metrics.items() if "." not in k}
    baseline = {name(k.removeprefix("promoted.")): v for k, v in info.metrics.items() if k.startswith("promoted.")}
    return own, baseline or None


def candidate_metrics(candidate: lifecycle.TrainedModel) -> dict[str, float]:
    """The run metrics of a trained version: its own, the promoted model's on the same data, the trainer's.

    MLflow refuses '@' in metric names: ndcg@10 is stored as ndcg_at_10."""
    baseline = {f"promoted.{k}": v for k, v in (candidate.baseline or {}).items()}
    training = {f"train.{k}": float(v) for k, v in candidate.training.items() if isinstance(v, (int, float))}
    return {k.replace("@", MLFLOW_AT): v for k, v in {**candidate.metrics, **baseline, **training}.items()}


# --------------------------------------------------------------------------------------------- one run per kind
SKIPPED = "Skipped"  # the name of the Completed state of a run with nothing to do
WORKING_STATES = ["Running", "Completed"]  # state names of a run that does or did its work (not SKIPPED)


def skipped(kind: str, why: str, details: Mapping[str, Any] | None = None) -> State:
    """The end of a run with nothing to do: Completed, named Skipped, so the UI shows it quietly (not Cancelled,
    not failed); its log states why in one line. Calling the flow still returns the decision as a dict."""
    print(f"{kind}: skipped: {why}")
    return Completed(name=SKIPPED, message=why, data={"flow": kind, "decision": "skipped", "why": why,
                                                          **(details or {})})


def superseded() -> str | None:
    """The name of another run of this run's deployment that started after this run's slot and did (or does) the
    work: it saw everything this run would. So after an outage, or behind a long run, the first late run to start
    does the work and the other late ones end at once: the update runs once, not once per missed slot. And a
    schedule whose runs start later than its period still runs (one run per lateness, not none: a rule "skip for a
    newer due slot" skipped every run then, since a newer slot was always due). None outside a deployment."""
    deployment_id = deployment.id  # attribute access: Prefect's PREFECT__RUNTIME__* overrides apply
    if deployment_id is None:
        return None
    with get_client(sync_client=True) as client:
        later = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                id=FlowRunFilterId(not_any_=[flow_run.id]),
                start_time=FlowRunFilterStartTime(after_=flow_run.scheduled_start_time),
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=WORKING_STATES))),
            limit=1)
    return later[0].name if later else None


@contextlib.contextmanager
def exclusive(settings: Settings, kind: str, lease_s: float, scheduled: bool = False) -> Iterator[str | None]:
    """Hold the log store lease of this update kind for the block; yields None when it does, else why this run
    should skip: another run holds the lease, or (a `scheduled` kind, whose runs are slots of one schedule, not
    requests with their own parameters) a later run of the deployment already did this slot's work.

    `lease_s` must exceed the longest run of the kind: it only matters when a process died without releasing,
    and then it is how long the kind stays blocked, unless that process is known gone (`holder_is_dead`).

    Deployment concurrency limits only cover runs the Prefect server schedules; this lease also covers direct
    runs (`drn flows run`, each with its own temporary server) and runs from other workers."""
    later = superseded() if scheduled else None
    if later is not None:
        yield f"run {later} started after this run's slot and did its work: the update runs once per late start"
        return
    logs = log_store(settings)
    holder = f"{flow_run.get_id() or 'direct'}:{_host()}:{os.getpid()}:{uuid.uuid4().hex}"
    held = logs.acquire(f"flow:{kind}", holder, lease_s)
    if not held:
        # A run killed without releasing (SIGKILL, a lost machine) would block its kind until the lease lapses
        # (hours for a major update); one whose process is known gone on this host is taken over at once.
        other = logs.lease_holder(f"flow:{kind}")
        if other is not None and holder_is_dead(other):
            held = logs.acquire(f"flow:{kind}", holder, lease_s, replacing=other)
    try:
        yield None if held else f"another {kind} run is running"
    finally:
        if held:
            logs.release(f"flow:{kind}", holder)


def _host() -> str:
    """Where a pid means one process: the host name and, on Linux, the pid namespace (containers sharing a host
    name, as with host networking, each number their own processes)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


def holder_is_dead(holder: str) -> bool:
    """Whether a lease holder (`<flow run>:<host>:<pid>:<nonce>`) is a process of this host that no longer runs.
    Another host's holder, or one written by an earlier release, is never judged dead: its lease lapses instead. A
    reused pid reads as alive, which only means waiting for the lapse."""
    parts = holder.split(":")
    if len(parts) != 4 or parts[1] != _host() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        pass
    return False


# ----------------------------------------------------------------------------------------------------- reports
def report(kind: str, decision: str, why: str, details: Mapping[str, Any]) -> dict:
    """Publish the run's decision as a markdown artifact (key `<kind>-decision`, so the UI keeps its history)
    and return it as the flow's result."""
    print(f"{kind}: {decision}: {why}")  # the run's log states the decision in one line (log_prints)
    rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in details.items())
    create_markdown_artifact(
        markdown=f"# {kind}: {decision}\n\n{why}\n\n| | |\n| --- | --- |\n{rows}\n",
        key=f"{kind}-decision", description=f"{kind}: {decision}")
    return {"flow": kind, "decision": decision, "why": why, **details}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")
