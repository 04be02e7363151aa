"""What can a learner reach on DRN's features? A ceiling under issue 12's target of 1.2x LinUCB's CTR.

Per seed, the default world is logged under the learning bench's random-order policy for N days and one more (by
default N = 3: exactly the logs `drn bench learning` trains on for that seed), keeping for every candidate the world's
true click chance at the moment it was shown, with and without the click model's interaction terms. Every model is
fitted on the N days, with its settings chosen on day N as drn.selection chooses DRN's, and scored on day N + 1,
which takes part in no choice:
- linucb: LinUCB's estimate (its mean, without the exploration bonus), fitted as the learning bench warm-starts it;
- drn: the network trained offline as the learning bench trains it (drn.selection.train_offline);
- mlp-supervised: the same network shape trained as a plain click classifier (cross-entropy on every candidate,
  inputs standardised), step size and passes chosen on day 3: what the architecture reaches on these features
  without the reinforcement-learning target;
- oracle and oracle-no-interactions: the world's true click chance, with and without its interaction terms;
- popularity and random, for scale.

Two read-outs on the test day: the AUC of each model's scores per impression (as MIND computes it), and the value of its top
10 under the true click model (expected clicks per shown item, position bias included: the CTR its lists would get,
free of click noise), with its ratio to LinUCB's paired per seed. The live bench's ratios come from the same worlds,
but there every policy ranks (and learns from) its own traffic; here every model ranks the same requests.

    .venv/bin/python benchmarks/ceiling.py --out out/ceiling
    .venv/bin/python benchmarks/ceiling.py --fit-days 10 --seeds 2 --out out/ceiling-10d   (does depth pay with data?)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drn.baselines import LinUCBPolicy, PopularityPolicy, RandomPolicy  # noqa: E402
from drn.bench import BenchConfig, effective_train, mean_ci  # noqa: E402
from drn.features import FeatureBatch, FeatureState, replay  # noqa: E402
from drn.metrics import RankingMetrics  # noqa: E402
from drn.mind import Dataset, Impression  # noqa: E402
from drn.model import DuelingQNetwork, build_network, set_threads  # noqa: E402
from drn.policy import top_k  # noqa: E402
from drn.selection import train_offline  # noqa: E402
from drn.world import DAY, SLATE_SIZE, Request, World, logged_world, position_bias, world_config  # noqa: E402

MODELS = ("random", "popularity", "linucb", "drn", "mlp-supervised", "oracle-no-interactions", "oracle")
BASELINE = "linucb"
TARGET_RATIO = 1.2  # issue 12: the full DRN at >= 1.2x LinUCB's CTR
# The supervised reference's grid, chosen on the last fit day as drn.selection chooses: Adam step sizes, and passes
# up to this many.
MLP_LEARNING_RATES = (1e-3, 3e-3)
MLP_MAX_EPOCHS = 5
MLP_BATCH_IMPRESSIONS = 32  # as drn.training's batch


@dataclass
class Logged:
    """A seed's logged days: impressions, each one's features (taken before its own events, as serving takes
    them) and the true click chance of each candidate at the top slot, with and without the interaction terms."""

    impressions: list[Impression]
    batches: list[FeatureBatch]
    truth: list[np.ndarray]
    truth_without_interactions: list[np.ndarray]
    day: np.ndarray  # 0-based day of each impression

    def indices(self, days: Sequence[int]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.day, days))


def log_seed(seed: int, users: int, days: int) -> tuple[Logged, dict]:
    config = world_config(n_users=users)
    truth: list[np.ndarray] = []
    plain: list[np.ndarray] = []

    def observe(world: World, request: Request, shown: tuple[str, ...]) -> None:
        for out, interactions in ((truth, True), (plain, False)):
            out.append(np.array([world.click_probability(request.user, n, 0, request.time, interactions)
                                 for n in shown]))

    world, impressions = logged_world(config, seed, days, observe=observe)
    news = {n: world.item(n) for imp in impressions for n in imp.candidates + imp.history}
    batches = [sample.batch for sample in replay(impressions, FeatureState(news))]
    day = np.array([int((imp.time - config.start) // DAY) for imp in impressions])
    return Logged(impressions, batches, truth, plain, day), news


class Standardiser:
    """Per-input mean and spread of the fit days' state and candidate rows (constant inputs keep a spread of 1)."""

    def __init__(self, logged: Logged, index: np.ndarray):
        states = np.stack([logged.batches[i].state for i in index])
        actions = np.concatenate([logged.batches[i].action for i in index])
        self.state = states.mean(0), _spread(states)
        self.action = actions.mean(0), _spread(actions)

    def __call__(self, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
        return (batch.state - self.state[0]) / self.state[1], (batch.action - self.action[0]) / self.action[1]


def _spread(values: np.ndarray) -> np.ndarray:
    spread = values.std(0)
    return np.where(spread > 1e-6, spread, 1.0).astype(np.float32)


def _padded(logged: Logged, index: np.ndarray, standardise: Standardiser) -> tuple[torch.Tensor, ...]:
    """A minibatch of impressions as (state, action, mask, labels), candidates padded to the longest."""
    rows = [standardise(logged.batches[i]) for i in index]
    width = max(len(action) for _, action in rows)
    state = torch.from_numpy(np.stack([s for s, _ in rows]).astype(np.float32))
    action = torch.zeros(len(rows), width, rows[0][1].shape[1])
    mask, labels = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
    for j, (i, (_, candidates)) in enumerate(zip(index, rows)):
        n = len(candidates)
        action[j, :n], mask[j, :n] = torch.from_numpy(candidates.astype(np.float32)), 1.0
        labels[j, :n] = torch.tensor(logged.impressions[i].labels, dtype=torch.float32)
    return state, action, mask, labels


def _supervised_pass(network: DuelingQNetwork, optimizer: torch.optim.Optimizer, logged: Logged, index: np.ndarray,
                     standardise: Standardiser, rng: np.random.Generator) -> None:
    """One pass of cross-entropy steps on every candidate of shuffled minibatches of impressions."""
    network.train()
    order = rng.permutation(index)
    for start in range(0, len(order), MLP_BATCH_IMPRESSIONS):
        state, action, mask, labels = _padded(logged, order[start:start + MLP_BATCH_IMPRESSIONS], standardise)
        logits = network(state, action, mask)
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


Scorer = Callable[[FeatureBatch], np.ndarray]


def _scorer(network: DuelingQNetwork, standardise: Standardiser) -> Scorer:
    @torch.no_grad()
    def score(batch: FeatureBatch) -> np.ndarray:
        state, action = standardise(batch)
        return network(torch.from_numpy(state.astype(np.float32))[None],
                       torch.from_numpy(action.astype(np.float32))[None])[0].numpy()
    return score


def _fit_supervised(logged: Logged, index: np.ndarray, learning_rate: float, epochs: int, seed: int,
                    after_pass: Callable[[int, Scorer], None] | None = None) -> Scorer:
    standardise = Standardiser(logged, index)
    network = build_network(seed=seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        _supervised_pass(network, optimizer, logged, index, standardise, rng)
        if after_pass:
            after_pass(epoch, _scorer(network, standardise))
    return _scorer(network, standardise)


def supervised(logged: Logged, fit_days: int, seed: int) -> tuple[Scorer, dict]:
    """The supervised reference: (step size, passes) chosen by the last fit day's AUC after fitting the days before,
    then refitted on every fit day with that choice (as drn.selection does for DRN)."""
    fit, valid = logged.indices(range(fit_days - 1)), logged.indices([fit_days - 1])
    tried = []
    for learning_rate in MLP_LEARNING_RATES:
        def note(epoch: int, score: Scorer, learning_rate: float = learning_rate) -> None:
            auc = read_outs(logged, valid, lambda i: score(logged.batches[i]))["auc"]
            tried.append({"learning_rate": learning_rate, "epochs": epoch, "auc": auc})
        _fit_supervised(logged, fit, learning_rate, MLP_MAX_EPOCHS, seed, note)
    best = max(tried, key=lambda row: (row["auc"], -row["epochs"]))
    score = _fit_supervised(logged, logged.indices(range(fit_days)), best["learning_rate"], best["epochs"], seed)
    return score, {"chosen": best, "tried": tried}


def read_outs(logged: Logged, index: np.ndarray, score: Callable[[int], np.ndarray]) -> dict:
    """AUC of the scores per impression, and the expected clicks per shown item of their top SLATE_SIZE under the
    true click model. `score(i)`: the scores of impression i's candidates."""
    power = world_config().position_bias_power
    metrics, values = RankingMetrics(), []
    for i in index:
        scores = score(i)
        metrics.add(logged.impressions[i].labels, scores)
        top = top_k(scores, SLATE_SIZE)
        values.append(float(position_bias(np.arange(len(top)), power) @ logged.truth[i][top]) / len(top))
    return {"auc": float(metrics.result()["auc"]), "expected_ctr": float(np.mean(values))}


def run_seed(seed: int, users: int, fit_days: int) -> dict:
    """Every model's read-outs on the test day for one seed, and what the trained ones chose."""
    set_threads()
    started = time.time()

    def say(what: str) -> None:
        print(f"seed {seed} ({time.time() - started:.0f} s): {what}", file=sys.stderr, flush=True)

    logged, news = log_seed(seed, users, fit_days + 1)
    say(f"logged {len(logged.impressions)} impressions over {fit_days + 1} days")
    window = Dataset([logged.impressions[i] for i in logged.indices(range(fit_days))], news)
    linucb = LinUCBPolicy()
    linucb.fit(window)
    trainer, summary = train_offline(window, effective_train(BenchConfig(users=users), seed), seed,
                                     progress=lambda message: say(f"drn {message}"))
    mlp, mlp_choice = supervised(logged, fit_days, seed)
    say(f"mlp-supervised chose lr {mlp_choice['chosen']['learning_rate']:g}, {mlp_choice['chosen']['epochs']} passes")
    learners = {"random": RandomPolicy(seed).scores, "popularity": PopularityPolicy().scores, "linucb": linucb.scores,
                "drn": trainer.network.score, "mlp-supervised": mlp}
    scorers = {**{name: (lambda i, s=s: s(logged.batches[i])) for name, s in learners.items()},
               "oracle-no-interactions": logged.truth_without_interactions.__getitem__,
               "oracle": logged.truth.__getitem__}
    test = logged.indices([fit_days])
    out = {name: read_outs(logged, test, scorers[name]) for name in MODELS}
    say(", ".join(f"{name} auc {row['auc']:.4f} ctr {row['expected_ctr']:.4f}" for name, row in out.items()))
    return {"models": out, "test_impressions": len(test),
            "drn_chosen": {k: summary[k] for k in ("learning_rate", "epochs", "validation_auc")},
            "mlp_chosen": mlp_choice["chosen"], "mlp_tried": mlp_choice["tried"]}


def summarise(per_seed: list[dict]) -> dict:
    rows = {}
    for name in MODELS:
        aucs = [seed["models"][name]["auc"] for seed in per_seed]
        ctrs = [seed["models"][name]["expected_ctr"] for seed in per_seed]
        ratios = [c / seed["models"][BASELINE]["expected_ctr"] for c, seed in zip(ctrs, per_seed)]
        (auc, auc_ci), (ctr, ctr_ci), (ratio, ratio_ci) = mean_ci(aucs), mean_ci(ctrs), mean_ci(ratios)
        rows[name] = {"auc": auc, "auc_ci95": auc_ci, "auc_per_seed": aucs, "expected_ctr": ctr,
                      "expected_ctr_ci95": ctr_ci, "expected_ctr_per_seed": ctrs, "ratio_to_linucb": ratio,
                      "ratio_ci95": ratio_ci, "ratio_per_seed": ratios}
    return rows


def markdown(rows: dict) -> str:
    lines = ["| model | AUC on the test day (95% CI) | expected CTR of its top 10 (95% CI) | ratio to LinUCB (95% CI) "
             "| per seed |", "| --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['auc']:.4f} [{row['auc_ci95'][0]:.4f}, {row['auc_ci95'][1]:.4f}] | "
                     f"{row['expected_ctr']:.4f} [{row['expected_ctr_ci95'][0]:.4f}, "
                     f"{row['expected_ctr_ci95'][1]:.4f}] | {row['ratio_to_linucb']:.3f} "
                     f"[{row['ratio_ci95'][0]:.3f}, {row['ratio_ci95'][1]:.3f}] | "
                     f"{', '.join(f'{r:.3f}' for r in row['ratio_per_seed'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: dict, path: Path) -> None:
    """Each model's list value as a ratio to LinUCB's, with its interval, against the target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(rows)
    ratios = [rows[n]["ratio_to_linucb"] for n in names]
    errors = np.array([[r - rows[n]["ratio_ci95"][0], rows[n]["ratio_ci95"][1] - r] for n, r in zip(names, ratios)]).T
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = ["tab:gray" if n.startswith("oracle") else "tab:blue" for n in names]
    ax.barh(names, ratios, xerr=errors, color=colours, capsize=3)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(TARGET_RATIO, color="tab:red", linestyle="--", label=f"issue 12's target ({TARGET_RATIO}x LinUCB)")
    ax.set_xlabel("expected CTR of the model's top 10 on the held-out day, as a ratio to LinUCB's (95% CI)")
    ax.set_title("What the features carry: learners against the true click model")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and ceiling.png")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1, the learning bench's (at least 2)")
    parser.add_argument("--users", type=int, default=BenchConfig().users)
    parser.add_argument("--fit-days", type=int, default=BenchConfig().log_days,
                        help="logged days the models are fitted on (the last one chooses their settings); the next "
                             "day is the test day")
    parser.add_argument("--workers", type=int, default=2, help="seeds run in parallel processes")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the intervals need two)")
    if args.fit_days < 2:
        parser.error("--fit-days must be at least 2 (one to fit on, one to choose on)")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    with ProcessPoolExecutor(max(1, min(args.workers, len(seeds)))) as pool:
        per_seed = list(pool.map(run_seed, seeds, [args.users] * len(seeds), [args.fit_days] * len(seeds)))
    rows = summarise(per_seed)
    table = markdown(rows)
    print(table)
    (args.out / "results.json").write_text(json.dumps({"seeds": seeds, "users": args.users, "fit_days": args.fit_days,
                                                       "models": rows, "per_seed": per_seed}, indent=1))
    (args.out / "results.md").write_text(table)
    plot(rows, args.out / "ceiling.png")


if __name__ == "__main__":
    main()
