"""Tiny random causal LM + word-level tokenizer saved to a directory, for LLM tests.

``make_tiny_backbone_dir(path)`` writes a ``LlamaForCausalLM`` (2 layers, hidden 32) and a
``PreTrainedTokenizerFast`` (word-level, whitespace + single-digit pre-tokenisation, no pad token) with
``save_pretrained``, so tests load them through the real path code: ``load_backbone(str(path))``.
``TITLES`` are item titles made only of vocabulary words (index 0 = padding "").
"""

from __future__ import annotations

from pathlib import Path

import torch

TITLES = [
    "",
    "Toy Story",
    "Golden Eye",
    "Four Rooms",
    "Get Shorty",
    "Copy Cat",
    "Twelve Monkeys",
    "Babe",
    "Dead Man Walking",
    "Richard Three",
    "Seven",
    "The Usual Suspects",
    "Mighty Aphrodite",
]
HIDDEN = 32

_TEMPLATE_TEXT = (
    "This user has watched in the previous Please predict next movie this will watch Choose answer from "
    "following titles Answer movies item book books bought buy"
)
_PUNCT = list(".,:;!?()[]{}'\"-&/")
_SPECIAL = ["<unk>", "<s>", "</s>"]


def tiny_vocab() -> list[str]:
    words = {w for t in TITLES for w in t.split()} | set(_TEMPLATE_TEXT.split())
    return _SPECIAL + sorted(words) + _PUNCT + [str(d) for d in range(10)]


def make_tiny_tokenizer():
    """A word-level PreTrainedTokenizerFast with bos/eos/unk and deliberately no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_tiny_model(vocab_size: int, seed: int = 0, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        initializer_range=0.3,  # large enough that log-probs differ visibly between inputs
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_tiny_backbone_dir(path: str | Path, seed: int = 0, tie: bool = True) -> Path:
    """Save a tiny random LlamaForCausalLM and its tokenizer into ``path``; return ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer), seed=seed, tie=tie)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def item_encoder(n_items: int, d_llm: int, tokens_per_item: int = 1, token_norm: float = 1.0, seed: int = 0):
    """A real ItemEncoder over random features (MoE projectors): gated fusion of id (4-d) and text (6-d) when
    tokens_per_item is 1, else one token per modality over the first tokens_per_item of id, text, image."""
    from amfrec.config.model import GateConfig, ModelConfig, ProjectorConfig
    from amfrec.model.item_encoder import ItemEncoder

    if tokens_per_item not in (1, 2, 3):
        raise ValueError("tokens_per_item: 1 (gated), 2 or 3 (one token per modality)")
    dims = (("id", 4), ("text", 6), ("image", 5))[: max(tokens_per_item, 2)]
    cfg = ModelConfig(
        modalities=[name for name, _ in dims],
        fusion="gated" if tokens_per_item == 1 else "tokens",
        projector=ProjectorConfig(n_experts=2, hidden=8),
        gate=GateConfig(hidden=8),
    )
    torch.manual_seed(seed)
    return ItemEncoder(random_features(n_items, dims), d_llm, cfg, token_norm=token_norm)


def random_features(n_items: int, dims: tuple[tuple[str, int], ...] = (("id", 4), ("text", 6))) -> dict:
    """Random modality features {name: (values (n_items + 1, d), present (n_items + 1,))}, row 0 = padding."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    feats = {}
    for name, dim in dims:
        present = torch.ones(n_items + 1, dtype=torch.bool)
        present[0] = False
        values = torch.randn(n_items + 1, dim, generator=g)
        values[0] = 0.0
        feats[name] = SimpleNamespace(name=name, values=values, present=present)
    return feats


# A test-sized AMFRec recipe: no user token (no SASRec run needed), full (tiny) LM, 2 steps.
SMALL = {
    "model.user_token": None,
    "model.collab_score": False,
    "model.lm_layers": None,
    "model.projector": {"hidden": 8, "n_experts": 2},
    "model.gate": {"hidden": 8},
    "train.max_steps": 2,
    "train.warmup_steps": 1,
    "train.batch_size": 4,
    "train.eval_every": 2,
    "train.eval_examples": 4,
}


def make_tiny_amfrec_inputs(prepared: Path, root: Path, dtype: str = "auto") -> tuple[Path, Path]:
    """Inputs of `train_amfrec(prepared, features, config, seed, out, SMALL)`: a feature folder with random id
    (4-d), text (6-d) and image (5-d) matrices imported the way users import their own, and a config file that
    names a tiny random Llama saved under `root` (with `model.dtype: dtype`; tests of exact equalities pin
    "float32"). Returns (features, config)."""
    import json

    import numpy as np
    import yaml

    from amfrec.features.build import build_features

    ids = [json.loads(line)["item_id"] for line in (prepared / "items.jsonl").open()]
    (root / "ids.json").write_text(json.dumps(ids))
    rng = np.random.default_rng(0)
    specs = {}
    for name, dim in (("id", 4), ("text", 6), ("image", 5)):
        np.save(root / f"{name}.npy", rng.standard_normal((len(ids), dim)).astype(np.float32))
        specs[name] = {"matrix": root / f"{name}.npy", "ids": root / "ids.json"}
    features = root / "features"
    build_features(prepared, features, modalities=list(specs), import_specs=specs)
    backbone = make_tiny_backbone_dir(root / "lm")
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"backbone": str(backbone), "n_candidates": 20, "dtype": dtype}})
    )
    return features, config


def tiny_collab(n_items: int, max_len: int, seed: int = 1, known=None):
    """A tiny random SASRec as a frozen CollaborativeNet; item embeddings ~N(0, 1) (not 0.02) so that its
    logits are visible. known: (n_items + 1,) bool, the items it counts as trained (None = all)."""
    from amfrec.baselines.sequential import SASRecConfig, SASRecNet
    from amfrec.model.collab import CollaborativeNet

    torch.manual_seed(seed)
    net = SASRecNet(n_items, max_len, SASRecConfig(hidden=8, layers=1, heads=1))
    with torch.no_grad():
        net.item_emb.weight.normal_()
        net.item_emb.weight[0].zero_()
    return CollaborativeNet(net, known=known)
