"""Ranking and generation metrics (the protocol: docs/ARCHITECTURE.md, "Evaluation"), as pure functions.

Ranking: each example yields the rank of its target among the C candidates (1 = best). Ties count
against the model: the target ranks below every other candidate whose score is >= its own.

Generation (LLaRA's protocol): only the first line of an output counts. Matching is case-insensitive
on whitespace-normalised text, and a candidate title "occurs" when it appears as a whole phrase (not
flanked by a letter or digit, so "Up" does not occur in "Upside"). When one candidate title is a
substring of another (e.g. "Alien" and "Aliens"), an occurrence of the shorter title that lies
inside an occurrence of the longer one does not count: "Aliens" names only "Aliens", while
"Alien, or maybe Aliens" names both (invalid). An output is *valid* when exactly one distinct
candidate title occurs; it is *correct* when it is valid and that title equals the target's title.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

RANK_KS: tuple[int, ...] = (1, 3, 5, 10)


def ranks_from_scores(scores: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """Rank of each target among its candidates, ties counted against the model.

    scores: (B, C) float, higher = better. target_pos: (B,) long, column of the target in `scores`.
    Returns (B,) long ranks in 1..C: 1 + the number of *other* candidates with score >= the target's.
    Raises ValueError on NaN scores, wrong shapes or an out-of-range target position.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, C), got shape {tuple(scores.shape)}")
    if target_pos.shape != (scores.shape[0],):
        raise ValueError(f"target_pos must be ({scores.shape[0]},), got shape {tuple(target_pos.shape)}")
    if torch.isnan(scores).any():
        raise ValueError(f"scores contain NaN ({int(torch.isnan(scores).sum())} of {scores.numel()})")
    n_cand = scores.shape[1]
    if target_pos.numel() and (int(target_pos.min()) < 0 or int(target_pos.max()) >= n_cand):
        raise ValueError(f"target_pos out of range [0, {n_cand})")
    target_score = scores.gather(1, target_pos.long().unsqueeze(1))  # (B, 1)
    # The target itself satisfies >=, so this count already includes the "1 +".
    return (scores >= target_score).sum(dim=1).long()  # (B,)


def ranking_metrics(ranks: torch.Tensor, ks: Sequence[int] = RANK_KS) -> dict[str, float]:
    """Mean hr@k, ndcg@k (for every k in `ks`) and mrr over (N,) ranks (1 = best).

    hr@k = 1[rank <= k]; ndcg@k = 1/log2(rank + 1) if rank <= k else 0; mrr = 1/rank.
    A k larger than the number of candidates is fine (every rank is <= k then).
    """
    ranks = torch.as_tensor(ranks)
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-d tensor, got shape {tuple(ranks.shape)}")
    if int(ranks.min()) < 1:
        raise ValueError(f"ranks start at 1, got {int(ranks.min())}")
    r = ranks.double()  # (N,)
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out[f"hr@{k}"] = float((r <= k).double().mean())
    for k in ks:
        gain = torch.where(r <= k, 1.0 / torch.log2(r + 1.0), torch.zeros_like(r))
        out[f"ndcg@{k}"] = float(gain.mean())
    out["mrr"] = float((1.0 / r).mean())
    return out


def normalize_text(text: str) -> str:
    """Case-fold and collapse every whitespace run to one space (matching form for titles)."""
    return " ".join(text.casefold().split())


def matched_titles(output: str, titles: Sequence[str]) -> set[str]:
    """The distinct normalised candidate titles that occur in the first line of `output`.

    Longer titles are matched first and their occurrences blanked out, so a title that only
    appears inside a longer candidate title is not counted (see the module docstring).
    """
    lines = output.strip().splitlines()
    text = normalize_text(lines[0]) if lines else ""
    found: set[str] = set()
    for title in sorted({normalize_text(t) for t in titles if t.strip()}, key=len, reverse=True):
        pattern = re.compile(r"(?<![^\W_])" + re.escape(title) + r"(?![^\W_])")
        text, n = pattern.subn("\x00", text)
        if n:
            found.add(title)
    return found


def generation_metrics(
    outputs: Sequence[str], candidate_titles: Sequence[Sequence[str]], target_titles: Sequence[str]
) -> dict[str, float]:
    """gen_hr@1 (correct / all) and valid_ratio (valid / all) for N generated outputs.

    outputs: N strings; candidate_titles: N lists of the C candidate titles; target_titles: N titles.
    """
    n = len(outputs)
    if n == 0 or len(candidate_titles) != n or len(target_titles) != n:
        raise ValueError(
            f"need N > 0 aligned inputs, got {n} outputs, {len(candidate_titles)} candidate lists, "
            f"{len(target_titles)} targets"
        )
    valid = correct = 0
    for output, titles, target in zip(outputs, candidate_titles, target_titles, strict=True):
        found = matched_titles(output, titles)
        if len(found) == 1:
            valid += 1
            correct += int(next(iter(found)) == normalize_text(target))
    return {"gen_hr@1": correct / n, "valid_ratio": valid / n}


def chance_hr(k: int, n_candidates: int) -> float:
    """hr@k of a random ranking of `n_candidates` (the chance level)."""
    return min(k, n_candidates) / n_candidates
