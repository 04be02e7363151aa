"""Major update (every T_R): replay every impression logged since the data window of the promoted version's last
window-trained ancestor, train warm-started from the promoted weights, evaluate candidate and promoted model on
the newest logs (a screen: those logs were ranked by the promoted model), register (kind major), and open a gate
round in which the candidate is interleaved against the promoted model on live traffic. The minor update scores that
round and promotes the candidate unless the promoted model wins it. While a gate round runs, no other is opened."""
from __future__ import annotations

import os
from typing import Any

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.interleaving import GATE_DECISIVE
from drn.learners import RoundRecipe
from drn.features import Sample
from drn.logstore import LoggedImpression
from drn.mind import NewsItem
from drn.registry import VersionInfo
from drn.training import TrainConfig
from flows import common

KIND = "major-update"
LEASE_S = 4 * 3600.0  # longer than any replay of the logs; a dead run blocks the next for at most this


@common.io_task
def replay_logs(settings: Settings, version: str) -> tuple[float | None, list[LoggedImpression], dict[str, NewsItem],
                                                          VersionInfo | None]:
    """(replay start, the impressions logged since, the news metadata they refer to, an earlier major version of
    `version` trained on exactly these). Logs imported for an offline version lie inside its data window, before the
    start: they are not replayed again as new feedback."""
    versions = {v.version: v for v in common.registry(settings).versions()}
    start = lifecycle.replay_start(versions, version)
    logs = common.log_store(settings)
    logged = list(logs.window(start))
    return start, logged, logs.news(), lifecycle.earlier_attempt(versions, version, lifecycle.evidence(logged))


def clustered_replay(start: float | None, count: int) -> list[Sample] | None:
    """With DRN_DASK_ADDRESS set, the training share's features are built in shards on that Dask cluster
    (flows/sharded_replay, the same samples as one sequential replay); unset, None: `train` replays them itself."""
    if not os.environ.get("DRN_DASK_ADDRESS"):
        return None
    from flows.sharded_replay import sharded_replay  # imports dask: only when a cluster is named
    return sharded_replay(start, count=count)


@common.compute_task
def train(settings: Settings, promoted, start: float | None, logged: list[LoggedImpression],
          news: dict[str, NewsItem], config: TrainConfig, holdout_fraction: float,
          samples: list[Sample] | None = None) -> lifecycle.TrainedModel:
    """The candidate, trained from the feature state of everything logged before `start` (streamed, not held);
    `samples`: the training share's replay, computed on a cluster."""
    before = common.log_store(settings).window(None, start) if start is not None else ()
    return lifecycle.major_update(promoted, logged, news, config, holdout_fraction, before, samples)


@flow(name=KIND, log_prints=True)
def major_update(train_config: dict[str, Any] | None = None, holdout_fraction: float = lifecycle.HOLDOUT_FRACTION,
                 tolerance: float = lifecycle.SCREEN_TOLERANCE, min_impressions: int = lifecycle.MIN_REPLAY_IMPRESSIONS,
                 alpha: float = ALPHA, gate_decisive: int = GATE_DECISIVE) -> dict:
    """`train_config` overrides TrainConfig fields (over lifecycle.MAJOR_TRAINING's fine-tuning);
    `holdout_fraction`: newest share of the logs that evaluates;
    `tolerance`: how much worse on those logs a candidate may be and still get a gate round; `min_impressions`:
    fewer new logs and nothing is trained; `alpha`: the radius of the exploration round opened after a promotion;
    `gate_decisive`: the decisive impressions at which the candidate's gate round decides (earlier on a clear
    result)."""
    RoundRecipe(decisive=gate_decisive)  # a bad value fails here, before anything is trained
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S, scheduled=True) as busy:
        if busy:
            return common.skipped(KIND, busy)
        current = common.served_model(settings)
        if current is None:
            return common.report(KIND, "nothing promoted", "no version is served: nothing to warm-start from", {})
        info, promoted = current
        gate_round = common.gate_round(settings, info.version)
        if gate_round is not None:
            return common.skipped(KIND, f"v{gate_round.recipe['challenger']} is still in its gate round "
                                  f"{gate_round.round_id} against v{info.version}", {"version": info.version})
        start, logged, news, earlier = replay_logs(settings, info.version)
        if len(logged) < min_impressions:
            return common.report(KIND, "too few logs", f"{len(logged)} impressions since {start}, "
                                 f"fewer than {min_impressions}", {"version": info.version})
        if earlier is not None and common.GATE_VERDICT not in earlier.tags:
            # registered by a run that ended (killed) before its gate step: that step is done now, once
            own, baseline = common.stored_candidate(earlier)
            decision, why = common.challenge_if_screened(settings, earlier.version,
                                                         lifecycle.gate(own, baseline, tolerance), info.version, alpha,
                                                         gate_decisive)
            return common.report(KIND, decision, f"v{earlier.version}, registered from v{info.version} on these logs "
                                 f"by a run that ended before its gate step: {why}",
                                 {"version": earlier.version, "parent": info.version, **own,
                                  "replayed_impressions": len(logged)})
        if earlier is not None:
            return common.report(KIND, "no new evidence", f"v{earlier.version} was trained from v{info.version} on "
                                 f"the same logs ({earlier.tags[lifecycle.EVIDENCE_TAG]}): nothing registered",
                                 {"version": info.version, "earlier": earlier.version})
        config = TrainConfig(**{**lifecycle.MAJOR_TRAINING, **(train_config or {})})
        samples = clustered_replay(start, lifecycle.training_share(len(logged), holdout_fraction))
        candidate = train(settings, promoted, start, logged, news, config, holdout_fraction, samples)
        verdict = lifecycle.gate(candidate.metrics, candidate.baseline, tolerance)
        version = common.register(
            settings, candidate.bundle, kind="major", parent=info.version, data_window=candidate.data_window,
            params={"train": config.to_dict(), "holdout_fraction": holdout_fraction, "gate_tolerance": tolerance,
                    "replay_start": start},
            metrics=common.candidate_metrics(candidate), series=common.candidate_series(candidate),
            tags={lifecycle.EVIDENCE_TAG: lifecycle.evidence(logged),
                  **common.gate_tags(candidate, verdict, info.version)},
            description=f"major update of v{info.version} on {len(logged)} logged impressions")
        decision, why = common.challenge_if_screened(settings, version, verdict, info.version, alpha, gate_decisive)
        return common.report(KIND, decision, why, {"version": version, "parent": info.version,
                                                   **candidate.metrics, "replayed_impressions": len(logged)})
