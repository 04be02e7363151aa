"""`drn bench tune`: the minor learners' knobs, chosen on tuning seeds that `drn bench learning` never reports.

Per tuning seed the world is logged and DRN trained offline once, exactly as `drn bench learning` starts a seed
(drn.bench.start_seed). From that start the learner's baseline (drn-major: the same DRN with major updates and no
exploration) and, for every point of the learner's grid, drn-<learner>-major serve copies of the same world. A
point's score is its CTR minus the baseline's, paired per seed, averaged over the tuning seeds; the best point is
what drn.learners defaults to. The learning bench reports seeds 0, 1, ...: the tuning seeds are far from them, so
no reported figure took part in a choice.
"""
from __future__ import annotations

import itertools
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from drn.bench import BenchConfig, mean_ci, run_policy, start_seed, stderr_line
from drn.learners import LearnerConfig

TUNING_SEEDS = (100, 101, 102)
BASELINE = "drn-major"
# Per learner, the knobs tried (LearnerConfig fields) and their values; every combination is a point. Each grid
# brackets the learner's current default on both sides, so a default at the grid's edge says to widen it.
GRIDS: dict[str, dict[str, tuple]] = {
    "mgd": {"explorers": (2, 4, 8), "eta": (0.025, 0.05, 0.1)},
    "pdgd": {"temperature": (0.0025, 0.005, 0.01), "pdgd_learning_rate": (3e-6, 1e-5, 3e-5)},
    "sgd": {"sgd_learning_rate": (3e-4, 1e-3, 3e-3), "sgd_steps": (10, 20, 40)},
}


@dataclass(frozen=True)
class Point:
    learner: str
    knobs: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return ", ".join(f"{name} {value:g}" for name, value in self.knobs)

    def config(self, bench: BenchConfig) -> BenchConfig:
        """The bench's settings with this point's knobs on the minor learner."""
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
        key = f"{point.learner}: {point.label}"
        ctrs[key] = run_policy(f"drn-{point.learner}-major", start, point.config(bench)).ctr(bench.warmup_fraction)
        if progress:
            progress(f"tuning seed {seed}: {key} ctr {ctrs[key]:.4f} (baseline {ctrs[BASELINE]:.4f})")
    return ctrs


def summarise(points: list[Point], per_seed: list[dict[str, float]], seeds: tuple[int, ...]) -> dict:
    """Per point the paired CTR difference to the baseline (mean, 95% interval, per seed); per learner the best
    point by mean difference, next to the learner's current default."""
    rows, chosen = {}, {}
    for point in points:
        key = f"{point.learner}: {point.label}"
        differences = [seed[key] - seed[BASELINE] for seed in per_seed]
        mean, ci = mean_ci(differences)
        rows[key] = {"learner": point.learner, "knobs": dict(point.knobs), "ctr_difference": mean, "ci95": ci,
                     "per_seed": differences, "default": _is_default(point)}
    for learner in dict.fromkeys(p.learner for p in points):
        best = max((row for row in rows.values() if row["learner"] == learner), key=lambda r: r["ctr_difference"])
        chosen[learner] = best["knobs"]
    return {"seeds": list(seeds), "baseline": BASELINE, "baseline_ctr_per_seed": [s[BASELINE] for s in per_seed],
            "points": rows, "chosen": chosen}


def _is_default(point: Point) -> bool:
    default = LearnerConfig()
    return all(getattr(default, name) == value for name, value in point.knobs)


def markdown_table(results: dict) -> str:
    lines = [f"| learner | knobs | CTR - {results['baseline']} (95% CI) | per seed | note |",
             "| --- | --- | --- | --- | --- |"]
    for row in results["points"].values():
        label = ", ".join(f"{name} {value:g}" for name, value in row["knobs"].items())
        marks = [mark for mark, on in (("default", row["default"]),
                                       ("chosen", results["chosen"][row["learner"]] == row["knobs"])) if on]
        lines.append(f"| {row['learner']} | {label} | {row['ctr_difference']:+.4f} [{row['ci95'][0]:+.4f}, "
                     f"{row['ci95'][1]:+.4f}] | {', '.join(f'{d:+.4f}' for d in row['per_seed'])} | "
                     f"{', '.join(marks)} |")
    return "\n".join(lines) + "\n"


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
    results = {**summarise(points, per_seed, seeds), "impressions": bench.impressions, "world": bench.world}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    return results
