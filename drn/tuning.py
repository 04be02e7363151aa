"""`drn bench tune`: the minor learners' knobs, chosen on tuning seeds that `drn bench learning` never reports; also
the major update's gradient steps per live impression and its step size (the grid `major`, drn-major against its own
default).

Per tuning seed the world is logged and DRN trained offline once, exactly as `drn bench learning` starts a seed
(drn.bench.start_seed). From that start the learner's baseline (drn-major: the same DRN with major updates and no
exploration) and, for every point of the learner's grid, drn-<learner>-major serve copies of the same world. A
point's score is its CTR minus the baseline's, paired per seed, averaged over the tuning seeds. The best point
becomes drn.learners' default only where it beats the current default with a paired interval above 0. The
learning bench reports seeds 0, 1, ...: the tuning seeds are far from them, so no reported figure took part in a
choice.
"""
from __future__ import annotations

import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from drn.agent import OnlineConfig
from drn.bench import BenchConfig, mean_ci, run_policy, start_seed, stderr_line
from drn.learners import LearnerConfig

TUNING_SEEDS = (100, 101, 102)
BASELINE = "drn-major"
# Per learner, the knobs tried (LearnerConfig fields) and their values; every combination is a point. Each grid
# brackets the learner's current default on both sides, so a default at the grid's edge says to widen it.
GRIDS: dict[str, dict[str, tuple]] = {
    "mgd": {"explorers": (2, 4, 8), "eta": (0.025, 0.05, 0.1)},
    "pdgd": {"temperature": (0.00125, 0.0025, 0.005), "pdgd_learning_rate": (1e-5, 3e-5, 1e-4)},
    "sgd": {"sgd_learning_rate": (3e-4, 1e-3, 3e-3), "sgd_steps": (10, 20, 40)},
    # not a minor learner: the major update's gradient steps per live impression and their Adam step size (drn-major
    # against itself)
    "major": {"steps_per_impression": (1 / 32, 1 / 8, 1 / 4, 1 / 2), "major_learning_rate": (1e-4, 3e-4, 1e-3, 3e-3)},
}
MAJOR = "major"


@dataclass(frozen=True)
class Point:
    learner: str
    knobs: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return _label(dict(self.knobs))

    @property
    def key(self) -> str:
        """The point's name in a seed's CTRs and in the results."""
        return f"{self.learner}: {self.label}"

    @property
    def policy(self) -> str:
        return BASELINE if self.learner == MAJOR else f"drn-{self.learner}-major"

    def config(self, bench: BenchConfig) -> BenchConfig:
        """The bench's settings with this point's knobs on the major update or on the minor learner."""
        if self.learner == MAJOR:
            return replace(bench, online=replace(bench.online, **dict(self.knobs)))
        return replace(bench, online=replace(bench.online, learner=replace(bench.online.learner, **dict(self.knobs))))


def grid_points(learners: tuple[str, ...]) -> list[Point]:
    points = []
    for learner in learners:
        names, values = zip(*GRIDS[learner].items())
        points += [Point(learner, tuple(zip(names, combo))) for combo in itertools.product(*values)]
    return points


def tune_seed(seed: int, points: list[Point], bench: BenchConfig,
              progress: Callable[[str], None] | None = stderr_line) -> dict[str, float]:
    """CTR (after the warm-up share) of the baseline and of every point, from one start of `seed`."""
    start = start_seed(seed, bench, progress)
    ctrs = {BASELINE: run_policy(BASELINE, start, bench).ctr(bench.warmup_fraction)}
    for point in points:
        live = run_policy(point.policy, start, point.config(bench))
        ctrs[point.key] = live.ctr(bench.warmup_fraction)
        if progress:
            progress(f"tuning seed {seed}: {point.key} ctr {ctrs[point.key]:.4f} (baseline {ctrs[BASELINE]:.4f})")
    return ctrs


def summarise(points: list[Point], per_seed: list[dict[str, float]], seeds: tuple[int, ...]) -> dict:
    """Per point the paired CTR difference to the baseline (mean, 95% interval, per seed). Per learner the best point
    by mean difference, and how it compares with the learner's current default, paired per seed: the best point is
    chosen (to become the default) only when it beats the default with an interval above 0. Where the grid is flat
    within the seeds' noise, its best point is the luckiest draw, and changing the default would chase that."""
    rows = {}
    for point in points:
        differences = [seed[point.key] - seed[BASELINE] for seed in per_seed]
        mean, ci = mean_ci(differences)
        rows[point.key] = {"learner": point.learner, "knobs": dict(point.knobs), "ctr_difference": mean, "ci95": ci,
                     "per_seed": differences, "default": _is_default(point)}
    learners = {}
    for learner in dict.fromkeys(p.learner for p in points):
        mine = [row for row in rows.values() if row["learner"] == learner]
        best = max(mine, key=lambda r: r["ctr_difference"])
        default = next(row for row in mine if row["default"])
        gain, gain_ci = mean_ci([b - d for b, d in zip(best["per_seed"], default["per_seed"])])
        adopt = best is not default and gain_ci[0] > 0
        learners[learner] = {"best": best["knobs"], "default": default["knobs"], "best_over_default": gain,
                             "best_over_default_ci95": gain_ci, "chosen": (best if adopt else default)["knobs"]}
    return {"seeds": list(seeds), "baseline": BASELINE, "baseline_ctr_per_seed": [s[BASELINE] for s in per_seed],
            "points": rows, "learners": learners}


def _is_default(point: Point) -> bool:
    default = default_config(point.learner)
    return all(getattr(default, name) == value for name, value in point.knobs)


def default_config(learner: str) -> OnlineConfig | LearnerConfig:
    """Where a grid's knobs live, with their defaults."""
    return OnlineConfig() if learner == MAJOR else LearnerConfig()


def markdown_table(results: dict) -> str:
    """The grid, a row per point (marked: the default, the best, the chosen), then per learner the best against the
    default."""
    lines = [f"| learner | knobs | CTR - {results['baseline']} (95% CI) | per seed | note |",
             "| --- | --- | --- | --- | --- |"]
    for row in results["points"].values():
        learner = results["learners"][row["learner"]]
        marks = [mark for mark, on in (("default", row["default"]), ("best", learner["best"] == row["knobs"]),
                                       ("chosen", learner["chosen"] == row["knobs"])) if on]
        lines.append(f"| {row['learner']} | {_label(row['knobs'])} | {row['ctr_difference']:+.4f} "
                     f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}] | "
                     f"{', '.join(f'{d:+.4f}' for d in row['per_seed'])} | {', '.join(marks)} |")
    lines += ["", "| learner | best | best - default (95% CI) | chosen |", "| --- | --- | --- | --- |"]
    for name, learner in results["learners"].items():
        low, high = learner["best_over_default_ci95"]
        lines.append(f"| {name} | {_label(learner['best'])} | {learner['best_over_default']:+.4f} [{low:+.4f}, "
                     f"{high:+.4f}] | {_label(learner['chosen'])} |")
    return "\n".join(lines) + "\n"


def _label(knobs: dict) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in knobs.items())


def tune_minor(learners: tuple[str, ...], bench: BenchConfig, out: Path,
               seeds: tuple[int, ...] = TUNING_SEEDS) -> dict:
    """Every grid point of `learners` on every tuning seed (seeds in parallel processes); writes results.json and
    results.md under `out`."""
    unknown = [learner for learner in learners if learner not in GRIDS]
    if unknown:
        raise ValueError(f"no tuning grid for {', '.join(unknown)}; known: {', '.join(GRIDS)}")
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(learners)
    with ProcessPoolExecutor(max(1, min(bench.workers, len(seeds)))) as pool:
        per_seed = list(pool.map(tune_seed, seeds, [points] * len(seeds), [bench] * len(seeds)))
    results = {**summarise(points, per_seed, seeds), "ctr_per_seed": per_seed, "impressions": bench.impressions,
               "world": bench.world}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    return results
