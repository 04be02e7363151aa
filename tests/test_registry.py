"""drn.registry against a real MLflow store (SQLite + local artifacts), one store for the whole module."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from drn.bundle import ModelBundle, _sha256
from drn.registry import (CHAMPION, PRODUCTION, SERVING_ACTIONS, CorruptModelError, PromotionHeld, Registry, RegistryError,
                          epoch_time)

pytestmark = pytest.mark.integration

TIMINGS: dict[str, list[float]] = {}


def _timed(name, fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    TIMINGS.setdefault(name, []).append(time.perf_counter() - t)
    return out


def _bundle(seed: int = 0) -> ModelBundle:
    g = torch.Generator().manual_seed(seed)
    return ModelBundle(
        weights={"layer.weight": torch.randn(16, 8, generator=g), "layer.bias": torch.randn(16, generator=g),
                 "steps": torch.tensor([seed], dtype=torch.int64), "half": torch.randn(4, generator=g).half()},
        config={"hidden": [16, 8], "dueling": True, "seed": seed},
        feature_schema={"user": ["clicks_1h", "clicks_1d"], "news": ["age_s", "ctr"], "version": 1},
    )


def _register(reg: Registry, seed: int = 0, **kw) -> str:
    args = dict(kind="offline", parent=None, data_window=(1000.0, 2000.0), params={"lr": 0.01},
                metrics={"auc": 0.6 + seed / 1000})
    args.update(kw)
    return _timed("register", reg.register, _bundle(seed), **args)


def _folder(reg: Registry, version: str) -> Path:
    src = reg.client.get_model_version(reg.model_name, version).source
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(src).path))


@pytest.fixture(scope="module")
def reg(tmp_path_factory, store_urls, request) -> Registry:
    d = tmp_path_factory.mktemp("mlflow")
    r = _timed("init (import + new db)", Registry, store_urls.mlflow(request, d), artifact_root=str(d / "mlartifacts"))
    r.reconcile_grace_s = 0.0  # changes by hand follow drn's own at once here
    yield r
    print("\nregistry timings (s):", {k: f"max {max(v):.3f} mean {sum(v) / len(v):.3f} n={len(v)}"
                                       for k, v in TIMINGS.items()})


@pytest.fixture(autouse=True)
def no_hold_left_behind(request):
    """The module shares one store: a test that rolls back must not hold the next test's promotions."""
    yield
    if "reg" in request.fixturenames:
        request.getfixturevalue("reg").resume(who="test", why="the next test starts unheld")


def test_register_load_roundtrip(reg):
    b = _bundle(1)
    v = _register(reg, 1)
    got = _timed("load", reg.load, v)
    assert set(got.weights) == set(b.weights)
    for k, t in b.weights.items():
        assert got.weights[k].dtype == t.dtype and torch.equal(got.weights[k], t), k
    assert got.config == b.config and got.feature_schema == b.feature_schema
    # stored as plain artifacts and an MLmodel file, nothing pickled
    assert sorted(p.name for p in _folder(reg, v).iterdir()) == [
        "MLmodel", "config.json", "feature_schema.json", "manifest.json", "weights.pt"]


def test_version_tags_params_metrics_plots(reg, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parent = _register(reg, 2)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = tmp_path / "curve.png"
    fig.savefig(png)
    v = _register(reg, 3, kind="minor", parent=parent, data_window=(10.0, 20.0),
                  params={"alpha": 0.1, "net": {"hidden": 16}}, metrics={"ctr": 0.12, "auc": 0.7},
                  tags={"interleaving_outcome": "explore_wins 12:7"}, plots={"ctr": fig, "curve": str(png)})
    plt.close(fig)
    info = reg.version(v)
    assert (info.kind, info.parent, info.data_window) == ("minor", parent, (10.0, 20.0))
    assert info.tags["kind"] == "minor" and info.tags["parent"] == parent
    assert info.tags["data_window"] == "1970-01-01T00:00:10.000Z/1970-01-01T00:00:20.000Z"  # ISO 8601 interval
    assert info.tags["code_version"] and info.tags["code_version"] != "unknown"
    assert info.tags["interleaving_outcome"] == "explore_wins 12:7"
    assert info.metrics == {"ctr": 0.12, "auc": 0.7}
    assert (info.tags["metric.ctr"], info.tags["metric.auc"]) == ("0.1200", "0.7000")  # on the version page too
    assert info.stage == "None" and info.aliases == [] and info.promoted_at is None
    run = reg.client.get_run(info.run_id)
    assert run.data.params == {"alpha": "0.1", "net.hidden": "16"} and run.info.status == "FINISHED"
    plots = {a.path for a in reg.client.list_artifacts(info.run_id, "plots")}
    assert plots == {"plots/ctr.png", "plots/curve.png"}
    root = reg.version(parent)
    assert root.parent is None and root.kind == "offline"
    assert [x.version for x in reg.versions()][-2:] == [parent, v]


def test_register_refuses_bad_input(reg):
    n = len(reg.versions())
    with pytest.raises(ValueError, match="kind"):
        _register(reg, kind="retrain")
    with pytest.raises(ValueError, match="set by the registry"):
        _register(reg, tags={"promoted_by": "me"})
    with pytest.raises(RegistryError):
        _register(reg, parent="9999")
    with pytest.raises(ValueError, match="JSON"):
        reg.register(ModelBundle(_bundle().weights, {"f": object()}, {}), kind="offline", parent=None,
                     data_window=None, params={}, metrics={})
    assert len(reg.versions()) == n


def test_crash_mid_register_leaves_no_version(reg, monkeypatch):
    n = len(reg.versions())
    real = reg.client.log_artifacts
    runs = []

    def crash_after_partial_upload(run_id, local_dir, artifact_path=None):
        runs.append(run_id)
        reg.client.log_artifact(run_id, str(Path(local_dir) / "weights.pt"), artifact_path)  # half written
        raise OSError("disk full")

    monkeypatch.setattr(reg.client, "log_artifacts", crash_after_partial_upload)
    with pytest.raises(OSError, match="disk full"):
        _register(reg, 4)
    monkeypatch.setattr(reg.client, "log_artifacts", real)
    assert len(reg.versions()) == n  # nothing visible
    assert reg.client.get_run(runs[0]).info.status == "FAILED"

    def silently_partial_upload(run_id, local_dir, artifact_path=None):
        runs.append(run_id)
        for name in ("weights.pt", "manifest.json"):  # a store that lost files without an error
            reg.client.log_artifact(run_id, str(Path(local_dir) / name), artifact_path)

    monkeypatch.setattr(reg.client, "log_artifacts", silently_partial_upload)
    with pytest.raises(CorruptModelError, match="incomplete"):
        _register(reg, 4)
    monkeypatch.setattr(reg.client, "log_artifacts", real)
    assert len(reg.versions()) == n
    assert reg.client.get_run(runs[1]).info.status == "FAILED"


def test_promote_sets_production_and_champion_and_archives_previous(reg):
    a, b = _register(reg, 5), _register(reg, 6)
    assert reg.champion() is None and reg.champion_version() is None and reg.served_version() is None
    _timed("promote", reg.promote, a, who="alice", why="offline baseline")
    before = reg.served()
    assert before.version == a and before.stage == PRODUCTION and before.aliases == [CHAMPION]
    assert reg.served_version() == reg.champion_version() == a
    _timed("promote", reg.promote, b, who="bob", why="major update beats parent")
    va, vb = reg.version(a), reg.version(b)
    assert (vb.stage, vb.aliases) == (PRODUCTION, [CHAMPION])
    assert (va.stage, va.aliases) == ("Archived", [])
    assert str(reg.client.get_model_version_by_alias(reg.model_name, CHAMPION).version) == b
    assert reg.champion().version == b and reg.champion().aliases == [CHAMPION]
    assert sum(x.stage == PRODUCTION for x in reg.versions()) == 1
    assert reg.served().version == b and reg.served_version() == reg.champion_version() == b
    t = vb.tags
    assert (t["promoted_by"], t["promotion_reason"], t["previous_version"], t["promotion_action"]) == (
        "bob", "major update beats parent", a, "promote")
    assert vb.promoted_at and abs(vb.promoted_at - time.time()) < 60
    last = reg.history()[-1]
    assert {k: last[k] for k in ("action", "version", "previous_version", "who", "why")} == {
        "action": "promote", "version": b, "previous_version": a, "who": "bob", "why": "major update beats parent"}


def test_a_registry_outage_is_not_read_as_no_champion(reg, monkeypatch):
    from mlflow.exceptions import MlflowException
    reg.promote(_register(reg, 10), who="ci", why="first")

    def unreachable(*args, **kwargs):
        raise MlflowException("tracking server unreachable", error_code="TEMPORARILY_UNAVAILABLE")
    monkeypatch.setattr(reg.client, "get_model_version_by_alias", unreachable)
    for look in (reg.champion_version, reg.champion):
        with pytest.raises(MlflowException, match="unreachable"):
            look()


def test_rollback_to_previous_and_to_named_version(reg):
    a, b, c = _register(reg, 7), _register(reg, 8), _register(reg, 9)
    for v in (a, b, c):
        reg.promote(v, who="ci", why=f"promote {v}")
    n = len(reg.history())
    assert _timed("rollback", reg.rollback, who="oncall", why="ctr dropped") == b
    assert reg.served().version == b and reg.version(b).aliases == [CHAMPION]
    assert reg.version(c).stage == "Archived"
    assert reg.rollback(who="oncall", why="still bad") == a  # again: what was served before b
    assert reg.rollback(to=c, who="oncall", why="false alarm") == c
    assert reg.served().version == reg.served_version() == c
    recs = [r for r in reg.history()[n:] if r["action"] in SERVING_ACTIONS]  # each rollback also holds
    assert [(r["action"], r["version"], r["previous_version"], r["who"]) for r in recs] == [
        ("rollback", b, c, "oncall"), ("rollback", a, b, "oncall"), ("rollback", c, a, "oncall")]
    assert reg.version(c).tags["promotion_action"] == "rollback"
    assert reg.version(c).tags["promotion_reason"] == "false alarm"
    with pytest.raises(RegistryError, match="already served"):
        reg.rollback(to=c, who="oncall", why="noop")


def test_stage_change_in_ui_changes_served(reg):
    from mlflow import MlflowClient

    a, b = _register(reg, 10), _register(reg, 11)
    reg.promote(a, who="ci", why="a")
    reg.promote(b, who="ci", why="b")
    ui = MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.tracking_uri)  # what the UI does
    with pytest.warns(FutureWarning):
        ui.transition_model_version_stage(reg.model_name, a, "Production", archive_existing_versions=True)
    served = reg.served()
    assert served.version == a  # Production wins over the alias, which still names b
    assert str(reg.client.get_model_version_by_alias(reg.model_name, CHAMPION).version) == b
    n = len(reg.history())
    assert reg.reconcile() is True and reg.reconcile() is False
    assert reg.version(a).aliases == [CHAMPION]
    rec = reg.history()[n]
    assert (rec["action"], rec["version"], rec["previous_version"]) == ("stage_change", a, b)
    assert reg.promotion_hold().who == "mlflow-ui" and "by hand" in reg.promotion_hold().why
    # rolling back undoes the hand-made change
    assert reg.rollback(who="oncall", why="undo ui change") == b
    assert (reg.served().version, reg.version(a).stage) == (b, "Archived")
    # the UI can also put a second version in Production without archiving: the latest move wins
    with pytest.warns(FutureWarning):
        ui.transition_model_version_stage(reg.model_name, b, "Production", archive_existing_versions=False)
    assert reg.served().version == b


def test_corrupt_or_incomplete_version_is_refused_and_served_unchanged(reg):
    good, bad, gone = _register(reg, 12), _register(reg, 13), _register(reg, 14)
    reg.promote(good, who="ci", why="good")
    w = _folder(reg, bad) / "weights.pt"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match="checksum mismatch for weights.pt"):
        reg.load(bad)
    (_folder(reg, gone) / "config.json").unlink()
    with pytest.raises(CorruptModelError, match="incomplete.*config.json"):
        reg.load(gone)
    n = len(reg.history())
    for v in (bad, gone):
        with pytest.raises(CorruptModelError):
            reg.promote(v, who="ci", why="should fail")
        with pytest.raises(CorruptModelError):
            reg.rollback(to=v, who="ci", why="should fail")
        assert reg.version(v).stage == "None" and reg.version(v).aliases == []
    served = reg.served()
    assert served.version == good and served.aliases == [CHAMPION]
    assert len(reg.history()) == n
    # a rewritten manifest does not help: the registry holds the manifest's checksum
    m = _folder(reg, bad) / "manifest.json"
    man = json.loads(m.read_text())
    man["files"]["weights.pt"] = {"sha256": _sha256(w), "bytes": w.stat().st_size}
    m.write_text(json.dumps(man))
    with pytest.raises(CorruptModelError, match="manifest.json does not match"):
        reg.load(bad)


class _Payload:
    """An object whose unpickling runs code (writes a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_loading_never_executes_pickled_code(reg, tmp_path):
    v = _register(reg, 15)
    folder = _folder(reg, v)
    marker = tmp_path / "pwned"
    # an attacker with write access to artifacts *and* the registry: files, manifest and tag all consistent
    torch.save({"layer.weight": _Payload(str(marker))}, folder / "weights.pt")
    man = json.loads((folder / "manifest.json").read_text())
    man["files"]["weights.pt"] = {"sha256": _sha256(folder / "weights.pt"),
                                  "bytes": (folder / "weights.pt").stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(man))
    reg.client.set_model_version_tag(reg.model_name, v, "manifest_sha256", _sha256(folder / "manifest.json"))
    with pytest.raises(CorruptModelError, match="not a plain tensor state_dict"):
        reg.load(v)
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(folder / "weights.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_importing_registry_does_not_import_mlflow():
    code = "import sys, drn.registry; assert 'mlflow' not in sys.modules, 'mlflow imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_timings_are_reasonable(reg):
    v = _register(reg, 16)
    _timed("load", reg.load, v)
    _timed("promote", reg.promote, v, who="ci", why="timing")
    _timed("served", reg.served)
    assert max(TIMINGS["register"]) < 10 and max(TIMINGS["promote"]) < 5 and max(TIMINGS["load"]) < 2


def test_a_rollback_holds_automatic_promotion_until_resumed(reg):
    a, b, c = _register(reg, 20), _register(reg, 21), _register(reg, 22)
    reg.promote(a, who="ci", why="a")
    reg.promote(b, who="ci", why="b")
    assert reg.promotion_hold() is None
    assert reg.rollback(who="oncall", why="ctr dropped") == a
    hold = reg.promotion_hold()
    assert (hold.who, hold.until) == ("oncall", None) and "ctr dropped" in hold.why
    with pytest.raises(PromotionHeld, match="held since .* by oncall"):
        reg.promote(c, who="prefect:minor-update", why="won its round")
    assert reg.served_version() == a and reg.version(c).stage == "None"
    described = hold.describe()
    assert described["held"] and epoch_time(described["since"]) == pytest.approx(hold.since, abs=1e-3)
    # an engineer's own promotion goes through, and holds from then on
    reg.promote(c, who="alice", why="tried by hand", by_hand=True)
    assert reg.served_version() == c and "promoted by hand" in reg.promotion_hold().why
    assert reg.resume(who="oncall", why="fixed").who == "alice"
    assert reg.promotion_hold() is None and reg.resume(who="oncall", why="again") is None
    reg.promote(b, who="prefect:minor-update", why="automatic again")
    assert reg.served_version() == b
    actions = [r["action"] for r in reg.history()[-6:]]
    assert actions == ["rollback", "hold", "promote", "hold", "resume", "promote"]


def test_a_hold_with_a_deadline_lifts_itself_and_says_so(reg):
    a, b = _register(reg, 23), _register(reg, 24)
    reg.promote(a, who="ci", why="a")
    reg.promote(b, who="ci", why="b")
    until = time.time() + 3600
    reg.rollback(who="oncall", why="looks wrong", hold_until=until)
    assert reg.promotion_hold(now=until - 1).until == pytest.approx(until, abs=1e-3)
    assert reg.promotion_hold(now=until + 1) is None
    last = reg.history()[-1]
    assert (last["action"], last["who"]) == ("resume", "deadline")
    reg.promote(b, who="ci", why="automatic again")


def test_an_alias_moved_by_hand_is_an_alias_change_and_serving_follows_it(reg):
    from mlflow import MlflowClient
    a, b = _register(reg, 25), _register(reg, 26)
    reg.promote(a, who="ci", why="a")
    reg.promote(b, who="ci", why="b")
    ui = MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.tracking_uri)
    ui.set_registered_model_alias(reg.model_name, CHAMPION, a)  # the new registry UI: aliases, no stages
    assert reg.reconcile() is True and reg.reconcile() is False
    assert reg.served_version() == reg.champion_version() == a and reg.version(b).stage == "Archived"
    change = [r for r in reg.history() if r["action"] == "alias_change"][-1]
    assert (change["version"], change["previous_version"], change["who"]) == (a, b, "mlflow-ui")
    assert "alias champion moved from v%s to v%s" % (b, a) in change["why"]
    assert not any(r["action"] == "stage_change" for r in reg.history()[-3:])
    assert "alias champion moved" in reg.promotion_hold().why
    n = len(reg.history())
    ui.delete_registered_model_alias(reg.model_name, CHAMPION)  # deleted, not moved: nothing to record
    assert reg.reconcile() is False and reg.champion_version() == a and len(reg.history()) == n


def test_reconcile_leaves_a_promotion_in_flight_alone(reg):
    from mlflow import MlflowClient
    a, b = _register(reg, 27), _register(reg, 28)
    reg.promote(a, who="ci", why="a")
    reg.promote(b, who="ci", why="b")
    n = len(reg.history())
    other = MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.tracking_uri)
    with pytest.warns(FutureWarning):  # another process, half-way: history and stage written, alias not yet
        reg._history(a, action="promote", who="prefect:other", why="mid-flight", previous=b)
        other.transition_model_version_stage(reg.model_name, a, "Production", archive_existing_versions=True)
    reg.reconcile_grace_s = 60.0
    try:
        assert reg.reconcile() is False and reg.promotion_hold() is None
    finally:
        reg.reconcile_grace_s = 0.0
    assert len(reg.history()) == n + 1
    reg.client.set_registered_model_alias(reg.model_name, CHAMPION, a)  # the other process finishes


def test_times_in_tags_and_history_are_iso(reg):
    v = _register(reg, 29)
    reg.promote(v, who="ci", why="iso")
    tags = reg.version(v).tags
    assert tags["promoted_at"].endswith("Z") and "T" in tags["promoted_at"]
    assert abs(reg.version(v).promoted_at - time.time()) < 60
    stored = reg.client.get_registered_model(reg.model_name).tags
    raw = json.loads(stored[sorted(k for k in stored if k.startswith("history/"))[-1]])
    assert raw["at"].endswith("Z") and abs(reg.history()[-1]["at"] - time.time()) < 60


def test_a_version_is_an_mlflow_pyfunc_model_that_ranks_candidates(reg):
    import mlflow
    import numpy as np

    from drn.bundle import bundle_of
    from drn.model import build_network
    network = build_network(seed=3)
    drn_version = reg.register(bundle_of(network), kind="offline", parent=None, data_window=None, params={},
                               metrics={"auc": 0.6})
    reg.promote(drn_version, who="ci", why="pyfunc")
    mlflow.set_registry_uri(reg.tracking_uri)
    mlflow.set_tracking_uri(reg.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{reg.model_name}@{CHAMPION}")
    width = network.config.state_dim + network.config.action_dim
    assert model.metadata.signature.inputs.inputs[0].shape == (-1, width)
    rng, split = np.random.default_rng(0), network.config.state_dim
    state = rng.normal(size=(1, split)).astype(np.float32)
    actions = rng.normal(size=(7, width - split)).astype(np.float32)
    rows = np.hstack([np.repeat(state, 7, axis=0), actions])  # one request's 7 candidates
    with torch.no_grad():
        expected = network(torch.from_numpy(state), torch.from_numpy(actions[None]))[0].numpy()
    np.testing.assert_allclose(model.predict(rows), expected, rtol=1e-5, atol=1e-6)
