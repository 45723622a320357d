"""The dataset card (DESIGN.md §3): the prompt's noun and the item text fields come from the data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_tiny_atomic

from amfrec.config.model import ModelConfig
from amfrec.data.card import DatasetCard, read_card, write_card
from amfrec.data.dataset import PreparedData
from amfrec.data.prepare import prepare
from amfrec.errors import AmfrecError
from amfrec.runs.amfrec_run import use_card

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_no_card_means_item_and_every_text_field(tmp_path: Path) -> None:
    assert read_card(tmp_path) == DatasetCard("item", "", None)
    assert DatasetCard().to_dict() == {"noun": "item", "noun_plural": "items", "text_fields": None}


def test_a_written_card_reads_back(tmp_path: Path) -> None:
    write_card(tmp_path, DatasetCard("product", "products", ("title", "brand")))
    assert read_card(tmp_path) == DatasetCard("product", "products", ("title", "brand"))


@pytest.mark.parametrize(
    ("body", "field"),
    [("noun: ''\n", "noun"), ("noun: [a]\n", "noun"), ("text_fields: title\n", "text_fields"),
     ("text_fields: []\n", "text_fields"), ("nouns: book\n", "nouns")],
)  # fmt: skip
def test_a_bad_card_names_its_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    (tmp_path / "dataset.yaml").write_text(body)
    with pytest.raises(AmfrecError, match=rf"dataset\.yaml.*{field}"):
        read_card(tmp_path)


@pytest.mark.parametrize(("name", "noun"), [("amazon-scientific", "product"), ("ml-100k", "movie")])
def test_the_shared_data_sets_cards(name: str, noun: str) -> None:
    if not (SHARED / name / "dataset.yaml").is_file():
        pytest.skip(f"{SHARED / name} not here")
    assert read_card(SHARED / name).noun == noun


def test_prepare_records_the_card_and_keeps_only_its_text_fields(tmp_path: Path) -> None:
    raw = make_tiny_atomic(tmp_path / "raw")
    write_card(raw, DatasetCard("film", "", ("movie_title", "class")))
    manifest = prepare(raw, tmp_path / "prepared", seed=1)
    assert manifest["card"] == {
        "noun": "film",
        "noun_plural": "films",
        "text_fields": ["movie_title", "class"],
    }
    items = PreparedData.load(tmp_path / "prepared").items[1:]
    assert all(it.year is None for it in items) and any(it.genres for it in items)  # release_year left out
    cfg = ModelConfig()
    use_card(cfg, manifest)
    assert (cfg.noun, cfg.noun_plural) == ("film", "films")
    given = ModelConfig(noun="book")
    use_card(given, manifest)
    assert given.noun == "book"  # model.noun overrides the card


def test_a_card_naming_a_missing_field_is_refused(tmp_path: Path) -> None:
    raw = make_tiny_atomic(tmp_path / "raw")
    write_card(raw, DatasetCard("film", "", ("movie_title", "plot")))
    with pytest.raises(AmfrecError, match=r"tiny\.item:1.*plot"):
        prepare(raw, tmp_path / "prepared", seed=1)
    assert not (tmp_path / "prepared").exists()


def test_without_a_card_the_noun_is_item(tmp_path: Path) -> None:
    raw = make_tiny_atomic(tmp_path / "raw")
    cfg = ModelConfig()
    use_card(cfg, prepare(raw, tmp_path / "prepared", seed=1))
    assert cfg.noun == "item"
