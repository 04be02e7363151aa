"""The MLflow registry adapter: the only module in the project that imports mlflow.

A model version is a :class:`drn.bundle.ModelBundle` (a torch ``state_dict``, the JSON network config that rebuilds
the module, the JSON feature schema) stored as plain artifacts of an MLflow run under ``model/``::

    model/weights.pt           torch.save(state_dict); read back only with torch.load(weights_only=True)
    model/config.json
    model/feature_schema.json
    model/manifest.json        sha256 + size of each file above
    model/MLmodel              pyfunc flavor (loader_module drn.registry), signature: candidates' rows in, Q out

and registered as a version of one registered model (default ``drn``). No pickle anywhere:
``mlflow.pyfunc.load_model("models:/drn@champion")`` calls :func:`_load_pyfunc`, which reads the checked plain
weights. The sha256 of ``manifest.json`` is also kept as a version tag, so the database anchors the manifest and
the manifest anchors the files.

Crash safety: the run's artifacts are written and read back and checked *before* the model version is created
(one database transaction, tags included), so a half-written version is never visible. Promotion is a
separate, explicit call, which checks the version again before moving it to stage Production.

What is served = the version in stage ``Production`` (what engineers roll back with in the MLflow UI). The
alias ``champion`` is kept on the same version; if they disagree (a stage change made by hand), Production
wins and :meth:`Registry.reconcile` records the change and moves the alias. Every promotion / rollback is kept
as version tags (``promoted_at``, ``promoted_by``, ``promotion_reason``, ``previous_version``,
``promotion_action``) and as an append-only history: one registered-model tag per record,
``history/<time_ns>-v<version>`` -> JSON. Times in tags are ISO 8601 (UTC).

A rollback holds automatic promotion: every rollback (``rollback``, a stage or the alias moved by hand, a promotion
by hand) sets the registered-model tag ``promotion_hold`` (since, who, why, optionally until), and while it is set
:meth:`Registry.promote` refuses automatic promotions with :class:`PromotionHeld`. :meth:`Registry.resume` lifts it.

mlflow is imported lazily (4-6 s) inside :class:`Registry`; importing this module costs only torch.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from drn.bundle import CorruptBundleError, ModelBundle, read_bundle, write_bundle
from drn.config import DEFAULT_MODEL_NAME

CHAMPION = "champion"
PRODUCTION = "Production"
KINDS = ("offline", "minor", "major", "rollback")
BUNDLE_DIR = "model"
MLMODEL = "MLmodel"
HISTORY_PREFIX = "history/"
NONE_TAG = "none"  # tag value for "no parent" / "no data window"

# version tags written by this module
TAG_KIND, TAG_PARENT, TAG_WINDOW, TAG_CODE = "kind", "parent", "data_window", "code_version"
TAG_WINDOW_EPOCH = "data_window_epoch"  # the window's exact float bounds: the next replay starts at exactly its end
TAG_MANIFEST_SHA = "manifest_sha256"
TAG_PROMOTED_AT, TAG_PROMOTED_BY = "promoted_at", "promoted_by"
TAG_PROMOTION_REASON, TAG_PREVIOUS, TAG_ACTION = "promotion_reason", "previous_version", "promotion_action"
METRIC_TAG_PREFIX = "metric."  # each run metric also shown on its version, as metric.<name>
RESERVED_TAGS = frozenset({TAG_KIND, TAG_PARENT, TAG_WINDOW, TAG_WINDOW_EPOCH, TAG_CODE, TAG_MANIFEST_SHA, TAG_PROMOTED_AT,
                           TAG_PROMOTED_BY, TAG_PROMOTION_REASON, TAG_PREVIOUS, TAG_ACTION})
TAG_HOLD = "promotion_hold"  # registered-model tag, JSON of a Hold, present while automatic promotion is held
RECONCILE_GRACE_S = 10.0  # a registry mismatch younger than this may be drn's own promotion in flight
SERVING_ACTIONS = ("promote", "rollback", "stage_change", "alias_change")  # history records that changed what is served
# How MLflow's HTTP client retries a tracking server (an `http://` URI), unless the environment says otherwise. Its
# defaults (7 retries, backoff factor 2) made one call to a stopped server take minutes: serving's /healthz
# said ok for that long, and a flow's task retries came on top. The callers retry themselves (serving at its next
# look, flows in their tasks), so a call here fails within seconds.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to...)."""


class PromotionHeld(RegistryError):
    """An automatic promotion while a rollback holds promotion: the engineer's choice stands until they resume."""


class CorruptModelError(RegistryError):
    """A stored model version is incomplete, fails its checksums, or holds something other than plain tensors.

    Raised before anything is returned: a version is loaded whole or not at all."""


def iso_time(epoch: float) -> str:
    """How times are written in tags and history: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_time(text: str | float) -> float:
    """Back from `iso_time` (epoch seconds as written by earlier releases are read too)."""
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _window_tag(window: tuple[float, float]) -> str:
    return f"{iso_time(window[0])}/{iso_time(window[1])}"  # an ISO 8601 interval


def _parse_window(tags: Mapping[str, str]) -> tuple[float, float] | None:
    """The exact bounds; versions registered by earlier releases kept them as JSON in the data_window tag."""
    exact = tags.get(TAG_WINDOW_EPOCH) or tags.get(TAG_WINDOW)
    if exact in (None, NONE_TAG, ""):
        return None
    start, end = json.loads(exact)
    return float(start), float(end)


@dataclass(frozen=True)
class Hold:
    """Automatic promotion is held since `since` (epoch s) because `who` rolled back for `why`; `until`: when it
    lifts itself (None: only by an engineer's resume)."""
    since: float
    who: str
    why: str
    until: float | None = None

    def describe(self) -> dict:
        """What /model, `drn models` and the registered model's tag say."""
        return {"held": True, "since": iso_time(self.since), "by": self.who, "why": self.why,
                "until": iso_time(self.until) if self.until is not None else None}

    def message(self) -> str:
        until = f", until {iso_time(self.until)}" if self.until is not None else ""
        return (f"promotion is held since {iso_time(self.since)} by {self.who} ({self.why}{until}); "
                "`drn resume` lifts it")

    @classmethod
    def from_tag(cls, text: str) -> "Hold":
        data = json.loads(text)
        until = data.get("until")
        return cls(epoch_time(data["since"]), data["by"], data["why"], None if until is None else epoch_time(until))


NOT_HELD = {"held": False}


@dataclass
class VersionInfo:
    version: str
    kind: str
    parent: str | None
    stage: str
    aliases: list[str]
    metrics: dict[str, float]
    created_at: float  # epoch seconds
    promoted_at: float | None  # last promotion / rollback to this version, epoch seconds
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    data_window: tuple[float, float] | None = None

    @property
    def served(self) -> bool:
        return self.stage == PRODUCTION


def _checked_read(folder: str | os.PathLike, manifest_sha: str) -> ModelBundle:
    """drn.bundle.read_bundle, its refusal raised as the registry's CorruptModelError (a RegistryError)."""
    try:
        return read_bundle(folder, manifest_sha)
    except CorruptBundleError as e:
        raise CorruptModelError(str(e)) from e


# ------------------------------------------------------------------------------------------------- helpers
_CODE_VERSION: str | None = None


def code_version() -> str:
    """Git sha of the source tree (``+dirty`` if modified) when available, else the package version."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        here = Path(__file__).resolve().parent
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                 timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            _CODE_VERSION = sha + ("+dirty" if dirty else "")
        except Exception:
            try:
                from importlib.metadata import version
                _CODE_VERSION = "drn-pipeline==" + version("drn-pipeline")
            except Exception:
                _CODE_VERSION = "unknown"
    return _CODE_VERSION


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


# MLflow 3.17's SQL registry compares the integer version column with the request's string version when a stage
# change archives the other versions (mlflow/mlflow#24592): PostgreSQL refuses `integer <> varchar` where SQLite
# compares anyway, so the MLflow UI's stage change with "archive existing versions" fails there. This operator in the
# store's own database gives that comparison the meaning MLflow intends, for every process on the store (its server).
_PG_INTEGER_NE_VARCHAR = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = '<>' AND oprleft = 'integer'::regtype
                 AND oprright = 'character varying'::regtype) THEN
    CREATE FUNCTION drn_integer_ne_varchar(integer, character varying) RETURNS boolean
      LANGUAGE sql IMMUTABLE AS 'SELECT $1 <> $2::integer';
    CREATE OPERATOR <> (LEFTARG = integer, RIGHTARG = character varying, FUNCTION = drn_integer_ne_varchar);
  END IF;
EXCEPTION WHEN duplicate_function OR duplicate_object OR unique_violation THEN NULL;  -- made meanwhile elsewhere
END $$
"""


def _fix_postgres_stage_archive(client: Any) -> None:
    """Install _PG_INTEGER_NE_VARCHAR when the registry store is a PostgreSQL database (a warning when the user may
    not create it: drn's own promotions pass integer versions and work regardless)."""
    engine = getattr(client._get_registry_client().store, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(_PG_INTEGER_NE_VARCHAR)
    except Exception as err:  # noqa: BLE001 - any refusal leaves MLflow exactly as it was
        warnings.warn(f"MLflow store {engine.url.render_as_string(hide_password=True)}: stage changes that archive "
                      f"other versions by name fail on PostgreSQL (mlflow#24592) and the fix could not be installed: "
                      f"{str(err).splitlines()[0]}", stacklevel=3)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    p = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if p in ("", ":memory:") else Path(p)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock (POSIX); serialises the first use of a fresh SQLite store (its migrations)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation warnings we trigger on purpose (model stages are deprecated, still supported)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# ------------------------------------------------------------------------------------------------ registry
class Registry:
    """Model versions of one registered model in an MLflow tracking + registry store.

    ``tracking_uri``: e.g. ``sqlite:////abs/data/mlflow.db`` (artifacts then default to ``/abs/data/mlartifacts``)
    or ``http://mlflow:5000``. The experiment (named after the model) and the registered model are created if
    missing; first use of a fresh SQLite file is serialised with a file lock.
    """

    def __init__(self, tracking_uri: str, model_name: str = DEFAULT_MODEL_NAME, artifact_root: str | None = None,
                 experiment_name: str | None = None):
        for variable, value in MLFLOW_HTTP_DEFAULTS.items():  # read by MLflow at each request
            os.environ.setdefault(variable, value)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.tracking_uri, self.model_name = tracking_uri, model_name
        self.reconcile_grace_s = RECONCILE_GRACE_S
        self.experiment_name = experiment_name or model_name
        self._MlflowException = MlflowException
        db = _sqlite_path(tracking_uri)
        if artifact_root is None and db is not None:
            artifact_root = str(db.resolve().parent / "mlartifacts")
        self.artifact_root = artifact_root
        lock = _file_lock(Path(str(db) + ".lock")) if db is not None else contextlib.nullcontext()
        with lock:
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            _fix_postgres_stage_archive(self.client)
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                location = None
                if artifact_root is not None:
                    location = Path(artifact_root).resolve().as_uri() if "://" not in artifact_root else artifact_root
                try:
                    self.experiment_id = self.client.create_experiment(self.experiment_name,
                                                                       artifact_location=location)
                except MlflowException:  # created meanwhile by another process
                    self.experiment_id = self.client.get_experiment_by_name(self.experiment_name).experiment_id
            else:
                self.experiment_id = exp.experiment_id
            try:
                self.client.get_registered_model(model_name)
            except MlflowException:
                try:
                    self.client.create_registered_model(
                        model_name, description="DRN news recommender. Served = stage Production (alias champion).")
                except MlflowException:
                    pass  # created meanwhile

    # ------------------------------------------------------------------------------------------- register
    def register(self, bundle: ModelBundle, *, kind: str, parent: str | None,
                 data_window: tuple[float, float] | None, params: Mapping[str, Any],
                 metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                 plots: Mapping[str, Any] | None = None, description: str | None = None,
                 series: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> str:
        """Store the bundle as run artifacts, check them, then create the model version. Returns the version.

        Never promotes. ``plots``: name -> matplotlib Figure or a file path (stored under the run's ``plots/``).
        ``tags`` go on the version (e.g. interleaving outcome, evaluation against the parent); keys reserved by
        this module are refused. Params / metrics go on the run, and the metrics on the version too (``metric.*``);
        ``series``: metric name -> (step, value) points, the run's curves (training loss per step...)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        clash = RESERVED_TAGS.intersection(tags)
        if clash:
            raise ValueError(f"tags {sorted(clash)} are set by the registry itself")
        parent = None if parent is None else str(parent)
        if parent is not None:
            self.version(parent)  # the parent must exist
        version_tags = {
            TAG_KIND: kind,
            TAG_PARENT: parent if parent is not None else NONE_TAG,
            TAG_WINDOW: _window_tag(data_window) if data_window is not None else NONE_TAG,
            **({TAG_WINDOW_EPOCH: json.dumps([float(data_window[0]), float(data_window[1])])}
               if data_window is not None else {}),
            TAG_CODE: code_version(),
            **{f"{METRIC_TAG_PREFIX}{k}": f"{float(v):.4f}" for k, v in metrics.items()},
            **tags,
        }
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{kind}" + (f"-from-v{parent}" if parent else ""),
            tags={"drn.kind": kind, "drn.parent": version_tags[TAG_PARENT], "drn.data_window": version_tags[TAG_WINDOW],
                  "mlflow.source.git.commit": version_tags[TAG_CODE]},
        )
        run_id = run.info.run_id
        try:
            now_ms = int(time.time() * 1000)
            flat = _flatten(params)
            plist = [Param(k, v) for k, v in flat.items()]
            mlist = [Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
            mlist += [Metric(name, float(value), now_ms, int(step))
                      for name, points in (series or {}).items() for step, value in points]
            for i in range(0, max(len(plist), len(mlist), 1), 100):
                self.client.log_batch(run_id, metrics=mlist[i:i + 100], params=plist[i:i + 100])
            self.client.log_batch(run_id, tags=[RunTag("mlflow.note.content", description or "")])
            self.client.log_batch(run_id, tags=[RunTag(f"drn.tag.{k}", v) for k, v in tags.items()])
            for name, plot in (plots or {}).items():
                if isinstance(plot, (str, os.PathLike)):
                    self.client.log_artifact(run_id, str(plot), "plots")
                else:  # a matplotlib Figure
                    self.client.log_figure(run_id, plot, f"plots/{name}.png")
            with tempfile.TemporaryDirectory(prefix="drn-bundle-") as tmp:
                manifest_sha = write_bundle(bundle, tmp)
                _write_mlmodel(bundle, tmp, run_id)
                self.client.log_artifacts(run_id, tmp, BUNDLE_DIR)
            source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_DIR}"
            self._fetch_and_read(source, manifest_sha)  # read back what the store holds before it is visible
            version_tags[TAG_MANIFEST_SHA] = manifest_sha
            mv = self.client.create_model_version(  # one transaction, tags included: the visibility point
                self.model_name, source=source, run_id=run_id, tags=version_tags,
                description=description or f"{kind} update" + (f" of v{parent}" if parent else ""))
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return str(mv.version)

    def annotate(self, version: str, tags: Mapping[str, str]) -> None:
        """Add what was learned about a version after it was registered (a gate round's verdict) as version tags."""
        clash = RESERVED_TAGS.intersection(tags)
        if clash:
            raise ValueError(f"tags {sorted(clash)} are set by the registry itself")
        self.version(version)  # an unknown version fails here, with the registry's message
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, str(key), str(value))

    # --------------------------------------------------------------------------------------------- load
    def _fetch_and_read(self, source: str, manifest_sha: str | None) -> ModelBundle:
        parsed = urllib.parse.urlparse(source)
        if parsed.scheme in ("", "file"):  # local store: read in place, no copy
            local = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme else Path(source)
            if not local.is_dir():
                raise CorruptModelError(f"model artifacts are missing: {local}")
            return _checked_read(local, manifest_sha)
        from mlflow.artifacts import download_artifacts
        tmp = tempfile.mkdtemp(prefix="drn-load-")
        try:
            try:
                local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=self.tracking_uri)
            except Exception as e:
                raise CorruptModelError(f"cannot fetch model artifacts from {source}: {e}") from e
            return _checked_read(local, manifest_sha)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, version: str) -> ModelBundle:
        """The bundle of ``version``, after checking it whole (manifest checksum from the registry, every file's
        checksum, plain-tensor weights). Raises CorruptModelError on any defect; never returns a partial bundle."""
        mv = self._mv(version)
        sha = mv.tags.get(TAG_MANIFEST_SHA)
        if not sha:
            raise CorruptModelError(f"version {version} has no {TAG_MANIFEST_SHA} tag: not written by drn")
        return self._fetch_and_read(mv.source, sha)

    # ---------------------------------------------------------------------------------------- promotion
    def promote(self, version: str, *, who: str, why: str, by_hand: bool = False) -> None:
        """Check ``version`` loads, then move it to stage Production (archiving the others) with alias champion,
        and record the promotion (version tags + history). A corrupt version raises and changes nothing.

        While promotion is held (after a rollback) an automatic promotion raises :class:`PromotionHeld`. A
        promotion ``by_hand`` (an engineer's choice, like a rollback) is done and holds promotion from then on."""
        version = str(version)
        hold = self.promotion_hold()
        if hold is not None and not by_hand:
            raise PromotionHeld(hold.message())
        self._promote(version, who=who, why=why, action="promote")
        if by_hand:
            self.hold(who=who, why=f"v{version} promoted by hand: {why}")

    def rollback(self, to: str | None = None, *, who: str, why: str, hold_until: float | None = None) -> str:
        """Serve ``to`` or, by default, the version that was served before the current one was promoted, and hold
        automatic promotion (until ``hold_until``, epoch s; None: until `resume`). Recorded like a promotion (action
        ``rollback``). Returns the version now served."""
        self.reconcile()  # a stage change by hand first becomes a history record
        current = self.served()
        if to is None:
            if current is None:
                raise RegistryError("nothing is served: nothing to roll back from")
            to = self._rollback_target(current.version)
        to = str(to)
        if current is not None and to == current.version:
            raise RegistryError(f"version {to} is already served")
        self._promote(to, who=who, why=why, action="rollback")
        self.hold(who=who, why=f"rolled back to v{to}: {why}", until=hold_until)
        return to

    def _rollback_target(self, current: str) -> str:
        hist = [rec for rec in self.history() if rec["action"] in SERVING_ACTIONS]
        for rec in reversed(hist):  # what was served before `current` was (last) promoted
            if rec["version"] == current and rec["action"] != "rollback":
                if rec.get("previous_version"):
                    return rec["previous_version"]
                break
        for rec in reversed(hist):  # fallback: the latest other version that was served
            if rec["version"] != current and rec["action"] != "rollback":
                return rec["version"]
        raise RegistryError(f"no previously promoted version to roll back to from version {current}")

    def _promote(self, version: str, *, who: str, why: str, action: str) -> None:
        mv = self._mv(version)
        self.load(version)  # fully written and checked, or CorruptModelError before anything changes
        current = self.served()
        if current is not None and current.version == version:
            self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
            return  # already served: nothing to record
        previous = current.version if current is not None else None
        # recorded first: a reconcile in another process meanwhile reads the half-done move as drn's own
        key = self._history(version, action=action, who=who, why=why, previous=previous)
        try:
            with _quiet():  # the commit point: serving follows the stage
                self.client.transition_model_version_stage(self.model_name, mv.version, PRODUCTION,
                                                           archive_existing_versions=True)
            self.client.set_registered_model_alias(self.model_name, CHAMPION, version)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.delete_registered_model_tag(self.model_name, key)
            raise
        self._tag_promotion(version, action=action, who=who, why=why, previous=previous)

    def _tag_promotion(self, version: str, *, action: str, who: str, why: str, previous: str | None) -> None:
        """The served version's own record of how it came to be served (the history keeps every one)."""
        for k, v in {TAG_PROMOTED_AT: iso_time(time.time()), TAG_PROMOTED_BY: who, TAG_PROMOTION_REASON: why,
                     TAG_PREVIOUS: previous if previous is not None else NONE_TAG, TAG_ACTION: action}.items():
            self.client.set_model_version_tag(self.model_name, version, k, v)

    def _history(self, version: str, *, action: str, who: str, why: str, previous: str | None) -> str:
        """Append one record to the history; returns its tag key."""
        key = f"{HISTORY_PREFIX}{time.time_ns():020d}-v{version}"
        rec = {"at": iso_time(time.time()), "action": action, "version": version, "previous_version": previous,
               "who": who, "why": why}
        self.client.set_registered_model_tag(self.model_name, key, json.dumps(rec, sort_keys=True))
        return key

    def reconcile(self, who: str = "mlflow-ui") -> bool:
        """Catch up with a change made outside this module (the MLflow UI), record it as what it was, and hold
        automatic promotion, as after any rollback. Returns True if there was one.

        - stage Production moved (the served version is not the last one drn recorded): action ``stage_change``;
          alias champion follows the stage.
        - alias champion moved (the stage did not): action ``alias_change``; the stage follows the alias, so the
          new registry UI, which shows aliases and hides stages, rolls back too. A version that does not load is
          refused: the alias goes back.

        A mismatch within `reconcile_grace_s` of drn's last record is left for the next look: it can be another
        process's promotion half done. MLflow's stage dialog sends no comment to the server (MLflow 3.17: name,
        version, stage, archive flag), so the record says what changed, not why."""
        served, champion = self.served_version(), self.champion_version()  # every update flow asks: numbers only
        if served is None or champion == served:
            return False
        last = next((rec for rec in reversed(self.history()) if rec["action"] in SERVING_ACTIONS), None)
        if last is not None and time.time() - last["at"] < self.reconcile_grace_s:
            return False
        last_version = last["version"] if last is not None else None
        if champion is None:  # the alias was deleted by hand: nothing was rolled back, it is put back
            self.client.set_registered_model_alias(self.model_name, CHAMPION, served)
            return False
        if served == last_version:
            try:
                self._promote(champion, who=who, action="alias_change",
                              why=f"alias {CHAMPION} moved from v{served} to v{champion} outside drn")
            except CorruptModelError as err:
                self.client.set_registered_model_alias(self.model_name, CHAMPION, served)
                self._history(champion, action="alias_change", who=who, previous=served,
                              why=f"alias {CHAMPION} moved to v{champion} outside drn, moved back: {err}")
                return True
            self.hold(who=who, why=f"alias {CHAMPION} moved to v{champion} by hand")
            return True
        self.client.set_registered_model_alias(self.model_name, CHAMPION, served)
        self._history(served, action="stage_change", who=who, previous=champion,
                      why=f"stage {PRODUCTION} moved to v{served} outside drn")
        self._tag_promotion(served, action="stage_change", who=who, why=f"stage {PRODUCTION} moved by hand",
                            previous=champion)
        self.hold(who=who, why=f"stage {PRODUCTION} moved to v{served} by hand")
        return True

    # -------------------------------------------------------------------------------------------- holding
    def hold(self, *, who: str, why: str, until: float | None = None) -> Hold:
        """Hold automatic promotion (a newer hold replaces an older one); recorded in the history."""
        hold = Hold(time.time(), who, why, until)
        self.client.set_registered_model_tag(self.model_name, TAG_HOLD, json.dumps(hold.describe(), sort_keys=True))
        self._history(self.served_version() or NONE_TAG, action="hold", who=who, why=why, previous=None)
        return hold

    def resume(self, *, who: str, why: str) -> Hold | None:
        """Lift the hold; returns it (None when promotion was not held)."""
        hold = self._stored_hold()
        if hold is None:
            return None
        self.client.delete_registered_model_tag(self.model_name, TAG_HOLD)
        self._history(self.served_version() or NONE_TAG, action="resume", who=who, why=why, previous=None)
        return hold

    def promotion_hold(self, now: float | None = None) -> Hold | None:
        """The hold in force, or None. A hold past its `until` is lifted here (recorded as resumed by the deadline)."""
        hold = self._stored_hold()
        if hold is not None and hold.until is not None and (time.time() if now is None else now) >= hold.until:
            self.resume(who="deadline", why=f"the hold set by {hold.who} ended at {iso_time(hold.until)}")
            return None
        return hold

    def _stored_hold(self) -> Hold | None:
        text = self.client.get_registered_model(self.model_name).tags.get(TAG_HOLD)
        return None if not text else Hold.from_tag(text)

    # ------------------------------------------------------------------------------------------- queries
    def served(self) -> VersionInfo | None:
        """The version in stage Production (the most recently moved there if several); None if none.
        Production wins over alias champion."""
        mv = self._production()
        return None if mv is None else self._info(mv, self._aliases_by_version())

    def served_version(self) -> str | None:
        """The number of the version `served()` describes, from one query where `served()` makes three (it also
        reads the version's run and the aliases): what serving asks at every registry look."""
        mv = self._production()
        return None if mv is None else str(mv.version)

    def champion_version(self) -> str | None:
        """The number of the version `champion()` describes, from one query."""
        mv = self._by_alias(CHAMPION)
        return None if mv is None else str(mv.version)

    def champion(self) -> VersionInfo | None:
        """The version alias `champion` names; None if none. Two lookups (the version, the model's aliases), however
        many versions there are."""
        mv = self._by_alias(CHAMPION)
        return None if mv is None else self._info(mv, self._aliases_by_version())

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first (for a ``drn models`` table)."""
        aliases = self._aliases_by_version()
        return [self._info(mv, aliases) for mv in sorted(self._all_mvs(), key=lambda m: int(m.version))]

    def version(self, v: str) -> VersionInfo:
        return self._info(self._mv(str(v)), self._aliases_by_version())

    def history(self) -> list[dict]:
        """Promotion / rollback / stage- and alias-change / hold / resume records, oldest first: {at (epoch s),
        action, version, previous_version, who, why}."""
        tags = self.client.get_registered_model(self.model_name).tags
        records = [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]
        return [{**rec, "at": epoch_time(rec["at"])} for rec in records]

    # ------------------------------------------------------------------------------------------ internals
    def _mv(self, version: str):
        try:
            return self.client.get_model_version(self.model_name, str(version))
        except self._MlflowException as e:
            raise RegistryError(f"model {self.model_name!r} has no version {version!r}") from e

    def _production(self):
        prod = [mv for mv in self._all_mvs() if mv.current_stage == PRODUCTION]
        return max(prod, key=lambda m: (m.last_updated_timestamp or 0, int(m.version))) if prod else None

    def _all_mvs(self) -> list:
        out, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{self.model_name}'", max_results=10000,
                                                     page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _aliases_by_version(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for alias, v in self.client.get_registered_model(self.model_name).aliases.items():
            out.setdefault(str(v), []).append(alias)
        return out

    def _by_alias(self, alias: str):
        """The version `alias` names; None when the model or the alias does not exist. Any other failure (the registry
        unreachable) is raised: following serving must not read an outage as "nothing promoted" (popularity)."""
        try:
            return self.client.get_model_version_by_alias(self.model_name, alias)
        except self._MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such model / alias
                return None
            raise

    def _info(self, mv, aliases: Mapping[str, list[str]]) -> VersionInfo:
        tags = dict(mv.tags or {})
        metrics: dict[str, float] = {}
        if mv.run_id:
            with contextlib.suppress(self._MlflowException):
                metrics = dict(self.client.get_run(mv.run_id).data.metrics)
        parent = tags.get(TAG_PARENT)
        promoted = tags.get(TAG_PROMOTED_AT)
        return VersionInfo(
            version=str(mv.version), kind=tags.get(TAG_KIND, "unknown"),
            parent=None if parent in (None, NONE_TAG, "") else parent,
            stage=mv.current_stage or "None", aliases=sorted(aliases.get(str(mv.version), [])),
            metrics=metrics, created_at=(mv.creation_timestamp or 0) / 1000.0,
            promoted_at=epoch_time(promoted) if promoted else None, tags=tags, run_id=mv.run_id or "",
            data_window=_parse_window(tags),
        )


# ------------------------------------------------------------------------------------------------ pyfunc flavor
def _write_mlmodel(bundle: ModelBundle, folder: str, run_id: str) -> None:
    """The MLmodel file: pyfunc flavor loaded by this module's `_load_pyfunc` (no pickle), and the signature: one row
    per candidate, the request's state then the candidate's action features (float32), Q out."""
    import numpy as np
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import Schema, TensorSpec

    model = Model(artifact_path=BUNDLE_DIR, run_id=run_id)
    add_to_model(model, loader_module="drn.registry", data=".", python_version=platform.python_version())
    if {"state_dim", "action_dim"} <= set(bundle.config):  # a DRN network (the registry stores any state_dict)
        width = int(bundle.config["state_dim"]) + int(bundle.config["action_dim"])
        model.signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, width))]),
                                         outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    model.save(str(Path(folder) / MLMODEL))


class PyfuncRanker:
    """What `mlflow.pyfunc.load_model` returns the predictions of: Q of each row (state + candidate features)."""

    def __init__(self, bundle: ModelBundle):
        from drn.model import network_from_weights
        # rows may come from several requests: V + A per row ("mean" aggregation ranks a request's rows the same)
        self.network = network_from_weights({**bundle.config, "aggregation": "sum"}, bundle.weights)
        self.state_dim = int(bundle.config["state_dim"])

    def predict(self, model_input, params=None):
        import numpy as np
        rows = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.network(rows[:, :self.state_dim], rows[:, None, self.state_dim:])[:, 0].numpy()


def _load_pyfunc(path: str) -> PyfuncRanker:
    """MLflow's pyfunc entry point: the bundle checked whole (checksums, plain tensors), then the network."""
    return PyfuncRanker(read_bundle(path))


def log_report_run(tracking_uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
                   metrics: Mapping[str, float], series: Mapping[str, Sequence[tuple[int, float]]],
                   files: Sequence[str | os.PathLike]) -> str:
    """A plain run that is not a model version (e.g. a demo's report): params, metrics, stepped metric series and
    files as artifacts, so every MLflow call stays in this module. Returns the run id."""
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with _quiet(), mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(dict(params))
        for name, points in series.items():
            for step, value in points:
                mlflow.log_metric(name, value, step=step)
        mlflow.log_metrics(dict(metrics))
        for path in files:
            mlflow.log_artifact(str(path))
        return run.info.run_id
