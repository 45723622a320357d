"""The dataset card ``dataset.yaml`` beside the atomic files (DESIGN.md §3): what the prompt calls an item
and which item-file fields are its text. No card: the noun is "item" and every text field counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from amfrec.errors import AmfrecError
from amfrec.io import read_yaml_mapping, write_text

CARD_FILE = "dataset.yaml"
_KEYS = ("noun", "noun_plural", "text_fields")


@dataclass(frozen=True)
class DatasetCard:
    noun: str = "item"
    noun_plural: str = ""  # empty = noun + "s"
    text_fields: tuple[str, ...] | None = None  # None = every text field of the item file

    def to_dict(self) -> dict:
        fields = None if self.text_fields is None else list(self.text_fields)
        return {"noun": self.noun, "noun_plural": self.noun_plural or self.noun + "s", "text_fields": fields}


def read_card(data_dir: str | Path) -> DatasetCard:
    """The card of a raw data folder (its ``dataset.yaml``), or the default card when it has none."""
    path = Path(data_dir) / CARD_FILE
    if not path.is_file():
        return DatasetCard()
    raw = read_yaml_mapping(path)
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise AmfrecError(f"{path}: unknown field(s) {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    noun, plural, fields = raw.get("noun", "item"), raw.get("noun_plural") or "", raw.get("text_fields")
    for name, value in (("noun", noun), ("noun_plural", plural)):
        if not isinstance(value, str) or (name == "noun" and not value.strip()):
            raise AmfrecError(f"{path}: field '{name}' must be a word, got {value!r}")
    if fields is not None and (
        not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields)
    ):
        raise AmfrecError(
            f"{path}: field 'text_fields' must be a non-empty list of field names, got {fields!r}"
        )
    return DatasetCard(noun.strip(), plural.strip(), None if fields is None else tuple(fields))


def write_card(data_dir: str | Path, card: DatasetCard) -> Path:
    """Write ``card`` as ``data_dir/dataset.yaml`` (atomically); return its path."""
    path = Path(data_dir) / CARD_FILE
    body = {k: v for k, v in card.to_dict().items() if v is not None}
    write_text(path, "# Dataset card (DESIGN.md §3): the prompt's noun and the item text fields.\n"
               + yaml.safe_dump(body, sort_keys=False))  # fmt: skip
    return path
