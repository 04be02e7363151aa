"""DRN as a policy: the dueling double-DQN scorer behind the common `Policy` interface."""
from __future__ import annotations

import numpy as np

from drn.features import FeatureBatch
from drn.mind import Dataset
from drn.model import DuelingQNetwork, NetworkConfig, build_network
from drn.policy import Policy
from drn.training import TrainConfig, train


class DRNPolicy(Policy):
    """Greedy ranking by Q(s, a); `fit` runs offline double-DQN training on logs."""

    name = "drn"

    def __init__(self, network: DuelingQNetwork | None = None, train_config: TrainConfig = TrainConfig(),
                 progress=None):
        self.network = network or build_network(NetworkConfig(), seed=train_config.seed)
        self.train_config, self.progress = train_config, progress
        self.training_summary: dict = {}

    def scores(self, batch: FeatureBatch) -> np.ndarray:
        return self.network.score(batch)

    def fit(self, train_data: Dataset) -> None:
        self.training_summary = train(self.network, train_data, self.train_config, self.progress)
