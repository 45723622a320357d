"""Stacking check: does a run's content term add anything to SASRec's logit on held-out data?

    python scripts/blend_collab.py --run runs/lm_content

Scores the valid and test candidates by the run's content term c (the item_token head's s * cos, see
`amfrec evaluate --protocol parts`) and by k, the logit of the frozen SASRec run its id features came from. It
picks the weight w of c + w * k with the best validation ndcg@10 on a grid (0, then 2^-6 .. 2^4 in half
powers), and prints validation and test metrics of c alone, k alone and the chosen blend. Nothing is fitted on
the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from amfrec.evaluate import score_metrics
from amfrec.hardware import cpu_flags
from amfrec.llm.collab import collab_run_from_features, load_collaborative
from amfrec.runs.amfrec_run import EVAL_BATCH, load_run, part_scores

GRID = [0.0] + [2 ** (k / 2) for k in range(-12, 9)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained AMFRec run (item_token head)")
    a = p.parse_args()
    model, data, run_cfg = load_run(a.run)
    collab = model.collab
    if collab is None:  # a content-only run without a user token: load the SASRec run anyway
        source = collab_run_from_features(Path(run_cfg["run"]["features"]))
        collab = load_collaborative("sasrec", source, data.n_items).to(model.device)

    def terms(split) -> tuple[torch.Tensor, torch.Tensor]:
        content, _ = part_scores(model, split)  # (N, C)
        logits = []
        with torch.inference_mode():
            for h, c in zip(split.history.split(EVAL_BATCH), split.candidates.split(EVAL_BATCH), strict=True):
                h, c = h.to(model.device), c.to(model.device)
                logits.append(collab.item_logits(collab(h), c).float().cpu())  # (B, C)
        return content, torch.cat(logits)

    (vc, vk), (tc, tk) = terms(data.valid), terms(data.test)
    w = max(GRID, key=lambda w: score_metrics(vc + w * vk, data.valid)["ndcg@10"])
    print(f"CPU flags: {cpu_flags()}; device {model.device}")
    print("| scores | valid hr@1 | valid ndcg@10 | test hr@1 | test ndcg@10 |")
    print("|---|---:|---:|---:|---:|")
    rows = {
        "content c": (vc, tc),
        "SASRec k": (vk, tk),
        f"c + {w:.3g} k (w on valid)": (vc + w * vk, tc + w * tk),
    }
    for name, (v, t) in rows.items():
        mv, mt = score_metrics(v, data.valid), score_metrics(t, data.test)
        print(f"| {name} | {mv['hr@1']:.4f} | {mv['ndcg@10']:.4f} | {mt['hr@1']:.4f} | {mt['ndcg@10']:.4f} |")


if __name__ == "__main__":
    main()
