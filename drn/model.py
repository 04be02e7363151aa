"""The dueling Q-network of DRN: Q(s, a) = V(s) + A(s, a).

V reads the state (user + context); A reads the state and the candidate (news, user-news, freshness). A request's
candidates are scored in one batched forward pass. The network is rebuilt from a JSON-able `NetworkConfig`, so a
model version is plain weights plus that config (no pickled code).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np
import threadpoolctl
import torch
from torch import nn
from torch.nn import functional as F

from drn.features import SCHEMA, FeatureBatch
from drn.options import option

HIDDEN = (128, 64)  # two hidden layers per tower, as in the paper's figure (it gives no widths)


class Aggregation(StrEnum):
    """How V and A make Q."""

    SUM = "sum"  # the paper's V + A
    MEAN = "mean"  # V + A - mean(A) over the request's candidates (Wang et al. 2016)


@dataclass(frozen=True)
class NetworkConfig:
    state_dim: int = SCHEMA.state_dim
    action_dim: int = SCHEMA.action_dim
    hidden: tuple[int, ...] = HIDDEN
    aggregation: Aggregation = Aggregation.SUM

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregation", option(Aggregation, self.aggregation, "aggregation"))

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        return cls(int(data["state_dim"]), int(data["action_dim"]), tuple(int(h) for h in data["hidden"]),
                   str(data["aggregation"]))


def _tower(inputs: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


class DuelingQNetwork(nn.Module):
    def __init__(self, config: NetworkConfig = NetworkConfig()):
        super().__init__()
        self.config = config
        self.value = _tower(config.state_dim, config.hidden)
        self.advantage = _tower(config.state_dim + config.action_dim, config.hidden)

    def forward(self, state: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Q of every candidate: state (B, ds), action (B, n, da), mask (B, n) of real candidates -> (B, n)."""
        value = self.value(state)  # (B, 1)
        # A's first layer on [state, action] split in two: the state half once per request instead of once per
        # candidate (the same product, a fraction of the work, as the state is far wider than the action)
        first = self.advantage[0]
        split = self.config.state_dim
        hidden = (F.linear(state, first.weight[:, :split], first.bias).unsqueeze(1)
                  + F.linear(action, first.weight[:, split:]))
        advantage = self.advantage[1:](hidden).squeeze(-1)  # (B, n)
        if self.config.aggregation is Aggregation.MEAN:
            weights = torch.ones_like(advantage) if mask is None else mask.to(advantage.dtype)
            mean = (advantage * weights).sum(-1, keepdim=True) / weights.sum(-1, keepdim=True).clamp_min(1.0)
            advantage = advantage - mean
        return value + advantage

    @torch.no_grad()
    def score(self, batch: FeatureBatch) -> np.ndarray:
        """Q of a request's candidates in one forward pass."""
        state = torch.from_numpy(batch.state).unsqueeze(0)
        action = torch.from_numpy(batch.action).unsqueeze(0)
        return self(state, action)[0].numpy()


def build_network(config: NetworkConfig = NetworkConfig(), seed: int = 0) -> DuelingQNetwork:
    """A freshly initialised network; the seed makes initial weights reproducible."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    network = DuelingQNetwork(config)
    torch.random.set_rng_state(generator_state)
    return network


def network_from_weights(config: dict | NetworkConfig, weights: dict[str, torch.Tensor]) -> DuelingQNetwork:
    config = config if isinstance(config, NetworkConfig) else NetworkConfig.from_dict(config)
    network = DuelingQNetwork(config)
    network.load_state_dict(weights)
    network.eval()
    return network


def set_threads() -> None:
    """One thread per process for torch and for numpy's BLAS: these networks are small, benchmark processes run
    side by side, and OpenBLAS's second thread spins while it waits, costing more CPU than it saves on products
    this small."""
    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)
