"""The HTTP service over real HTTP (uvicorn on loopback) against a real MLflow store on SQLite (one per module) and
a real SQLite log store per test."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import HTTPException

from drn import lifecycle
from drn.bundle import ModelBundle, bundle_of, network_of
from drn.config import Settings
from drn.features import HOUR, ITEM_IDLE_S, SCHEMA, FeatureState, record
from drn.logstore import IMPORTED, DuplicateImpression, ImpressionRecord, LogStore
from drn.mind import NewsItem, load_dataset
from drn.model import NetworkConfig, build_network
from drn.policy import top_k
from drn.registry import PRODUCTION, Registry
from drn.scoring import StackedScorer
from serving.app import Service, create_app
from serving.schemas import MAX_HISTORY, news_item
from serving.settings import ServeSettings
from serving.signing import ImpressionSigner
from serving.telemetry import Telemetry
from serving.writer import LogWriter, PendingImpression, settle

pytestmark = pytest.mark.integration

ADMIN, CLOCK = "admin-token-for-tests", "clock-token-for-tests"
POLL_S = 0.1  # fast following, so each switch is seen within a fraction of a second
MAX_CANDIDATES = 40
SECRET = b"s" * 32
TINY = NetworkConfig(hidden=(16,))


def _candidates(n: int, start: int = 0) -> list[dict]:
    return [{"news_id": f"N{i}", "category": f"cat{i % 4}", "subcategory": f"sub{i % 7}", "provider": f"p{i % 3}",
             "entities": [f"E{i % 5}"], "published": 1_700_000_000.0} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, store_urls, request) -> Registry:
    folder = tmp_path_factory.mktemp("mlflow")
    return Registry(store_urls.mlflow(request, folder), artifact_root=str(folder / "mlartifacts"))


@pytest.fixture(scope="module")
def versions(registry) -> dict[str, str]:
    """Two tiny DRN versions and one whose feature schema this code does not compute."""
    def register(seed: int, schema: dict) -> str:
        bundle = bundle_of(build_network(TINY, seed=seed))
        return registry.register(ModelBundle(bundle.weights, bundle.config, schema), kind="offline", parent=None,
                                 data_window=None, params={"seed": seed}, metrics={})
    return {"a": register(1, SCHEMA.to_dict()), "b": register(2, SCHEMA.to_dict()),
            "bad": register(3, {**SCHEMA.to_dict(), "version": 999})}


def _set_stage(registry: Registry, version: str | None) -> None:
    """A stage change made by hand, as in the MLflow UI: `version` to Production, or every version archived."""
    if version is not None:  # one call, as the UI's "transition to Production, archive the others" does
        registry.client.transition_model_version_stage(registry.model_name, version, PRODUCTION,
                                                       archive_existing_versions=True)
        return
    for info in registry.versions():
        if info.stage == PRODUCTION:
            registry.client.transition_model_version_stage(registry.model_name, info.version, "Archived")


@pytest.fixture
def logs(tmp_path, store_urls, request) -> Iterator[LogStore]:
    with LogStore(store_urls.logstore(request, tmp_path)) as store:
        yield store


def _settings(home: Path, **kw) -> ServeSettings:
    base = dict(stores=Settings.from_env({"DRN_HOME": str(home)}), secret=SECRET, poll_s=POLL_S, registry_poll_s=POLL_S,
                max_candidates=MAX_CANDIDATES, admin_token=ADMIN, clock_token=CLOCK)
    return ServeSettings(**{**base, **kw})


@contextlib.contextmanager
def serve(settings: ServeSettings, registry: Registry, logs: LogStore) -> Iterator[httpx.Client]:
    """The app under uvicorn on 127.0.0.1 (a free port) in a thread; a client for it."""
    app = create_app(settings, open_registry=lambda: registry, logs=logs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                           loop="asyncio"))  # as `drn serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            client.service = app.state.service  # for the tests that look inside
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def _wait_for(client: httpx.Client, check, what: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = {**client.get("/model").json(), **client.get("/healthz").json()}
        if check(state):
            return state
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last state {state}"
        time.sleep(POLL_S / 2)


def _recommend(client: httpx.Client, user: str = "U1", n: int = 20, k: int = 5, **kw) -> httpx.Response:
    return client.post("/recommend", json={"user": user, "candidates": _candidates(n), "k": k, **kw})


def test_serving_explores_as_the_rounds_recipe_says(registry, versions, logs, tmp_path):
    """The round's recipe in the log store, not a setting of the service, says how W~ is drawn and lists merged."""
    from drn.exploration import explore_weights
    from drn.learners import RoundRecipe
    from serving.holder import ModelHolder
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    recipe = RoundRecipe(noise="tensor", interleaving="probabilistic")
    round_ = lifecycle.open_round(logs, versions["a"], 0.3, time.time(), recipe)
    holder = ModelHolder(lambda: registry, logs, "stage", Telemetry())
    model = asyncio.run(holder.refresh())
    assert model.round == round_ and model.recipe == recipe and len(model.explore) == 1
    expected = explore_weights(registry.load(versions["a"]).weights, round_.seed, 0.3, "tensor")
    assert all(torch.equal(model.explore[0].state_dict()[k], expected[k]) for k in expected)
    assert model.describe()["round_recipe"] == recipe.to_dict()
    logs.open_round(versions["a"], 9, 0.3, time.time(), {"learner": "bandit"})  # not served by this release
    model = asyncio.run(holder.refresh())
    assert model.explore == () and model.round is None
    with serve(_settings(tmp_path), registry, logs) as client:
        assert _recommend(client).json()["round_id"] is None  # W alone, no failed request


def test_serving_makes_each_learners_lists_and_logs_what_the_update_needs(registry, versions, logs, tmp_path):
    """MGD's round multileaves W with its explore networks (teams 0..n logged); PDGD's samples from W and logs each
    position's probability; SGD's first round serves W alone, inside the round, to collect its feedback."""
    from drn.learners import RoundRecipe
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    with serve(_settings(tmp_path), registry, logs) as client:
        logged = {}
        for recipe in (RoundRecipe(learner="mgd", explorers=3), RoundRecipe(learner="pdgd"),
                       RoundRecipe(learner="sgd")):
            round_ = lifecycle.open_round(logs, versions["a"], 0.3, time.time(), recipe)
            _wait_for(client, lambda s: s["round_id"] == round_.round_id, f"the {recipe.learner} round")
            body = _recommend(client, k=8).json()
            assert body["round_id"] == round_.round_id
            logged[recipe.learner] = logs.impression(body["impression_id"])
    assert set(logged["mgd"].teams) == {0, 1, 2, 3} and not logged["mgd"].propensities
    pdgd = logged["pdgd"]
    assert set(pdgd.teams) == {-1} and len(pdgd.propensities) == 8 and all(0 < p <= 1 for p in pdgd.propensities)
    assert set(logged["sgd"].teams) == {-1} and not logged["sgd"].propensities


def test_a_gate_round_interleaves_the_challenger_version_against_the_served_one(registry, versions, logs):
    from serving.holder import ModelHolder
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    gate = lifecycle.challenge(logs, versions["a"], versions["b"], 0.1, time.time())
    telemetry = Telemetry()
    holder = ModelHolder(lambda: registry, logs, "stage", telemetry)
    model = asyncio.run(holder.refresh())
    assert model.version == versions["a"] and model.round == gate
    challenger = registry.load(versions["b"]).weights
    assert all(torch.equal(model.explore[0].state_dict()[k], challenger[k]) for k in challenger)
    assert model.describe()["round_recipe"]["challenger"] == versions["b"]
    lifecycle.challenge(logs, versions["a"], versions["bad"], 0.1, time.time())  # features this code lacks
    model = asyncio.run(holder.refresh())
    assert model.version == versions["a"] and model.explore == () and model.round is None
    assert telemetry.errors.labels("challenger_load_failed")._value.get() == 1
    after = lifecycle.promote(registry, logs, versions["b"], who="test", why="it won", now=time.time())
    assert after.recipe.get("challenger") is None  # a promotion explores again


def test_recommend_then_feedback_are_both_logged(registry, versions, logs, tmp_path):
    round_ = lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    with serve(_settings(tmp_path), registry, logs) as client:
        shown = _recommend(client)
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert (body["model_version"], body["source"], body["round_id"]) == (versions["a"], "drn", round_.round_id)
        assert len(body["items"]) == 5
        fed = client.post("/feedback", json={"clicks": [{"impression_id": body["impression_id"], "user": "U1",
                                                        "news_id": body["items"][1]}],
                                             "returns": [{"impression_id": body["impression_id"], "user": "U1"}]})
        assert fed.status_code == 200, fed.text
        assert fed.json() == {"clicks_recorded": 1, "clicks_duplicate": 0, "returns_recorded": 1,
                              "returns_duplicate": 0}
    (logged,) = list(logs.window())
    rec = logged.record
    assert rec.impression_id == body["impression_id"] and list(rec.served) == body["items"]
    assert rec.model_version == versions["a"] and (rec.round_id, rec.explore_seed) == (round_.round_id, round_.seed)
    assert set(rec.teams) <= {0, 1} and len(rec.candidates) == 20
    assert [c.news_id for c in logged.clicks] == [body["items"][1]]
    assert [user for user, _ in logs.returns()] == ["U1"]
    assert logs.news()["N3"].category == "cat3"  # metadata of new items is kept for replay and major updates


def test_concurrent_requests_are_answered_only_once_logged(registry, versions, logs, tmp_path):
    """Concurrent impressions share commits (group commit), yet each answer comes after its own is durable."""
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    with serve(_settings(tmp_path), registry, logs) as client:
        def user(u: int) -> list[str]:
            answered = []
            for _ in range(10):
                r = _recommend(client, user=f"U{u}")
                assert r.status_code == 200, r.text
                assert logs.impression(r.json()["impression_id"]) is not None  # logged before it was answered
                answered.append(r.json()["impression_id"])
            return answered

        with ThreadPoolExecutor(8) as pool:
            answered = [i for ids in pool.map(user, range(8)) for i in ids]
    assert sorted(answered) == sorted(logged.record.impression_id for logged in logs.window())


def test_a_failed_group_commit_fails_only_the_impressions_at_fault(logs):
    writer = LogWriter(logs)
    signer = ImpressionSigner(SECRET)
    first, second = (ImpressionRecord(signer.new_id(), "U1", 1.0, ("N1", "N2"), ("N1",), (-1,), "popularity")
                     for _ in range(2))
    logs.log_impression(first)
    batch = [PendingImpression(first, [], None), PendingImpression(second, [NewsItem("N1")], None)]
    outcomes = writer.commit(batch)  # the batch fails on the repeated id, then each impression is tried alone
    assert isinstance(outcomes[0], DuplicateImpression) and outcomes[1] is None
    assert logs.impression(second.impression_id) == second and "N1" in logs.news()

    async def resolve() -> list:
        loop = asyncio.get_running_loop()
        waiting = [PendingImpression(first, [], loop.create_future()) for _ in range(3)]
        waiting[2].committed.cancel()  # its request went away: the outcome is dropped, not raised
        settle(waiting, [outcomes[0], None, None])
        return [p.committed for p in waiting]

    failed, durable, cancelled = asyncio.run(resolve())
    assert isinstance(failed.exception(), DuplicateImpression) and durable.result() is None and cancelled.cancelled()
    writer.shutdown()


def test_a_failure_escaping_the_writer_fails_its_requests_and_later_ones_are_served(logs, tmp_path, monkeypatch):
    service = Service(_settings(tmp_path), lambda: None, logs, Telemetry())
    signer = ImpressionSigner(SECRET)

    def record() -> ImpressionRecord:
        return ImpressionRecord(signer.new_id(), "U1", 1.0, ("N1", "N2"), ("N1",), (-1,), "popularity")

    def broken(batch):
        raise RuntimeError("the writer thread broke")

    async def serve_two() -> tuple[int, str]:
        monkeypatch.setattr(service.writer, "commit", broken)
        with pytest.raises(HTTPException) as failed:
            await asyncio.wait_for(service._log_served(record(), []), timeout=10)
        monkeypatch.undo()
        later = record()
        await asyncio.wait_for(service._log_served(later, []), timeout=10)  # would wait for good before the mend
        return failed.value.status_code, later.impression_id

    status, later = asyncio.run(serve_two())
    assert status == 503 and logs.impression(later) is not None
    service.writer.shutdown()


def test_stage_changes_are_followed_without_restart_or_failed_request(registry, versions, logs, tmp_path):
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    answers: list[tuple[int, str]] = []
    stop = threading.Event()
    with serve(_settings(tmp_path), registry, logs) as client:
        def hammer() -> None:
            while not stop.is_set():
                r = _recommend(client, user=f"U{len(answers) % 7}")
                answers.append((r.status_code, r.json().get("model_version", r.text)))

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            _set_stage(registry, versions["b"])  # promotion by hand
            promoted = _wait_for(client, lambda s: s["version"] == versions["b"], "the promotion")
            _set_stage(registry, versions["a"])  # rollback by hand
            _wait_for(client, lambda s: s["version"] == versions["a"], "the rollback")
            time.sleep(0.2)
        finally:
            stop.set()
            worker.join(10)
    assert promoted["exploring"] is False  # the open round belongs to version a: b serves unexplored
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {v for _, v in answers} == {versions["a"], versions["b"]}
    by_round = {r.round_id: r.model_version for r in logs.rounds()}
    for logged in logs.window():  # an impression names the round it was interleaved in only for its own version
        assert logged.record.round_id is None or by_round[logged.record.round_id] == logged.record.model_version


def test_a_pipeline_promotion_is_seen_through_its_round_between_registry_looks(registry, versions, logs, tmp_path):
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    with serve(_settings(tmp_path, registry_poll_s=3600.0), registry, logs) as client:
        _wait_for(client, lambda s: s["version"] == versions["a"], "the first version")
        _set_stage(registry, versions["b"])  # by hand: no round opens, so it waits for the next registry look
        time.sleep(10 * POLL_S)
        assert client.get("/model").json()["version"] == versions["a"]
        round_ = lifecycle.promote(registry, logs, versions["a"], who="test", why="back to a, new round",
                                   now=time.time())  # the pipeline's way: the new round prompts a registry look
        state = _wait_for(client, lambda s: s["round_id"] == round_.round_id, "the new round")
        assert state["version"] == versions["a"] and state["exploring"] is True


def test_item_descriptions_are_logged_when_they_change(registry, versions, logs, tmp_path):
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    item = {"news_id": "N1", "category": "sports", "entities": ["E1"]}
    with serve(_settings(tmp_path), registry, logs) as client:
        for category, expected in (("sports", "sports"), ("sports", "sports"), ("finance", "finance"),
                                   ("sports", "sports"), (None, "sports")):
            described = {**item, "category": category} if category else {"news_id": "N1"}
            r = client.post("/recommend", json={"user": "U1", "candidates": [described, {"news_id": "N2"}], "k": 2})
            assert r.status_code == 200, r.text
            known = logs.news()["N1"]  # the log store holds the description serving ranked with
            assert (known.category, known.entities) == (expected, ("E1",))


def test_items_a_news_stream_left_idle_are_forgotten_and_come_back_from_the_log_store(registry, versions, logs,
                                                                                      tmp_path):
    _set_stage(registry, versions["a"])
    clock, t0 = {"X-DRN-Clock-Token": CLOCK}, 1_800_000_000.0
    old, later = _candidates(20), t0 + ITEM_IDLE_S + 2 * HOUR
    ids = [c["news_id"] for c in old]

    def ask(client: httpx.Client, user: str, candidates: list[dict], at: float, **kw) -> None:
        r = client.post("/recommend", headers=clock, json={"user": user, "candidates": candidates, "k": 5,
                                                            "context": {"time": at}, **kw})
        assert r.status_code == 200, r.text

    with serve(_settings(tmp_path), registry, logs) as client:
        service = client.service
        ask(client, "U1", old, t0)
        ask(client, "U1", _candidates(20, start=100), later)  # weeks later, other items; the first ones idle since
        assert not [n for n in ids if service.state.knows_item(n) or n in service.news]
        assert "drn_serving_items_held 20.0" in client.get("/metrics").text
        # named again with part of their description, and in a new user's history
        ask(client, "U2", [{"news_id": c["news_id"], "category": c["category"]} for c in old], later + 60,
            history=["N3"])
        served = service.state.features("U2", ids, later + 120)
    expected = FeatureState({c["news_id"]: news_item(c, None) for c in old})
    expected.see_history("U2", ["N3"])
    asked = expected.features("U2", ids, later + 120)
    for block in ("news.metadata", "news.has_metadata", "user.profile_all"):
        np.testing.assert_array_equal(served.column(block), asked.column(block))
    assert served.column("news.has_metadata").all()
    assert logs.news()["N1"] == news_item(old[1], None)  # not overwritten by the part the client sent


def test_alias_mode_follows_the_champion_alias(registry, versions, logs, tmp_path):
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    with serve(_settings(tmp_path, follow="alias"), registry, logs) as client:
        _wait_for(client, lambda s: s["version"] == versions["a"], "the champion")
        registry.client.set_registered_model_alias(registry.model_name, "champion", versions["b"])  # by hand
        state = _wait_for(client, lambda s: s["version"] == versions["b"], "the alias move")
        assert state["follow"] == "alias" and _recommend(client).json()["model_version"] == versions["b"]


def test_forged_duplicate_and_malformed_feedback(registry, versions, logs, tmp_path):
    _set_stage(registry, versions["a"])
    with serve(_settings(tmp_path), registry, logs) as client:
        body = _recommend(client).json()
        iid, served = body["impression_id"], body["items"]
        nonce, tag = iid.split(".")
        forged_tag = ("0" if tag[0] != "0" else "1") + tag[1:]
        never_served = ImpressionSigner(SECRET).new_id()  # signed with the service's key, but never logged
        before = logs.counts()

        def click(impression_id: str, news_id: str, **extra) -> httpx.Response:
            return client.post("/feedback", json={"clicks": [{"impression_id": impression_id, "user": "U1",
                                                              "news_id": news_id, **extra}]})
        assert click(f"{nonce}.{forged_tag}", served[0]).status_code == 403
        assert click(f"{'a' * 32}.{tag}", served[0]).status_code == 403  # a real tag on another nonce
        assert click(never_served, served[0]).status_code == 404
        assert click("not-an-id", served[0]).status_code == 422
        assert click(iid, "N39").status_code == 422  # a candidate that was not shown
        assert click(iid, served[0], time="noon").status_code == 422
        assert client.post("/feedback", json={}).status_code == 422
        both = client.post("/feedback", json={"clicks": [{"impression_id": iid, "user": "U1", "news_id": served[0]},
                                                         {"impression_id": iid, "user": "U1", "news_id": "N39"}]})
        assert both.status_code == 422  # one bad click: the good one is not written either
        assert logs.counts() == before
        first, again = click(iid, served[0]), click(iid, served[0])
        assert first.json()["clicks_recorded"] == 1
        assert again.json() == {"clicks_recorded": 0, "clicks_duplicate": 1, "returns_recorded": 0,
                                "returns_duplicate": 0}
        metrics = client.get("/metrics").text
    assert logs.counts()["clicks"] == before["clicks"] + 1
    assert 'drn_serving_clicks_total{outcome="duplicate"} 1.0' in metrics


def test_bad_recommend_requests_are_refused_and_change_nothing(registry, versions, logs, tmp_path):
    _set_stage(registry, versions["a"])
    with serve(_settings(tmp_path), registry, logs) as client:
        before = logs.counts()
        good = {"user": "U1", "candidates": _candidates(5), "k": 3}
        bad = {
            "empty": {**good, "candidates": []},
            "oversized": {**good, "candidates": _candidates(MAX_CANDIDATES + 1)},
            "duplicates": {**good, "candidates": _candidates(3) + _candidates(1)},
            "malformed user": {**good, "user": "U 1; drop"},
            "malformed news id": {**good, "candidates": [{"news_id": "../etc"}]},
            "malformed time": {**good, "context": {"time": "yesterday"}},
            "negative time": {**good, "context": {"time": -5}},
            "k zero": {**good, "k": 0},
            "unknown field": {**good, "candidate": []},
            "history not a list": {**good, "history": "N1 N2"},
            "history not of ids": {**good, "history": [1, 2]},
            "malformed history id": {**good, "history": ["N1", "../etc"]},
            "history too long": {**good, "history": ["N1"] * (MAX_HISTORY + 1)},
            "NUL in a label": {**good, "candidates": [{"news_id": "N1", "category": "sp\x00rts"}]},
        }
        answers = {name: client.post("/recommend", json=payload) for name, payload in bad.items()}
        assert {name: r.status_code for name, r in answers.items()} == {name: 422 for name in bad}
        assert "duplicate candidates: N0" in answers["duplicates"].text
        assert answers["malformed user"].json()["detail"][0]["loc"] == ["body", "user"]  # FastAPI's own 422 body
        assert client.post("/recommend", content=b"{not json").status_code == 422
        assert client.get("/recommend").status_code == 405
        assert logs.counts() == before
        assert client.post("/recommend", json=good).status_code == 200
        document = client.get("/openapi.json").json()  # the fast route is documented like the others
        body = document["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].rsplit("/", 1)[1] == "RecommendRequest"
        request = document["components"]["schemas"]["RecommendRequest"]
        assert {"user", "candidates"} <= set(request["required"]) and "history" not in request["required"]
        assert request["properties"]["history"]["maxItems"] == MAX_HISTORY
        assert "Candidate" in document["components"]["schemas"]
        metrics = client.get("/metrics").text
        assert 'drn_serving_requests_total{route="/recommend",status="200"}' in metrics


def test_registry_outage_keeps_serving(registry, versions, logs, tmp_path, monkeypatch):
    _set_stage(registry, versions["a"])
    with serve(_settings(tmp_path), registry, logs) as client:
        assert _recommend(client).json()["model_version"] == versions["a"]

        def unreachable(*args, **kwargs):
            raise ConnectionError("registry database is gone")
        monkeypatch.setattr(registry.client, "search_model_versions", unreachable)  # what every look at it reads
        state = _wait_for(client, lambda s: s["status"] == "degraded", "the outage to show")
        assert "registry database is gone" in state["registry_error"]
        answers = [_recommend(client) for _ in range(5)]
        assert all(r.status_code == 200 and r.json()["model_version"] == versions["a"] for r in answers)
        assert 'drn_serving_errors_total{kind="registry_unreachable"}' in client.get("/metrics").text
        monkeypatch.undo()
        _wait_for(client, lambda s: s["status"] == "ok", "recovery")


def test_a_version_that_does_not_load_is_not_served(registry, versions, logs, tmp_path):
    _set_stage(registry, versions["a"])
    with serve(_settings(tmp_path), registry, logs) as client:
        _set_stage(registry, versions["bad"])
        state = _wait_for(client, lambda s: s["load_error"] is not None, "the failed load")
        assert "feature schema mismatch" in state["load_error"] and state["version"] == versions["a"]
        assert _recommend(client).json()["model_version"] == versions["a"]
        assert 'drn_serving_errors_total{kind="model_load_failed"} 1.0' in client.get("/metrics").text
        _set_stage(registry, versions["b"])
        _wait_for(client, lambda s: s["version"] == versions["b"] and s["status"] == "ok", "the next good version")


def test_cold_start_serves_popularity_and_a_restart_remembers_clicks(registry, versions, logs, tmp_path):
    _set_stage(registry, None)
    settings = _settings(tmp_path)
    with serve(settings, registry, logs) as client:
        health = client.get("/healthz").json()
        assert health["cold_start"] is True and health["source"] == "popularity"
        first = _recommend(client, n=10, k=3).json()
        assert (first["source"], first["model_version"], first["round_id"]) == ("popularity", "popularity", None)
        assert first["items"] == ["N0", "N1", "N2"]  # no clicks yet: candidate order
        client.post("/feedback", json={"clicks": [{"impression_id": first["impression_id"], "user": "U1",
                                                   "news_id": "N2"}]})
        second = _recommend(client, user="U2", n=10, k=3).json()
        assert second["items"] == ["N2", "N0", "N1"]  # the clicked item leads
        clicks = [{"impression_id": second["impression_id"], "user": "U2", "news_id": n} for n in ("N2", "N1", "N1")]
        assert client.post("/feedback", json={"clicks": clicks}).json()["clicks_duplicate"] == 1
        # N2 has 2 clicks, N1 one: counted twice, N1 would tie with N2 and lead by candidate order
        assert _recommend(client, user="U4", n=10, k=3).json()["items"][:2] == ["N2", "N1"]
    with serve(settings, registry, logs) as client:  # a restart: the feature state is rebuilt from the log store
        assert _recommend(client, user="U3", n=10, k=3).json()["items"][0] == "N2"


def test_returns_count_once_and_feedback_for_another_user_or_past_the_window_is_refused(registry, versions, logs,
                                                                                         tmp_path):
    """Every refused event leaves the log store as it was, so it is in no training sample (the replay that training
    and evaluation run over the log store's impressions)."""
    from drn.features import FeatureState, replay
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    window, clock = 3600.0, {"X-DRN-Clock-Token": CLOCK}
    at = time.time() - 60.0
    with serve(_settings(tmp_path, feedback_window_s=window), registry, logs) as client:
        body = client.post("/recommend", headers=clock, json={"user": "U1", "candidates": _candidates(20), "k": 5,
                                                              "context": {"time": at}}).json()
        iid, shown = body["impression_id"], body["items"]
        before = logs.counts()

        def feedback(**events) -> httpx.Response:
            return client.post("/feedback", headers=clock, json=events)
        refused = {
            "a click for another user's impression": feedback(clicks=[{"impression_id": iid, "user": "U2",
                                                                       "news_id": shown[0]}]),
            "a return for another user's impression": feedback(returns=[{"impression_id": iid, "user": "U2"}]),
            "a click past the window": feedback(clicks=[{"impression_id": iid, "user": "U1", "news_id": shown[1],
                                                         "time": at + window + 1.0}]),
            "a return past the window": feedback(returns=[{"impression_id": iid, "user": "U1",
                                                           "time": at + window + 1.0}]),
            "a return before its impression": feedback(returns=[{"impression_id": iid, "user": "U1",
                                                                 "time": at - 1.0}]),
            "a return with a forged id": feedback(returns=[{"impression_id": f"{'a' * 32}.{iid.split('.')[1]}",
                                                            "user": "U1"}]),
            "a return for an impression never served": feedback(returns=[{"impression_id": ImpressionSigner(
                SECRET).new_id(), "user": "U1"}]),
            "a good click batched with a stale return": feedback(
                clicks=[{"impression_id": iid, "user": "U1", "news_id": shown[2], "time": at + 10.0}],
                returns=[{"impression_id": iid, "user": "U1", "time": at + window + 1.0}]),
        }
        statuses = {why: r.status_code for why, r in refused.items()}
        assert statuses == {
            "a click for another user's impression": 403, "a return for another user's impression": 403,
            "a click past the window": 422, "a return past the window": 422, "a return before its impression": 422,
            "a return with a forged id": 403, "a return for an impression never served": 404,
            "a good click batched with a stale return": 422}, {why: r.text for why, r in refused.items()}
        assert "past the feedback window of 3600 s" in refused["a click past the window"].json()["detail"]
        assert logs.counts() == before
        accepted = [feedback(clicks=[{"impression_id": iid, "user": "U1", "news_id": shown[3], "time": at + 5.0}],
                             returns=[{"impression_id": iid, "user": "U1", "time": at + window}])
                    for _ in range(3)]  # a client retrying
        assert [r.json() for r in accepted] == [
            {"clicks_recorded": 1, "clicks_duplicate": 0, "returns_recorded": 1, "returns_duplicate": 0},
            *[{"clicks_recorded": 0, "clicks_duplicate": 1, "returns_recorded": 0, "returns_duplicate": 1}] * 2]
    assert logs.counts() == {**before, "clicks": before["clicks"] + 1, "returns": before["returns"] + 1}
    assert logs.returns() == [("U1", at + window)]
    samples = list(replay([logged.to_impression() for logged in logs.window()], FeatureState(logs.news())))
    assert [(s.impression.impression_id, s.impression.clicked) for s in samples] == [(iid, (shown[3],))]


def test_admin_routes_need_the_token(registry, versions, logs, tmp_path):
    lifecycle.promote(registry, logs, versions["a"], who="test", why="serve a", now=time.time())
    lifecycle.promote(registry, logs, versions["b"], who="test", why="serve b", now=time.time())
    with serve(_settings(tmp_path), registry, logs) as client:
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/admin/rollback", json={"why": "x"}).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert client.post("/admin/reload", headers=auth).json()["version"] == versions["b"]
        rolled = client.post("/admin/rollback", headers=auth, json={"why": "looks wrong"})
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["rolled_back_to"] == versions["a"] and rolled.json()["exploring"] is True
        assert registry.served().version == versions["a"]
        promotion = client.get("/model").json()["promotion"]  # the rollback holds automatic promotion, and says so
        assert promotion["held"] and promotion["by"] == "serving:/admin/rollback" and "looks wrong" in promotion["why"]
        registry.resume(who="test", why="the next tests promote")
        assert client.get("/model").json()["promotion"] == {"held": False}
    with serve(_settings(tmp_path, admin_token=None), registry, logs) as client:
        assert client.post("/admin/reload", headers=auth).status_code == 403


def test_client_time_only_with_the_clock_token(registry, versions, logs, tmp_path):
    _set_stage(registry, versions["a"])
    simulated = 1_800_000_000.0
    with serve(_settings(tmp_path), registry, logs) as client:
        trusted = client.post("/recommend", headers={"X-DRN-Clock-Token": CLOCK},
                              json={"user": "U1", "candidates": _candidates(5), "context": {"time": simulated}})
        untrusted = client.post("/recommend", json={"user": "U1", "candidates": _candidates(5),
                                                     "context": {"time": simulated}})
        model = client.get("/model").json()
        metrics = client.get("/metrics").text
    assert trusted.json()["time"] == simulated
    assert abs(untrusted.json()["time"] - time.time()) < 60
    assert model["feature_schema_version"] == SCHEMA.version and model["follow"] == "stage"
    assert 'drn_serving_request_seconds_bucket{le="0.02",route="/recommend"}' in metrics
    assert f'drn_serving_model_info{{round_id="",source="drn",version="{versions["a"]}"}} 1.0' in metrics


def _ranked(network_bundle: ModelBundle, state: FeatureState, user: str, ids: list[str], now: float, k: int) -> list:
    """The list the promoted network alone (no round open) serves from `state`: what /recommend must answer."""
    scores = StackedScorer([network_of(network_bundle)]).score(state.features(user, ids, now))[0]
    return [ids[i] for i in top_k(scores, k)]


def test_history_seeds_an_unknown_user_and_a_restart_rebuilds_it(registry, versions, logs, tmp_path):
    _set_stage(registry, versions["a"])  # by hand: no round, so the network alone ranks (deterministic)
    bundle, described = registry.load(versions["a"]), _candidates(20)
    ids, history, t0 = [c["news_id"] for c in described], ["N3", "N5", "N5", "N8"], 1_800_000_000.0

    def expected(seed: list[str], shown: list[str] = ()) -> FeatureState:
        state = FeatureState({c["news_id"]: news_item(c, None) for c in described})
        state.see_history("U9", seed)
        if shown:
            state.record_impression("U9", shown, t0)
        return state

    settings, clock = _settings(tmp_path), {"X-DRN-Clock-Token": CLOCK}
    with serve(settings, registry, logs) as client:
        first = client.post("/recommend", headers=clock, json={
            "user": "U9", "candidates": described, "k": 5, "history": history, "context": {"time": t0}}).json()
    assert first["items"] == _ranked(bundle, expected(history), "U9", ids, t0, 5)
    assert first["items"] != _ranked(bundle, expected([]), "U9", ids, t0, 5)  # the history made the difference
    assert logs.impression(first["impression_id"]).history == tuple(history)
    with serve(settings, registry, logs) as client:  # a restart: the user is rebuilt with that history
        again = client.post("/recommend", headers=clock, json={
            "user": "U9", "candidates": [{"news_id": n} for n in ids], "k": 5, "history": ["N1"],
            "context": {"time": t0 + 60}}).json()
    warm = expected(history, first["items"])
    assert again["items"] == _ranked(bundle, warm, "U9", ids, t0 + 60, 5)  # the known user's new history is ignored
    assert logs.impression(again["impression_id"]).history == ()


def test_a_model_trained_offline_ranks_its_first_request_with_the_training_logs_state(
        prefect_server, tmp_path, monkeypatch, store_urls, request):
    """The path of `drn flows run offline-training --param data_dir=...` then `drn up`: the served version's first
    request sees the users' clicks and histories and the items' click counts of the logs it was trained on."""
    from drn.world import generate_logs
    from flows.offline_training import offline_training
    folder, home = tmp_path / "logs", tmp_path / "drn"
    generate_logs(folder, days=2, users=10, seed=3)
    monkeypatch.setenv("DRN_HOME", str(home))
    for var in ("DRN_MLFLOW_URI", "DRN_LOGSTORE_URL", "DRN_MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)
    for var, url in store_urls.environment(request, home).items():
        monkeypatch.setenv(var, url)
    result = offline_training(str(folder), train_config={"epochs": 1, "buffer_impressions": 128,
                                                         "batch_impressions": 16, "train_every": 8})
    assert result["decision"] == "promoted"
    data = load_dataset(folder)
    stores = Settings.from_env()
    registry, logs = stores.open_registry(), stores.open_log_store()
    try:
        assert logs.counts()["impressions"] == result["imported_impressions"] == len(data.impressions)
        versions = {v.version: v for v in registry.versions()}
        assert list(logs.window(lifecycle.replay_start(versions, result["version"]))) == []  # no major replay of them
        round_ = logs.current_round()
        logs.close_round(round_.round_id, {"winner": "none", "why": "the test ranks with W alone"}, time.time())
        evaluated = FeatureState(data.news)  # the state the evaluation ended with: every logged event, in time order
        for impression in data.impressions:
            record(impression, evaluated)
        user = max({i.user for i in data.impressions}, key=lambda u: sum(len(i.clicked) for i in data.impressions
                                                                         if i.user == u))
        clicks = {n: sum(n in i.clicked for i in data.impressions) for n in data.news}
        ids = sorted(clicks, key=clicks.get, reverse=True)[:10] + sorted(clicks, key=clicks.get)[:10]
        now = data.impressions[-1].time + 60.0
        bundle = registry.load(result["version"])
        with serve(_settings(home), registry, logs) as client:
            first = client.post("/recommend", headers={"X-DRN-Clock-Token": CLOCK},
                                json={"user": user, "candidates": [{"news_id": n} for n in ids], "k": 5,
                                      "context": {"time": now}}).json()
        assert first["model_version"] == result["version"] and first["round_id"] is None
        assert first["items"] == _ranked(bundle, evaluated, user, ids, now, 5)
        assert first["items"] != _ranked(bundle, FeatureState(data.news), user, ids, now, 5)  # not a cold state
        assert {li.record.source for li in logs.window(end=now)} == {IMPORTED}
    finally:
        logs.close()
