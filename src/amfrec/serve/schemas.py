"""The API's request and response bodies (pydantic): every field bounded, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_HISTORY = 200  # items in a request's history (the model reads the last max_len of them)
MAX_CANDIDATES = 5000  # ml-100k has 1,682 items; a larger catalogue sends no candidates at all
MAX_K = 100
MAX_BODY_BYTES = 64 * 1024  # larger bodies are refused with 413 before they are parsed
ItemId = str | int  # the data's own item ids (strings; JSON numbers are accepted and read as text)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[ItemId] = Field(min_length=1, max_length=MAX_HISTORY, description="item ids, oldest first")
    k: int = Field(10, ge=1, le=MAX_K, description="how many items to return")
    candidates: list[ItemId] | None = Field(
        None, min_length=1, max_length=MAX_CANDIDATES, description="rank only these (default: every item)"
    )
    exclude_seen: bool = Field(True, description="leave the history's items out of the default candidates")


class Item(BaseModel):
    item_id: str
    title: str
    score: float | None = None
    gate: dict[str, float] | None = None  # AMFRec: the gate's weight per modality


class RecommendResponse(BaseModel):
    model: str
    items: list[Item]
    history: list[Item]  # the history items as read (AMFRec: with their gate weights)


class ItemDetail(BaseModel):
    item_id: str
    title: str
    year: str | None
    genres: list[str]
    modalities: dict[str, bool]  # AMFRec: which modalities the item has; baselines: {}
    poster_url: str | None


class ItemPage(BaseModel):
    query: str
    page: int
    per_page: int
    total: int
    items: list[ItemDetail]


class ErrorBody(BaseModel):
    error: str
    field: str | None = None
