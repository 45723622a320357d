"""The API's request and response bodies (pydantic): every field bounded, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_HISTORY = 200  # items in a request's history (the model reads the last max_len of them)
MAX_CANDIDATES = 5000  # ml-100k has 1,682 items; a larger catalogue sends no candidates at all
MAX_K = 100
MAX_BODY_BYTES = 64 * 1024  # larger bodies are refused with 413 before they are parsed
MAX_ITEMS_BODY_BYTES = 16 * 1024 * 1024  # POST /items: images travel inside (base64)
MAX_NEW_ITEMS = 100  # items in one POST /items
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # one decoded image
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
    available: bool = True  # False: withdrawn (DELETE /items/{id}), never recommended


class ItemPage(BaseModel):
    query: str
    page: int
    per_page: int
    total: int
    items: list[ItemDetail]


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


class NewItem(BaseModel):
    """An item to add, or to replace (its content becomes what this says; a trained id is kept)."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId
    title: str = Field(min_length=1, max_length=1000)
    year: str | None = Field(None, max_length=20)
    genres: list[str] = Field(default_factory=list, max_length=50)
    fields: dict[str, str] = Field(default_factory=dict, max_length=50, description="the data's text fields")
    image_path: str | None = Field(None, max_length=4096, description="an image file on the server")
    image_base64: str | None = Field(None, max_length=MAX_IMAGE_BYTES * 4 // 3 + 4, description="image bytes")
    vectors: dict[str, list[float]] = Field(
        default_factory=dict,
        max_length=10,
        description="modality -> precomputed vector (imported modalities)",
    )


class NewItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[NewItem] = Field(min_length=1, max_length=MAX_NEW_ITEMS)


class ItemsChanged(BaseModel):
    added: list[str]
    updated: list[str]
    withdrawn: list[str]
