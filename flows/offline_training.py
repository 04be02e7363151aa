"""Offline training: a MIND folder -> imported into the log store -> a freshly trained DRN -> registered (kind offline)
-> promoted when nothing is promoted yet or when it is at least as good as the promoted model on the same test days.

The import comes first: serving rebuilds its feature state from the log store alone, so the folder's impressions,
clicks and histories must be there before a version trained on them can go live (and a failed training leaves only
logs that importing again would not add to)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA
from drn.mind import iter_behaviors, read_news
from drn.progress import Progress
from drn.training import TrainConfig
from flows import common

KIND = "offline-training"
LEASE_S = 12 * 3600.0  # longer than training on a full MIND log


@common.io_task
def import_logs(settings: Settings, data_dir: str) -> dict[str, int]:
    """Put the folder's news metadata and impressions (with their clicks and users' histories) into the log store:
    serving's feature state and later major updates are rebuilt from it. Safe to retry: the import is idempotent.
    Returns the news items written and the impressions new to the store."""
    folder, logs = Path(data_dir), common.log_store(settings)
    news_file = folder / "news.tsv"
    news = logs.log_news(read_news(news_file).values()) if news_file.is_file() else 0
    added = logs.import_impressions(iter_behaviors(folder / "behaviors.tsv"), progress=Progress("impressions imported"))
    print(f"imported {added} new impressions and {news} news items from {folder}")
    return {"news_items": news, "imported_impressions": added}


@common.compute_task
def train(data_dir: str, config: TrainConfig, seed: int, promoted, test_days: int,
          choose_settings: bool) -> lifecycle.TrainedModel:
    return lifecycle.offline_train(data_dir, config, seed, promoted, test_days, choose_settings)


@flow(name=KIND, log_prints=True)
def offline_training(data_dir: str, train_config: dict[str, Any] | None = None, seed: int = 0,
                     test_days: int = lifecycle.TEST_DAYS, tolerance: float = lifecycle.TOLERANCE,
                     alpha: float = ALPHA, choose_settings: bool = True) -> dict:
    """Train on `data_dir` (MIND format) except its last `test_days` days; `train_config` overrides TrainConfig
    fields; `tolerance`: how much worse than the promoted model it may be and still be promoted; `alpha`: the
    exploration radius of the round opened for a promoted version; `choose_settings`: pick the step size and the
    passes on the last day before the test days (off: train_config's are used as given)."""
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S) as busy:
        if busy:
            return common.skipped(KIND, busy)
        config = TrainConfig(**(train_config or {}))
        imported = import_logs(settings, data_dir)
        current = common.served_model(settings)
        promoted_info, promoted = current if current else (None, None)
        candidate = train(data_dir, config, seed, promoted, test_days, choose_settings)
        chosen = chosen_settings(candidate.training)
        verdict = lifecycle.gate(candidate.metrics, candidate.baseline, tolerance)
        version = common.register(
            settings, candidate.bundle, kind="offline", parent=None, data_window=candidate.data_window,
            params={"train": config.to_dict(), "seed": seed, "data_dir": data_dir, "test_days": test_days,
                    "gate_tolerance": tolerance, "chosen": chosen},
            metrics=common.candidate_metrics(candidate), series=common.candidate_series(candidate),
            tags={"compared_with": promoted_info.version if promoted_info else "none",
                  **common.gate_tags(candidate, verdict, promoted_info.version if promoted_info else None)},
            description=f"offline training on {data_dir}")
        previous = promoted_info.version if promoted_info else None
        decision, why = common.promote_if_passed(settings, version, verdict, previous, alpha)
        return common.report(KIND, decision, why, {"version": version, "previous": previous, **imported,
                                                   **chosen, **candidate.metrics})


def chosen_settings(training: dict) -> dict:
    """The settings offline training used and how they were set (chosen on validation, or as configured)."""
    how = "validation" if isinstance(training.get("choice"), dict) else training.get("choice")
    return {"learning_rate": training["learning_rate"], "epochs": training["epochs"], "settings_from": how,
            **{k: v for k, v in training.items() if k.startswith("validation_")}}
