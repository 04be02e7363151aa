"""The steps of the model lifecycle, one small function each; the Prefect flows (`flows/`) only orchestrate them.

- offline training: MIND logs -> time split -> train a fresh DRN -> evaluate it and the promoted model on the same
  test days (so promotion compares like with like);
- minor update: the interleaving outcome of the current exploration round -> if the explore network W~ won, one
  DBGD step W' = W + eta (W~ - W), with W~ regenerated from (W, round seed, round alpha) exactly as serving made it;
- major update: replay every logged impression since the parent's data window -> double-DQN training warm-started
  from the promoted weights -> evaluate candidate and promoted on the newest logs, which only screens out a broken
  candidate (the served model ranked those logs itself) -> a gate round (`challenge`): the candidate interleaved
  against the served model on live traffic, promoted by the next minor update only if it wins that round;
- promotion and rollback, each followed by a fresh exploration round for the version now served.

Nothing here knows Prefect; the functions at the bottom are the only ones that touch the stores (the registry and
the log store adapters), so a CLI command and a flow promote or roll back through the same code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from drn.evaluate import evaluate, time_split
from drn.exploration import ALPHA, ETA, RoundRecipe, dbgd_step, explore_weights
from drn.features import SCHEMA, FeatureSchema
from drn.interleaving import MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE, Outcome, round_outcome
from drn.logstore import LoggedImpression, LogStore, Round
from drn.mind import Dataset, Impression, NewsItem, load_dataset
from drn.model import DuelingQNetwork, network_from_weights
from drn.agent import DRNPolicy
from drn.registry import ModelBundle, Registry, VersionInfo
from drn.selection import train_offline
from drn.training import TrainConfig, train

GATE_METRICS = ("auc", "mrr", "ndcg@10")  # a candidate may be worse than the served model on none of these
TOLERANCE = 0.0  # how much worse (absolute) a candidate may be on a gate metric and still pass; < 0 demands a gain
SCREEN_TOLERANCE = 0.05  # major update: how much worse than the served model on the newest logs a candidate may be
#   and still get a gate round; those logs were ranked by the served model, so they can only screen out a broken one
TEST_DAYS = 1  # offline training: the last calendar days of the MIND log that evaluate (the paper holds out 2 weeks)
HOLDOUT_FRACTION = 0.2  # major update: the newest share of the replayed impressions that evaluates both models
MIN_REPLAY_IMPRESSIONS = 50  # major update: with fewer new impressions there is too little to learn from
REPLAY_KINDS = ("offline", "major")  # versions trained on a data window; a major update replays logs after theirs


@dataclass(frozen=True)
class Candidate:
    """A trained model version waiting to be registered, with the evidence promotion decides on."""

    bundle: ModelBundle
    metrics: dict[str, float]  # the candidate's ranking metrics on the evaluation impressions
    baseline: dict[str, float] | None  # the promoted model's metrics on the same impressions; None: nothing promoted
    data_window: tuple[float, float]  # [first, end) time of the impressions it learned from and was evaluated on
    training: dict  # the trainer's summary (steps, loss, impressions)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str


@dataclass(frozen=True)
class MinorDecision:
    """What a minor update concluded about one round: a stepped bundle only when the explore network won."""

    outcome: Outcome | None  # None when the round was not scored (it was served with another version)
    bundle: ModelBundle | None  # an exploration round's DBGD step
    reason: str
    challenger: str | None = None  # a gate round's candidate version
    promote: bool = False  # the gate round's candidate won: serve it

    def record(self) -> dict:
        """The JSON kept on the closed round (and summarised on the version it produced)."""
        scored = dataclasses.asdict(self.outcome) if self.outcome is not None else {"winner": "stale"}
        gate = {"challenger": self.challenger, "promote": self.promote} if self.challenger is not None else {}
        return {**scored, "stepped": self.bundle is not None, **gate, "reason": self.reason}


# ------------------------------------------------------------------------------------------------ model bundles
def bundle_of(network: DuelingQNetwork) -> ModelBundle:
    """The registry's form of a network: plain weights, the config that rebuilds it, the feature schema."""
    weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
    return ModelBundle(weights, network.config.to_dict(), SCHEMA.to_dict())


def network_of(bundle: ModelBundle) -> DuelingQNetwork:
    """Rebuild a bundle's network, refusing one whose features this code does not compute."""
    SCHEMA.check_compatible(FeatureSchema.from_dict(bundle.feature_schema))
    return network_from_weights(bundle.config, bundle.weights)


def data_window(impressions: Sequence[Impression]) -> tuple[float, float]:
    """Half-open [first, end) around the impressions' times, so the next window can start exactly at `end`."""
    times = [imp.time for imp in impressions]
    return min(times), math.nextafter(max(times), math.inf)


def _metrics(network: DuelingQNetwork, train_data: Dataset, test_data: Dataset) -> dict[str, float]:
    result = evaluate(DRNPolicy(network), train_data, test_data)
    return {k: float(v) for k, v in result.items()}


def _fit(network: DuelingQNetwork, train_data: Dataset, test_data: Dataset, config: TrainConfig,
         promoted: ModelBundle | None) -> Candidate:
    """Train `network` on train_data, then evaluate it and the promoted model on test_data (same feature warm-up)."""
    return _candidate(network, train(network, train_data, config), train_data, test_data, promoted)


def _candidate(network: DuelingQNetwork, summary: dict, train_data: Dataset, test_data: Dataset,
               promoted: ModelBundle | None) -> Candidate:
    """A trained network with its evidence: it and the promoted model evaluated on test_data (same warm-up)."""
    baseline = _metrics(network_of(promoted), train_data, test_data) if promoted is not None else None
    return Candidate(bundle_of(network), _metrics(network, train_data, test_data), baseline,
                     data_window(train_data.impressions + test_data.impressions), summary)


# ------------------------------------------------------------------------------------------------ the updates
def offline_train(data_dir: str, train_config: TrainConfig, seed: int, promoted: ModelBundle | None = None,
                  test_days: int = TEST_DAYS, choose_settings: bool = True) -> Candidate:
    """Train a fresh network on a MIND folder except its last `test_days` days, which evaluate it (and `promoted`).

    With `choose_settings`, the step size and passes are chosen on the last day before the test days
    (`drn.selection`), never on the test days; the candidate's training summary reports the choice."""
    train_data, test_data = time_split(load_dataset(data_dir), test_days)
    trainer, summary = train_offline(train_data, train_config, seed, choose_settings=choose_settings)
    return _candidate(trainer.network, summary, train_data, test_data, promoted)


def minor_update(promoted: ModelBundle, promoted_version: str, round_: Round, feedback: Sequence[LoggedImpression],
                 *, eta: float = ETA, form: str = "standard", min_decisive: int = MIN_DECISIVE,
                 max_impressions: int = MAX_ROUND_IMPRESSIONS, significance: float = SIGNIFICANCE) -> MinorDecision:
    """Score the round from its logged teams and clicks; step W towards W~ only when the explore network won, or,
    for a gate round, promote its challenger only when the challenger won.

    A round served with another version than the one promoted now (a rollback or a major update came between)
    says nothing about the promoted weights: it is not scored. A round with too few decisive impressions is
    pending: the caller keeps it open. How W~ was drawn and the lists merged is read from the round's recipe."""
    if round_.model_version != promoted_version:
        return MinorDecision(None, None, f"round {round_.round_id} was served with v{round_.model_version}, "
                                         f"v{promoted_version} is promoted now: its feedback is stale")
    recipe = RoundRecipe.from_dict(round_.recipe)
    outcome = round_outcome((_teams_and_clicks(imp) for imp in feedback), recipe.interleaving,
                            min_decisive=min_decisive, max_impressions=max_impressions, significance=significance)
    decisive = outcome.wins_a + outcome.wins_b
    if outcome.pending:
        return MinorDecision(outcome, None, f"round kept open: {decisive} of {min_decisive} decisive impressions "
                                            f"({outcome.impressions} impressions so far)", recipe.challenger)
    if recipe.challenger is not None:
        return _judge(outcome, recipe.challenger, promoted_version)
    if not outcome.explore_won:
        return MinorDecision(outcome, None, f"no step: outcome {outcome.winner} "
                                            f"({outcome.wins_b} explore vs {outcome.wins_a} exploit wins, "
                                            f"{outcome.impressions} impressions, p={outcome.p_value:.3g})")
    explore = explore_weights(promoted.weights, round_.seed, round_.alpha, recipe.noise)
    stepped = dbgd_step(promoted.weights, explore, eta, form)
    return MinorDecision(outcome, ModelBundle(stepped, promoted.config, promoted.feature_schema),
                         f"explore won {outcome.wins_b} to {outcome.wins_a} (p={outcome.p_value:.3g}): "
                         f"DBGD step eta={eta} ({form})")


def _judge(outcome: Outcome, challenger: str, promoted_version: str) -> MinorDecision:
    """A decided gate round: the challenger replaces the served version only when users preferred it."""
    score = (f"{outcome.wins_b} to {outcome.wins_a} decisive impressions of {outcome.impressions} "
             f"(p={outcome.p_value:.3g})")
    if outcome.explore_won:
        return MinorDecision(outcome, None, f"v{challenger} beat v{promoted_version} in its gate round, {score}",
                             challenger, promote=True)
    return MinorDecision(outcome, None, f"v{challenger} did not beat v{promoted_version} in its gate round "
                                        f"({outcome.winner}), {score}", challenger)


def _teams_and_clicks(imp: LoggedImpression) -> tuple[tuple[int, ...], list[int]]:
    """Interleaving input of one impression: its teams and the positions clicked."""
    teams, clicked = imp.record.teams, imp.clicked
    return teams, [i for i, n in enumerate(imp.record.served) if n in clicked]


def major_update(promoted: ModelBundle, logged: Sequence[LoggedImpression], news: Mapping[str, NewsItem],
                 train_config: TrainConfig, holdout_fraction: float = HOLDOUT_FRACTION) -> Candidate:
    """Warm-start from the promoted weights, train on the older logs, evaluate both models on the newest share."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    impressions = [imp.to_impression() for imp in logged]
    cut = len(impressions) - max(1, round(len(impressions) * holdout_fraction))
    if cut < 1:
        raise ValueError(f"{len(impressions)} impressions cannot be split into training and evaluation")
    news = dict(news)
    return _fit(network_of(promoted), Dataset(impressions[:cut], news), Dataset(impressions[cut:], news),
                train_config, promoted)


def gate(candidate: Mapping[str, float], promoted: Mapping[str, float] | None, tolerance: float = TOLERANCE,
         metrics: Sequence[str] = GATE_METRICS) -> GateResult:
    """Pass when the candidate is at most `tolerance` worse than the promoted model on every gate metric.

    With nothing promoted there is nothing to lose: pass. A metric the candidate lacks or that is NaN fails."""
    if promoted is None:
        return GateResult(True, "nothing is promoted yet")
    failed = [f"{m} {candidate.get(m, math.nan):.4f} < {promoted[m]:.4f} - {tolerance}" for m in metrics
              if not candidate.get(m, math.nan) >= promoted[m] - tolerance]
    if failed:
        return GateResult(False, "worse than the promoted model: " + "; ".join(failed))
    return GateResult(True, "as good as the promoted model on " + ", ".join(
        f"{m} {candidate[m]:.4f} vs {promoted[m]:.4f}" for m in metrics) + f" (tolerance {tolerance})")


def replay_start(versions: Mapping[str, VersionInfo], version: str) -> float | None:
    """Where a major update's replay begins: the end of the data window of the nearest version in `version`'s
    lineage that was trained on a window (offline / major); minor steps learned from rounds, not windows."""
    seen: set[str] = set()
    current: str | None = version
    while current is not None and current not in seen and current in versions:
        seen.add(current)
        info = versions[current]
        if info.kind in REPLAY_KINDS and info.data_window is not None:
            return info.data_window[1]
        current = info.parent
    return None


def new_round_seed(version: str, opened_at: float) -> int:
    """The seed of W~ for a round: a hash of (version, opening time), so it is reproducible from the round's own
    record and differs between rounds; 63 bits to fit a signed BIGINT column."""
    digest = hashlib.sha256(f"drn-round:{version}:{opened_at!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# ----------------------------------------------------------------------------- serving changes (touch the stores)
def open_round(logs: LogStore, version: str, alpha: float, now: float, recipe: RoundRecipe | None = None) -> Round:
    """A new round around `version` (closing any open one unscored), served by `recipe` (None: explore as the
    latest round did)."""
    recipe = recipe if recipe is not None else exploration_recipe(logs)
    return logs.open_round(version, new_round_seed(version, now), alpha, now, recipe.to_dict())


def exploration_recipe(logs: LogStore) -> RoundRecipe:
    """How the latest round explored (a promotion keeps the minor update's choice), without its challenger; the
    defaults when there was none or this release cannot serve it."""
    latest = logs.latest_round()
    try:
        return RoundRecipe.from_dict(latest.recipe if latest is not None else None).exploring()
    except ValueError:
        return RoundRecipe()


def challenge(logs: LogStore, version: str, challenger: str, alpha: float, now: float) -> Round:
    """A gate round: `challenger` interleaved against the served `version` on live traffic (the evidence neither
    selected), scored by the next minor updates like any round."""
    recipe = dataclasses.replace(exploration_recipe(logs), challenger=challenger)
    return open_round(logs, version, alpha, now, recipe)


def promote(registry: Registry, logs: LogStore, version: str, *, who: str, why: str, now: float,
            alpha: float = ALPHA) -> Round:
    """Serve `version` (the registry checks it loads first) and open an exploration round around it."""
    registry.promote(version, who=who, why=why)
    return open_round(logs, version, alpha, now)


def rollback(registry: Registry, logs: LogStore, to: str | None, *, who: str, why: str, now: float,
             alpha: float = ALPHA) -> str:
    """Serve `to` (default: the version served before the current one) and open a round around it."""
    version = registry.rollback(to, who=who, why=why)
    open_round(logs, version, alpha, now)
    return version
