"""String options as enums: each set of choices is one StrEnum, and a value from outside (a flow parameter, an
environment variable, a stored round) becomes a member in one place, with an error that lists the choices.

StrEnum members are their strings, so they compare equal to them and travel unchanged through JSON, MLflow
params and Prefect parameters."""
from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

Choice = TypeVar("Choice", bound=StrEnum)


def option(choices: type[Choice], value: object, what: str) -> Choice:
    """`value` as a member of `choices`, or a ValueError naming `what` and every choice."""
    try:
        return choices(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[c.value for c in choices]}, got {value!r}") from None
