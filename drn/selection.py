"""Offline training chosen honestly: the step size and the number of passes are picked on a validation split
inside the training window (its last days), then the network is trained on the whole window with that choice.

The days a model is reported on (`drn evaluate --test`, the offline flow's test days, the benchmark's live world)
take no part in any choice. Validation features are computed once (by the same replay serving's state follows)
and every tried network is scored on them, so a wider grid costs training passes, not feature replays.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np

from drn.evaluate import DAY, time_split
from drn.features import FeatureBatch, FeatureState, record, replay
from drn.metrics import RankingMetrics
from drn.mind import Dataset
from drn.model import DuelingQNetwork, NetworkConfig, build_network
from drn.training import TrainConfig, Trainer

LEARNING_RATES = (3e-3, 1e-2, 3e-2)  # Adam step sizes tried: around the value that did well on earlier logs
MAX_EPOCHS = 4  # passes tried per step size; the pass count with the best validation metric is kept
VALIDATION_DAYS = 1  # the last calendar days of the training window that choose
SELECTION_METRIC = "auc"  # MIND's headline metric, per impression then averaged


@dataclass(frozen=True)
class Choice:
    """What validation chose, and every figure it chose from (reported with the model)."""

    learning_rate: float
    epochs: int
    validation: dict[str, float]  # the chosen setting's metrics on the validation days
    tried: tuple[dict, ...]  # {"learning_rate", "epochs", metric} per setting tried
    validation_impressions: int

    def to_dict(self) -> dict:
        return asdict(self)


def _validation_batches(fit: Dataset, valid: Dataset) -> list[tuple[tuple[int, ...], FeatureBatch]]:
    """The validation impressions' features, computed once after warming the state on the fit days."""
    state = FeatureState({**fit.news, **valid.news})
    for impression in fit.impressions:
        record(impression, state)
    return [(s.impression.labels, s.batch) for s in replay(valid.impressions, state) if s.impression.labels]


def _score(network: DuelingQNetwork, batches: Sequence[tuple[tuple[int, ...], FeatureBatch]]) -> dict[str, float]:
    metrics = RankingMetrics()
    for labels, batch in batches:
        metrics.add(labels, network.score(batch))
    return {k: float(v) for k, v in metrics.result().items()}


def choose(train: Dataset, config: TrainConfig, seed: int, *, learning_rates: Sequence[float] = LEARNING_RATES,
           max_epochs: int = MAX_EPOCHS, validation_days: int = VALIDATION_DAYS,
           network: NetworkConfig = NetworkConfig(), progress: Callable[[str], None] | None = None) -> Choice:
    """Train on the training window less its last `validation_days` days, once per step size for up to
    `max_epochs` passes, and keep the (step size, passes) with the best validation metric."""
    if not learning_rates or max_epochs < 1:
        raise ValueError("choose needs at least one learning rate and max_epochs >= 1")
    fit, valid = time_split(train, validation_days)
    batches = _validation_batches(fit, valid)
    if not batches:
        raise ValueError(f"the last {validation_days} validation days hold no labelled impression")
    tried: list[dict] = []
    for lr in learning_rates:
        trainer = Trainer(build_network(network, seed=seed), replace(config, learning_rate=lr, epochs=1, seed=seed))
        for epoch in range(1, max_epochs + 1):
            trainer.fit(fit.impressions, fit.news)
            tried.append({"learning_rate": lr, "epochs": epoch, **_score(trainer.network, batches)})
            if progress:
                progress(f"validation: lr {lr:g}, {epoch} passes, {SELECTION_METRIC} "
                         f"{tried[-1][SELECTION_METRIC]:.4f}")
    best = max(tried, key=lambda row: (_finite(row[SELECTION_METRIC]), -row["epochs"]))
    validation = {k: v for k, v in best.items() if k not in ("learning_rate", "epochs")}
    return Choice(best["learning_rate"], best["epochs"], validation, tuple(tried), len(batches))


def _finite(value: float) -> float:
    return value if np.isfinite(value) else -np.inf


def spans_validation(train: Dataset, validation_days: int = VALIDATION_DAYS) -> bool:
    """Whether the window holds more calendar days than the validation split takes (so something is left to fit)."""
    days = {int(imp.time // DAY) for imp in train.impressions}
    return len(days) > validation_days


def train_offline(train: Dataset, config: TrainConfig, seed: int, *, choose_settings: bool = True,
                  network: NetworkConfig = NetworkConfig(), progress: Callable[[str], None] | None = None,
                  **choose_options) -> tuple[Trainer, dict]:
    """A fresh network trained on the whole window: with the step size and passes chosen on its last days when
    `choose_settings` and the window is long enough, else with `config` as given. The summary says which."""
    validation_days = choose_options.get("validation_days", VALIDATION_DAYS)
    choice = None
    if choose_settings and spans_validation(train, validation_days):
        choice = choose(train, config, seed, network=network, progress=progress, **choose_options)
        config = replace(config, learning_rate=choice.learning_rate, epochs=choice.epochs)
    trainer = Trainer(build_network(network, seed=seed), replace(config, seed=seed))
    summary = trainer.fit(train.impressions, train.news)
    if progress:
        progress(f"trained on the whole window: lr {config.learning_rate:g}, {config.epochs} passes")
    summary.update(learning_rate=config.learning_rate, epochs=config.epochs)
    if choice is not None:
        summary.update({f"validation_{k}": v for k, v in choice.validation.items()}, choice=choice.to_dict())
    else:
        summary["choice"] = ("configured" if not choose_settings else
                             f"configured: the window spans no more than {validation_days} validation day(s)")
    return trainer, summary
