"""Can tuning close DRN's gap to LinUCB? Training variants scored on the validation day alone.

Each variant is trained as `drn evaluate` trains DRN (its step size and passes chosen by `drn.selection` on the last
day of the training window), and the network it chose, fitted on the days before, is scored on that validation day.
The test days are never read: this is how a variant would be chosen before any report. Per seed, every variant
starts from the same initial weights as the defaults (`base`), so the differences are paired. `ensemble-3` averages
the Q of the base network and of two more trained from other seeds. LinUCB, fitted on the same days, is the
reference issue 12 compares DRN with (its target: DRN's AUC at least LinUCB's + 0.02).

    .venv/bin/drn data split ../shared/data/mind-sample --out /tmp/mind --test-days 1
    .venv/bin/python benchmarks/mind_variants.py --train /tmp/mind/train --out out/mind_variants.json

Any MIND-format folder serves as the training window, the simulated world's logs too: `drn world generate --days 3
--users 500 --seed 100` writes the logs a tuning seed of `drn bench learning` would train on. Several folders pool
their runs into one table:

    .venv/bin/python benchmarks/mind_variants.py --train /tmp/w100 /tmp/w101 /tmp/w102 --seeds 2 \
        --variants base "train_every 16" "train_every 32"
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drn.baselines import LinUCBPolicy  # noqa: E402
from drn.bench import mean_ci  # noqa: E402
from drn.evaluate import evaluate, time_split  # noqa: E402
from drn.mind import load_dataset  # noqa: E402
from drn.model import Aggregation, NetworkConfig, set_threads  # noqa: E402
from drn.selection import VALIDATION_DAYS, score_validation, validated_network  # noqa: E402
from drn.training import TrainConfig  # noqa: E402

# name -> (TrainConfig fields, NetworkConfig fields, drn.selection grid options) changed from the defaults
VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "base": ({}, {}, {}),
    # offline training before 47d9caf, spelled out so the comparison with today's defaults stays reproducible
    "old defaults": (  # a step per 4 impressions, lr 3e-3/1e-2, up to 3 passes
        {"train_every": 4, "learning_rate": 1e-2, "epochs": 3}, {}, {"learning_rates": (3e-3, 1e-2), "max_epochs": 3}),
    "weight decay 1e-4": ({"weight_decay": 1e-4}, {}, {}),
    "weight decay 1e-3": ({"weight_decay": 1e-3}, {}, {}),
    "16 negatives": ({"negatives": 16}, {}, {}),
    "hidden (64, 32)": ({}, {"hidden": (64, 32)}, {}),
    "hidden (256, 128)": ({}, {"hidden": (256, 128)}, {}),
    "gamma 0 (no future reward)": ({"gamma": 0.0}, {}, {}),
    "mean aggregation": ({}, {"aggregation": Aggregation.MEAN}, {}),
    # fewer gradient steps per logged impression: each transition is drawn from the buffer fewer times per pass
    "train_every 16": ({"train_every": 16}, {}, {}),
    "train_every 32": ({"train_every": 32}, {}, {}),
    # as the last, with the step sizes a supervised fit of the same network prefers; as many settings tried as base
    "train_every 32, lr 1e-3/3e-3": ({"train_every": 32}, {}, {"learning_rates": (1e-3, 3e-3)}),
    "train_every 32, lr 1e-3/3e-3, up to 6 passes": ({"train_every": 32}, {}, {"learning_rates": (1e-3, 3e-3),
                                                                              "max_epochs": 6}),
}
ENSEMBLE = 3  # networks averaged in the ensemble row (the base one and ENSEMBLE - 1 more)
ENSEMBLE_SEED_STRIDE = 1000  # the extra members' seeds: seed + k * this, apart from every reported seed
ENSEMBLE_ROW = f"ensemble-{ENSEMBLE}"


def run_folder_seed(folder: Path, seed: int, variants: list[str]) -> dict:
    """`run_seed` on a folder's logs, in a worker process of its own."""
    set_threads()
    return run_seed(load_dataset(folder), seed, variants, label=f"{folder.name} seed {seed}")


def run_seed(train, seed: int, variants: list[str], label: str) -> dict:
    """Validation AUC and the chosen (step size, passes) of the variants, the ensemble and LinUCB, for one seed."""
    rows, base_network, batches = {}, None, None
    for name in [v for v in VARIANTS if v == "base" or v in variants]:
        train_fields, network_fields, grid = VARIANTS[name]
        started = time.time()
        choice, network, batches = validated_network(train, replace(TrainConfig(), **train_fields), seed,
                                                     network=replace(NetworkConfig(), **network_fields), **grid)
        rows[name] = {"auc": choice.validation["auc"], "learning_rate": choice.learning_rate,
                      "epochs": choice.epochs}
        if name == "base":
            base_network = network
        print(f"{label} {name}: validation AUC {choice.validation['auc']:.4f} "
              f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    if ENSEMBLE_ROW in variants:
        members = [base_network] + [validated_network(train, TrainConfig(), seed + k * ENSEMBLE_SEED_STRIDE)[1]
                                    for k in range(1, ENSEMBLE)]
        rows[ENSEMBLE_ROW] = {"auc": score_validation(members, batches)["auc"]}
    fit, valid = time_split(train, VALIDATION_DAYS)
    linucb = LinUCBPolicy()
    linucb.fit(fit)
    rows["linucb"] = {"auc": float(evaluate(linucb, fit, valid)["auc"])}
    return rows


def summarise(per_seed: list[dict]) -> list[dict]:
    """Per variant: mean validation AUC with a 95% t-interval, and the paired difference from base."""
    table = []
    for name in per_seed[0]:
        aucs = [seed[name]["auc"] for seed in per_seed]
        diffs = [a - seed["base"]["auc"] for a, seed in zip(aucs, per_seed)]
        mean, ci = mean_ci(aucs)
        diff, diff_ci = mean_ci(diffs)
        table.append({"variant": name, "auc": mean, "auc_ci": ci, "minus_base": diff, "minus_base_ci": diff_ci,
                      "better_in_seeds": sum(d > 0 for d in diffs), "per_seed": aucs,
                      "chosen": [(seed[name].get("learning_rate"), seed[name].get("epochs")) for seed in per_seed]})
    return table


def markdown(table: list[dict], runs: int) -> str:
    lines = ["| variant | validation AUC (95% CI) | minus base (95% CI) | better than base in runs "
             "| chosen (lr, passes) |", "| --- | --- | --- | --- | --- |"]
    for row in table:
        chosen = ", ".join(f"{lr:g}/{epochs}" for lr, epochs in row["chosen"]) if row["chosen"][0][0] else "-"
        better = "-" if row["variant"] == "base" else f"{row['better_in_seeds']} of {runs}"
        versus = ("-" if row["variant"] == "base" else
                  f"{row['minus_base']:+.4f} [{row['minus_base_ci'][0]:+.4f}, {row['minus_base_ci'][1]:+.4f}]")
        lines.append(f"| {row['variant']} | {row['auc']:.4f} [{row['auc_ci'][0]:.4f}, {row['auc_ci'][1]:.4f}] | "
                     f"{versus} | {better} | "
                     f"{chosen} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, nargs="+", required=True,
                        help="a MIND folder, the training window (train split); with several, the runs of every "
                             "folder and seed are pooled, each paired with base on its own folder and seed")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, ENSEMBLE_ROW], default=[*VARIANTS, ENSEMBLE_ROW],
                        help="the rows to train (base always; default: all)")
    parser.add_argument("--workers", type=int, default=2, help="(folder, seed) runs trained in parallel processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the intervals need two)")
    runs = [(folder, seed) for folder in args.train for seed in range(args.seeds)]
    with ProcessPoolExecutor(max(1, min(args.workers, len(runs)))) as pool:
        per_run = list(pool.map(run_folder_seed, *zip(*runs), [args.variants] * len(runs)))
    table = summarise(per_run)
    print(markdown(table, len(per_run)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"train": [str(f) for f in args.train], "seeds": args.seeds, "table": table},
                                       indent=1))


if __name__ == "__main__":
    main()
