"""What lets content carry the score where the id model knows nothing: modality dropout in training, and a
collaborative term that ignores the rows the collaborative net never trained (new items)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from llm_fixtures import HIDDEN, TITLES, make_tiny_backbone_dir, random_features, tiny_collab

from amfrec.config.model import GateConfig, ModelConfig, ProjectorConfig
from amfrec.llm.backbone import load_backbone
from amfrec.model.collab import CollaborativeNet
from amfrec.model.item_encoder import ItemEncoder, gate_balance_loss
from amfrec.model.model import AMFRecModel
from amfrec.model.query import query

N_ITEMS, L = len(TITLES) - 1, 5
NEW = 7  # the item the collaborative net never trained on
HISTORY = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, NEW, 8, 9]])  # (B, L)
CANDIDATES = torch.tensor([[4, 10, NEW, 11], [1, 12, 3, 2], [10, 11, 12, 1]])  # (B, C)


def encoder(rates: dict[str, float], n_items: int = N_ITEMS, features: dict | None = None) -> ItemEncoder:
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), user_token=None, collab_score=False, max_len=L,
                      modality_dropout=rates)  # fmt: skip
    torch.manual_seed(0)
    return ItemEncoder(features or random_features(n_items), HIDDEN, cfg, token_norm=1.0)


def test_dropout_rates_by_hand_and_never_every_modality() -> None:
    n = 2000
    feats = random_features(n)
    feats["text"].present[1::4] = False  # a quarter of the items have the id only: it can never be dropped
    enc = encoder({"id": 0.5, "text": 0.2}, n, feats).train()
    draws = torch.stack([enc.draw_dropout(n + 1) for _ in range(20)])  # (20, n + 1, 2)
    both = torch.zeros(n + 1, dtype=torch.bool)
    both[1:] = feats["text"].present[1:]
    # the id of an item with both modalities is dropped at 0.5 unless text is dropped too (then it is kept):
    # P(drop id) = 0.5 * (1 - 0.2) = 0.4; P(drop text) = 0.2 * (1 - 0.5) = 0.1 (by hand)
    rate_id = draws[:, both, 0].float().mean()
    rate_text = draws[:, both, 1].float().mean()
    se = math.sqrt(0.25 / draws[:, both, 0].numel())
    assert abs(float(rate_id) - 0.4) < 5 * se and abs(float(rate_text) - 0.1) < 5 * se
    assert not draws[:, ~both].any()  # id-only items and padding drop nothing
    assert not (draws[..., 0] & draws[..., 1]).any()
    assert enc.eval().draw_dropout(n + 1) is None  # off at evaluation


def test_a_dropped_modality_is_encoded_as_absent() -> None:
    feats = random_features(N_ITEMS)
    enc = encoder({"id": 0.5}, features=feats).train()
    drop = torch.zeros(1, N_ITEMS + 1, 2, dtype=torch.bool)
    drop[0, 3, 0] = True  # item 3 without its id
    items = torch.arange(N_ITEMS + 1)[None]
    with torch.no_grad():
        dropped = enc(items, None, drop)
    no_id = {k: SimpleNamespace(**vars(v)) for k, v in feats.items()}
    no_id["id"].present = feats["id"].present.clone()
    no_id["id"].present[3] = False
    ref = encoder({"id": 0.5}, features=no_id).train()(items)  # the same weights (same seed)
    torch.testing.assert_close(dropped.tokens, ref.tokens)
    assert float(dropped.weights[0, 3, 0]) == 0.0 and float(dropped.weights[0, 3, 1]) == pytest.approx(1.0)
    full = enc(items)
    assert not torch.allclose(full.tokens[0, 3], dropped.tokens[0, 3])
    torch.testing.assert_close(full.tokens[0, 4], dropped.tokens[0, 4])  # the other items untouched


def collab(seed: int = 1) -> CollaborativeNet:
    """A tiny frozen SASRec that never trained item NEW."""
    known = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    known[NEW] = False
    return tiny_collab(N_ITEMS, L, seed, known)


def test_new_items_get_the_users_mean_collaborative_logit_and_leave_the_history() -> None:
    c = collab()
    rep = c(HISTORY)  # (B, H)
    cleaned = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [0, 5, 6, 8, 9]])  # NEW removed, left-padded
    with torch.no_grad():
        want_rep = c.net(cleaned)[:, -1]
    torch.testing.assert_close(rep, want_rep)
    logits = c.item_logits(rep, CANDIDATES)  # (B, C)
    table = c.net.item_table().detach()
    known = [i for i in range(1, N_ITEMS + 1) if i != NEW]
    for b in range(3):  # slow reference, one user and one candidate at a time
        mean = sum(float(rep[b] @ table[i]) for i in known) / len(known)
        for j, item in enumerate(CANDIDATES[b].tolist()):
            want = mean if item == NEW else float(rep[b] @ table[item])
            assert float(logits[b, j]) == pytest.approx(want, abs=1e-5)
    with torch.no_grad():  # the new item's untrained row changes nothing
        c.net.item_emb.weight[NEW].mul_(-3.0)
    torch.testing.assert_close(c.item_logits(c(HISTORY), CANDIDATES), logits)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AMFRecModel:
    bb = load_backbone(str(make_tiny_backbone_dir(tmp_path_factory.mktemp("lm"))), dtype="float32")
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), max_len=L, modality_dropout={"id": 0.5})  # fmt: skip
    torch.manual_seed(0)
    enc = ItemEncoder(random_features(N_ITEMS), HIDDEN, cfg, token_norm=bb.embed_norm)
    return AMFRecModel(
        bb, enc, TITLES, answer="item_token", collab=collab(), user_token=True, collab_score=True
    )


def test_a_new_items_score_has_no_collaborative_part(model: AMFRecModel) -> None:
    model.eval()
    parts = model.score_parts(HISTORY, CANDIDATES)
    before = parts.total.clone()
    with torch.no_grad():
        model.collab.net.item_emb.weight[NEW].mul_(-3.0)  # an untrained row: noise
    assert torch.equal(model.score_parts(HISTORY, CANDIDATES).total, before)
    # the new candidate's collaborative part is the user's mean, the same as any other unknown item would get
    rep = model.collab(HISTORY[:1])
    mean = model.collab.item_logits(rep, None)[0][torch.arange(N_ITEMS) + 1 != NEW].mean()
    w = float(model.adapter.collab_weight.detach())
    assert float(parts.collab[0, 2]) == pytest.approx(w * float(mean), abs=1e-5)


def test_dropout_is_off_at_evaluation_and_on_in_training(model: AMFRecModel) -> None:
    model.eval()
    first = model.score(HISTORY, CANDIDATES)
    assert torch.equal(model.score(HISTORY, CANDIDATES), first)  # deterministic: nothing dropped
    model.train()
    target = CANDIDATES[:, 0]
    losses = {float(model(HISTORY, CANDIDATES, target).loss.detach()) for _ in range(4)}
    assert len(losses) > 1  # each training step draws its own dropout
    model.eval()


def test_sasrec_content_as_the_collaborative_net(tiny_prepared, tmp_path, caplog) -> None:
    """`model.user_token: sasrec_content`: AMFRec reads a frozen content-aware SASRec (`amfrec experiment`
    trains the seed's run and names it), whose rows of items it never trained on are content, so every item's
    collaborative logit counts. The blend reads no more validation users than --limit (4 < 8)."""
    import json
    import logging

    import yaml
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    from amfrec.experiments.experiment import with_collab_run
    from amfrec.runs.amfrec_run import evaluate_run, load_run, train_amfrec

    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path, dtype="float32")
    sets = {
        **SMALL,
        "model.user_token": "sasrec_content",
        "model.collab_score": True,
        "train.blend_examples": 8,
    }
    sets = with_collab_run(str(config), sets, tiny_prepared, features, 1, tmp_path, limit=4)
    assert sets["model.collab_run"] == str(tmp_path / "sasrec_content")
    assert (tmp_path / "sasrec_content" / "sasrec_content.safetensors").is_file()
    with caplog.at_level(logging.INFO, logger="amfrec.runs.scoring"):
        train_amfrec(tiny_prepared, features, config, 1, tmp_path / "run", sets, limit=4)
    assert "content weight on 4 validation users" in caplog.text
    model, data, _ = load_run(tmp_path / "run")
    assert model.collab.known[1:].all()  # content rows: no item is unknown
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    again = evaluate_run(
        tmp_path / "run", split="test", limit=4
    )  # the blended scale was saved with the weights
    assert {k: again[k] for k in ("hr@1", "ndcg@10", "mrr")} == {
        k: saved[k] for k in ("hr@1", "ndcg@10", "mrr")
    }
    assert "content_weight" in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train_info"]
    scores = model.score(data.test.history[:2], data.test.candidates[:2])
    assert scores.shape == (2, 20) and torch.isfinite(scores).all()
    assert (
        with_collab_run(str(config), {**sets}, tiny_prepared, features, 1, tmp_path, 4) == sets
    )  # named: kept


def test_train_alone_trains_the_sasrec_content_run_it_reads(tiny_prepared, tmp_path) -> None:
    """`amfrec train` with a sasrec_content user token and no model.collab_run trains that run into
    RUN/sasrec_content first and names it in the run's config, so the run is served as it was trained."""
    import yaml
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    from amfrec.runs.amfrec_run import load_run, train_amfrec

    features, config = make_tiny_amfrec_inputs(tiny_prepared, tmp_path, dtype="float32")
    sets = {**SMALL, "model.user_token": "sasrec_content", "model.collab_score": True}
    train_amfrec(tiny_prepared, features, config, 1, tmp_path / "run", sets, limit=4)
    collab = tmp_path / "run" / "sasrec_content"
    assert (collab / "sasrec_content.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["collab_run"] == str(collab.resolve())
    model, _, _ = load_run(tmp_path / "run")
    assert model.collab.source == str(collab.resolve())


def test_content_loss_adds_the_content_terms_own_cross_entropy(model: AMFRecModel) -> None:
    from torch.nn import functional as F

    target = CANDIDATES[:, 0]
    rates = model.item_encoder.drop_rates.clone()
    model.item_encoder.drop_rates.zero_()  # no dropout: the loss is deterministic
    try:
        model.train()
        model.content_loss = 0.0
        plain = float(model(HISTORY, CANDIDATES, target).lm_loss.detach())
        model.content_loss = 0.5
        with_content = float(model(HISTORY, CANDIDATES, target).lm_loss.detach())
        with (
            torch.no_grad()
        ):  # by hand: the catalogue softmax of the sum, plus 0.5 x that of the content term
            tokens, _, _ = model.item_table()
            q, _, rep, _ = query(model, HISTORY, CANDIDATES, tokens)
            parts = model.item_logits(q, rep, tokens.mean(1), None)  # (B, n_items) each
            total = F.cross_entropy(parts.total, target - 1)
            content = F.cross_entropy(parts.content, target - 1)
        assert plain == pytest.approx(float(total), abs=1e-5)
        assert with_content == pytest.approx(float(total + 0.5 * content), abs=1e-5)
    finally:
        model.content_loss = 0.0
        model.item_encoder.drop_rates.copy_(rates)
        model.eval()


def test_recommend_and_the_api_rank_new_items(tiny_atomic_dir, tmp_path) -> None:
    """Under the new-item protocol, items with features but no training interaction are ranked by
    `amfrec recommend` (the Ranker) and `POST /recommend` like every other item, with finite scores."""
    import json

    from fastapi.testclient import TestClient
    from llm_fixtures import SMALL, make_tiny_amfrec_inputs

    from amfrec.data.dataset import PreparedData
    from amfrec.data.prepare import prepare
    from amfrec.runs.amfrec_run import train_amfrec
    from amfrec.runs.ranker import Ranker
    from amfrec.serve.app import create_app

    prepare(tiny_atomic_dir, tmp_path / "data", seed=1, new_items=0.25)
    data = PreparedData.load(tmp_path / "data")
    new = [data.items[int(i)].item_id for i in torch.nonzero(data.new_items).flatten()]
    assert new and int(data.item_train_counts[data.new_items].sum()) == 0
    features, config = make_tiny_amfrec_inputs(tmp_path / "data", tmp_path, dtype="float32")
    sets = {**SMALL, "model.modality_dropout": {"id": 0.5}}
    train_amfrec(tmp_path / "data", features, config, 1, tmp_path / "run", sets, limit=4)
    history = [data.items[1].item_id, data.items[2].item_id]
    ranker = Ranker.load(tmp_path / "run")
    rows = ranker.rank(history)  # the whole catalogue minus the history
    ranked = {r["item_id"]: r["score"] for r in rows}
    assert set(new) - set(history) <= set(ranked) and all(
        math.isfinite(ranked[i]) for i in new if i in ranked
    )
    assert all(sum(r["gate"].values()) == pytest.approx(1.0, abs=1e-4) for r in rows if r["item_id"] in new)
    body = TestClient(create_app(ranker)).post(
        "/recommend", json={"history": history, "k": 3, "candidates": new[:3]}
    )
    assert body.status_code == 200
    got = [it["item_id"] for it in body.json()["items"]]
    assert sorted(got) == sorted(new[:3]) and got == [r["item_id"] for r in ranker.rank(history, 3, new[:3])]
    assert "new" in json.loads((tmp_path / "run" / "metrics.json").read_text())["slices"]


def test_blend_on_valid_picks_the_best_content_weight_and_folds_it_into_the_scale(model: AMFRecModel) -> None:
    from amfrec.data.dataset import Split
    from amfrec.metrics import RANK_KS, ranking_metrics, ranks_from_scores
    from amfrec.runs.scoring import BLEND_GRID, blend_on_valid

    model.eval()
    split = Split(users=["a", "b", "c"], history=HISTORY, target=CANDIDATES[:, 1], candidates=CANDIDATES)
    parts = model.score_parts(HISTORY, CANDIDATES)  # content (B, C), collab (B, C)
    pos = torch.ones(3, dtype=torch.long)  # the target is candidate 1 of every row
    by_hand = {
        lam: ranking_metrics(ranks_from_scores(lam * parts.content + parts.collab, pos), RANK_KS)["ndcg@10"]
        for lam in BLEND_GRID
    }
    best = max(by_hand.values())
    want = min((lam for lam, v in by_hand.items() if v == best), key=lambda lam: abs(math.log(lam)))
    before = float(model.adapter.log_scale.detach())
    try:
        assert blend_on_valid(model, split) == want
        assert float(model.adapter.log_scale.detach()) == pytest.approx(before + math.log(want), abs=1e-6)
        after = model.score_parts(HISTORY, CANDIDATES)
        torch.testing.assert_close(after.content, want * parts.content, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(after.collab, parts.collab)
    finally:
        with torch.no_grad():
            model.adapter.log_scale.fill_(before)


def test_gate_balance_loss_by_hand() -> None:
    weights = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    present = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # KL(uniform over the present || w): row 0 splits evenly (0), row 3 has one modality (left out)
    row1 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    row2 = 2 * (1 / 3) * math.log((1 / 3) / 0.2) + (1 / 3) * math.log((1 / 3) / 0.6)
    expected = (0.0 + row1 + row2) / 3
    assert float(gate_balance_loss(weights, present)) == pytest.approx(expected, rel=1e-6)
    assert float(gate_balance_loss(weights[3:], present[3:])) == 0.0  # no item with two modalities
    with pytest.raises(ValueError, match="model.gate.balance"):
        GateConfig(balance=-0.1)


def test_gate_balance_adds_its_weight_times_the_kl_to_the_loss(model: AMFRecModel) -> None:
    target = CANDIDATES[:, 0]
    rates = model.item_encoder.drop_rates.clone()
    model.item_encoder.drop_rates.zero_()  # no dropout: the loss is deterministic
    gate = model.item_encoder.cfg.gate
    try:
        model.train()
        plain = float(model(HISTORY, CANDIDATES, target).lm_loss.detach())
        gate.balance = 0.3
        balanced = float(model(HISTORY, CANDIDATES, target).lm_loss.detach())
        with torch.no_grad():  # by hand, from the item table's weights and the feature masks
            _, _, weights = model.item_table()  # (n_items + 1, M)
            present = torch.stack([f.present for f in random_features(N_ITEMS).values()], -1)
            present[0] = False  # padding
            u = present.float() / present.sum(-1, keepdim=True).clamp(min=1)
            kl = (u * (u.clamp(min=1e-12).log() - weights.clamp(min=1e-12).log()) * present).sum(-1)
            expected = kl[present.sum(-1) >= 2].mean()
        assert float(expected) > 0
        assert balanced == pytest.approx(plain + 0.3 * float(expected), abs=1e-5)
    finally:
        gate.balance = 0.0
        model.item_encoder.drop_rates.copy_(rates)
        model.eval()


def test_the_catalogue_softmax_leaves_out_items_never_trained(model: AMFRecModel) -> None:
    """With `train_items`, an item with no training interaction is no class of the catalogue softmax (it
    could only ever be a negative there, so training would learn to push every new item down)."""
    from torch.nn import functional as F

    target = CANDIDATES[:, 0]
    rates = model.item_encoder.drop_rates.clone()
    model.item_encoder.drop_rates.zero_()  # no dropout: the loss is deterministic
    trained = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    trained[[0, NEW, 12]] = False
    try:
        model.train()
        model.train_items = trained
        masked = float(model(HISTORY, CANDIDATES, target).lm_loss.detach())
        with torch.no_grad():  # by hand: the softmax over the trained items only
            tokens, _, _ = model.item_table()
            q, _, rep, _ = query(model, HISTORY, CANDIDATES, tokens)
            total = model.item_logits(q, rep, tokens.mean(1), None).total  # (B, n_items)
            keep = torch.nonzero(trained[1:]).squeeze(1)  # columns of the trained items
            label = torch.searchsorted(keep, target - 1)  # the targets' columns among them
            expected = F.cross_entropy(total[:, keep], label)
        assert masked == pytest.approx(float(expected), abs=1e-5)
        model.train_items = None
        assert float(model(HISTORY, CANDIDATES, target).lm_loss.detach()) > masked  # more classes: larger
    finally:
        model.train_items = None
        model.item_encoder.drop_rates.copy_(rates)
        model.eval()


def test_a_collaborative_net_with_a_shorter_history_reads_the_last_items() -> None:
    """A SASRec trained on the last 4 items, given 7: its representation is that of the last 4 known items
    (computed here on the net itself), not a shape error."""
    collab = tiny_collab(n_items=12, max_len=4)
    assert collab.max_len == 4
    history = torch.tensor([[0, 3, 5, 7, 2, 9, 11, 4], [0, 0, 0, 0, 0, 0, 6, 1]])  # (2, 8) left-padded
    with torch.no_grad():
        expected = collab.net(torch.tensor([[2, 9, 11, 4], [0, 0, 6, 1]]))[:, -1]
    torch.testing.assert_close(collab(history), expected)
