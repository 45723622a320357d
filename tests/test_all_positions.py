"""Every item boundary a query (model.positions 'all'): chunks of windows, causality, and one prompt's loss
equal to the windows' own losses, each computed the slow way, one window at a time through inference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from llm_fixtures import (
    HIDDEN,
    SMALL,
    TITLES,
    make_tiny_amfrec_inputs,
    make_tiny_backbone_dir,
    random_features,
    tiny_collab,
)
from torch.nn import functional as F

from amfrec.bench.targets import run_targets_bench
from amfrec.config.model import GateConfig, ModelConfig, ProjectorConfig
from amfrec.config.train import TrainConfig
from amfrec.data.dataset import PreparedData, Split
from amfrec.llm.backbone import load_backbone
from amfrec.model.item_encoder import ItemEncoder
from amfrec.model.model import AMFRecModel
from amfrec.model.positions import chunk_items, prefix_histories
from amfrec.model.query import query
from amfrec.runs.amfrec_run import load_run, train_amfrec
from amfrec.training.distributed import Ranks, shard
from amfrec.training.sampling import ChunkBatches, chunk_windows

N_ITEMS, L = len(TITLES) - 1, 6


def windows(*sequences: list[int]) -> Split:
    """Every training window of each sequence (history of >= 1 item -> next item), left-padded to L."""
    users, hist, target = [], [], []
    for u, seq in enumerate(sequences):
        for t in range(1, len(seq)):
            h = seq[:t][-L:]
            users.append(f"u{u}")
            hist.append([0] * (L - len(h)) + h)
            target.append(seq[t])
    return Split(users=users, history=torch.tensor(hist), target=torch.tensor(target))


def test_chunks_are_runs_of_one_users_windows_cut_from_the_end() -> None:
    split = windows([1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11])  # windows: 5, 1, 2
    starts, lengths = chunk_windows(split, 2)
    # user 0: windows 0..4 -> [0], [1, 2], [3, 4] (cut from the end); user 1: [5]; user 2: [6, 7]
    assert starts.tolist() == [0, 1, 3, 5, 6] and lengths.tolist() == [1, 2, 2, 1, 2]
    starts, lengths = chunk_windows(split, 10)
    assert starts.tolist() == [0, 5, 6] and lengths.tolist() == [5, 1, 2]
    broken = split.subset([0, 2, 3])  # window 1 left out: window 2 no longer continues window 0
    assert chunk_windows(broken, 10)[1].tolist() == [1, 2]


def test_chunk_items_and_prefix_histories_by_hand() -> None:
    split = windows([1, 2, 3, 4], [7, 8])
    items = chunk_items(split.history, torch.tensor([3, 1]))
    assert items.tolist() == [[1, 2, 3], [0, 0, 7]]
    prefixes = prefix_histories(torch.tensor([[0, 5, 6, 7]]), 3)
    assert prefixes.tolist() == [[[0, 0, 0, 5], [0, 0, 5, 6], [0, 5, 6, 7]]]


def test_chunk_batches_show_every_window_once_an_epoch_reproducibly() -> None:
    split = windows([1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11, 12], [1, 3, 5, 7, 9])
    cfg = TrainConfig(batch_size=2, seed=3, n_negatives=3, max_steps=20)
    batches = ChunkBatches(split, N_ITEMS, cfg, size=3)
    seen = []
    for i in range(batches.per_epoch):
        history, cands, target, lengths = batches[i]
        assert history.shape[0] == target.shape[0] == cands.shape[0] == int(lengths.sum())
        assert (cands == target[:, None]).any(1).all()
        seen += [(tuple(h), int(t)) for h, t in zip(history.tolist(), target.tolist(), strict=True)]
    assert sorted(seen) == sorted(
        (tuple(h), int(t)) for h, t in zip(split.history.tolist(), split.target.tolist(), strict=True)
    )
    again = ChunkBatches(split, N_ITEMS, cfg, size=3)
    for i in (0, 1, batches.per_epoch + 1):
        for a, b in zip(batches[i], again[i], strict=True):
            assert torch.equal(a, b)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory):
    return load_backbone(str(make_tiny_backbone_dir(tmp_path_factory.mktemp("lm"))), dtype="float32")


def build(backbone, positions: str = "all", no_llm: bool = False, user_token: bool = True) -> AMFRecModel:
    cfg = ModelConfig(modalities=["id", "text"], projector=ProjectorConfig(n_experts=2, hidden=8),
                      gate=GateConfig(hidden=8), max_len=L, modality_dropout={}, positions=positions,
                      user_token="sasrec" if user_token else None)  # fmt: skip
    torch.manual_seed(0)
    enc = ItemEncoder(random_features(N_ITEMS), HIDDEN, cfg, token_norm=backbone.embed_norm)
    model = AMFRecModel(
        backbone, enc, TITLES, answer="item_token", collab=tiny_collab(N_ITEMS, L), user_token=user_token,
        collab_score=True, query_head=True, new_item_control=True, no_llm=no_llm, positions=positions,
        max_len=L, aux_weight=0.0,
    )  # fmt: skip
    with torch.no_grad():  # the query map and the control's away from their identity / zero start
        for p in model.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


SEQUENCES = ([1, 2, 3, 4, 5], [6, 7, 8], [9, 10])


@pytest.mark.parametrize("no_llm", [False, True])
@pytest.mark.parametrize("user_token", [True, False])
def test_one_prompts_loss_is_the_mean_of_its_windows_losses(backbone, no_llm: bool, user_token: bool) -> None:
    model = build(backbone, no_llm=no_llm, user_token=user_token)
    split = windows(*SEQUENCES)
    lengths = torch.tensor([4, 2, 1])
    cands = split.target[:, None]  # unused by the catalogue softmax
    with torch.no_grad():
        loss = model(split.history, cands, split.target, lengths).lm_loss
    every_item = torch.arange(1, N_ITEMS + 1)[None]
    slow = []
    for j in range(len(split)):  # one window at a time, scored as at inference
        total = model.score_parts(split.history[j : j + 1], every_item).total  # (1, n_items)
        slow.append(F.cross_entropy(total, split.target[j : j + 1] - 1))
    torch.testing.assert_close(loss, torch.stack(slow).mean(), atol=1e-5, rtol=1e-5)


def test_no_position_reads_its_future(backbone) -> None:
    model = build(backbone)
    a, b = windows([1, 2, 3, 4, 5]), windows([1, 2, 3, 11, 12])  # the same first two windows
    table, _, _ = model.item_table()
    lengths = torch.tensor([4])
    with torch.no_grad():
        qa, newa, repa, _ = query(model, a.history, a.target[:, None], table, lengths)
        qb, newb, repb, _ = query(model, b.history, b.target[:, None], table, lengths)
    for x, y in ((qa, qb), (newa, newb), (repa, repb)):  # the LM's state, the control's, the collaborative
        torch.testing.assert_close(x[:3], y[:3])  # windows 0-2 end at items 1, 2, 3 in both
        assert not torch.allclose(x[3], y[3])  # window 3 ends at 4 vs 11


def test_training_and_inference_read_the_same_position(backbone) -> None:
    model = build(backbone)
    split = windows([1, 2, 3, 4, 5])
    table, _, _ = model.item_table()
    with torch.no_grad():
        q_train, _, rep_train, _ = query(
            model, split.history, split.target[:, None], table, torch.tensor([4])
        )
        q_infer, _, rep_infer, _ = query(model, split.history[3:], split.target[3:, None], table, None)
    torch.testing.assert_close(q_train[3:], q_infer, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rep_train[3:], rep_infer)


def test_positions_all_needs_a_template_that_ends_with_the_history() -> None:
    cfg = ModelConfig(positions="all")
    assert cfg.template.rstrip().endswith("{history}") and "{user}" not in cfg.template
    with pytest.raises(ValueError, match="model.template"):
        ModelConfig(positions="all", template="Items: {history}. Next:")
    with pytest.raises(ValueError, match="model.template"):
        ModelConfig(positions="all", template="A user {user}: {history}")
    with pytest.raises(ValueError, match="model.positions"):
        ModelConfig(positions="all", answer="title")
    with pytest.raises(ValueError, match="model.positions"):
        ModelConfig(positions="every")


@pytest.fixture(scope="module")
def tiny_inputs(tiny_prepared, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("all-positions")
    features, config = make_tiny_amfrec_inputs(tiny_prepared, root, dtype="float32")
    return features, config, root


def test_a_run_trains_on_chunks_and_its_saved_model_scores_as_trained(tiny_prepared, tiny_inputs) -> None:
    features, config, root = tiny_inputs
    overrides = {**SMALL, "model.positions": "all", "train.max_steps": None, "train.max_epochs": 0.5}
    result = train_amfrec(tiny_prepared, features, config, 1, root / "run", overrides, limit=4)
    chunks = len(chunk_windows(PreparedData.load(tiny_prepared).train, 10)[0])
    assert result["info"]["steps"] == math.ceil(0.5 * math.ceil(chunks / SMALL["train.batch_size"]))
    evals = json.loads((root / "run" / "train_history.json").read_text())["evals"]
    assert all(e["targets"] > 0 and e["wall_s"] > 0 for e in evals)
    model, data, run_cfg = load_run(root / "run")
    assert run_cfg["model"]["positions"] == "all" and model.prompt.user_per_item is False
    assert model.prompt.template.text.endswith("{history}")
    want = json.loads((root / "run" / "test_ranks.json").read_text())
    hist, cands = data.test.history[:4], data.test.candidates[:4]
    scores = model.score(hist, cands)  # (4, C)
    target = scores[cands == data.test.target[:4, None]]  # (4,)
    assert (scores >= target[:, None]).sum(1).tolist() == want["ranks"][:4]  # ties count against the model


def test_bench_targets_prints_both_layouts_per_dtype(tiny_prepared, tiny_inputs) -> None:
    features, config, _ = tiny_inputs
    table = run_targets_bench(tiny_prepared, features, str(config), dict(SMALL), ["float32"], 1,
                              {"last": 4, "all": 2})  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| float32")]
    assert [r.split("|")[2].strip() for r in rows] == ["last", "all"]
    assert rows[0].endswith("| 1.00x |") and "CPU flags" in table


def test_data_parallel_ranks_split_a_batch_by_chunk() -> None:
    split = windows([1, 2, 3, 4], [5, 6], [7, 8, 9], [10, 11])  # windows 3, 1, 2, 1
    lengths = torch.tensor([3, 1, 2, 1])
    batch = (split.history, split.target[:, None], split.target, lengths)
    first, second = shard(Ranks(0, 2), *batch), shard(Ranks(1, 2), *batch)
    assert first[3].tolist() == [3, 1] and second[3].tolist() == [2, 1]
    assert first[2].tolist() == [2, 3, 4, 6] and second[2].tolist() == [8, 9, 11]  # each chunk's targets
    with pytest.raises(ValueError, match="not divisible"):
        shard(Ranks(0, 3), *batch)
