"""Offline training: a MIND folder -> a freshly trained DRN -> registered (kind offline) -> promoted when nothing is
promoted yet or when it is at least as good as the promoted model on the same test days."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.mind import read_news
from drn.training import TrainConfig
from flows import common

KIND = "offline-training"
LEASE_S = 12 * 3600.0  # longer than training on a full MIND log


@common.io_task
def store_news(settings: Settings, data_dir: str) -> int:
    """Put the folder's news metadata into the log store: later major updates rebuild item features from it."""
    news_file = Path(data_dir) / "news.tsv"
    return common.log_store(settings).log_news(read_news(news_file).values()) if news_file.is_file() else 0


@common.compute_task
def train(data_dir: str, config: TrainConfig, seed: int, promoted, test_days: int) -> lifecycle.Candidate:
    return lifecycle.offline_train(data_dir, config, seed, promoted, test_days)


@flow(name=KIND, log_prints=True)
def offline_training(data_dir: str, train_config: dict[str, Any] | None = None, seed: int = 0,
                     test_days: int = lifecycle.TEST_DAYS, tolerance: float = lifecycle.TOLERANCE,
                     alpha: float = ALPHA) -> dict:
    """Train on `data_dir` (MIND format) except its last `test_days` days; `train_config` overrides TrainConfig
    fields; `tolerance`: how much worse than the promoted model it may be and still be promoted; `alpha`: the
    exploration radius of the round opened for a promoted version."""
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S) as held:
        if not held:
            return common.report(KIND, "skipped", "another offline training is running", {})
        config = TrainConfig(**(train_config or {}))
        news = store_news(settings, data_dir)
        current = common.served(settings)
        promoted_info, promoted = current if current else (None, None)
        candidate = train(data_dir, config, seed, promoted, test_days)
        verdict = lifecycle.gate(candidate.metrics, candidate.baseline, tolerance)
        version = common.register(
            settings, candidate.bundle, kind="offline", parent=None, data_window=candidate.data_window,
            params={"train": config.to_dict(), "seed": seed, "data_dir": data_dir, "test_days": test_days,
                    "gate_tolerance": tolerance},
            metrics=common.candidate_metrics(candidate),
            tags={"compared_with": promoted_info.version if promoted_info else "none", "gate": verdict.reason},
            description=f"offline training on {data_dir}")
        previous = promoted_info.version if promoted_info else None
        decision, why = common.promote_if_passed(settings, version, verdict, previous, alpha)
        return common.report(KIND, decision, why, {"version": version, "previous": previous, "news_items": news,
                                                   **candidate.metrics})
