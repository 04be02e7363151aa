"""String options are enums, turned into members in one place, with the choices in the error."""
from __future__ import annotations

import json

import pytest

from drn.exploration import Noise, StepForm
from drn.interleaving import Method
from drn.learners import LearnerConfig, LearnerName, RoundRecipe
from drn.model import Aggregation, NetworkConfig
from drn.options import option


def test_a_value_from_outside_becomes_a_member_or_an_error_that_lists_the_choices():
    assert option(Noise, "tensor", "noise") is Noise.TENSOR
    with pytest.raises(ValueError, match=r"noise must be one of \['element', 'tensor'\], got 'gaussian'"):
        option(Noise, "gaussian", "noise")


def test_configs_hold_members_and_travel_as_their_strings():
    recipe = RoundRecipe(learner="pdgd", noise="tensor", interleaving="probabilistic")
    assert (recipe.learner, recipe.noise, recipe.interleaving) == (LearnerName.PDGD, Noise.TENSOR, Method.PROBABILISTIC)
    stored = json.loads(json.dumps(recipe.to_dict()))  # as the log store keeps a round's recipe
    assert stored["learner"] == "pdgd" and RoundRecipe.from_dict(stored) == recipe
    assert LearnerConfig(step_form="literal").step_form is StepForm.LITERAL
    assert NetworkConfig.from_dict(NetworkConfig(aggregation="mean").to_dict()).aggregation is Aggregation.MEAN
    with pytest.raises(ValueError, match="step_form must be one of"):
        LearnerConfig(step_form="printed")


def test_the_minor_update_offers_its_choices_as_parameters():
    """Prefect reads the flow's signature: the UI's run form offers the choices, and a bad value is refused."""
    from prefect.utilities.callables import parameter_schema
    from flows.minor_update import minor_update
    schema = parameter_schema(minor_update.fn).model_dump()
    definitions = schema["definitions"]
    choices = {name: definitions[prop["$ref"].split("/")[-1]]["enum"] for name, prop in schema["properties"].items()
               if "$ref" in prop}
    assert choices == {"learner": ["dbgd", "mgd", "pdgd", "sgd"], "form": ["standard", "literal"],
                       "noise": ["element", "tensor"], "method": ["team_draft", "probabilistic"]}
    from prefect.exceptions import ParameterTypeError
    with pytest.raises(ParameterTypeError, match="learner"):
        minor_update.validate_parameters({"learner": "nope"})
    assert minor_update.validate_parameters({"learner": "mgd"})["learner"] is LearnerName.MGD
