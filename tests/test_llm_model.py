"""AMFRecModel on a tiny random Llama: injection, answer-only loss, shared-cache scoring, generation.

These tests exercise the title head (LLaRA: title log-likelihood, tree-attention scoring, generation), so
``make_model`` builds ``answer="title"`` models with the default title template (candidates listed). The
item_token head is tested in test_llm_item_token.py.
"""

from __future__ import annotations

import pytest
import torch
from llm_fixtures import HIDDEN, TITLES, item_encoder, make_tiny_backbone_dir
from torch.nn import functional as F

from amfrec.config.model import AnswerHead, default_template
from amfrec.llm.backbone import load_backbone
from amfrec.llm.prompt import IGNORE_INDEX, PromptTemplate, prompt_items
from amfrec.model.model import AMFRecModel
from amfrec.model.scoring import _custom_mask
from amfrec.recommender import Recommender

N_ITEMS = len(TITLES) - 1


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return load_backbone(
        str(make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm"))), dtype="float32", device="cpu"
    )


TITLE_TEMPLATE = default_template(AnswerHead.TITLE, prompt_candidates=True, user_token=False)


def make_model(backbone, tokens_per_item: int = 1, titles: list[str] = TITLES, **kw) -> AMFRecModel:
    """A title-head model (candidates listed in the prompt) with a real tiny item encoder."""
    kw.setdefault("answer", "title")
    kw.setdefault("template", PromptTemplate(text=TITLE_TEMPLATE))
    enc = item_encoder(
        len(titles) - 1, HIDDEN, tokens_per_item=tokens_per_item, token_norm=backbone.embed_norm
    )
    return AMFRecModel(backbone, enc, titles, **kw)  # T taken from enc.tokens_per_item


# history left-padded with 0, most recent last; candidates (B, C)
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9]])
CANDIDATES = torch.tensor([[4, 10, 8, 11], [1, 12, 3, 2], [10, 11, 12, 1]])
TARGET = torch.tensor([10, 12, 1])


def reference_scores(model: AMFRecModel, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per candidate: the full prompt + answer sequence through the whole LM, log-probs summed over labels."""
    bsz, n_cand = candidates.shape
    out = torch.empty(bsz, n_cand)
    with torch.no_grad():
        for b in range(bsz):
            for c in range(n_cand):
                h, cand = history[b : b + 1], candidates[b : b + 1]
                answer = [model.titles[int(candidates[b, c])]]
                batch = model.prompt.build(model._titles(h), model._titles(cand), answer)
                vectors, _, _ = model._item_vectors(h, cand)
                embeds = model.inject(batch.input_ids, vectors)
                logits = model.lm(
                    inputs_embeds=embeds, attention_mask=batch.attention_mask
                ).logits  # (1, T, V)
                logp = logits[0, :-1].log_softmax(-1)
                labels = batch.labels[0, 1:]
                sel = labels != IGNORE_INDEX
                out[b, c] = logp[sel].gather(1, labels[sel][:, None]).sum()
    return out


def test_is_recommender_and_parameter_report(backbone):
    model = make_model(backbone)
    assert isinstance(model, Recommender)
    assert model.answer is AnswerHead.TITLE and model.prompt.template.has_candidates
    trainable, total = model.parameter_report()
    n_encoder = sum(p.numel() for p in model.item_encoder.parameters())
    assert trainable == n_encoder + 1  # + the head's log_scale (no user projector, no collab weight)
    assert total == trainable + sum(p.numel() for p in backbone.model.parameters())
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.adapter.parameters()}
    assert model.item_encoder is model.adapter.item_encoder
    assert model.adapter.user is None and model.adapter.collab_weight is None
    model.train()
    assert model.item_encoder.training and not model.lm.training
    with pytest.raises(NotImplementedError, match="train"):
        model.fit(None, 0)


def test_items_order(backbone):
    model = make_model(backbone)
    with_candidates = model.prompt.template.has_candidates
    items, valid = prompt_items(HISTORY[:2], CANDIDATES[:2], with_candidates)
    assert items.tolist() == [[1, 2, 3, 4, 10, 8, 11], [4, 1, 12, 3, 2, 0, 0]]
    assert valid.sum(1).tolist() == [7, 5]
    with pytest.raises(ValueError, match="candidates"):
        prompt_items(HISTORY[:1], torch.tensor([[0, 1]]), with_candidates)


def test_tokens_per_item_mismatch_raises(backbone):
    enc = item_encoder(N_ITEMS, HIDDEN, tokens_per_item=2, token_norm=backbone.embed_norm)
    model = AMFRecModel(backbone, enc, TITLES, tokens_per_item=1)
    with pytest.raises(ValueError, match="2 tokens per item, prompt expects 1"):
        model.score(HISTORY, CANDIDATES)


def test_inject_count_mismatch_raises(backbone):
    model = make_model(backbone)
    batch = model.prompt.build([["Babe"]], [["Seven", "Copy Cat"]])  # 3 placeholders
    with pytest.raises(ValueError, match=r"3 <\|item\|> placeholders but 2 vectors"):
        model.inject(batch.input_ids, torch.zeros(2, HIDDEN))


def test_inject_rows(backbone):
    model = make_model(backbone, tokens_per_item=2)
    batch = model.prompt.build([["Babe", "Seven"], ["Toy Story"]], [["Copy Cat"], ["Babe"]])
    n = int(batch.n_slots.sum())
    assert n == 2 * (3 + 2)
    vectors = torch.randn(n, HIDDEN)
    embeds = model.inject(batch.input_ids, vectors)
    slots = batch.input_ids == model.prompt.item_token_id
    torch.testing.assert_close(embeds[slots], vectors)  # row-major order = placeholder order
    table = backbone.model.get_input_embeddings().weight
    torch.testing.assert_close(embeds[~slots], table[batch.input_ids[~slots]])
    assert embeds.dtype == table.dtype


def test_placeholders_align_with_mask_labels_and_items(backbone):
    model = make_model(backbone, tokens_per_item=2)
    batch = model.prompt.build(model._titles(HISTORY), model._titles(CANDIDATES), [TITLES[t] for t in TARGET])
    slots = batch.input_ids == model.prompt.item_token_id
    _, valid = prompt_items(HISTORY, CANDIDATES, model.prompt.template.has_candidates)
    assert slots.sum(1).tolist() == (valid.sum(1) * 2).tolist() == batch.n_slots.tolist()
    assert (batch.attention_mask[slots] == 1).all()
    assert (batch.labels[slots] == IGNORE_INDEX).all()
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()


def test_forward_loss_and_gradients(backbone):
    model = make_model(backbone)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    out = model(HISTORY, CANDIDATES, TARGET)
    # hand reference: full logits over the whole sequence, cross-entropy on labels only
    batch = model.prompt.build(model._titles(HISTORY), model._titles(CANDIDATES), [TITLES[t] for t in TARGET])
    with torch.no_grad():
        vectors, aux, _ = model._item_vectors(HISTORY, CANDIDATES)
        embeds = model.inject(batch.input_ids, vectors)
        pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.lm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=pos).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.01 * aux)
    assert out.n_answer_tokens == int((batch.labels != IGNORE_INDEX).sum())
    assert out.n_tokens == int(batch.attention_mask.sum())
    _, valid = prompt_items(HISTORY, CANDIDATES, model.prompt.template.has_candidates)  # (3, 9), padded
    assert out.weights.shape == (3, 9, 2)  # the gate's weights on id and text for every prompt item
    torch.testing.assert_close(out.weights.sum(-1), valid.float())  # shares of 1; padding items 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.item_encoder.parameters())
    assert all(p.grad is None for p in backbone.model.parameters())
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shared_cache_scores_equal_separate_scoring(backbone):
    model = make_model(backbone)
    scores = model.score(HISTORY, CANDIDATES)
    assert scores.shape == (3, 4) and scores.dtype == torch.float32
    ref = reference_scores(model, HISTORY, CANDIDATES)
    torch.testing.assert_close(scores, ref, atol=1e-4, rtol=0)
    assert scores.std() > 0.1  # the tiny model discriminates, so the comparison can fail


def test_shared_cache_scores_multi_token_items(backbone):
    model = make_model(backbone, tokens_per_item=3)
    torch.testing.assert_close(
        model.score(HISTORY, CANDIDATES), reference_scores(model, HISTORY, CANDIDATES), atol=1e-4, rtol=0
    )


def test_padding_in_batch_does_not_change_scores(backbone):
    model = make_model(backbone)
    together = model.score(HISTORY, CANDIDATES)
    for b in range(3):
        alone = model.score(HISTORY[b : b + 1], CANDIDATES[b : b + 1])
        torch.testing.assert_close(together[b : b + 1], alone, atol=1e-4, rtol=0)


def test_mean_reduction(backbone):
    total = make_model(backbone).score(HISTORY, CANDIDATES)
    mean = make_model(backbone, score_reduction="mean").score(HISTORY, CANDIDATES)
    lengths = torch.tensor(
        [
            [len(e) for e in make_model(backbone).prompt.encode_answers([TITLES[i] for i in row])]
            for row in CANDIDATES.tolist()
        ]
    )
    torch.testing.assert_close(mean, total / lengths)
    with pytest.raises(ValueError, match="score_reduction"):
        make_model(backbone, score_reduction="max")


def test_generate_returns_first_lines(backbone):
    model = make_model(backbone)
    texts = model.generate(HISTORY, CANDIDATES, max_new_tokens=5)
    assert len(texts) == 3 and all(isinstance(t, str) and "\n" not in t for t in texts)
    alone = model.generate(HISTORY[1:2], CANDIDATES[1:2], max_new_tokens=5)
    assert alone[0] == texts[1]  # left padding does not change greedy output
    item_token = AMFRecModel(backbone, item_encoder(N_ITEMS, HIDDEN), TITLES)  # the default head
    with pytest.raises(ValueError, match="title"):
        item_token.generate(HISTORY, CANDIDATES, max_new_tokens=5)


E2E_TITLES = [""] + [
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Copycat (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Seven (Se7en) (1995)",
    "Usual Suspects, The (1995)",
    "Mighty Aphrodite (1995)",
    "Postino, Il (1994)",
    "Mr. Holland's Opus (1995)",
    "French Twist (1995)",
    "From Dusk Till Dawn (1996)",
    "White Balloon, The (1995)",
    "Antonia's Line (1995)",
    "Angels and Insects (1995)",
    "Muppet Treasure Island (1996)",
    "Braveheart (1995)",
    "Taxi Driver (1976)",
    "Rumble in the Bronx (1995)",
    "Birdcage, The (1996)",
    "Brothers McMullen, The (1995)",
]


@pytest.mark.e2e
def test_smollm2_scores_two_examples():
    bb = load_backbone(dtype="float32", device="cpu")
    enc = item_encoder(len(E2E_TITLES) - 1, bb.hidden_size, token_norm=bb.embed_norm)
    model = AMFRecModel(bb, enc, E2E_TITLES, answer="title", template=PromptTemplate(text=TITLE_TEMPLATE))
    history = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    candidates = torch.stack(
        [torch.randperm(25, generator=torch.Generator().manual_seed(s))[:20] + 1 for s in (0, 1)]
    )
    scores = model.score(history, candidates)
    assert scores.shape == (2, 20)
    assert torch.isfinite(scores).all() and (scores < 0).all()
    alone = model.score(history[:1], candidates[:1])
    torch.testing.assert_close(scores[:1], alone, atol=1e-3, rtol=0)


def test_chunked_continuations_equal_one_pass(backbone):
    one_pass = make_model(backbone, score_chunk_rows=1000).score(HISTORY, CANDIDATES)
    chunked = make_model(backbone, score_chunk_rows=4).score(HISTORY, CANDIDATES)  # 1 example per pass
    torch.testing.assert_close(chunked, one_pass, atol=1e-5, rtol=0)
    two = make_model(backbone, score_chunk_rows=8).score(HISTORY, CANDIDATES)  # 2 + 1 examples
    torch.testing.assert_close(two, one_pass, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        one_pass, reference_scores(make_model(backbone), HISTORY, CANDIDATES), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(("fusion", "n_tokens"), [("gated", 1), ("tokens", 2)])
def test_build_amfrec_with_real_item_encoder(backbone, fusion, n_tokens):
    from types import SimpleNamespace

    from amfrec.config.model import ModelConfig
    from amfrec.model.build import build_amfrec

    torch.manual_seed(0)
    n = len(TITLES)
    feats = {
        m: SimpleNamespace(values=torch.randn(n, d), present=torch.ones(n, dtype=torch.bool))
        for m, d in [("id", 8), ("text", 6)]
    }
    cfg = ModelConfig(
        modalities=["id", "text"],
        fusion=fusion,
        noun="film",
        answer="title",
        prompt_candidates=True,
        user_token=None,
        collab_score=False,
        lm_layers=None,
    )
    model = build_amfrec(cfg, feats, TITLES, backbone=backbone)
    assert model.answer is AnswerHead.TITLE
    assert model.prompt.tokens_per_item == n_tokens
    assert model.prompt.template.noun == "film" and model.aux_weight == cfg.projector.aux_weight
    out = model(HISTORY, CANDIDATES, TARGET)
    out.loss.backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    assert any(p.grad is not None for p in model.trainable_parameters())
    torch.testing.assert_close(
        model.score(HISTORY, CANDIDATES), reference_scores(model, HISTORY, CANDIDATES), atol=1e-4, rtol=0
    )


@pytest.fixture(scope="module")
def eager_backbone(tmp_path_factory):
    bb = load_backbone(
        str(make_tiny_backbone_dir(tmp_path_factory.mktemp("tiny_lm_eager"))), dtype="float32", device="cpu"
    )
    bb.model.set_attn_implementation("eager")
    return bb


def test_packed_scoring_with_eager_attention(backbone, eager_backbone):
    assert backbone.model.config._attn_implementation == "sdpa"  # the bool-mask path of the other tests
    model = make_model(eager_backbone)
    assert model.lm.config._attn_implementation == "eager"  # additive float mask
    scores = model.score(HISTORY, CANDIDATES)
    torch.testing.assert_close(scores, reference_scores(model, HISTORY, CANDIDATES), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, make_model(backbone).score(HISTORY, CANDIDATES), atol=1e-4, rtol=0)


def test_custom_mask_forms(backbone, eager_backbone):
    mask = torch.tensor([[True, False], [True, True]])[None, None]  # (1, 1, 2, 2)
    assert torch.equal(_custom_mask(make_model(backbone), mask), mask)
    additive = _custom_mask(make_model(eager_backbone), mask)
    low = torch.finfo(additive.dtype).min
    assert additive.tolist() == [[[[0.0, low], [0.0, 0.0]]]]


def test_scores_with_eos_only_and_long_continuations(backbone):
    # "" encodes to eos alone (no packed tokens); the long title dominates the packed length Q.
    titles = list(TITLES)
    titles[3] = ""
    titles[4] = "Dead Man Walking Toy Story Golden Eye Seven The Usual Suspects"
    model = make_model(backbone, titles=titles)
    assert model.prompt.encode_answers([""]) == [[model.prompt.eos_id]]
    candidates = torch.tensor([[3, 4, 1, 2], [3, 3, 3, 3], [5, 4, 3, 7]])
    scores = model.score(HISTORY, candidates)
    torch.testing.assert_close(scores, reference_scores(model, HISTORY, candidates), atol=1e-4, rtol=0)
    assert scores[1].unique().numel() == 1  # identical eos-only candidates: one score
