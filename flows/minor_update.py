"""Minor update (every T_D): score the current round by its recipe's learner (drn.learners); while it has too little
evidence it stays open (served on, looked at again next time). Once decided:
- an exploration round whose learner stepped W (DBGD's W~ won; MGD's explore networks that beat W; PDGD's gradient
  on the round's clicks): register the new weights (kind minor, parent = the promoted version) and promote them;
- a gate round (a major update's or SGD's candidate against the promoted version): note the verdict on the candidate
  and promote it if it won (SGD's: if it did not lose);
- an SGD round: train the next challenger on the round's feedback, register it and open its gate round.
Either way close the round with its outcome and open the next one. Without a round yet, it only opens one. A round
another run closed while this one decided (a major update's gate round opening) ends the run: nothing promoted."""
from __future__ import annotations

import dataclasses
import json
import time

from prefect import flow

from drn import lifecycle
from drn.bundle import ModelBundle
from drn.config import Settings
from drn.exploration import ALPHA, ETA, Noise, StepForm
from drn.interleaving import DEFAULT_METHOD, MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE, Method
from drn.learners import (DEFAULT_LEARNER, EXPLORERS, PDGD_LEARNING_RATE, PL_TEMPERATURE, SGD_LEARNING_RATE, SGD_STEPS,
                          ClickedList, LearnerConfig, LearnerName, RoundRecipe)
from drn.logstore import LoggedImpression, Round, RoundClosed
from flows import common

KIND = "minor-update"
LEASE_S = 15 * 60.0  # a minor update takes seconds; a dead one blocks the next for at most this


@common.io_task
def current_round(settings: Settings) -> Round | None:
    return common.log_store(settings).current_round()


@common.io_task
def round_feedback(settings: Settings, round_id: int) -> list[LoggedImpression]:
    return common.log_store(settings).round_feedback(round_id)


@common.io_task
def round_lists(settings: Settings, round_: Round, feedback: list[LoggedImpression]) -> list[ClickedList]:
    """The round's lists with their features, replayed from every impression logged before it (PDGD, SGD)."""
    logs = common.log_store(settings)
    return lifecycle.round_lists(logs.news(), logs.window(None, round_.opened_at), feedback)


@common.io_task
def load(settings: Settings, version: str) -> ModelBundle:
    return common.registry(settings).load(version)


@common.io_task
def close_round(settings: Settings, round_id: int, outcome: dict) -> bool:
    """Score the round. False when it was closed meanwhile, unscored, by another run opening the next round (a major
    update's gate round, a promotion, a rollback): this run's decision then stands for nothing."""
    try:
        common.log_store(settings).close_round(round_id, outcome, time.time())
    except RoundClosed:
        return False
    return True


@common.io_task
def open_round(settings: Settings, version: str, alpha: float, recipe: RoundRecipe) -> Round:
    return lifecycle.open_round(common.log_store(settings), version, alpha, time.time(), recipe)


@common.compute_task
def decide(promoted: ModelBundle, version: str, round_: Round, feedback: list[LoggedImpression],
           config: LearnerConfig, lists: list[ClickedList] | None,
           challenger: ModelBundle | None) -> lifecycle.MinorDecision:
    return lifecycle.minor_update(promoted, version, round_, feedback, config, lists=lists, challenger=challenger)


def _closed_meanwhile(round_: Round, decision: lifecycle.MinorDecision, details: dict,
                      registered: str | None = None) -> dict:
    """The report of a run whose round another run closed while it decided: nothing promoted, no round opened (the
    other run opened the one now served)."""
    why = (f"round {round_.round_id} was closed by another run while this one decided ({decision.reason}): "
           "nothing promoted")
    if registered is not None:
        why += f"; v{registered} stays registered, unpromoted"
    return common.report(KIND, "round closed meanwhile", why, details)


def _round_params(round_: Round) -> dict:
    return {"id": round_.round_id, "seed": round_.seed, "alpha": round_.alpha, "recipe": round_.recipe}


def _credit_series(feedback: list[LoggedImpression]) -> dict[str, list[tuple[int, float]]]:
    """The round's impressions won by each team, over the round: the minor version's curves."""
    curve = lifecycle.round_curve(feedback)
    return {"round.won_by_exploit": [(n, a) for n, a, _ in curve], "round.won_by_explore": [(n, b) for n, _, b in curve]}


def _register_step(settings: Settings, served_version: str, round_: Round, decision: lifecycle.MinorDecision,
                   config: LearnerConfig, feedback: list[LoggedImpression]) -> str:
    """Register W's new weights from an exploration round (kind minor), with the round's evidence."""
    learner = RoundRecipe.from_dict(round_.recipe).learner
    return common.register(
        settings, decision.bundle, kind="minor", parent=served_version, data_window=(round_.opened_at, time.time()),
        params={"learner": learner, "config": dataclasses.asdict(config), "round": _round_params(round_)},
        metrics=decision.metrics, series=_credit_series(feedback),
        tags={"interleaving.winner": decision.verdict, "interleaving.round": str(round_.round_id),
              "interleaving.outcome": json.dumps(decision.record(), sort_keys=True)},
        description=f"{learner} step of v{served_version} after round {round_.round_id}: {decision.reason}")


def _challenge_with(settings: Settings, base: str, round_: Round, decision: lifecycle.MinorDecision,
                    config: LearnerConfig, recipe: RoundRecipe, alpha: float) -> tuple[str, str]:
    """SGD: register the challenger trained on the round, and open its gate round against `base`."""
    version = common.register(
        settings, decision.candidate, kind="minor", parent=base, data_window=(round_.opened_at, time.time()),
        params={"learner": "sgd", "config": dataclasses.asdict(config), "round": _round_params(round_)},
        metrics=decision.metrics, tags={"sgd.round": str(round_.round_id)},
        description=f"sgd challenger of v{base}: {config.sgd_steps} steps on the feedback of round {round_.round_id}")
    opened = common.challenge(settings, version, expected_served=base, alpha=alpha,
                              recipe=dataclasses.replace(recipe, promote_on_tie=True))
    return version, (f"v{version}, trained on round {round_.round_id}, is in its gate round against v{base}"
                     if opened else f"v{version} registered, but the served version changed from v{base} meanwhile")


@flow(name=KIND, log_prints=True)
def minor_update(learner: LearnerName = DEFAULT_LEARNER, eta: float = ETA, form: StepForm = StepForm.STANDARD,
                 noise: Noise = Noise.ELEMENT, alpha: float = ALPHA, method: Method = DEFAULT_METHOD,
                 explorers: int = EXPLORERS,
                 temperature: float = PL_TEMPERATURE, min_decisive: int = MIN_DECISIVE,
                 max_impressions: int = MAX_ROUND_IMPRESSIONS, significance: float = SIGNIFICANCE,
                 pdgd_learning_rate: float = PDGD_LEARNING_RATE, sgd_steps: int = SGD_STEPS,
                 sgd_learning_rate: float = SGD_LEARNING_RATE) -> dict:
    """`learner`: dbgd, mgd, pdgd or sgd (drn.learners); with `alpha`, `noise`, `method`, `explorers` (mgd),
    `temperature` (pdgd) it says how the next round is served, kept on the round for serving and the next minor
    update to read; `eta`, `form`: the step towards winning explore networks; `pdgd_learning_rate`, `sgd_steps`,
    `sgd_learning_rate`: the gradient learners' steps; `min_decisive`, `max_impressions`, `significance`: when a
    round decides (drn.interleaving states the test's error rate)."""
    settings = Settings.from_env()
    recipe = RoundRecipe(learner=learner, noise=noise, interleaving=method, explorers=explorers,
                         temperature=temperature)
    config = LearnerConfig(alpha=alpha, eta=eta, step_form=form, noise=noise, interleaving=method,
                           min_decisive=min_decisive, max_round_impressions=max_impressions,
                           significance=significance, explorers=explorers, temperature=temperature,
                           pdgd_learning_rate=pdgd_learning_rate, sgd_steps=sgd_steps,
                           sgd_learning_rate=sgd_learning_rate)
    with common.exclusive(settings, KIND, LEASE_S, scheduled=True) as busy:
        if busy:
            return common.skipped(KIND, busy)
        current = common.served_model(settings)
        if current is None:
            return common.report(KIND, "nothing promoted", "no version is served: nothing to explore around", {})
        info, promoted = current
        round_ = current_round(settings)
        if round_ is None:
            opened = open_round(settings, info.version, alpha, recipe)
            return common.report(KIND, "round opened", "no round was open",
                                 {"version": info.version, "round": opened.round_id})
        served_with = RoundRecipe.from_dict(round_.recipe)
        ours = round_.model_version == info.version
        feedback = round_feedback(settings, round_.round_id)
        lists = round_lists(settings, round_, feedback) if ours and served_with.needs_features else None
        won_with = (load(settings, served_with.challenger)
                    if ours and served_with.challenger is not None and served_with.learner is LearnerName.SGD else None)
        decision = decide(promoted, info.version, round_, feedback, config, lists, won_with)
        details = {"version": info.version, "round": round_.round_id, "winner": decision.verdict}
        if decision.pending:
            return common.report(KIND, "round kept open", decision.reason, details)
        result, why, serving = "no step", decision.reason, info.version
        if decision.challenger is not None:
            if not close_round(settings, round_.round_id, decision.record()):
                return _closed_meanwhile(round_, decision, details)
            common.annotate(settings, decision.challenger, {
                "gate.verdict": decision.reason, "gate.outcome": json.dumps(decision.record(), sort_keys=True)})
            details.update(version=decision.challenger, parent=info.version)
            result = "challenger refused"
            if decision.promote:
                result, why = common.promote_if_passed(settings, decision.challenger,
                                                       lifecycle.GateResult(True, decision.reason), info.version, alpha)
        elif decision.bundle is not None:
            version = _register_step(settings, info.version, round_, decision, config, feedback)
            details.update(version=version, parent=info.version)
            if not close_round(settings, round_.round_id, {**decision.record(), "version": version}):
                return _closed_meanwhile(round_, decision, details, registered=version)
            result, why = common.promote_if_passed(settings, version, lifecycle.GateResult(True, decision.reason),
                                                   info.version, alpha)
        elif not close_round(settings, round_.round_id, decision.record()):
            return _closed_meanwhile(round_, decision, details)
        if result == "promoted":
            serving = details["version"]  # the promotion opened an exploration round around it
        if decision.candidate is not None:
            details["challenger"], challenging = _challenge_with(settings, serving, round_, decision, config, recipe,
                                                                 alpha)
            why = f"{why}; {challenging}"
        elif result != "promoted":
            details["next_round"] = open_round(settings, info.version, alpha, recipe).round_id
        return common.report(KIND, result, why, details)
