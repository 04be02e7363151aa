"""The steps of the model lifecycle, one small function each; the Prefect flows (`flows/`) only orchestrate them.

- offline training: MIND logs -> time split -> train a fresh DRN -> evaluate it and the promoted model on the same
  test days (so promotion compares like with like);
- minor update: what the current round teaches, by its recipe's learner (drn.learners): if DBGD's explore network W~
  won, one step W' = W + eta (W~ - W), with W~ regenerated from (W, round seed, round alpha) exactly as serving
  made it; MGD's step towards the mean of the winning explore networks; PDGD's gradient step on the clicks of lists
  replayed with their features (`round_lists`); SGD's next challenger, trained on them, for a gate round;
- major update: replay every logged impression since the parent's data window -> double-DQN training warm-started
  from the promoted weights -> evaluate candidate and promoted on the newest logs, which only screens out a broken
  candidate (the served model ranked those logs itself) -> a gate round (`challenge`): the candidate interleaved
  against the served model on live traffic, promoted by the minor update that decides that round unless the
  served model won it (decided at `GATE_DECISIVE` decisive impressions, earlier on a clear result);
- promotion and rollback, each followed by a fresh exploration round for the version now served.

Nothing here knows Prefect; the functions at the bottom are the only ones that touch the stores (the registry and
the log store adapters), so a CLI command and a flow promote or roll back through the same code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from drn.evaluate import evaluate, time_split
from drn.exploration import ALPHA, dbgd_step, explore_weights, explorer_seeds, mean_weights
from drn.features import FeatureState, Sample, record, warmed
from drn.interleaving import GATE_DECISIVE, Outcome, credit_curve, gate_outcome, round_outcome
from drn.learners import ClickedList, LearnerConfig, LearnerName, RoundRecipe, mgd_winners, pdgd_step, sgd_challenger
from drn.logstore import LoggedImpression, LogStore, Round
from drn.mind import Dataset, Impression, NewsItem, load_dataset
from drn.model import DuelingQNetwork
from drn.agent import DRNPolicy
from drn.bundle import ModelBundle, bundle_of, network_of
from drn.registry import Registry, VersionInfo
from drn.selection import train_offline
from drn.training import MAJOR_EPOCHS, MAJOR_LEARNING_RATE, MAJOR_TRAIN_EVERY, TrainConfig, train

GATE_METRICS = ("auc", "mrr", "ndcg@10")  # a candidate may be worse than the served model on none of these
TOLERANCE = 0.0  # how much worse (absolute) a candidate may be on a gate metric and still pass; < 0 demands a gain
SCREEN_TOLERANCE = 0.05  # major update: how much worse than the served model on the newest logs a candidate may be
#   and still get a gate round; those logs were ranked by the served model, so they can only screen out a broken one
TEST_DAYS = 1  # offline training: the last calendar days of the MIND log that evaluate (the paper holds out 2 weeks)
HOLDOUT_FRACTION = 0.2  # major update: the newest share of the replayed impressions that evaluates both models
MIN_REPLAY_IMPRESSIONS = 50  # major update: with fewer new impressions there is too little to learn from
# TrainConfig fields a major update fine-tunes with unless its `train_config` says otherwise (the offline fit's step
# size overwrote it, and its stepping cadence is for many passes over days)
MAJOR_TRAINING = {"learning_rate": MAJOR_LEARNING_RATE, "epochs": MAJOR_EPOCHS, "train_every": MAJOR_TRAIN_EVERY}
REPLAY_KINDS = ("offline", "major")  # versions trained on a data window; a major update replays logs after theirs


@dataclass(frozen=True)
class TrainedModel:
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
    """What a minor update concluded about one round, and what the flow does with it."""

    verdict: str  # "pending", "stale", a duel's winner ("explore", "exploit", "tie", "insufficient"), or a learner's
    #   summary ("2 of 4 explorers", "31 clicked lists", "collected")
    reason: str
    outcome: Outcome | None = None  # the duel's counts (DBGD rounds, gate rounds)
    bundle: ModelBundle | None = None  # W's stepped weights (dbgd, mgd, pdgd): register and promote
    challenger: str | None = None  # a gate round's candidate version
    promote: bool = False  # ...which won (or, with promote_on_tie, did not lose): serve it
    candidate: ModelBundle | None = None  # sgd: the next challenger, trained on the round: register, then a gate round
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the counts behind the verdict

    @property
    def pending(self) -> bool:
        return self.verdict == "pending"

    def record(self) -> dict:
        """The JSON kept on the closed round (and summarised on the version it produced)."""
        scored = dataclasses.asdict(self.outcome) if self.outcome is not None else {}
        gate = {"challenger": self.challenger, "promote": self.promote} if self.challenger is not None else {}
        return {**scored, **self.metrics, "winner": self.verdict, "stepped": self.bundle is not None, **gate,
                "reason": self.reason}


def data_window(impressions: Sequence[Impression]) -> tuple[float, float]:
    """Half-open [first, end) around the impressions' times, so the next window can start exactly at `end`."""
    times = [imp.time for imp in impressions]
    return min(times), math.nextafter(max(times), math.inf)


def _metrics(network: DuelingQNetwork, train_data: Dataset, test_data: Dataset,
             start: FeatureState | None = None) -> dict[str, float]:
    result = evaluate(DRNPolicy(network), train_data, test_data, start=start)
    return {k: float(v) for k, v in result.items()}


def _candidate(network: DuelingQNetwork, summary: dict, train_data: Dataset, test_data: Dataset,
               promoted: ModelBundle | None, start: FeatureState | None = None) -> TrainedModel:
    """A trained network with its evidence: it and the promoted model evaluated on test_data (same warm-up, from
    `start` when the data does not begin the log)."""
    baseline = _metrics(network_of(promoted), train_data, test_data, start) if promoted is not None else None
    return TrainedModel(bundle_of(network), _metrics(network, train_data, test_data, start), baseline,
                     data_window(train_data.impressions + test_data.impressions), summary)


# ------------------------------------------------------------------------------------------------ the updates
def offline_train(data_dir: str, train_config: TrainConfig, seed: int, promoted: ModelBundle | None = None,
                  test_days: int = TEST_DAYS, choose_settings: bool = True) -> TrainedModel:
    """Train a fresh network on a MIND folder except its last `test_days` days, which evaluate it (and `promoted`).

    With `choose_settings`, the step size and passes are chosen on the last day before the test days
    (`drn.selection`), never on the test days; the candidate's training summary reports the choice."""
    train_data, test_data = time_split(load_dataset(data_dir), test_days)
    trainer, summary = train_offline(train_data, train_config, seed, choose_settings=choose_settings)
    return _candidate(trainer.network, summary, train_data, test_data, promoted)


def minor_update(promoted: ModelBundle, promoted_version: str, round_: Round, feedback: Sequence[LoggedImpression],
                 config: LearnerConfig = LearnerConfig(), *, lists: Sequence[ClickedList] | None = None,
                 challenger: ModelBundle | None = None) -> MinorDecision:
    """What a round teaches, by the learner of its recipe (drn.learners): DBGD steps W towards W~ when W~ won; MGD
    towards the mean of the explore networks that beat W; PDGD takes its pairwise gradient step; SGD trains the next
    challenger on the round. A gate round promotes its challenger (`challenger`, its bundle) when it won (or, with
    its recipe's promote_on_tie, when the served model did not).

    A round served with another version than the one promoted now (a rollback or a major update came between)
    says nothing about the promoted weights: it is not scored. A round with too little evidence yet is pending: the
    caller keeps it open. PDGD and SGD learn from the round's `lists` (features replayed, `round_lists`); everything
    about how the round was served is read from its recipe, the update's own knobs from `config`."""
    if round_.model_version != promoted_version:
        return MinorDecision("stale", f"round {round_.round_id} was served with v{round_.model_version}, "
                                      f"v{promoted_version} is promoted now: its feedback is stale")
    recipe = RoundRecipe.from_dict(round_.recipe)
    if recipe.challenger is not None:
        decision = _judge(_duel(feedback, recipe, config), recipe, promoted_version, config)
    elif recipe.learner is LearnerName.DBGD:
        decision = _dbgd(promoted, round_, _duel(feedback, recipe, config), recipe, config)
    elif recipe.learner is LearnerName.MGD:
        decision = _mgd(promoted, round_, feedback, recipe, config)
    elif recipe.learner is LearnerName.PDGD:
        decision = _pdgd(promoted, lists, recipe, config)
    else:
        decision = _collected(lists, config)
    if recipe.learner is LearnerName.SGD and not decision.pending:  # every decided SGD round trains the next challenger
        decision = _with_next_challenger(decision, challenger if decision.promote else promoted, lists, round_,
                                         config)
    return decision


def _with_next_challenger(decision: MinorDecision, base: ModelBundle, lists: Sequence[ClickedList], round_: Round,
                          config: LearnerConfig) -> MinorDecision:
    """SGD: a copy of the version served from now on, trained on the round's lists (seeded by the round)."""
    trained = sgd_challenger(network_of(base), lists, config.sgd_steps, config.sgd_learning_rate,
                             np.random.default_rng(round_.seed))
    return dataclasses.replace(decision, candidate=bundle_of(trained))


def _duel(feedback: Sequence[LoggedImpression], recipe: RoundRecipe, config: LearnerConfig) -> Outcome:
    pairs = (_teams_and_clicks(imp) for imp in feedback)
    limits = {"max_impressions": config.max_round_impressions, "significance": config.significance}
    if recipe.decisive is not None:
        return gate_outcome(pairs, recipe.interleaving, decisive=recipe.decisive, early_from=config.min_decisive,
                            **limits)
    return round_outcome(pairs, recipe.interleaving, min_decisive=config.min_decisive, **limits)


def _duel_metrics(outcome: Outcome) -> dict[str, float]:
    return {"interleaving.impressions": outcome.impressions, "interleaving.clicks_exploit": outcome.clicks_a,
            "interleaving.clicks_explore": outcome.clicks_b, "interleaving.wins_exploit": outcome.wins_a,
            "interleaving.wins_explore": outcome.wins_b, "interleaving.p_value": outcome.p_value}


def _pending(outcome: Outcome, needed: int) -> MinorDecision:
    return MinorDecision("pending", f"round kept open: {outcome.wins_a + outcome.wins_b} of {needed} "
                                    f"decisive impressions ({outcome.impressions} impressions so far)", outcome)


def _dbgd(promoted: ModelBundle, round_: Round, outcome: Outcome, recipe: RoundRecipe,
          config: LearnerConfig) -> MinorDecision:
    if outcome.pending:
        return _pending(outcome, config.min_decisive)
    score = f"({outcome.wins_b} explore vs {outcome.wins_a} exploit wins, {outcome.impressions} impressions, " \
            f"p={outcome.p_value:.3g})"
    if not outcome.explore_won:
        return MinorDecision(outcome.winner, f"no step: outcome {outcome.winner} {score}", outcome,
                             metrics=_duel_metrics(outcome))
    explore = explore_weights(promoted.weights, round_.seed, round_.alpha, recipe.noise)
    stepped = dbgd_step(promoted.weights, explore, config.eta, config.step_form)
    return MinorDecision(outcome.winner, f"explore won {score}: DBGD step eta={config.eta} ({config.step_form})",
                         outcome, _with_weights(promoted, stepped), metrics=_duel_metrics(outcome))


def _mgd(promoted: ModelBundle, round_: Round, feedback: Sequence[LoggedImpression], recipe: RoundRecipe,
         config: LearnerConfig) -> MinorDecision:
    impressions = [_teams_and_clicks(imp) for imp in feedback]
    winners = mgd_winners(impressions, recipe.explorers, recipe.interleaving, min_decisive=config.min_decisive,
                          max_impressions=config.max_round_impressions, significance=config.significance)
    if winners is None:
        return MinorDecision("pending", f"round kept open: too few decisive impressions yet "
                                        f"({len(impressions)} impressions so far)")
    verdict = f"{len(winners)} of {recipe.explorers} explorers"
    metrics = {"mgd.impressions": len(impressions), "mgd.winners": len(winners), "mgd.explorers": recipe.explorers}
    if not winners:
        return MinorDecision(verdict, f"no step: no explore network beat W in {len(impressions)} impressions",
                             metrics=metrics)
    explorers = [explore_weights(promoted.weights, s, round_.alpha, recipe.noise)
                 for s in explorer_seeds(round_.seed, recipe.explorers)]
    stepped = dbgd_step(promoted.weights, mean_weights([explorers[j] for j in winners]), config.eta,
                        config.step_form)
    return MinorDecision(verdict, f"explore networks {[j + 1 for j in winners]} beat W in {len(impressions)} "
                                  f"impressions: MGD step eta={config.eta} towards their mean",
                         bundle=_with_weights(promoted, stepped), metrics=metrics)


def _pdgd(promoted: ModelBundle, lists: Sequence[ClickedList] | None, recipe: RoundRecipe,
          config: LearnerConfig) -> MinorDecision:
    network = network_of(promoted)
    clicked = pdgd_step(network, lists or (), recipe.temperature, config.pdgd_learning_rate)
    if not clicked:
        return MinorDecision("pending", f"round kept open: no clicked list yet ({len(lists or ())} lists)")
    return MinorDecision(f"{clicked} clicked lists", f"PDGD step lr={config.pdgd_learning_rate} on the pairwise "
                                                     f"preferences of {clicked} clicked lists",
                         bundle=bundle_of(network), metrics={"pdgd.clicked_lists": clicked,
                                                             "pdgd.lists": len(lists)})


def _collected(lists: Sequence[ClickedList] | None, config: LearnerConfig) -> MinorDecision:
    """SGD's first round serves W alone: it collects the feedback the first challenger trains on."""
    clicked = sum(any(c) for _, _, c in lists or ())
    if clicked < config.min_decisive:
        return MinorDecision("pending", f"round kept open: {clicked} of {config.min_decisive} clicked lists to "
                                        f"train a challenger on")
    return MinorDecision("collected", f"{clicked} clicked lists of {len(lists)} collected",
                         metrics={"sgd.clicked_lists": clicked, "sgd.lists": len(lists)})


def _judge(outcome: Outcome, recipe: RoundRecipe, promoted_version: str, config: LearnerConfig) -> MinorDecision:
    """A gate round: the challenger replaces the served version only when users preferred it (or, with
    promote_on_tie, did not prefer the served one)."""
    if outcome.pending:
        return dataclasses.replace(_pending(outcome, recipe.decisive or config.min_decisive),
                                   challenger=recipe.challenger)
    score = (f"{outcome.wins_b} to {outcome.wins_a} decisive impressions of {outcome.impressions} "
             f"(p={outcome.p_value:.3g})")
    accepted = outcome.explore_won or (recipe.promote_on_tie and outcome.winner == "tie")
    verb = "beat" if outcome.explore_won else "tied with" if accepted else "did not beat"
    return MinorDecision(outcome.winner, f"v{recipe.challenger} {verb} v{promoted_version} in its gate round "
                                         f"({outcome.winner}), {score}", outcome, challenger=recipe.challenger,
                         promote=accepted, metrics=_duel_metrics(outcome))


def _with_weights(bundle: ModelBundle, weights: dict) -> ModelBundle:
    return ModelBundle(weights, bundle.config, bundle.feature_schema)


def round_curve(feedback: Sequence[LoggedImpression]) -> list[tuple[int, int, int]]:
    """The round's credit per team over its impressions (drn.interleaving.credit_curve)."""
    return credit_curve(_teams_and_clicks(imp) for imp in feedback)


def comparison(candidate: Mapping[str, float], served: Mapping[str, float] | None, served_version: str | None,
               impressions: int, metric: str = "auc") -> str:
    """The gate's comparison in words, for the candidate's version page."""
    if served is None or served_version is None:
        return f"{metric} {candidate[metric]:.4f} on {impressions:,} held-out impressions; nothing served to compare"
    return (f"{metric}: this version {candidate[metric]:.4f}, served v{served_version} {served[metric]:.4f}, "
            f"on the same {impressions:,} held-out impressions")


def _teams_and_clicks(imp: LoggedImpression) -> tuple[tuple[int, ...], list[int]]:
    """Interleaving input of one impression: its teams and the positions clicked."""
    teams, clicked = imp.record.teams, imp.clicked
    return teams, [i for i, n in enumerate(imp.record.served) if n in clicked]


def round_lists(news: Mapping[str, NewsItem], before: Iterable[LoggedImpression],
                feedback: Sequence[LoggedImpression]) -> list[ClickedList]:
    """A round's lists with the features serving ranked them with: the feature state of every impression logged
    before the round opened, then the round's impressions in time order, each featurised over its whole candidate
    pool before its own events are recorded (as drn.features.replay does)."""
    state = warm_state(news, before)
    lists: list[ClickedList] = []
    for logged in feedback:
        rec, clicked = logged.record, logged.clicked
        state.see_history(rec.user, rec.history)
        position = {news_id: i for i, news_id in enumerate(rec.candidates)}
        lists.append((state.features(rec.user, rec.candidates, rec.time), [position[n] for n in rec.served],
                      [n in clicked for n in rec.served]))
        record(logged.to_impression(), state)
    return lists


def training_share(impressions: int, holdout_fraction: float = HOLDOUT_FRACTION) -> int:
    """How many of a major update's (oldest) impressions it trains on; the newest rest evaluates."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    cut = impressions - max(1, round(impressions * holdout_fraction))
    if cut < 1:
        raise ValueError(f"{impressions} impressions cannot be split into training and evaluation")
    return cut


def major_update(promoted: ModelBundle, logged: Sequence[LoggedImpression], news: Mapping[str, NewsItem],
                 train_config: TrainConfig, holdout_fraction: float = HOLDOUT_FRACTION,
                 before: Iterable[LoggedImpression] = (), samples: Sequence[Sample] | None = None) -> TrainedModel:
    """Warm-start from the promoted weights, train on the older logs, evaluate both models on the newest share.

    `before`: everything logged before `logged` (the imported logs, earlier rounds), whose events make the feature
    state the replay starts from, as serving had it; without it the replay would learn from users without history
    and items without clicks, features serving never computes. Its latest replay buffer's worth of impressions also
    fill the replay memory the steps draw on with the window's. `samples`: the training share's replay from that
    state, already computed (in shards on a cluster, flows/sharded_replay); the same as computing it here."""
    impressions = [imp.to_impression() for imp in logged]
    cut = training_share(len(impressions), holdout_fraction)
    news = dict(news)
    earlier, memory = memory_split(news, before, train_config.buffer_impressions)
    start = warmed(memory, news, earlier)
    train_data, test_data = Dataset(impressions[:cut], news), Dataset(impressions[cut:], news)
    network = network_of(promoted)
    summary = train(network, train_data, train_config, start=earlier, samples=samples, memory=memory)
    return _candidate(network, summary, train_data, test_data, promoted, start)


EVIDENCE_TAG = "evidence"  # version tag of a major update: what it learned from, in words and as a comparable key


def evidence(logged: Sequence[LoggedImpression]) -> str:
    """What a major update learns from, in words that are equal exactly when the evidence is: the impressions (how
    many, first and last id) and the clicks they received."""
    clicks = sum(len(imp.clicks) for imp in logged)
    first, last = (logged[0].record.impression_id, logged[-1].record.impression_id) if logged else ("-", "-")
    return f"{len(logged)} impressions ({first} .. {last}), {clicks} clicks"


def earlier_attempt(versions: Mapping[str, VersionInfo], parent: str, seen: str) -> VersionInfo | None:
    """A major version of `parent` already trained on the same evidence: training again would register a copy."""
    return next((info for info in versions.values() if info.kind == "major" and info.parent == parent
                 and info.tags.get(EVIDENCE_TAG) == seen), None)


def memory_split(news: Mapping[str, NewsItem], before: Iterable[LoggedImpression],
                 keep: int) -> tuple[FeatureState, list[Impression]]:
    """The latest `keep` impressions of `before` (a major update's replay memory: a replay buffer's worth) and the
    feature state after the ones before them; `before` is streamed, so only those `keep` are held."""
    state, latest = FeatureState(news), deque()
    for logged in before:
        latest.append(logged.to_impression())
        if len(latest) > keep:
            record(latest.popleft(), state)
    return state, list(latest)


def warm_state(news: Mapping[str, NewsItem], before: Iterable[LoggedImpression]) -> FeatureState:
    """The feature state after the logged events of `before` (in time order), as serving rebuilds it at start."""
    return warmed((logged.to_impression() for logged in before), news)


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


def challenge(logs: LogStore, version: str, challenger: str, alpha: float, now: float,
              recipe: RoundRecipe | None = None, decisive: int = GATE_DECISIVE) -> Round:
    """A gate round: `challenger` interleaved against the served `version` on live traffic (the evidence neither
    selected), scored by the next minor updates like any round; `recipe` says how, and whether a tie is enough.

    None: a major candidate's round, served as the latest exploration and decided at `decisive` decisive
    impressions (or earlier on a clear result); the candidate goes live unless the served model won. It was trained
    from the served weights on more of the logs and passed the screen: what the round must catch is a worse one."""
    if recipe is None:
        recipe = dataclasses.replace(exploration_recipe(logs), promote_on_tie=True, decisive=decisive)
    return open_round(logs, version, alpha, now, dataclasses.replace(recipe, challenger=challenger))


def promote(registry: Registry, logs: LogStore, version: str, *, who: str, why: str, now: float,
            alpha: float = ALPHA, by_hand: bool = False) -> Round:
    """Serve `version` (the registry checks it loads first; while a rollback holds promotion only `by_hand`) and
    open an exploration round around it."""
    registry.promote(version, who=who, why=why, by_hand=by_hand)
    return open_round(logs, version, alpha, now)


def rollback(registry: Registry, logs: LogStore, to: str | None, *, who: str, why: str, now: float,
             alpha: float = ALPHA, hold_until: float | None = None) -> str:
    """Serve `to` (default: the version served before the current one), hold automatic promotion (until
    `hold_until`, or until resumed) and open a round around it."""
    version = registry.rollback(to, who=who, why=why, hold_until=hold_until)
    open_round(logs, version, alpha, now)
    return version
