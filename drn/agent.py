"""DRN as a policy: the dueling double-DQN scorer behind the common `Policy` interface."""
from __future__ import annotations

from typing import Callable

import numpy as np

from drn.features import FeatureBatch
from drn.mind import Dataset
from drn.model import DuelingQNetwork, NetworkConfig, build_network
from drn.policy import Policy
from drn.selection import train_offline
from drn.training import TrainConfig


class DRNPolicy(Policy):
    """Greedy ranking by Q(s, a); `fit` trains a fresh network offline by double DQN on logs, with the step size
    and passes chosen on the logs' last day (`drn.selection`) unless `choose_settings` is off."""

    name = "drn"

    def __init__(self, network: DuelingQNetwork | None = None, train_config: TrainConfig = TrainConfig(),
                 progress: Callable[[str], None] | None = None, choose_settings: bool = True):
        self.network = network or build_network(NetworkConfig(), seed=train_config.seed)
        self.train_config, self.progress, self.choose_settings = train_config, progress, choose_settings
        self.training_summary: dict = {}

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self.network.score(batch)

    def fit(self, train_data: Dataset) -> None:
        trainer, self.training_summary = train_offline(train_data, self.train_config, self.train_config.seed,
                                                       choose_settings=self.choose_settings, progress=self.progress)
        self.network = trainer.network
