"""`drn bench learning`: every policy in the same live world, side by side, from the same offline-trained start.

Per seed: the world runs `log_days` days under a random-order logging policy; DRN is trained offline on those
logs (step size and passes chosen on their last day, drn.selection), LinUCB and the Vowpal Wabbit peers are fitted
on them; then each policy serves a copy of the same world, continuing from the same moment with the same feature
state, for `impressions` requests (with `drift_share`, that share of the users get new tastes halfway). CTR and user
activeness are reported after a warm-up share of each run, as a mean over seeds with a 95% t-interval across seeds,
and the claims as paired per-seed differences and ratios.
"""
from __future__ import annotations

import copy
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats as scipy_stats

from drn.activeness import S0, UserActiveness
from drn.baselines import LinUCBPolicy, PopularityPolicy, RandomPolicy
from drn.features import FeatureState, warmed
from drn.mind import Dataset, Impression, NewsItem
from drn.agent import DRNPolicy, OnlineConfig
from drn.model import DuelingQNetwork, set_threads
from drn.online import LiveResult, run_live
from drn.peers import PEERS, VWPolicy
from drn.policy import Policy, top_k
from drn.selection import train_offline
from drn.training import ReplayBuffer, TrainConfig
from drn.world import DEFAULT_WORLD, HOUR, SLATE_SIZE, World, WorldConfig, logged_world, world_config

MINOR_LEARNERS = ("dbgd", "mgd", "pdgd", "sgd")  # drn.learners, each with and without major updates
# The DRN variants: (explorer, major updates), DRN.md's table rows plus the other minor learners.
DRN_VARIANTS = {"drn": ("none", False), "drn-major": ("none", True), "drn-egreedy": ("egreedy", True),
                **{f"drn-{m}{suffix}": (m, major) for m in MINOR_LEARNERS
                   for suffix, major in (("", False), ("-major", True))}}
# References, not recommenders: they rank by the world's true click probability, so they show the headroom over
# the learners and what the click model's interaction terms are worth to a ranker that knows them.
ORACLES = {"oracle": True, "oracle-no-interactions": False}
POLICIES = ("random", "popularity", "linucb", "vw-squarecb", "vw-egreedy", *DRN_VARIANTS, *ORACLES)
LEARNERS = tuple(name for name in POLICIES if name not in ORACLES)  # who can be "the best policy" of a seed


@dataclass(frozen=True)
class BenchConfig:
    seeds: int = 3
    impressions: int = 6000  # live requests per policy and seed
    users: int = 500
    world: str = DEFAULT_WORLD  # a name of drn.world.WORLDS
    drift_share: float = 0.0  # this share of the users get new tastes halfway through each live run (0: no drift)
    log_days: int = 3  # offline logs each seed trains on before going live
    slate_size: int = SLATE_SIZE
    warmup_fraction: float = 0.2  # share of each live run left out of the reported CTR / activeness
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2))
    online: OnlineConfig = OnlineConfig()
    workers: int = 2  # seeds run in parallel processes, at most this many at once


def compressed_activeness(world: WorldConfig) -> dict:
    """Survival-model parameters on the world's clock.

    DRN.md's lambda0 means "expected return in about 24 h"; the simulated users return every few hours, which
    would pin everyone's activeness at 1. The hazard is scaled to the world's mean return gap and Sa keeps
    DRN.md's identity (a user returning every mean gap stays at S0).
    """
    lambda0 = 1.0 / (world.return_gap_hours * HOUR)
    return {"lambda0": lambda0, "sa": S0 * (1.0 - float(np.exp(-lambda0 * world.return_gap_hours * HOUR)))}


class OraclePolicy(Policy):
    """Ranks by the true click probability of the world it is serving (see ORACLES): an upper reference."""

    def __init__(self, world: World, interactions: bool = True):
        self.world, self.interactions, self.name = world, interactions, "oracle"

    def recommend(self, batch, k: int) -> list[int]:
        request = self.world.latest_request
        if request is None or request.candidates != tuple(batch.candidates):
            raise RuntimeError("the oracle ranks only the request its world has just issued")
        truth = [self.world.click_probability(request.user, n, 0, request.time, self.interactions)
                 for n in request.candidates]
        return top_k(np.array(truth), k)


def _policy(name: str, network, config: BenchConfig, train: TrainConfig, seed: int, logged: ReplayBuffer,
            world: World) -> Policy:
    if name in ORACLES:
        return OraclePolicy(world, ORACLES[name])
    if name == "random":
        return RandomPolicy(seed)
    if name == "popularity":
        return PopularityPolicy()
    if name == "linucb":
        return LinUCBPolicy()
    if name in PEERS:
        return VWPolicy(name, seed)
    explorer, major = DRN_VARIANTS[name]
    online = replace(config.online, explorer=explorer, major_updates=major, seed=seed)
    return DRNPolicy(copy.deepcopy(network), online, train, name=name, replay=logged)


# The paper's claims, as paired differences of CTR per seed (same world, same start): (better, worse).
CLAIMS = (*((f"drn-{m}", "drn") for m in MINOR_LEARNERS), *((f"drn-{m}-major", "drn-major") for m in MINOR_LEARNERS),
          *((f"drn-{m}-major", peer) for m in MINOR_LEARNERS for peer in ("linucb", "vw-squarecb")),
          ("drn-major", "linucb"), ("drn-major", "vw-squarecb"), ("drn-dbgd-major", "drn-egreedy"),
          ("drn", "linucb"), ("drn", "vw-squarecb"), ("drn-major", "drn"),
          *((f"drn-{m}", "linucb") for m in MINOR_LEARNERS),
          ("linucb", "popularity"), ("popularity", "random"),
          ("oracle", "linucb"), ("oracle", "oracle-no-interactions"))

REACH_WINDOW = 1000  # impressions in the running CTR that "interactions to reach 90%" and "recovery after drift" read
REACH_SHARE = 0.9


def effective_train(config: BenchConfig, seed: int) -> TrainConfig:
    """The training settings a seed really uses: its seed and the survival model on the world's clock."""
    active = compressed_activeness(world_config(config.world, n_users=config.users))
    return replace(config.train, seed=seed, activeness_lambda0=active["lambda0"], activeness_sa=active["sa"])


def stderr_line(line: str) -> None:
    """Progress from any worker process (stderr is inherited)."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class SeedStart:
    """What every policy of a seed starts from: the world at the end of its logged days, the logs, the network
    trained offline on them with its replay buffer, and the feature state warmed on them."""

    seed: int
    world: World
    logs: list[Impression]
    news: dict[str, NewsItem]
    network: DuelingQNetwork
    buffer: ReplayBuffer
    state: FeatureState
    chosen: dict  # what offline training chose (step size, passes, validation AUC)


def start_seed(seed: int, config: BenchConfig, progress: Callable[[str], None] | None = stderr_line) -> SeedStart:
    """Log the seed's world, then train DRN offline on the logs (settings chosen on their last day)."""
    set_threads()
    world, logs = logged_world(world_config(config.world, n_users=config.users), seed, config.log_days)
    news = {n: world.item(n) for imp in logs for n in imp.candidates + imp.history}
    offline, summary = train_offline(Dataset(logs, news), effective_train(config, seed), seed)
    if progress:
        progress(f"seed {seed}: trained offline on {len(logs)} logged impressions "
                 f"(lr {summary['learning_rate']:g}, {summary['epochs']} passes, chosen on the logs' last day)")
    chosen = {k: summary[k] for k in ("learning_rate", "epochs", "validation_auc") if k in summary}
    return SeedStart(seed, world, logs, news, offline.network, offline.buffer, warmed(logs, news), chosen)


def run_policy(name: str, start: SeedStart, config: BenchConfig, policy: Policy | None = None) -> LiveResult:
    """`name` (or the given `policy`, already fitted) live in a copy of the seed's world, from its start."""
    live_world = copy.deepcopy(start.world)
    if policy is None:
        policy = _policy(name, start.network, config, effective_train(config, start.seed), start.seed,
                         start.buffer, live_world)
    if name in PEERS:  # warm-started on the logs as LinUCB is, but here: a VW workspace cannot be deep-copied
        policy.fit(Dataset(start.logs, start.news))
    active = compressed_activeness(world_config(config.world, n_users=config.users))
    return _live(policy, live_world, copy.deepcopy(start.state), config,
                 UserActiveness(lambda0=active["lambda0"], sa=active["sa"]))


def run_seed(seed: int, config: BenchConfig,
             progress: Callable[[str], None] | None = stderr_line) -> tuple[dict[str, LiveResult], dict]:
    """One seed: log, train offline, then every policy live from the same start. Returns the live results per
    policy and what offline training chose."""
    start = start_seed(seed, config, progress)
    linucb_warm = LinUCBPolicy()
    linucb_warm.fit(Dataset(start.logs, start.news))
    results = {}
    for name in POLICIES:
        results[name] = run_policy(name, start, config, copy.deepcopy(linucb_warm) if name == "linucb" else None)
        if progress:
            progress(f"seed {seed}: {name} ctr {results[name].ctr(config.warmup_fraction):.4f}")
    return results, start.chosen


def _live(policy: Policy, world: World, state: FeatureState, config: BenchConfig,
          activeness: UserActiveness) -> LiveResult:
    """One policy's live run; with `drift_share`, that share of the users get new tastes halfway through."""
    if not config.drift_share:
        return run_live(policy, world, state, config.impressions, config.slate_size, activeness)
    half = config.impressions // 2
    result = run_live(policy, world, state, half, config.slate_size, activeness)
    world.redraw_tastes(config.drift_share)
    result.extend(run_live(policy, world, state, config.impressions - half, config.slate_size, activeness))
    return result


def recovery(per_seed: list[dict[str, LiveResult]], config: BenchConfig) -> dict[str, list[int | None]]:
    """Per policy and seed, after the drift: impressions until the running CTR (last REACH_WINDOW impressions, all
    after the drift) is back to 90% of its own CTR over the REACH_WINDOW impressions before it; None: never."""
    half = config.impressions // 2
    out: dict[str, list[int | None]] = {name: [] for name in POLICIES}
    for seed in per_seed:
        for name in POLICIES:
            running = _running_ctr(seed[name])
            before = running[half - REACH_WINDOW] if half >= REACH_WINDOW else float("nan")
            after = np.flatnonzero(running[half:] >= REACH_SHARE * before)
            out[name].append(int(after[0]) + REACH_WINDOW if len(after) else None)
    return out


def mean_ci(values: list[float]) -> tuple[float, list[float]]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, [mean, mean]
    half = float(scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return mean, [mean - half, mean + half]


def summarise(per_seed: list[dict[str, LiveResult]], config: BenchConfig, offline: list[dict] | None = None) -> dict:
    policies = {}
    for name in POLICIES:
        ctrs = [seed[name].ctr(config.warmup_fraction) for seed in per_seed]
        actives = [seed[name].mean_activeness(config.warmup_fraction) for seed in per_seed]
        ctr, ctr_ci = mean_ci(ctrs)
        act, act_ci = mean_ci(actives)
        policies[name] = {"ctr": ctr, "ctr_ci95": ctr_ci, "activeness": act, "activeness_ci95": act_ci,
                          "ctr_per_seed": ctrs, "activeness_per_seed": actives}
    for name, reach in interactions_to_reach(per_seed, config).items():
        policies[name]["interactions_to_90pct_per_seed"] = reach
    if config.drift_share:
        for name, back in recovery(per_seed, config).items():
            policies[name]["recovery_after_drift_per_seed"] = back
    claims = {}
    for better, worse in CLAIMS:
        pairs = list(zip(policies[better]["ctr_per_seed"], policies[worse]["ctr_per_seed"]))
        mean, ci = mean_ci([a - b for a, b in pairs])
        ratio, ratio_ci = mean_ci([a / b for a, b in pairs])
        claims[f"{better} > {worse}"] = {"ctr_difference": mean, "ci95": ci, "ctr_ratio": ratio,
                                         "ratio_ci95": ratio_ci, "holds_in_seeds": sum(a > b for a, b in pairs),
                                         "seeds": len(pairs)}
    settings = _jsonable(config)
    settings["train"] = _jsonable(effective_train(config, 0))
    return {"policies": policies, "claims": claims, "config": settings, "offline_training_per_seed": offline or []}


def _running_ctr(result: LiveResult) -> np.ndarray:
    """CTR over the REACH_WINDOW impressions ending at each impression (entry i covers i .. i + window - 1)."""
    clicks, shown = (np.concatenate([[0], np.cumsum(getattr(result, field))]) for field in ("clicks", "shown"))
    window = min(REACH_WINDOW, len(clicks) - 1)
    return (clicks[window:] - clicks[:-window]) / (shown[window:] - shown[:-window])


def interactions_to_reach(per_seed: list[dict[str, LiveResult]], config: BenchConfig) -> dict[str, list[int | None]]:
    """Per policy and seed: live impressions until the running CTR (last REACH_WINDOW impressions) first reaches
    90% of the best learning policy's reported CTR in that seed (the oracles are no target); None when it never
    does."""
    out: dict[str, list[int | None]] = {name: [] for name in POLICIES}
    for seed in per_seed:
        target = REACH_SHARE * max(seed[name].ctr(config.warmup_fraction) for name in LEARNERS)
        for name in POLICIES:
            reached = np.flatnonzero(_running_ctr(seed[name]) >= target)
            out[name].append(int(reached[0]) + min(REACH_WINDOW, len(seed[name].clicks)) if len(reached) else None)
    return out


def markdown_tables(results: dict) -> str:
    """The policies and the claims as Markdown tables, as benchmarks/LEARNING.md quotes them."""
    lines = ["| policy | CTR (95% CI) | activeness | interactions to 90% of best (per seed) | recovery after drift "
             "(per seed) |", "| --- | --- | --- | --- | --- |"]
    for name, row in results["policies"].items():
        reach, back = (", ".join("-" if r is None else str(r) for r in row.get(key, [])) or "n/a"
                       for key in ("interactions_to_90pct_per_seed", "recovery_after_drift_per_seed"))
        lines.append(f"| {name} | {row['ctr']:.4f} [{row['ctr_ci95'][0]:.4f}, {row['ctr_ci95'][1]:.4f}] | "
                     f"{row['activeness']:.3f} | {reach} | {back} |")
    lines += ["", "| claim | CTR difference (95% CI) | ratio (95% CI) | holds in seeds |", "| --- | --- | --- | --- |"]
    for claim, row in results["claims"].items():
        lines.append(f"| {claim} | {row['ctr_difference']:+.4f} [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}] | "
                     f"{row['ctr_ratio']:.3f} [{row['ratio_ci95'][0]:.3f}, {row['ratio_ci95'][1]:.3f}] | "
                     f"{row['holds_in_seeds']} of {row['seeds']} |")
    return "\n".join(lines) + "\n"


def _jsonable(config) -> dict:
    return json.loads(json.dumps(asdict(config), default=str))


def plot_ctr(per_seed: list[dict[str, LiveResult]], path: Path, bucket_hours: float = 2.0) -> None:
    """CTR per world-time bucket since going live, averaged over seeds, one line per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in POLICIES:
        curves = []
        for seed in per_seed:
            result = seed[name]
            hours = (np.asarray(result.times) - result.times[0]) / HOUR
            bucket = (hours // bucket_hours).astype(int)
            clicks = np.bincount(bucket, weights=result.clicks)
            shown = np.bincount(bucket, weights=result.shown)
            curves.append(clicks / np.maximum(shown, 1))
        length = min(len(c) for c in curves)
        ax.plot(np.arange(length) * bucket_hours, np.mean([c[:length] for c in curves], axis=0), label=name,
                linewidth=2.2 if name.endswith("-major") else 1.2,
                linestyle=":" if name in ORACLES else "-" if name.startswith("drn") else "--")
    ax.set_xlabel("world hours since going live")
    ax.set_ylabel(f"CTR (clicks / shown, {bucket_hours:g} h buckets, mean over seeds)")
    ax.set_title("Live world: CTR over time per policy")
    ax.legend(ncol=2, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_learning(config: BenchConfig, out: Path) -> dict:
    """Run every seed (in parallel processes), write results.json and the CTR plot; progress goes to stderr."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(config.seeds))
    if config.workers > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(config.workers, len(seeds))) as pool:
            runs = list(pool.map(run_seed, seeds, [config] * len(seeds)))
    else:
        runs = [run_seed(seed, config) for seed in seeds]
    per_seed = [live for live, _ in runs]
    results = summarise(per_seed, config, [chosen for _, chosen in runs])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_tables(results))
    plot_ctr(per_seed, out / "ctr_over_time.png")
    results["plot"] = str(out / "ctr_over_time.png")
    return results
