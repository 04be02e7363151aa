"""Request and response bodies. Shapes, id formats and time ranges are checked here, so a malformed request is a 422
that names the field before any state is touched; limits that depend on configuration are checked in the routes."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import NotRequired, Required, TypedDict

from drn.mind import NewsItem
from serving.signing import ID_PATTERN

# User and news ids: what MIND and the simulated world use (U123, N4567), with room for other id schemes.
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
ImpressionId = Annotated[str, Field(pattern=ID_PATTERN.pattern)]
# Epoch seconds (UTC), as everywhere in the project; a time outside 1970..2100 is a malformed time, not a date.
# strict: JSON `false` is not a time (lax parsing would read it as 0.0, 1970); integers still are
EpochSeconds = Annotated[float, Field(ge=0.0, le=4_102_444_800.0, allow_inf_nan=False, strict=True)]
# No NUL character in free text: PostgreSQL's text columns cannot hold one (SQLite's can), so the same request would
# be logged on one store and fail with a 503 on the other.
NO_NUL = r"^[^\x00]*$"
Label = Annotated[str, Field(min_length=1, max_length=128, pattern=NO_NUL)]
MAX_ENTITIES = 64  # per news item; MIND items have a handful
CLOCK_HEADER = "X-DRN-Clock-Token"  # a caller holding the clock token sets event times (simulations)
MAX_FEEDBACK_EVENTS = 1000  # clicks plus returns in one /feedback call: a client's batch, not a bulk import
MAX_HISTORY = 1000  # news ids in a /recommend `history`; MIND's longest histories hold a few hundred


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class Problem(BaseModel):
    """A request the service refuses for what it is, not its shape: a forged or unknown impression, a missing
    token, a conflict in the registry. (A body that fails validation gets FastAPI's HTTPValidationError.)"""

    detail: str


# The /recommend body is parsed into plain dicts (TypedDicts validated by pydantic-core) rather than models: with 50
# candidates per request, building 51 model objects cost more than the validation itself, and a dict compares with
# the description the service saw last for an item in one step (see `Service._describe`).
@with_config(ConfigDict(extra="forbid"))
class Candidate(TypedDict, total=False):
    """A news id, with the metadata the service has not seen yet (sending it again is harmless)."""

    news_id: Required[Id]
    category: Label | None
    subcategory: Label | None
    provider: Label | None
    entities: Annotated[list[Label], Field(max_length=MAX_ENTITIES)]
    published: EpochSeconds | None


@with_config(ConfigDict(extra="forbid"))
class Context(TypedDict, total=False):
    time: EpochSeconds | None  # used only for callers with the clock token


@with_config(ConfigDict(extra="forbid"))
class RecommendRequest(TypedDict):
    user: Id
    candidates: Annotated[list[Candidate], Field(min_length=1)]
    k: NotRequired[Annotated[int, Field(ge=1)]]  # default DEFAULT_K
    context: NotRequired[Context]
    history: NotRequired[Annotated[list[Id], Field(
        max_length=MAX_HISTORY,
        description="The user's clicked news ids from before (MIND's `history` column), oldest first. Seeds the "
                    "profile of a user the service does not know yet, and is logged with the impression; ignored "
                    f"for a user it knows. At most {MAX_HISTORY} ids.")]]


RECOMMEND_REQUEST = TypeAdapter(RecommendRequest)
DEFAULT_K = 10


def adds_nothing_to(candidate: Candidate, known: NewsItem) -> bool:
    """The client repeats what is known of the item (or sends just its id)."""
    get = candidate.get
    return ((get("category") is None or get("category") == known.category)
            and (get("subcategory") is None or get("subcategory") == known.subcategory)
            and (get("provider") is None or get("provider") == known.provider)
            and (get("published") is None or get("published") == known.published)
            and (not get("entities") or tuple(candidate["entities"]) == known.entities))


def news_item(candidate: Candidate, known: NewsItem | None) -> NewsItem:
    """This description laid over what is already known of the item (fields left out keep their value)."""
    given = {k: candidate.get(k) for k in ("category", "subcategory", "provider", "published")
             if candidate.get(k) is not None}
    if candidate.get("entities"):
        given["entities"] = tuple(candidate["entities"])
    return replace(known or NewsItem(candidate["news_id"]), **given)


class RecommendResponse(BaseModel):
    impression_id: str  # quote it in /feedback
    items: list[str]  # the served list, best first
    model_version: str  # the registry version that ranked it, or "popularity"
    source: str  # "drn" or "popularity" (cold start: nothing promoted yet)
    round_id: int | None  # the exploration round it was interleaved in; None: the promoted network alone
    time: float  # the request time the features were computed at


class ClickEvent(Strict):
    impression_id: ImpressionId
    user: Id = Field(description="The user the impression was served to; a click for another user's is refused.")
    news_id: Id
    time: EpochSeconds | None = None


class ReturnEvent(Strict):
    """The user came back after an impression: that impression's id is the return's id, so a retry counts once."""

    impression_id: ImpressionId
    user: Id = Field(description="The user the impression was served to; a return for another user's is refused.")
    time: EpochSeconds | None = None


class FeedbackRequest(Strict):
    clicks: list[ClickEvent] = Field(default_factory=list, max_length=MAX_FEEDBACK_EVENTS)
    returns: list[ReturnEvent] = Field(default_factory=list, max_length=MAX_FEEDBACK_EVENTS)


class FeedbackResponse(BaseModel):
    clicks_recorded: int
    clicks_duplicate: int  # already logged (a retry): counted once
    returns_recorded: int
    returns_duplicate: int  # this impression's return was already logged (a retry): counted once


class RollbackRequest(Strict):
    to: Annotated[str, Field(pattern=r"^[0-9]{1,9}$")] | None = None  # default: the version served before
    why: Annotated[str, Field(min_length=1, max_length=500, pattern=NO_NUL)]
