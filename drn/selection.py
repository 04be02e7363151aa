"""Offline training chosen honestly: the step size and the number of passes are picked on a validation split
inside the training window (its last days), then the network is trained on the whole window with that choice.

The days a model is reported on (`drn evaluate --test`, the offline flow's test days, the benchmark's live world)
take no part in any choice. Validation features are computed once (by the same replay serving's state follows)
and every tried network is scored on them, so a wider grid costs training passes, not feature replays.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np

from drn.evaluate import DAY, time_split
from drn.features import FeatureBatch, FeatureState, record, replay
from drn.metrics import RankingMetrics
from drn.mind import Dataset
from drn.model import DuelingQNetwork, NetworkConfig, build_network
from drn.training import TrainConfig, Trainer

LEARNING_RATES = (1e-3, 3e-3)  # Adam step sizes tried: those a click classifier of the same network prefers
#   (1e-2 did best only while a transition was drawn 8 times per pass; 3e-2 can kill every ReLU)
MAX_EPOCHS = 6  # passes tried per step size; the pass count with the best validation metric is kept (a pass steps
#   about once per transition, so the click classifier's 4-6 passes are needed)
VALIDATION_DAYS = 1  # the last calendar days of the training window that choose
SELECTION_METRIC = "auc"  # MIND's headline metric, per impression then averaged
RETRAIN_SLACK = 0.02  # the whole-window retrain, which saw the validation days, must score at least the chosen
#   setting's validation metric less this on them; below, the retrain went wrong and the validated network is kept


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


def score_validation(network: DuelingQNetwork | Sequence[DuelingQNetwork],
                     batches: Sequence[tuple[tuple[int, ...], FeatureBatch]]) -> dict[str, float]:
    """The ranking metrics of one network, or of several averaged (an ensemble), on validation batches."""
    networks = [network] if isinstance(network, DuelingQNetwork) else list(network)
    metrics = RankingMetrics()
    for labels, batch in batches:
        metrics.add(labels, np.mean([n.score(batch) for n in networks], axis=0))
    return {k: float(v) for k, v in metrics.result().items()}


def choose(train: Dataset, config: TrainConfig, seed: int, *, learning_rates: Sequence[float] = LEARNING_RATES,
           max_epochs: int = MAX_EPOCHS, validation_days: int = VALIDATION_DAYS,
           network: NetworkConfig = NetworkConfig(), progress: Callable[[str], None] | None = None) -> Choice:
    """Train on the training window less its last `validation_days` days, once per step size for up to
    `max_epochs` passes, and keep the (step size, passes) with the best validation metric."""
    return _choose(train, config, seed, learning_rates, max_epochs, validation_days, network, progress)[0]


def validated_network(train: Dataset, config: TrainConfig, seed: int, *, network: NetworkConfig = NetworkConfig(),
                      progress: Callable[[str], None] | None = None, **choose_options,
                      ) -> tuple[Choice, DuelingQNetwork, list[tuple[tuple[int, ...], FeatureBatch]]]:
    """`choose`, also returning the network it chose (trained on the fit days only, so it can still be scored on
    the validation days) and those days' labelled batches: for comparing training variants on validation alone."""
    options = _options(choose_options)
    choice, batches, weights = _choose(train, config, seed, options["learning_rates"], options["max_epochs"],
                                       options["validation_days"], network, progress)
    chosen = build_network(network, seed=seed)
    chosen.load_state_dict(weights)
    return choice, chosen, batches


def _choose(train: Dataset, config: TrainConfig, seed: int, learning_rates: Sequence[float], max_epochs: int,
            validation_days: int, network: NetworkConfig, progress: Callable[[str], None] | None,
            ) -> tuple[Choice, list, dict]:
    """`choose`, also returning the validation batches and the chosen network's weights (for the retrain check)."""
    if not learning_rates or max_epochs < 1:
        raise ValueError("choose needs at least one learning rate and max_epochs >= 1")
    fit, valid = time_split(train, validation_days)
    batches = _validation_batches(fit, valid)
    if not batches:
        raise ValueError(f"the last {validation_days} validation days hold no labelled impression")
    tried: list[dict] = []
    best, best_weights = None, {}
    for lr in learning_rates:
        trainer = Trainer(build_network(network, seed=seed), replace(config, learning_rate=lr, epochs=1, seed=seed))
        for epoch in range(1, max_epochs + 1):
            trainer.fit(fit.impressions, fit.news)
            tried.append({"learning_rate": lr, "epochs": epoch, **score_validation(trainer.network, batches)})
            if best is None or _rank(tried[-1]) > _rank(best):  # the best so far, and its weights for the retrain check
                best, best_weights = tried[-1], copy.deepcopy(trainer.network.state_dict())
            if progress:
                progress(f"validation: lr {lr:g}, {epoch} passes, {SELECTION_METRIC} "
                         f"{tried[-1][SELECTION_METRIC]:.4f}")
    validation = {k: v for k, v in best.items() if k not in ("learning_rate", "epochs")}
    return Choice(best["learning_rate"], best["epochs"], validation, tuple(tried), len(batches)), batches, best_weights


def _options(given: dict) -> dict:
    """The grid `_choose` takes: the module's defaults, overridden by what the caller gave."""
    return {"learning_rates": LEARNING_RATES, "max_epochs": MAX_EPOCHS, "validation_days": VALIDATION_DAYS, **given}


def _rank(row: dict) -> tuple[float, int]:
    """Better validation metric first; among equals, fewer passes."""
    return _finite(row[SELECTION_METRIC]), -row["epochs"]


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
    `choose_settings` and the window is long enough, else with `config` as given. The summary says which.

    The retrain is checked on the validation days it has now seen; one that scores below the choice less
    RETRAIN_SLACK went wrong (a diverged or dead network), and the network validation chose is kept instead."""
    options = _options(choose_options)
    if not (choose_settings and spans_validation(train, options["validation_days"])):
        trainer = Trainer(build_network(network, seed=seed), replace(config, seed=seed))
        summary = trainer.fit(train.impressions, train.news)
        summary.update(learning_rate=config.learning_rate, epochs=config.epochs, choice=(
            "configured" if not choose_settings else
            f"configured: the window spans no more than {options['validation_days']} validation day(s)"))
        return trainer, summary
    choice, batches, chosen_weights = _choose(train, config, seed, options["learning_rates"], options["max_epochs"],
                                              options["validation_days"], network, progress)
    config = replace(config, learning_rate=choice.learning_rate, epochs=choice.epochs, seed=seed)
    trainer = Trainer(build_network(network, seed=seed), config)
    summary = trainer.fit(train.impressions, train.news)
    retrained = score_validation(trainer.network, batches)[SELECTION_METRIC]
    kept = "retrained on the whole window"
    if not _finite(retrained) >= choice.validation[SELECTION_METRIC] - RETRAIN_SLACK:
        trainer.network.load_state_dict(chosen_weights)
        kept = (f"the validated network (the whole-window retrain scored {SELECTION_METRIC} {retrained:.4f} on the "
                f"validation days, below the choice's {choice.validation[SELECTION_METRIC]:.4f} - {RETRAIN_SLACK})")
    if progress:
        progress(f"lr {config.learning_rate:g}, {config.epochs} passes: {kept}")
    summary.update({f"validation_{k}": v for k, v in choice.validation.items()}, learning_rate=config.learning_rate,
                   epochs=config.epochs, choice={**choice.to_dict(), "kept": kept})
    return trainer, summary
