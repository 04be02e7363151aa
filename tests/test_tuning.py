"""`drn bench tune`: the grid, the knobs a point puts on the learner, and the choice by paired difference."""
from __future__ import annotations

import pytest

from drn.bench import BenchConfig
from drn.learners import LearnerConfig
from drn.tuning import BASELINE, GRIDS, default_config, grid_points, markdown_table, summarise, tune_minor
from drn_cli.main import main


def test_every_combination_of_a_learners_grid_is_a_point_and_each_brackets_the_default():
    points = grid_points(("pdgd", "sgd"))
    sizes = [len(values) for learner in ("pdgd", "sgd") for values in GRIDS[learner].values()]
    assert len(points) == sizes[0] * sizes[1] + sizes[2] * sizes[3]
    assert len({p.knobs for p in points}) == len(points)
    for learner, knobs in GRIDS.items():
        default = default_config(learner)
        for name, values in knobs.items():  # a default at the edge would leave one side untried
            assert getattr(default, name) in values and min(values) < getattr(default, name) < max(values)


def test_a_point_sets_its_knobs_on_the_minor_learner_and_nothing_else():
    point = next(p for p in grid_points(("pdgd",)) if dict(p.knobs) == {"temperature": 0.005,
                                                                         "pdgd_learning_rate": 1e-4})
    bench = BenchConfig(impressions=123)
    tuned = point.config(bench)
    assert tuned.online.learner.temperature == 0.005 and tuned.online.learner.pdgd_learning_rate == 1e-4
    assert tuned.online.learner.alpha == bench.online.learner.alpha and tuned.impressions == 123
    assert bench.online.learner.temperature == LearnerConfig().temperature  # the bench's own settings untouched


def test_a_major_point_sets_the_major_updates_step_rate_and_size_and_runs_drn_major():
    knobs = {"steps_per_impression": 1 / 2, "major_learning_rate": 1e-4}
    point = next(p for p in grid_points(("major",)) if dict(p.knobs) == knobs)
    bench = BenchConfig(impressions=123)
    tuned = point.config(bench)
    assert point.policy == BASELINE
    assert tuned.online.steps_per_impression == 1 / 2 and tuned.online.major_learning_rate == 1e-4
    assert tuned.online.learner == bench.online.learner and tuned.impressions == 123
    assert bench.online.steps_per_impression == default_config("major").steps_per_impression


def _grid_ctrs(keys: list[str], bumps: dict[str, list[float]]) -> list[dict[str, float]]:
    """Three seeds' CTRs: the baseline, every point level with it, but for `bumps` (per seed)."""
    baselines = (0.10, 0.20, 0.15)  # unequal: raw CTRs would weigh seed 1 most, paired differences do not
    return [{BASELINE: base, **{k: base + bumps.get(k, [0.0] * 3)[i] for k in keys}} for i, base in
            enumerate(baselines)]


def test_the_best_point_is_chosen_only_when_it_beats_the_default_with_an_interval_above_0():
    points = grid_points(("sgd",))
    keys = [p.key for p in points]
    other = keys[0]
    clear = summarise(points, _grid_ctrs(keys, {other: [0.010, 0.012, 0.011]}), (100, 101, 102))
    sgd = clear["learners"]["sgd"]
    assert sgd["best"] == sgd["chosen"] == dict(points[0].knobs)
    assert sgd["best_over_default"] == pytest.approx(0.011) and sgd["best_over_default_ci95"][0] > 0
    assert clear["points"][other]["per_seed"] == pytest.approx([0.010, 0.012, 0.011])
    # best by mean, but once above and once below the default: the interval includes 0, the default stays
    noisy = summarise(points, _grid_ctrs(keys, {other: [0.010, -0.002, 0.004]}),
                      (100, 101, 102))["learners"]["sgd"]
    assert noisy["best"] == dict(points[0].knobs) and noisy["best_over_default_ci95"][0] < 0
    assert noisy["chosen"] == noisy["default"] == {"sgd_learning_rate": 1e-3, "sgd_steps": 20}
    table = markdown_table(clear)
    assert table.count("| sgd |") == len(points) + 1 and table.count("| default |") == 1
    assert table.count("best, chosen") == 1


def test_an_unknown_learner_is_refused_before_any_seed_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="no tuning grid for dbgx"):
        tune_minor(("pdgd", "dbgx"), BenchConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["bench", "tune", "--learners", "sgd", "--seeds", "1,x", "--out", str(tmp_path)]) == 2
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
