"""The demo's conversation with the running parts over HTTP: the latest update decision, the flow runs and a
deployment's parameters through the Prefect API; versions and promotions from the registry (the MLflow server).

The Prefect server answers 503 while its SQLite database is locked by a write of its own (the scheduler, a flow
run's state change); such calls are retried."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any, Mapping

import httpx

DECISION_KEYS = ["minor-update-decision", "major-update-decision", "offline-training-decision", "rollback-decision"]
PAGE = 200  # flow runs per Prefect API call
ATTEMPTS = 5  # tries of a Prefect API call answered 503 (database locked) or not answered
RETRY_DELAY_S = 1.0
NOT_SCHEDULED = {"flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED"]}}}}


async def latest_decision(client: httpx.AsyncClient, prefect_api: str) -> str | None:
    """The newest decision a flow published (its markdown artifact's description), e.g. "minor-update: promoted"."""
    body = {"artifacts": {"key": {"any_": DECISION_KEYS}}, "sort": "CREATED_DESC", "limit": 1}
    reply = await client.post(f"{prefect_api}/artifacts/filter", json=body)
    reply.raise_for_status()
    found = reply.json()
    return found[0]["description"] if found else None


def prefect_call(client: httpx.Client, method: str, path: str, body: dict | None = None) -> Any:
    """One Prefect API call, retried on 503 and transport errors; the decoded JSON answer (None when empty)."""
    for attempt in range(ATTEMPTS):
        try:
            reply = client.request(method, path, json=body)
            if reply.status_code != 503 or attempt == ATTEMPTS - 1:
                reply.raise_for_status()
                return reply.json() if reply.content else None
        except httpx.TransportError:
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(RETRY_DELAY_S)


def flow_run_states(prefect_api: str) -> dict[str, dict[str, int]]:
    """Flow runs that started or were cancelled, per flow name and state name (Completed, Cancelled: a collision
    skipped, Failed...); runs still scheduled for later are left out."""
    with httpx.Client(base_url=prefect_api, timeout=30.0) as client:
        flows = {f["id"]: f["name"] for f in prefect_call(client, "POST", "/flows/filter", {})}
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        offset = 0
        while True:
            page = prefect_call(client, "POST", "/flow_runs/filter", {"limit": PAGE, "offset": offset, **NOT_SCHEDULED})
            for run in page:
                counts[flows.get(run["flow_id"], run["flow_id"])][(run.get("state") or {}).get("name", "none")] += 1
            if len(page) < PAGE:
                return {flow: dict(states) for flow, states in counts.items()}
            offset += PAGE


def registry_story(mlflow_url: str) -> tuple[list[dict], list[dict]]:
    """(versions: version, kind, parent, stage, created_at; promotion history: at, action, version, kind, who, why).

    Uses drn's registry adapter against the MLflow server (imports MLflow: seconds, once at the end)."""
    from drn.config import Settings
    from drn.registry import Registry
    registry = Registry(mlflow_url, Settings.from_env().model_name)
    versions = [{"version": v.version, "kind": v.kind, "parent": v.parent, "stage": v.stage,
                 "created_at": v.created_at} for v in registry.versions()]
    kinds = {v["version"]: v["kind"] for v in versions}
    history = [{**record, "kind": kinds.get(record["version"], "unknown")} for record in registry.history()]
    return versions, history


def round_story(stores: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Rounds by kind (exploration / gate) and outcome (a duel's winner, a learner's verdict, "superseded" when a
    promotion or rollback closed it unscored, "open"), from the log store of the stack whose DRN_HOME and store
    URLs `stores` holds (StackSettings.store_environment)."""
    from drn.config import Settings
    logs = Settings.from_env({**os.environ, **stores}).open_log_store()
    try:
        counts: dict[str, dict[str, int]] = {}
        for round_ in logs.rounds():
            kind = "gate" if (round_.recipe or {}).get("challenger") else "exploration"
            outcome = (round_.outcome or {}).get("winner") or ("open" if round_.is_open else "superseded")
            by_outcome = counts.setdefault(kind, {})
            by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        return counts
    finally:
        logs.close()
