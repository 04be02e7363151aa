"""Major update (every T_R): replay every impression logged since the data window of the promoted version's last
window-trained ancestor, train warm-started from the promoted weights, evaluate candidate and promoted model on
the newest logs, register (kind major) and promote only when the candidate passes the gate."""
from __future__ import annotations

from typing import Any

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.logstore import LoggedImpression
from drn.mind import NewsItem
from drn.training import TrainConfig
from flows import common

KIND = "major-update"
LEASE_S = 4 * 3600.0  # longer than any replay of the logs; a dead run blocks the next for at most this


@common.io_task
def replay_logs(settings: Settings, version: str) -> tuple[float | None, list[LoggedImpression], dict[str, NewsItem]]:
    """(replay start, the impressions logged since, the news metadata they refer to). Logs imported for an offline
    version lie inside its data window, before the start: they are not replayed again as new feedback."""
    versions = {v.version: v for v in common.registry(settings).versions()}
    start = lifecycle.replay_start(versions, version)
    logs = common.log_store(settings)
    return start, list(logs.window(start)), logs.news()


@common.compute_task
def train(promoted, logged: list[LoggedImpression], news: dict[str, NewsItem], config: TrainConfig,
          holdout_fraction: float) -> lifecycle.Candidate:
    return lifecycle.major_update(promoted, logged, news, config, holdout_fraction)


@flow(name=KIND, log_prints=True)
def major_update(train_config: dict[str, Any] | None = None, holdout_fraction: float = lifecycle.HOLDOUT_FRACTION,
                 tolerance: float = lifecycle.TOLERANCE, min_impressions: int = lifecycle.MIN_REPLAY_IMPRESSIONS,
                 alpha: float = ALPHA) -> dict:
    """`train_config` overrides TrainConfig fields; `holdout_fraction`: newest share of the logs that evaluates;
    `tolerance`: the gate's allowance; `min_impressions`: fewer new logs and nothing is trained."""
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S) as held:
        if not held:
            return common.report(KIND, "skipped", "another major update is running", {})
        current = common.served(settings)
        if current is None:
            return common.report(KIND, "nothing promoted", "no version is served: nothing to warm-start from", {})
        info, promoted = current
        start, logged, news = replay_logs(settings, info.version)
        if len(logged) < min_impressions:
            return common.report(KIND, "too few logs", f"{len(logged)} impressions since {start}, "
                                 f"fewer than {min_impressions}", {"version": info.version})
        config = TrainConfig(**(train_config or {}))
        candidate = train(promoted, logged, news, config, holdout_fraction)
        verdict = lifecycle.gate(candidate.metrics, candidate.baseline, tolerance)
        version = common.register(
            settings, candidate.bundle, kind="major", parent=info.version, data_window=candidate.data_window,
            params={"train": config.to_dict(), "holdout_fraction": holdout_fraction, "gate_tolerance": tolerance,
                    "replay_start": start},
            metrics=common.candidate_metrics(candidate), tags={"gate": verdict.reason},
            description=f"major update of v{info.version} on {len(logged)} logged impressions")
        decision, why = common.promote_if_passed(settings, version, verdict, info.version, alpha)
        return common.report(KIND, decision, why, {"version": version, "parent": info.version,
                                                   **candidate.metrics, "replayed_impressions": len(logged)})
