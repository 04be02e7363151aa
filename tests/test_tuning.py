"""`drn bench tune`: the grid, the knobs a point puts on the learner, and the choice by paired difference."""
from __future__ import annotations

import pytest

from drn.bench import BenchConfig
from drn.learners import LearnerConfig
from drn.tuning import BASELINE, GRIDS, grid_points, markdown_table, summarise, tune_minor
from drn_cli.main import main


def test_every_combination_of_a_learners_grid_is_a_point_and_each_brackets_the_default():
    points = grid_points(("pdgd", "sgd"))
    sizes = [len(values) for learner in ("pdgd", "sgd") for values in GRIDS[learner].values()]
    assert len(points) == sizes[0] * sizes[1] + sizes[2] * sizes[3]
    assert len({p.knobs for p in points}) == len(points)
    default = LearnerConfig()
    for learner, knobs in GRIDS.items():
        for name, values in knobs.items():  # a default at the edge would leave one side untried
            assert min(values) < getattr(default, name) < max(values), (learner, name)


def test_a_point_sets_its_knobs_on_the_minor_learner_and_nothing_else():
    point = next(p for p in grid_points(("pdgd",)) if dict(p.knobs) == {"temperature": 0.01,
                                                                         "pdgd_learning_rate": 3e-6})
    bench = BenchConfig(impressions=123)
    tuned = point.config(bench)
    assert tuned.online.learner.temperature == 0.01 and tuned.online.learner.pdgd_learning_rate == 3e-6
    assert tuned.online.learner.alpha == bench.online.learner.alpha and tuned.impressions == 123
    assert bench.online.learner.temperature == LearnerConfig().temperature  # the bench's own settings untouched


def test_the_chosen_point_has_the_best_mean_paired_difference_to_the_baseline():
    points = grid_points(("sgd",))
    keys = [f"sgd: {p.label}" for p in points]
    # seed 1's baseline is higher: a point's raw CTR would favour it, the paired difference does not
    per_seed = [{BASELINE: 0.10, **{k: 0.10 + 0.001 * i for i, k in enumerate(keys)}},
                {BASELINE: 0.20, **{k: 0.20 + 0.001 * i - (0.01 if i == len(keys) - 1 else 0) for i, k in
                                    enumerate(keys)}}]
    results = summarise(points, per_seed, (100, 101))
    best = len(keys) - 2  # the last point is the best on seed 0 only
    assert results["chosen"]["sgd"] == dict(points[best].knobs)
    assert results["points"][keys[best]]["ctr_difference"] == pytest.approx(0.001 * best)
    assert results["points"][keys[best]]["per_seed"] == pytest.approx([0.001 * best] * 2)
    table = markdown_table(results)
    assert table.count("chosen") == 1 and table.count("default") == 1 and table.count("\n") == len(points) + 2


def test_an_unknown_learner_is_refused_before_any_seed_runs(tmp_path, capsys):
    with pytest.raises(ValueError, match="no tuning grid for dbgx"):
        tune_minor(("pdgd", "dbgx"), BenchConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["bench", "tune", "--learners", "sgd", "--seeds", "1,x", "--out", str(tmp_path)]) == 2
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
