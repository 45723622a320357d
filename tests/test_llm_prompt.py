"""Prompt templates and the prompt builder on the tiny word-level tokenizer."""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import make_tiny_backbone_dir

from amfrec.llm.backbone import ITEM_TOKEN, USER_TOKEN, load_backbone
from amfrec.llm.prompt import IGNORE_INDEX, PromptBuilder, PromptTemplate, position_ids


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_backbone(
        str(make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))), device="cpu"
    ).tokenizer


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{history} {candidates} {colour}", "unknown slot"),
        ("{candidates} only", "missing"),
        ("{history} {candidates} {}", "positional"),
        ("{history} {candidates:>10}", "format spec"),
        ("{history} {candidates} {", "malformed"),
        ("{history} {candidates} <|item|>", "placeholder"),
        ("{history} <|user|>", "placeholder"),
    ],
)
def test_template_validation(text, match):
    with pytest.raises(ValueError, match=match):
        PromptTemplate(text=text)


def test_template_render_default_and_noun():
    t = PromptTemplate(noun="book")
    assert t.noun_plural == "books"
    text = t.render(["A x", "B x"], ["C x", "D x", "E x"])
    assert text == (
        "This user has watched A x, B x in the previous. Please predict the next book this user will watch. "
        "Choose the answer from the following 3 book titles: C x, D x, E x. Answer:"
    )
    custom = PromptTemplate(text="{noun_plural}: {history} | {n_candidates}: {candidates}", noun="movie")
    assert custom.render(["a"], ["b", "c"]) == "movies: a | 2: b, c"


def test_render_item_placeholders(tok):
    b = PromptBuilder(tok, tokens_per_item=2)
    assert b.render_item("Toy  Story") == f"Toy Story {ITEM_TOKEN}{ITEM_TOKEN}"
    assert b.clean_title(f"Bad{ITEM_TOKEN}Title") == "Bad Title"  # a title cannot smuggle placeholders in


def test_candidates_a_template_does_not_list_are_not_rendered_and_their_count_stays(tok):
    """A catalogue ranking passes every item as a candidate: a template without {candidates} renders the same
    text as with none (the item strings are never built), and {n_candidates} alone still counts them."""
    history = ["Toy Story", "Babe"]
    b = PromptBuilder(tok, PromptTemplate(text="Watched {history}. Next?"))
    assert not b.template.reads_candidates
    assert (
        b.render(history, ["Seven"] * 500)
        == b.render(history, [])
        == (f"Watched Toy Story {ITEM_TOKEN}, Babe {ITEM_TOKEN}. Next?")
    )
    counted = PromptBuilder(tok, PromptTemplate(text="Watched {history}. One of {n_candidates}?"))
    assert counted.template.reads_candidates and not counted.template.has_candidates
    assert counted.render(history, ["Seven", "Babe", "Heat"]).endswith("One of 3?")


def test_labels_cover_exactly_the_answer(tok):
    b = PromptBuilder(tok)
    batch = b.build(
        [["Toy Story", "Babe"], ["Seven"]],
        [["Golden Eye", "Copy Cat"], ["Babe", "Four Rooms"]],
        answers=["Golden Eye", "Four Rooms"],
    )
    eos = tok.eos_token_id
    for row, title in enumerate(["Golden Eye", "Four Rooms"]):
        lab = batch.labels[row]
        ans = lab[lab != IGNORE_INDEX].tolist()
        assert ans == tok(title, add_special_tokens=False)["input_ids"] + [eos]
        assert tok.decode(ans, skip_special_tokens=True) == title
        assert ans[-1] == eos
        # the answer tokens are the last tokens of the row, and equal the inputs there
        n = len(ans)
        assert batch.input_ids[row, -n:].tolist() == ans
        assert (lab[:-n] == IGNORE_INDEX).all()
    assert batch.prompt_lengths.tolist() == [
        int(batch.attention_mask[r].sum()) - int((batch.labels[r] != IGNORE_INDEX).sum()) for r in range(2)
    ]


def test_left_padding_mask_and_slots(tok):
    b = PromptBuilder(tok, tokens_per_item=2)
    batch = b.build([["Toy Story", "Babe", "Seven"], ["Seven"]], [["Golden Eye"], ["Babe"]], answers=None)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape
    assert (batch.labels == IGNORE_INDEX).all()  # no answers -> nothing to learn
    assert batch.attention_mask[:, -1].tolist() == [
        1,
        1,
    ]  # left padding: every prompt ends at the last column
    short = batch.attention_mask[1]
    n_pad = int((short == 0).sum())
    # row 0 has "Toy Story <i><i> ," + "Babe <i><i> ," more history (9 tokens) and a 2-word candidate (+1)
    assert n_pad == 9 + 1
    assert short[:n_pad].sum() == 0 and short[n_pad:].all()
    assert (batch.input_ids[1, :n_pad] == b.pad_id).all()
    assert batch.n_slots.tolist() == [8, 4]
    slots = batch.input_ids == b.item_token_id
    assert slots.sum(1).tolist() == [8, 4]
    assert (batch.attention_mask[slots] == 1).all()
    # placeholders come in consecutive pairs, each right after its title's last word
    pos = slots[0].nonzero().squeeze(1)
    assert (pos[1::2] - pos[0::2] == 1).all()
    babe = tok.convert_tokens_to_ids("Babe")
    assert batch.input_ids[0, pos[2] - 1] == babe  # second history item's placeholders follow "Babe"


def test_encode_answers_matches_build(tok):
    b = PromptBuilder(tok)
    enc = b.encode_answers(["Dead Man Walking", "Babe"])
    assert enc[1] == [tok.convert_tokens_to_ids("Babe"), tok.eos_token_id]
    batch = b.build([["Seven"], ["Seven"]], [["Babe"], ["Babe"]], answers=["Dead Man Walking", "Babe"])
    for row in range(2):
        lab = batch.labels[row]
        assert lab[lab != IGNORE_INDEX].tolist() == enc[row]


def test_builder_rejects_tokenizer_without_item_token(tmp_path):
    from llm_fixtures import make_tiny_tokenizer

    raw = make_tiny_tokenizer()
    raw.pad_token = raw.eos_token
    with pytest.raises(ValueError, match="one token"):
        PromptBuilder(raw)
    with pytest.raises(ValueError, match="tokens_per_item"):
        PromptBuilder(raw, tokens_per_item=-1)


def test_titles_only_prompt_has_no_placeholders(tok):
    b = PromptBuilder(tok, tokens_per_item=0)
    assert b.render(["Babe", "Seven"], ["Heat"]).count(b.item_token) == 0
    batch = b.build([["Babe", "Seven"]], [["Heat"]])
    assert batch.n_slots.tolist() == [0]
    assert int((batch.input_ids == b.item_token_id).sum()) == 0


def test_build_length_mismatch(tok):
    b = PromptBuilder(tok)
    with pytest.raises(ValueError, match="answers"):
        b.build([["Babe"]], [["Seven"]], answers=["a", "b"])
    assert torch.is_tensor(b.build([["Babe"]], [["Seven"]]).input_ids)


def test_optional_slots_and_user_placeholder(tok):
    t = PromptTemplate(text="A user {user} watched {history}. Next:")
    assert t.has_user and not t.has_candidates
    assert PromptTemplate().has_candidates and not PromptTemplate().has_user
    assert t.render(["a"], ["b"]) == f"A user {USER_TOKEN} watched a. Next:"
    b = PromptBuilder(tok, t, tokens_per_item=2)
    assert b.user_token_id == tok.convert_tokens_to_ids(USER_TOKEN) != b.item_token_id
    assert PromptBuilder(tok).user_token_id == -1  # no {user} slot
    assert b.clean_title(f"Bad{USER_TOKEN}Title") == "Bad Title"
    # no {candidates}: the candidates are not rendered and their placeholders not counted
    batch = b.build([["Toy Story", "Babe"], ["Seven"]], [["Golden Eye", "Copy Cat"], ["Babe"]])
    assert batch.n_slots.tolist() == [4, 2]
    assert (batch.input_ids == b.item_token_id).sum(1).tolist() == [4, 2]
    assert (batch.input_ids == b.user_token_id).sum(1).tolist() == [1, 1]
    golden = tok.convert_tokens_to_ids("Golden")
    assert not (batch.input_ids == golden).any()


def test_position_ids_start_at_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_prompt_texts_title_or_full_text_cut_to_the_token_budget(tok) -> None:
    from amfrec.config.options import ItemText
    from amfrec.data.dataset import ItemInfo
    from amfrec.model.build import prompt_texts

    items = [
        ItemInfo("", ""),
        ItemInfo("a", "Toy Story", fields=(("categories", "movies books"), ("brand", ""))),
        ItemInfo("b", "Babe"),
    ]
    assert prompt_texts(items, ItemText.TITLE, 32, tok) == ["", "Toy Story", "Babe"]
    # full text: "Toy Story. Categories: movies books" (the empty brand left out), by hand
    assert prompt_texts(items, ItemText.FULL, None, tok)[1] == "Toy Story. Categories: movies books"
    # a budget of 3 tokens of the word-level tokenizer keeps "Toy", "Story", "."; a short text stays whole
    cut = prompt_texts(items, ItemText.FULL, 3, tok)
    assert cut[1].split() == ["Toy", "Story", "."] and cut[2] == "Babe"
