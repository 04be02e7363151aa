"""Serving-time scoring: several dueling Q-networks of one shape (W and the round's W~) score a request's candidates
together, in numpy, with the state's share of the advantage tower computed once per request.

Why not the torch forward pass: A's first layer reads [state, candidate] for every candidate, and 899 of its 1,110
inputs are the state, the same for all 50 candidates. Splitting that layer, W1 [s; a] = W1_s s + W1_a a, computes
the state product once; stacking the networks' layers side by side scores W and W~ in the same few matrix products;
and numpy's per-call overhead is a fraction of torch's at these sizes. The arithmetic is the network's own (up to
float32 rounding from the changed summation order); tests/test_scoring.py checks it against `DuelingQNetwork`.
The state's zeros are skipped too: a profile touches a few of its hashed buckets, so most of the 899 are zero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from drn.features import ITEM_STATIC, FeatureBatch
from drn.model import Aggregation, DuelingQNetwork


def _linears(tower: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) of each Linear layer, as row-major float32 numpy arrays."""
    return [(np.ascontiguousarray(m.weight.detach().numpy(), dtype=np.float32),
             m.bias.detach().numpy().astype(np.float32)) for m in tower if isinstance(m, nn.Linear)]


class StackedScorer:
    """Q of every candidate under each of `networks` (same NetworkConfig): `score(batch)` -> (networks, candidates).

    Activations are held unit by candidate, (networks, units, candidates), so every product is weight @ inputs: on
    the slowest machine measured, the advantage towers' whole first layer as (2 x 128, 211) @ (211, 50) took less
    than half the time of (50, 211) @ (211, 256); on faster ones the two tied or this order was ~15 us slower
    (benchmarks/serving_bench.py prints both; serving/README.md has the figures). Per request, only the 34 inputs
    that are not the item's description go through it (see `_advantage_first`).

    Not thread-safe: `score` keeps per-item products (serving scores on its event loop only)."""

    def __init__(self, networks: Sequence[DuelingQNetwork]):
        configs = {network.config for network in networks}
        if len(configs) != 1:
            raise ValueError(f"networks scored together must share one config, got {len(configs)}")
        self.config = configs.pop()
        self.count = len(networks)
        state_dim = self.config.state_dim
        value = [_linears(network.value) for network in networks]
        advantage = [_linears(network.advantage) for network in networks]
        value_first, advantage_first = [layers[0] for layers in value], [layers[0] for layers in advantage]
        # First layers: every network's value layer and the state columns of its advantage layer in one matrix (as
        # (state inputs, units), so the rows of the state's non-zero inputs are contiguous), one product with the
        # state serving them all; the candidate columns of the advantage layers in another, (units, action inputs).
        self._state_first = np.ascontiguousarray(np.concatenate(
            [w for w, _ in value_first] + [w[:, :state_dim] for w, _ in advantage_first], axis=0).T)
        self._state_bias = np.concatenate([b for _, b in value_first] + [b for _, b in advantage_first])
        self._action_first = np.ascontiguousarray(np.concatenate([w[:, state_dim:] for w, _ in advantage_first]))
        # ...and that, split: the item's static columns (ITEM_STATIC, leading the row) and the rest. An item's
        # product with the static part is kept per item-table row, with the stamp of the description it came from.
        if ITEM_STATIC.start != 0:
            raise ValueError("the item's static columns must lead the action row")
        self._static_first = np.ascontiguousarray(self._action_first[:, ITEM_STATIC].T)  # (static inputs, units)
        self._dynamic_first = np.ascontiguousarray(self._action_first[:, ITEM_STATIC.stop:])  # (units, the rest)
        self._per_item = np.zeros((0, self._action_first.shape[0]), dtype=np.float32)  # (item rows, units)
        self._per_item_stamps = np.zeros(0, dtype=np.int64)  # 0: nothing kept (stamps start at 1)
        self._first_width = value_first[0][1].shape[0]
        # Later layers, stacked per network: (networks, out, in) weights and (networks, out, 1) biases.
        self._value_rest = _stack_layers([layers[1:] for layers in value])
        self._activate_first = bool(self._value_rest)  # ReLU after the first layer unless it is also the last
        self._advantage_rest = _stack_layers([layers[1:] for layers in advantage])

    def score(self, batch: FeatureBatch) -> np.ndarray:
        count, width, n = self.count, self._first_width, len(batch.candidates)
        # The state is mostly zeros (hashed one-hot profiles): only the rows of its non-zero inputs are read, instead
        # of streaming the whole first-layer matrix through the cache on every request.
        active = np.flatnonzero(batch.state)
        shared = batch.state[active] @ self._state_first[active] + self._state_bias  # (2 * networks * width,)
        value = shared[: count * width].reshape(count, width, 1)
        advantage = self._advantage_first(batch).reshape(count, width, n)
        advantage += shared[count * width:].reshape(count, width, 1)
        value = _forward(value, self._value_rest, activate_first=self._activate_first)[:, 0, :]  # (networks, 1)
        advantage = _forward(advantage, self._advantage_rest, activate_first=self._activate_first)[:, 0, :]
        if self.config.aggregation is Aggregation.MEAN:
            advantage = advantage - advantage.mean(axis=1, keepdims=True)
        return value + advantage

    def _advantage_first(self, batch: FeatureBatch) -> np.ndarray:
        """(units, candidates): the advantage towers' first layer on the candidates' columns. Most of those columns are
        the item's description, the same request after request: its product is taken once per item (and again when
        the description changes), and only the rest of the row is multiplied per request."""
        rows, stamps = batch.item_rows, batch.item_stamps
        if rows is None:
            return self._action_first @ batch.action.T
        if len(rows) and rows.max() >= len(self._per_item_stamps):
            self._grow(int(rows.max()) + 1)
        stale = self._per_item_stamps[rows] != stamps
        if stale.any():
            self._per_item[rows[stale]] = batch.action[stale, ITEM_STATIC] @ self._static_first
            self._per_item_stamps[rows[stale]] = stamps[stale]
        return self._per_item[rows].T + self._dynamic_first @ batch.action[:, ITEM_STATIC.stop:].T

    def _grow(self, rows: int) -> None:
        capacity = max(rows, 2 * len(self._per_item_stamps), 1024)
        self._per_item = np.concatenate([self._per_item, np.zeros((capacity - len(self._per_item),
                                                                   self._per_item.shape[1]), dtype=np.float32)])
        self._per_item_stamps = np.concatenate([self._per_item_stamps,
                                                np.zeros(capacity - len(self._per_item_stamps), dtype=np.int64)])


def _stack_layers(per_network: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[tuple[np.ndarray, np.ndarray]]:
    stacked = []
    for depth in range(len(per_network[0])):
        weights, biases = zip(*(layers[depth] for layers in per_network))
        stacked.append((np.stack(weights), np.stack(biases)[:, :, None]))
    return stacked


def _forward(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], activate_first: bool) -> np.ndarray:
    """ReLU on the first layer's output (when more layers follow), then the stacked layers, ReLU between them;
    x is (networks, units, candidates)."""
    if activate_first:
        x = np.maximum(x, 0.0)
    for i, (weight, bias) in enumerate(layers):
        x = weight @ x + bias
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x
