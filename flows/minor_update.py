"""Minor update (every T_D): score the current round; while it has too few decisive impressions it stays open
(served on, looked at again next time). Once an exploration round is decided, if the explore network won, register
the DBGD step (kind minor, parent = the promoted version) and promote it; once a gate round (a major update's
candidate against the promoted version) is decided, promote the candidate if it won and note the verdict on it.
Either way close the round with its outcome and open the next exploration round. Without a round yet, it only opens
one."""
from __future__ import annotations

import json
import time

from prefect import flow

from drn import lifecycle
from drn.config import Settings
from drn.exploration import ALPHA, ETA, RoundRecipe
from drn.interleaving import DEFAULT_METHOD, MAX_ROUND_IMPRESSIONS, MIN_DECISIVE, SIGNIFICANCE
from drn.logstore import LoggedImpression, Round
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
def close_round(settings: Settings, round_id: int, outcome: dict) -> None:
    common.log_store(settings).close_round(round_id, outcome, time.time())


@common.io_task
def open_round(settings: Settings, version: str, alpha: float, recipe: RoundRecipe) -> Round:
    return lifecycle.open_round(common.log_store(settings), version, alpha, time.time(), recipe)


@common.compute_task
def decide(promoted, version: str, round_: Round, feedback: list[LoggedImpression],
           options: dict) -> lifecycle.MinorDecision:
    return lifecycle.minor_update(promoted, version, round_, feedback, **options)


def settle_gate_round(settings: Settings, served: str, round_: Round, decision: lifecycle.MinorDecision,
                      alpha: float, recipe: RoundRecipe) -> dict:
    """A decided gate round: close it, note the verdict on the candidate, serve the candidate if it won (which opens
    an exploration round around it), else open the next exploration round around the served version."""
    challenger, outcome = decision.challenger, decision.outcome
    close_round(settings, round_.round_id, decision.record())
    common.annotate(settings, challenger, {"gate.verdict": decision.reason,
                                           "gate.outcome": json.dumps(decision.record(), sort_keys=True)})
    details = {"version": challenger, "parent": served, "round": round_.round_id, "winner": outcome.winner}
    if decision.promote:
        result, why = common.promote_if_passed(settings, challenger, lifecycle.GateResult(True, decision.reason),
                                               served, alpha)
        return common.report(KIND, result, why, details)
    opened = open_round(settings, served, alpha, recipe)
    return common.report(KIND, "challenger refused", decision.reason, {**details, "next_round": opened.round_id})


@flow(name=KIND, log_prints=True)
def minor_update(eta: float = ETA, form: str = "standard", noise: str = "element", alpha: float = ALPHA,
                 method: str = DEFAULT_METHOD, min_decisive: int = MIN_DECISIVE,
                 max_impressions: int = MAX_ROUND_IMPRESSIONS, significance: float = SIGNIFICANCE) -> dict:
    """`eta`, `form`: the DBGD step; `alpha`, `noise`, `method`: how the next round is served (its radius, how W~ is
    drawn, the interleaving), kept on the round for serving and the next minor update to read; `min_decisive`,
    `max_impressions`, `significance`: when a round decides (drn.interleaving states the test's error rate)."""
    settings = Settings.from_env()
    with common.exclusive(settings, KIND, LEASE_S) as held:
        if not held:
            return common.report(KIND, "skipped", "another minor update is running", {})
        current = common.served(settings)
        if current is None:
            return common.report(KIND, "nothing promoted", "no version is served: nothing to explore around", {})
        info, promoted = current
        recipe = RoundRecipe(noise=noise, interleaving=method)
        round_ = current_round(settings)
        if round_ is None:
            opened = open_round(settings, info.version, alpha, recipe)
            return common.report(KIND, "round opened", "no exploration round was open",
                                 {"version": info.version, "round": opened.round_id})
        options = dict(eta=eta, form=form, min_decisive=min_decisive, max_impressions=max_impressions,
                       significance=significance)
        decision = decide(promoted, info.version, round_, round_feedback(settings, round_.round_id), options)
        record = decision.record()
        if decision.outcome is not None and decision.outcome.pending:
            return common.report(KIND, "round kept open", decision.reason,
                                 {"version": info.version, "round": round_.round_id, "winner": record["winner"]})
        if decision.challenger is not None:
            return settle_gate_round(settings, info.version, round_, decision, alpha, recipe)
        if decision.bundle is None:
            close_round(settings, round_.round_id, record)
            opened = open_round(settings, info.version, alpha, recipe)
            return common.report(KIND, "no step", decision.reason,
                                 {"version": info.version, "round": round_.round_id, "next_round": opened.round_id,
                                  "winner": record["winner"]})
        outcome = decision.outcome
        version = common.register(
            settings, decision.bundle, kind="minor", parent=info.version,
            data_window=(round_.opened_at, time.time()),
            params={"dbgd": {"eta": eta, "form": form}, "round": {
                "id": round_.round_id, "seed": round_.seed, "alpha": round_.alpha, "recipe": round_.recipe},
                "interleaving": options},
            metrics={"interleaving.impressions": outcome.impressions, "interleaving.clicks_exploit": outcome.clicks_a,
                     "interleaving.clicks_explore": outcome.clicks_b, "interleaving.wins_exploit": outcome.wins_a,
                     "interleaving.wins_explore": outcome.wins_b, "interleaving.p_value": outcome.p_value},
            tags={"interleaving.winner": outcome.winner, "interleaving.round": str(round_.round_id),
                  "interleaving.outcome": json.dumps(record, sort_keys=True)},
            description=f"DBGD step of v{info.version} after round {round_.round_id}: {decision.reason}")
        close_round(settings, round_.round_id, {**record, "version": version})
        verdict = lifecycle.GateResult(True, decision.reason)
        result, why = common.promote_if_passed(settings, version, verdict, info.version, alpha)
        return common.report(KIND, result, why, {"version": version, "parent": info.version,
                                                 "round": round_.round_id, "winner": outcome.winner})
