"""The four flows against a real Prefect test server and a real MLflow store and log store (SQLite, or PostgreSQL
under `pytest --stores=postgres`), on a small simulated world.

Rounds are made the way serving makes them: impressions logged with the interleaved teams of each served position,
then clicks on items of the explore team (a round the explore network wins) or of the exploit team (one it loses).
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from drn import lifecycle
from drn.config import Settings
from drn.logstore import EXPLOIT, EXPLORE, NO_TEAM, ImpressionRecord, LogStore
from drn.mind import load_dataset
from drn.registry import PRODUCTION, Registry
from drn.training import TrainConfig
from drn.world import generate_logs

pytestmark = pytest.mark.integration

TINY = {"epochs": 1, "buffer_impressions": 128, "batch_impressions": 16, "train_every": 8}  # seconds, not minutes
SERVED = 8  # items per logged list
TEAMS = tuple(EXPLOIT if i % 2 == 0 else EXPLORE for i in range(SERVED))  # one team-draft order


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    generate_logs(folder, days=2, users=10, seed=3)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch, prefect_server, store_urls, request):
    """A fresh DRN_HOME (MLflow store + log store) per test; the Prefect server is shared."""
    monkeypatch.setenv("DRN_HOME", str(tmp_path / "drn"))
    for var in ("DRN_MLFLOW_URI", "DRN_LOGSTORE_URL", "DRN_MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)
    for var, url in store_urls.environment(request, tmp_path / "drn").items():
        monkeypatch.setenv(var, url)
    settings = Settings.from_env()
    settings.ensure_home()
    return settings


@pytest.fixture
def stores(home):
    registry, logs = home.open_registry(), home.open_log_store()
    yield registry, logs
    logs.close()


@pytest.fixture(scope="module")
def trained(world):
    """One offline training for the module: the flows under test start from a registered copy of it."""
    return lifecycle.offline_train(str(world), TrainConfig(**TINY), seed=0)


@pytest.fixture
def v1(world, stores, trained):
    """What the offline-training flow leaves (test_offline_training_... checks the flow itself): v1 registered,
    promoted, a round open around it, the world's news and impressions in the log store."""
    from flows.common import candidate_metrics
    registry, logs = stores
    version = registry.register(trained.bundle, kind="offline", parent=None, data_window=trained.data_window,
                                params={}, metrics=candidate_metrics(trained))
    data = load_dataset(world)
    logs.log_news(data.news.values())
    logs.import_impressions(data.impressions)  # inside v1's data window: major updates replay only what came after
    lifecycle.promote(registry, logs, version, who="test", why="offline training", now=time.time())
    assert version == "1"
    return stores


def log_round(logs: LogStore, world, clicked_team: int, n: int = 60, first: int = 0, teams=TEAMS) -> int:
    """Log `n` interleaved impressions in the open round, each with one click on the first item of `clicked_team`
    (impression ids numbered from `first`, so a round can be logged in parts)."""
    round_ = logs.current_round()
    impressions = load_dataset(world).impressions[-n:]
    now = time.time()
    for i, imp in enumerate(impressions, start=first):
        served = imp.candidates[:SERVED]
        logs.log_impression(ImpressionRecord(f"r{round_.round_id}-{i}", imp.user, now + i, imp.candidates, served,
                                             teams, round_.model_version, round_.round_id, round_.seed))
        logs.log_click(f"r{round_.round_id}-{i}", served[teams.index(clicked_team)], now + i + 1)
    return round_.round_id


def open_learner_round(logs: LogStore, **recipe) -> None:
    """A round served by another learner, as the next round after a minor update run with `learner=...` is."""
    from drn.learners import RoundRecipe
    lifecycle.open_round(logs, logs.current_round().model_version, 0.1, time.time(), RoundRecipe(**recipe))


def changed(registry: Registry, version: str, parent: str) -> bool:
    a, b = registry.load(version).weights, registry.load(parent).weights
    return any(not (a[k] == b[k]).all() for k in a)


def served_version(registry: Registry) -> str | None:
    info = registry.served()
    return info.version if info else None


def test_offline_training_registers_promotes_and_opens_a_round(world, stores):
    from flows.offline_training import offline_training
    registry, logs = stores
    result = offline_training(str(world), train_config=TINY)
    assert result["decision"] == "promoted" and result["version"] == "1"
    info = registry.version("1")
    assert info.kind == "offline" and info.parent is None and info.stage == "Production"
    assert "champion" in info.aliases and 0.0 <= info.metrics["auc"] <= 1.0
    assert logs.current_round().model_version == "1"
    assert len(logs.news()) > 100  # the world's news metadata, for later major updates
    impressions = len(load_dataset(world).impressions)  # and its impressions, for serving's feature state
    assert result["imported_impressions"] == logs.counts()["impressions"] == impressions
    assert logs.import_impressions(load_dataset(world).impressions) == 0  # what the flow imported, it imported once


def test_second_offline_training_is_compared_with_the_promoted_one(world, v1):
    from flows.offline_training import offline_training
    registry, _ = v1
    result = offline_training(str(world), train_config=TINY, seed=1, tolerance=-1.0)  # must gain 1.0 AUC: never
    assert result["decision"] == "registered" and result["version"] == "2"
    assert served_version(registry) == "1"
    assert "promoted.auc" in registry.version("2").metrics


def test_minor_update_after_a_winning_round_promotes_a_dbgd_step(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    round_id = log_round(logs, world, EXPLORE)
    result = minor_update()
    assert result["decision"] == "promoted" and result["winner"] == "explore"
    v2 = registry.version("2")
    assert (v2.kind, v2.parent, v2.stage) == ("minor", "1", "Production")
    assert v2.tags["interleaving.winner"] == "explore"
    won = registry.client.get_metric_history(v2.run_id, "round.won_by_explore")  # the round's credit, as a curve
    assert [m.step for m in won] == list(range(1, 61)) and won[-1].value == 60
    assert "plots/curves.png" in {a.path for a in registry.client.list_artifacts(v2.run_id, "plots")}
    closed = next(r for r in logs.rounds() if r.round_id == round_id)
    assert closed.outcome["winner"] == "explore" and closed.outcome["version"] == "2"
    assert logs.current_round().model_version == "2"
    # the new weights are exactly W + eta (W~ - W), W~ regenerated from the round's seed
    from drn.exploration import ETA, dbgd_step, explore_weights
    w = registry.load("1").weights
    expected = dbgd_step(w, explore_weights(w, closed.seed, closed.alpha), ETA)
    assert all((registry.load("2").weights[k] - expected[k]).abs().max() < 1e-6 for k in w)


def test_minor_update_after_a_losing_round_promotes_nothing(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    round_id = log_round(logs, world, EXPLOIT)
    result = minor_update(noise="tensor")  # scores the round as it was served; the next one is served so
    assert result["decision"] == "no step" and result["winner"] == "exploit"
    assert [v.version for v in registry.versions()] == ["1"] and served_version(registry) == "1"
    assert next(r for r in logs.rounds() if r.round_id == round_id).outcome["winner"] == "exploit"
    assert logs.current_round().round_id != round_id and logs.current_round().model_version == "1"
    from drn.learners import RoundRecipe
    assert logs.current_round().recipe == RoundRecipe(noise="tensor").to_dict()


def test_minor_update_keeps_a_round_with_too_little_feedback_open_until_it_decides(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    round_id = log_round(logs, world, EXPLORE, n=5)
    result = minor_update()
    assert result["decision"] == "round kept open" and result["winner"] == "pending"
    assert served_version(registry) == "1" and logs.current_round().round_id == round_id
    log_round(logs, world, EXPLORE, n=40, first=5)
    result = minor_update()
    assert result["decision"] == "promoted" and result["winner"] == "explore"
    assert logs.current_round().round_id != round_id


def test_minor_update_with_mgd_steps_towards_the_explore_networks_that_won(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    open_learner_round(logs, learner="mgd", explorers=3)
    log_round(logs, world, 2, teams=(0, 1, 2, 3) * 2)  # users click what explore network 2 placed
    result = minor_update(learner="mgd", explorers=3)
    assert result["decision"] == "promoted" and result["winner"] == "1 of 3 explorers"
    v2 = registry.version("2")
    assert (v2.kind, v2.parent, v2.stage) == ("minor", "1", "Production") and changed(registry, "2", "1")
    assert v2.metrics["mgd.winners"] == 1
    assert logs.current_round().recipe["learner"] == "mgd" and logs.current_round().model_version == "2"


def test_minor_update_with_pdgd_steps_on_the_rounds_replayed_clicks(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    open_learner_round(logs, learner="pdgd")
    log_round(logs, world, NO_TEAM, teams=(NO_TEAM,) * SERVED)  # sampled lists: no teams, the top item clicked
    result = minor_update(learner="pdgd")
    assert result["decision"] == "promoted" and result["winner"] == "60 clicked lists"
    assert registry.version("2").kind == "minor" and changed(registry, "2", "1")


def test_minor_update_with_sgd_trains_challengers_and_keeps_one_that_does_not_lose(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    open_learner_round(logs, learner="sgd")
    log_round(logs, world, NO_TEAM, teams=(NO_TEAM,) * SERVED)  # W alone: the feedback the first challenger learns
    result = minor_update(learner="sgd")
    assert result["decision"] == "no step" and result["challenger"] == "2" and served_version(registry) == "1"
    gate = logs.current_round()
    assert (gate.recipe["challenger"], gate.recipe["promote_on_tie"], gate.model_version) == ("2", True, "1")
    log_round(logs, world, EXPLOIT, n=30)
    log_round(logs, world, EXPLORE, n=30, first=30)  # a tie: an sgd challenger that does not lose is kept
    result = minor_update(learner="sgd")
    assert result["decision"] == "promoted" and served_version(registry) == "2"
    assert result["challenger"] == "3" and registry.version("3").parent == "2"
    assert logs.current_round().recipe["challenger"] == "3" and logs.current_round().model_version == "2"


def test_major_update_that_fails_the_screen_registers_but_gets_no_gate_round(world, v1):
    from flows.major_update import major_update
    registry, logs = v1
    round_id = log_round(logs, world, EXPLORE, n=40)
    result = major_update(train_config=TINY, tolerance=-1.0, min_impressions=20)
    assert result["decision"] == "registered" and result["replayed_impressions"] == 40
    v2 = registry.version("2")
    assert (v2.kind, v2.parent, v2.stage) == ("major", "1", "None")
    assert served_version(registry) == "1" and logs.current_round().round_id == round_id
    assert v2.data_window is not None and "gate" in v2.tags and "promoted.auc" in v2.metrics
    assert v2.tags["gate.verdict"].startswith("refused before its gate round")
    # the version page tells its story: metrics, the comparison in words, the evidence; the run has curves
    assert v2.tags["metric.auc"] == f"{v2.metrics['auc']:.4f}" and "Z/" in v2.tags["data_window"]
    assert "served v1" in v2.tags["gate.comparison"] and "held-out impressions" in v2.tags["gate.comparison"]
    assert v2.tags["evidence"].startswith("40 impressions")
    assert len(registry.client.get_metric_history(v2.run_id, "train.loss")) > 1
    assert "plots/curves.png" in {a.path for a in registry.client.list_artifacts(v2.run_id, "plots")}


@pytest.mark.parametrize("clicked_team, decision, served", [(EXPLORE, "promoted", "2"),
                                                            (EXPLOIT, "challenger refused", "1")])
def test_major_candidate_is_promoted_only_when_it_wins_its_gate_round(world, v1, clicked_team, decision, served):
    from flows.major_update import major_update
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE, n=40)
    result = major_update(train_config=TINY, tolerance=1.0, min_impressions=20)
    assert result["decision"] == "challenging" and served_version(registry) == "1"
    gate = logs.current_round()
    assert (gate.model_version, gate.recipe["challenger"]) == ("1", "2")
    again = major_update(train_config=TINY, tolerance=1.0, min_impressions=20)
    assert again["decision"] == "skipped" and len(registry.versions()) == 2  # one gate round at a time
    log_round(logs, world, clicked_team)  # users click what the candidate (EXPLORE) or the served model placed
    result = minor_update()
    assert result["decision"] == decision and served_version(registry) == served
    assert next(r for r in logs.rounds() if r.round_id == gate.round_id).outcome["challenger"] == "2"
    assert "gate round" in registry.version("2").tags["gate.verdict"]
    after = logs.current_round()
    assert after.model_version == served and after.recipe.get("challenger") is None  # back to exploring


def test_rollback_restores_the_previous_version(world, v1):
    from flows.minor_update import minor_update
    from flows.rollback import rollback
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    assert minor_update()["decision"] == "promoted"
    result = rollback(reason="CTR dropped")
    assert result["decision"] == "rolled back" and result["version"] == "1" and result["previous"] == "2"
    assert served_version(registry) == "1" and registry.version("1").tags["promotion_reason"] == "CTR dropped"
    assert logs.current_round().model_version == "1"


def test_a_stage_change_by_hand_is_recorded_by_the_next_update_and_holds_promotion(world, v1, monkeypatch):
    from flows.minor_update import minor_update
    registry, logs = v1
    monkeypatch.setattr("drn.registry.RECONCILE_GRACE_S", 0.0)  # the hand comes seconds after the promotion here
    log_round(logs, world, EXPLORE)
    assert minor_update()["decision"] == "promoted"
    registry.client.transition_model_version_stage(registry.model_name, "1", PRODUCTION,  # as in the MLflow UI
                                                   archive_existing_versions=True)
    assert minor_update()["decision"] == "no step"  # the open round was v2's
    assert "champion" in registry.version("1").aliases and registry.champion_version() == "1"
    change = [r for r in registry.history() if r["action"] == "stage_change"][-1]
    assert (change["version"], change["previous_version"]) == ("1", "2")
    assert logs.current_round().model_version == "1"
    assert registry.promotion_hold().why == "stage Production moved to v1 by hand"
    log_round(logs, world, EXPLORE, first=1000)  # v1's round is won: the step is registered, not served
    held = minor_update()
    assert held["decision"] == "held after rollback" and "promotion is held since" in held["why"]
    assert served_version(registry) == "1" and registry.version(held["version"]).kind == "minor"
    assert logs.current_round().model_version == "1"  # the next round explores around the version kept


def test_a_flow_that_crashes_before_promotion_leaves_the_promotion_unchanged(world, v1, monkeypatch):
    from flows import common
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE)

    def crash(*args, **kwargs):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(common, "promote", crash)
    with pytest.raises(RuntimeError, match="worker lost"):
        minor_update()
    assert registry.version("2").stage == "None" and served_version(registry) == "1"
    assert "champion" in registry.version("1").aliases


@pytest.mark.parametrize("clicked_team", [EXPLORE, EXPLOIT])
def test_a_round_closed_by_another_run_while_a_minor_update_decides_ends_that_run_cleanly(world, v1, monkeypatch,
                                                                                          clicked_team):
    """A major update opening its gate round (or a promotion, a rollback) closes the open round while a minor update
    is deciding it: the minor run completes, promotes nothing and opens no round of its own."""
    from drn.learners import RoundRecipe
    from flows import minor_update as module
    registry, logs = v1
    round_id = log_round(logs, world, clicked_team)
    real = module.decide

    def decide_while_another_run_opens_a_round(*args, **kwargs):
        decision = real(*args, **kwargs)
        lifecycle.open_round(logs, "1", 0.1, time.time(), RoundRecipe())
        return decision

    monkeypatch.setattr(module, "decide", decide_while_another_run_opens_a_round)
    result = module.minor_update()
    assert result["decision"] == "round closed meanwhile" and f"round {round_id} was closed" in result["why"]
    assert served_version(registry) == "1"
    rounds = logs.rounds()
    assert next(r for r in rounds if r.round_id == round_id).outcome is None  # as the other run closed it
    assert [r.round_id for r in rounds if r.is_open] == [rounds[-1].round_id] == [round_id + 1]
    if clicked_team == EXPLORE:  # the step was registered before the close was found taken
        assert registry.version("2").stage == "None" and "v2 stays registered, unpromoted" in result["why"]
    else:
        assert [v.version for v in registry.versions()] == ["1"]


def test_a_rollback_holds_every_automatic_promotion_until_resume(world, v1):
    from flows.major_update import major_update
    from flows.minor_update import minor_update
    from flows.rollback import resume, rollback
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    assert minor_update()["decision"] == "promoted"
    rolled = rollback(reason="CTR dropped")
    assert "promotion is held since" in rolled["why"] and served_version(registry) == "1"
    log_round(logs, world, EXPLORE, n=40)  # new evidence for both updates
    major = major_update(train_config=TINY, tolerance=1.0, min_impressions=20)
    assert major["decision"] == "held after rollback" and "not challenged" in major["why"]
    assert logs.current_round().recipe.get("challenger") is None  # no gate round for a candidate it cannot serve
    minor = minor_update()
    assert minor["decision"] == "held after rollback" and served_version(registry) == "1"
    assert [v.kind for v in registry.versions()] == ["offline", "minor", "major", "minor"]  # updates still register
    assert resume(reason="root cause fixed")["decision"] == "resumed" and registry.promotion_hold() is None
    assert resume(reason="again")["decision"] == "not held"
    log_round(logs, world, EXPLORE, first=1000)
    assert minor_update()["decision"] == "promoted"


def test_a_major_update_without_new_evidence_registers_nothing(world, v1):
    from flows.major_update import major_update
    registry, logs = v1
    log_round(logs, world, EXPLORE, n=40)
    first = major_update(train_config=TINY, tolerance=-1.0, min_impressions=20)  # refused by the screen
    assert first["decision"] == "registered" and len(registry.versions()) == 2
    again = major_update(train_config=TINY, tolerance=-1.0, min_impressions=20)
    assert again["decision"] == "no new evidence" and again["earlier"] == first["version"]
    assert len(registry.versions()) == 2
    log_round(logs, world, EXPLORE, n=40, first=1000)  # more traffic: a new attempt
    assert major_update(train_config=TINY, tolerance=-1.0, min_impressions=20)["decision"] == "registered"
    assert len(registry.versions()) == 3


def test_late_scheduled_runs_do_the_work_once_and_none_is_starved(world, v1):
    """After an outage every missed slot is a due run: the first to start does the work, the rest end Skipped. And it
    runs though a newer slot is due, so a schedule whose runs all start later than its period still runs."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.deployments import DEPLOYMENT, deployments
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    for deployment in deployments(paused={}):  # no runner serves them here: only the runs below ever run
        deployment.apply()
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(f"minor-update/{DEPLOYMENT}").id
        # two missed slots, an hour and a minute ago, both due, as the runner finds them
        now = datetime.now(timezone.utc)
        late, newer = (client.read_flow_run(client.create_flow_run_from_deployment(
            deployment_id, state=Scheduled(scheduled_time=now - ago)).id)
            for ago in (timedelta(hours=1), timedelta(minutes=1)))
    assert run_flow(minor_update, flow_run=late)["decision"] == "promoted"  # a newer slot is due: it runs anyway
    state = run_flow(minor_update, flow_run=newer, return_type="state")
    assert (state.type.value, state.name) == ("COMPLETED", "Skipped") and late.name in state.message
    assert state.result()["decision"] == "skipped" and len(registry.versions()) == 2


def test_stale_round_is_not_scored(world, v1):
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    logs.open_round("99", seed=1, alpha=0.1, time=time.time())  # a round served with another version
    result = minor_update()
    assert result["decision"] == "no step" and result["winner"] == "stale"
    assert served_version(registry) == "1" and len(registry.versions()) == 1


def test_two_minor_updates_never_run_at_once(world, v1, monkeypatch):
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    inside, overlap, real = [0], [False], lifecycle.minor_update
    lock = threading.Lock()

    def slow_decision(*args, **kwargs):  # holds the run inside its work long enough for the other to arrive
        with lock:
            inside[0] += 1
            overlap[0] |= inside[0] > 1
        time.sleep(3.0)
        with lock:
            inside[0] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "minor_update", slow_decision)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(minor_update)
        time.sleep(1.0)  # the first run is past its start and inside the decision when the second starts
        second = pool.submit(minor_update)
        results = sorted(f.result(timeout=120)["decision"] for f in (first, second))
    assert not overlap[0]
    assert results == ["promoted", "skipped"]
    assert [v.version for v in registry.versions()] == ["1", "2"]


def pause_and_serve_again(client, name: str):
    """Apply the deployments, pause `name` as an engineer does in the UI, apply them again (a re-serve); returns the
    deployment as first applied, after checking its schedule and concurrency limit."""
    from flows.deployments import deployments
    for deployment in deployments():
        deployment.apply()
    applied = client.read_deployment_by_name(name)
    assert not applied.paused and applied.global_concurrency_limit.limit == 1
    assert applied.schedules[0].schedule.interval.total_seconds() == 1800
    client.pause_deployment(applied.id)
    for deployment in deployments():
        deployment.apply()
    return applied


def test_deployments_keep_a_paused_schedule_paused(prefect_server):
    from prefect.client.orchestration import get_client

    from flows.deployments import DEPLOYMENT, deployments
    from flows.minor_update import minor_update
    name = f"minor-update/{DEPLOYMENT}"
    with get_client(sync_client=True) as client:
        pause_and_serve_again(client, name)
        assert client.read_deployment_by_name(name).paused
        # the pitfall this guards against: Prefect's own re-apply resumes it
        minor_update.to_deployment(DEPLOYMENT, interval=1800).apply()
        resumed = client.read_deployment_by_name(name)
        assert not resumed.paused
        # the schedule's own toggle in the UI, switched off, also survives a re-serve
        client.update_deployment_schedule(resumed.id, resumed.schedules[0].id, active=False)
        for deployment in deployments():
            deployment.apply()
        assert client.read_deployment_by_name(name).paused


def test_a_version_is_not_promoted_over_a_change_made_while_it_trained(world, v1, monkeypatch):
    from flows.major_update import major_update
    registry, logs = v1
    log_round(logs, world, EXPLORE, n=40)
    real = lifecycle.major_update

    def train_while_someone_promotes(*args, **kwargs):
        candidate = real(*args, **kwargs)
        other = registry.register(registry.load("1"), kind="minor", parent="1", data_window=None, params={},
                                  metrics={})
        registry.promote(other, who="test", why="promoted by someone else meanwhile")
        return candidate

    monkeypatch.setattr(lifecycle, "major_update", train_while_someone_promotes)
    result = major_update(train_config=TINY, tolerance=1.0, min_impressions=20)
    assert result["decision"] == "registered" and "changed" in result["why"]
    assert result["version"] == "3" and served_version(registry) == "2"
    assert logs.current_round().recipe.get("challenger") is None  # no gate round against a model it did not know


def test_each_run_publishes_its_decision_as_an_artifact(world, v1):
    from prefect.artifacts import Artifact

    from flows.minor_update import minor_update
    _, logs = v1
    log_round(logs, world, EXPLOIT)
    minor_update()
    artifact = Artifact.get("minor-update-decision")
    assert artifact is not None and "no step" in artifact.data and "exploit" in artifact.data


def test_cli_promote_rollback_models(world, v1, capsys):
    from drn_cli.main import main
    from flows.minor_update import minor_update
    registry, logs = v1
    log_round(logs, world, EXPLORE)
    assert minor_update()["decision"] == "promoted"
    capsys.readouterr()
    assert main(["rollback", "--reason", "looks wrong", "--hold-hours", "0"]) == 2  # a hold must have a length
    assert main(["rollback", "--reason", "looks wrong"]) == 0 and served_version(registry) == "1"
    rolled = json.loads(capsys.readouterr().out)
    assert rolled["promotion"]["held"] and rolled["promotion"]["until"] is None
    assert main(["promote", "2", "--reason", "fixed"]) == 0 and served_version(registry) == "2"
    assert logs.current_round().model_version == "2"
    assert main(["promote", "9"]) == 2  # unknown version: one line, nothing changed
    assert served_version(registry) == "2"
    capsys.readouterr()
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["version", "kind", "parent", "stage"]
    assert table[2].split()[:5] == ["2", "minor", "1", "Production", "champion"]
    assert table[-1].startswith("promotion is held since") and "v2 promoted by hand" in table[-1]
    assert main(["resume", "--reason", "checked"]) == 0 and json.loads(capsys.readouterr().out)["resumed"]
    assert main(["models"]) == 0 and capsys.readouterr().out.splitlines()[-1] == "automatic promotion: on (not held)"
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["stage"]) for r in rows] == [("1", "Archived"), ("2", "Production")]
    assert rows[0]["auc"] is not None and rows[0]["promoted_at"] is not None


def test_cli_parameters_and_flow_names():
    from drn_cli.flows_commands import FLOW_NAMES, parse_params
    from flows.deployments import FLOWS
    assert tuple(FLOWS) == FLOW_NAMES
    assert parse_params(["eta=0.1", 'train_config={"epochs": 1}', "to=null", "reason=bad ctr"]) == {
        "eta": 0.1, "train_config": {"epochs": 1}, "to": None, "reason": "bad ctr"}
    with pytest.raises(ValueError):
        parse_params(["eta"])


def test_config_reads_the_environment(tmp_path):
    settings = Settings.from_env({"DRN_HOME": str(tmp_path), "DRN_MODEL_NAME": "m",
                                  "DRN_LOGSTORE_URL": "postgresql+psycopg://db/logs"})
    assert settings.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db" and settings.prefect_api_url is None
    assert settings.logstore_url == "postgresql+psycopg://db/logs" and settings.model_name == "m"
    assert Settings.from_env({"DRN_MLFLOW_URI": "http://127.0.0.1:5000"}).mlflow_uri == "http://127.0.0.1:5000"


def test_promotion_is_safe_to_retry(home, v1):
    from flows import common
    registry, logs = v1
    history, round_id = len(registry.history()), logs.current_round().round_id
    # an attempt that served v1 (expected to replace nothing) but failed before reporting back, retried:
    assert common.promote.fn(home, "1", expected_served=None, why="retried")[0] == "promoted"
    assert served_version(registry) == "1" and len(registry.history()) == history
    assert logs.current_round().round_id != round_id and logs.current_round().model_version == "1"
