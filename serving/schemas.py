"""Request and response bodies. Shapes, id formats and time ranges are checked here, so a malformed request is a 422
that names the field before any state is touched; limits that depend on configuration are checked in the routes."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from drn.mind import NewsItem
from serving.signing import ID_PATTERN

# User and news ids: what MIND and the simulated world use (U123, N4567), with room for other id schemes.
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")]
ImpressionId = Annotated[str, Field(pattern=ID_PATTERN.pattern)]
# Epoch seconds (UTC), as everywhere in the project; a time outside 1970..2100 is a malformed time, not a date.
EpochSeconds = Annotated[float, Field(ge=0.0, le=4_102_444_800.0, allow_inf_nan=False)]
Label = Annotated[str, Field(min_length=1, max_length=128)]
MAX_ENTITIES = 64  # per news item; MIND items have a handful
MAX_FEEDBACK_EVENTS = 1000  # clicks plus returns in one /feedback call: a client's batch, not a bulk import


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class Candidate(Strict):
    """A news id, with the metadata the service has not seen yet (sending it again is harmless)."""

    news_id: Id
    category: Label | None = None
    subcategory: Label | None = None
    provider: Label | None = None
    entities: list[Label] = Field(default_factory=list, max_length=MAX_ENTITIES)
    published: EpochSeconds | None = None

    def adds_nothing_to(self, known: NewsItem) -> bool:
        """The common case, checked without building an item: the client repeats what is known (or sends an id).
        Spelt out field by field: it runs for every candidate of every request."""
        return ((self.category is None or self.category == known.category)
                and (self.subcategory is None or self.subcategory == known.subcategory)
                and (self.provider is None or self.provider == known.provider)
                and (self.published is None or self.published == known.published)
                and (not self.entities or tuple(self.entities) == known.entities))

    def news_item(self, known: NewsItem | None) -> NewsItem:
        """This description laid over what is already known of the item (fields left out keep their value)."""
        given = {k: v for k, v in (("category", self.category), ("subcategory", self.subcategory),
                                    ("provider", self.provider), ("published", self.published)) if v is not None}
        if self.entities:
            given["entities"] = tuple(self.entities)
        return replace(known or NewsItem(self.news_id), **given)


class Context(Strict):
    time: EpochSeconds | None = None  # used only for callers with the clock token


class RecommendRequest(Strict):
    user: Id
    candidates: list[Candidate] = Field(min_length=1)
    k: int = Field(10, ge=1)
    context: Context = Field(default_factory=Context)


class RecommendResponse(BaseModel):
    impression_id: str  # quote it in /feedback
    items: list[str]  # the served list, best first
    model_version: str  # the registry version that ranked it, or "popularity"
    source: str  # "drn" or "popularity" (cold start: nothing promoted yet)
    round_id: int | None  # the exploration round it was interleaved in; None: the promoted network alone
    time: float  # the request time the features were computed at


class ClickEvent(Strict):
    impression_id: ImpressionId
    news_id: Id
    time: EpochSeconds | None = None


class ReturnEvent(Strict):
    user: Id
    time: EpochSeconds | None = None


class FeedbackRequest(Strict):
    clicks: list[ClickEvent] = Field(default_factory=list, max_length=MAX_FEEDBACK_EVENTS)
    returns: list[ReturnEvent] = Field(default_factory=list, max_length=MAX_FEEDBACK_EVENTS)


class FeedbackResponse(BaseModel):
    clicks_recorded: int
    clicks_duplicate: int  # already logged (a retry): counted once
    returns_recorded: int


class RollbackRequest(Strict):
    to: Annotated[str, Field(pattern=r"^[0-9]{1,9}$")] | None = None  # default: the version served before
    why: Annotated[str, Field(min_length=1, max_length=500)]
