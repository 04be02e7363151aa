"""The served model and the task that keeps it in step with the registry and the exploration round.

A `ServedModel` is immutable: the promoted network W, the explore network W~ of the current round (a pure function of
W, the round's seed and alpha, so it is rebuilt only when the version or the seed changes; in a gate round, the
challenger version instead) and where they came from.
A request reads `ModelHolder.current` once and uses that object throughout, so a swap (one reference assignment on
the event loop) never mixes two models in one response.

Loading happens off the request path: every `poll_s` seconds a worker thread asks the log store which round is open,
and the registry what is served when that round moved or `registry_poll_s` passed (see `ModelHolder.follow`); a new
`ServedModel` is built only when either changed. Whatever goes wrong
there (registry unreachable, a corrupt version, a feature schema this code does not compute) keeps the current
model serving and is reported in /healthz and /metrics; a version that failed to load is not retried until the
registry moves on or an admin asks (/admin/reload).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from drn.baselines import PopularityPolicy
from drn.bundle import ModelBundle, network_of
from drn.features import SCHEMA_VERSION, FeatureBatch
from drn.interleaving import Interleaved, untagged
from drn.learners import RoundRecipe, round_list, round_weights
from drn.logstore import LogStore, Round
from drn.model import DuelingQNetwork, network_from_weights
from drn.policy import top_k
from drn.registry import Registry
from drn.scoring import StackedScorer
from serving.settings import Follow
from serving.telemetry import Telemetry

log = logging.getLogger("drn.serving")
POPULARITY = "popularity"  # the model_version logged for impressions ranked before anything was promoted
_POPULARITY = PopularityPolicy()


@dataclass(frozen=True)
class ServedModel:
    version: str | None  # registry version; None: nothing promoted, popularity ranks
    stage: str | None
    bundle: ModelBundle | None
    exploit: DuelingQNetwork | None  # W
    explore: tuple[DuelingQNetwork, ...]  # what `round` scores beside W, in team order: W~, MGD's explore networks,
    #   or a gate round's challenger; empty for W alone (no round, or a PDGD or SGD round)
    round: Round | None  # the open round of this version; None: W's top k
    loaded_at: float
    recipe: RoundRecipe | None = None  # how `round` makes its lists
    scorer: StackedScorer | None = field(init=False, repr=False, compare=False)  # W and the rest in one pass

    def __post_init__(self) -> None:
        # Built here, in the worker thread that builds the model, never on the request path.
        networks = [self.exploit, *self.explore] if self.exploit is not None else []
        object.__setattr__(self, "scorer", StackedScorer(networks) if networks else None)

    @property
    def source(self) -> str:
        return "popularity" if self.exploit is None else "drn"

    @property
    def label(self) -> str:
        return self.version or POPULARITY

    def rank(self, batch: FeatureBatch, k: int, rng: np.random.Generator) -> Interleaved:
        """The served list: during a round, as its recipe makes lists from W's and the round's networks' scores
        (drn.learners.round_list); W's (or popularity's) top k otherwise. All networks score the candidates
        together, in one stacked pass (drn.scoring)."""
        ids = batch.candidates
        if self.scorer is None:
            return untagged(ids, top_k(_POPULARITY.scores(batch), k))
        scores = self.scorer.score(batch)
        if self.round is None:
            return untagged(ids, top_k(scores[0], k))
        return round_list(self.recipe, scores, ids, k, rng)

    def describe(self) -> dict:
        """What /model and /healthz say about it."""
        return {"source": self.source, "version": self.version, "stage": self.stage, "loaded_at": self.loaded_at,
                "exploring": self.round is not None,
                "round_id": self.round.round_id if self.round else None,
                "round_seed": self.round.seed if self.round else None,
                "round_alpha": self.round.alpha if self.round else None,
                "round_recipe": self.recipe.to_dict() if self.recipe else None,
                "feature_schema_version": self.bundle.feature_schema.get("version") if self.bundle else SCHEMA_VERSION}


def _round_id(round_: Round | None) -> int | None:
    return round_.round_id if round_ is not None else None


def cold() -> ServedModel:
    return ServedModel(None, None, None, None, (), None, time.time())


class ModelHolder:
    """Follows the registry (stage Production, or alias champion) and the log store's open round."""

    def __init__(self, open_registry: Callable[[], Registry], logs: LogStore, follow: Follow, telemetry: Telemetry):
        self.current = cold()
        self.registry_error: str | None = None  # why the last look at the registry failed; None when it worked
        self.load_error: str | None = None  # why the last version that was tried did not load
        self.last_sync: float | None = None  # when the registry last answered
        self._open_registry, self._logs, self._follow = open_registry, logs, follow
        self._telemetry = telemetry
        self._registry: Registry | None = None
        self._failed: str | None = None  # version that did not load: not retried until forced
        self._seen_round_id: int | None = None  # the log store's open round at the last look
        self._registry_looked_at = float("-inf")  # time.monotonic() of the last registry look
        self._lock = asyncio.Lock()  # one refresh at a time (the poll and /admin/reload)
        telemetry.model_changed(self.current)

    async def refresh(self, force: bool = False) -> ServedModel:
        """Look at the registry and the round now; swap if something changed. `force` retries a version that failed
        to load."""
        async with self._lock:
            nxt = await asyncio.to_thread(self._next, force)
            self._registry_looked_at = time.monotonic()
            if nxt is not self.current:
                self.current = nxt  # the swap: requests that already hold the old object finish with it
                self._telemetry.model_changed(nxt)
                log.info("serving %s", nxt.describe())
            return nxt

    async def follow(self, round_every_s: float, registry_every_s: float) -> None:
        """The background task, until cancelled: every `round_every_s` look at the log store's open round (a fraction
        of a millisecond); refresh from the registry when the round moved (the pipeline opens a round with every
        promotion and rollback), and every `registry_every_s` anyway, for stage changes made by hand in the MLflow
        UI. A registry look is milliseconds of MLflow client work holding the GIL (serving_bench prints it), which
        every request in flight waits out: done every 2 s (when a look read the whole record) it set the p99 latency."""
        while True:
            await asyncio.sleep(round_every_s)
            try:
                due = time.monotonic() - self._registry_looked_at >= registry_every_s
                if due or await asyncio.to_thread(self._round_moved):
                    await self.refresh()
            except Exception:  # a bug in a refresh must not end the following; it is counted and logged
                self._telemetry.errors.labels("refresh").inc()
                log.exception("model refresh failed")

    async def with_registry(self, action: Callable[[Registry], object]) -> object:
        """Run a registry call (an admin rollback) in a worker thread, never alongside a refresh."""
        async with self._lock:
            return await asyncio.to_thread(lambda: action(self._registry_client()))

    # ---- in a worker thread ---------------------------------------------------------------------------------
    def _registry_client(self) -> Registry:
        if self._registry is None:
            self._registry = self._open_registry()
        return self._registry

    def _served_version(self) -> str | None:
        registry = self._registry_client()
        return registry.served_version() if self._follow is Follow.STAGE else registry.champion_version()

    def _round_moved(self) -> bool:
        """Whether the log store's open round is another than the one last seen (a log store error counts as no)."""
        try:
            round_ = self._logs.current_round()
        except Exception:
            return False  # the next registry look reports it
        return _round_id(round_) != self._seen_round_id

    def _next(self, force: bool) -> ServedModel:
        current = self.current
        try:
            # the version number first (one query); its whole record (its stage) only when it is one to load
            version = self._served_version()
            new = version not in (None, current.version) and (version != self._failed or force)
            info = self._registry_client().version(version) if new else None
            self.registry_error, self.last_sync = None, time.time()
        except Exception as e:  # unreachable, locked, misconfigured: keep serving what we have
            self.registry_error = f"{type(e).__name__}: {e}"
            self._telemetry.errors.labels("registry_unreachable").inc()
            log.warning("registry unavailable, keeping %s: %s", current.label, self.registry_error)
            return self._with_round(current)
        if version is None:
            return current if current.version is None else cold()
        if info is None:
            return self._with_round(current)
        try:
            bundle = self._registry_client().load(info.version)
            model = ServedModel(info.version, info.stage, bundle, network_of(bundle), (), None, time.time())
        except Exception as e:  # CorruptModelError, a schema mismatch, weights that do not fit the config...
            self._failed, self.load_error = info.version, f"version {info.version}: {type(e).__name__}: {e}"
            self._telemetry.errors.labels("model_load_failed").inc()
            log.error("not serving %s", self.load_error)
            return self._with_round(current)
        self._failed = self.load_error = None
        return self._with_round(model)

    def _with_round(self, model: ServedModel) -> ServedModel:
        """`model` with the round now open for its version (or none) and what that round scores beside W."""
        if model.bundle is None:
            return model
        try:
            round_ = self._logs.current_round()
        except Exception as e:
            self._telemetry.errors.labels("logstore_unavailable").inc()
            log.warning("cannot read the exploration round, keeping round %s: %s", model.round, e)
            return model
        self._seen_round_id = _round_id(round_)
        if round_ is not None and round_.model_version != model.version:
            round_ = None  # a round opened for another version (e.g. before a stage change by hand): not ours
        if _round_id(round_) == _round_id(model.round):
            return model
        if round_ is None:
            return _alone(model)
        try:
            recipe = RoundRecipe.from_dict(round_.recipe)
        except ValueError as e:  # a recipe this release cannot serve: serve W alone rather than guess
            self._telemetry.errors.labels("round_recipe").inc()
            log.warning("round %s cannot be served (%s): serving v%s without exploration", round_.round_id, e,
                        model.version)
            return _alone(model)
        try:
            explore = self._round_networks(model.bundle, round_, recipe)
        except Exception as e:  # a challenger that does not load: its gate round gets no traffic, W serves alone
            self._telemetry.errors.labels("challenger_load_failed").inc()
            log.error("round %s: challenger v%s not served: %s: %s", round_.round_id, recipe.challenger,
                      type(e).__name__, e)
            return _alone(model)
        return replace(model, explore=explore, round=round_, recipe=recipe)

    def _round_networks(self, bundle: ModelBundle, round_: Round, recipe: RoundRecipe) -> tuple[DuelingQNetwork, ...]:
        """What W is scored with: a gate round's challenger version, or what the learner draws from the round's seed."""
        if recipe.challenger is not None:
            return (network_of(self._registry_client().load(recipe.challenger)),)
        return tuple(network_from_weights(bundle.config, weights)
                     for weights in round_weights(recipe, bundle.weights, round_.seed, round_.alpha))


def _alone(model: ServedModel) -> ServedModel:
    """`model` serving W's top k, outside any round."""
    return replace(model, explore=(), round=None, recipe=None)
