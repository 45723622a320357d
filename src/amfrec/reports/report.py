"""`amfrec report --exp DIR`: report.md and PNG plots from an experiment folder (see amfrec.reports.results).

Pictures: metrics.png (test hr@1 and ndcg@10 per model, std over seeds), valid_curves.png (validation
metric against the step, per AMFRec model), gate_weights.png (each modality's weight per item: all items,
items without an image), robustness.png (test hr@1 clean and with the image features corrupted).
"""

from __future__ import annotations

import logging
from pathlib import Path

from amfrec.io import write_text
from amfrec.reports.plots import plot_gate_weights, plot_metrics, plot_robustness, plot_valid_curves
from amfrec.reports.results import (
    by_model,
    collect_runs,
    gate_table,
    metrics_table,
    paired_table,
    parts_table,
    robustness_table,
    slices_table,
)

log = logging.getLogger(__name__)

TABLE_KEYS = ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr")
PAIRED_TEXT = (
    "Per test user, A's metric minus B's on the same candidates (`amfrec compare`): the mean difference, its "
    "95% percentile bootstrap interval and the two-sided sign-flip p-value (10,000 resamples each, seed 0), "
    "seeds pooled with each user one cluster (resampled with all of its seeds), each seed's own difference "
    "beside it; 'A beats B' needs the interval above 0 and every seed above 0; slices as in the ranks files."
)
PLOTS = {
    "metrics.png": (plot_metrics, "Test metrics per model"),
    "valid_curves.png": (plot_valid_curves, "Validation curves"),
    "gate_weights.png": (plot_gate_weights, "Gate weights per modality"),
    "robustness.png": (plot_robustness, "Image corruption at test time"),
}


def write_report(exp: Path, out: Path | None = None) -> Path:
    """Write OUT/report.md and the PNGs (OUT defaults to EXP/report); return the report's path.

    Sections without data (no corrupted evaluations, no gated run, ...) are left out, not left empty.
    """
    exp = Path(exp)
    out = Path(out) if out is not None else exp / "report"
    groups = by_model(collect_runs(exp))
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.seed for runs in groups.values() for r in runs})
    parts = [
        f"# Experiment report: {exp.resolve().name}",
        f"Folder `{exp.resolve()}`; seeds {', '.join(map(str, seeds))}; {len(groups)} models. Every model is "
        "tested on the same fixed candidates; cells are mean ± std over the seeds listed per row.",
        "## Test metrics",
        metrics_table(groups, TABLE_KEYS),
    ]
    sections = (
        ("## Slices", "Test users by their target's training interactions: `train<=K` at most K (the "
         "prepared data's `cold_threshold`); `cold` / `warm` among the bottom / top 35% of items; "
         "`new` a new item (new-item protocol).", slices_table(groups)),
        ("## Robustness: one modality corrupted at test time", "`amfrec evaluate --corrupt MODALITY=HOW`: "
         "the features replaced, presence masks unchanged; image weight = mean over the catalogue.",
         robustness_table(groups)),
        ("## The score, term by term", "`amfrec evaluate --protocol parts`: test hr@1 when the content "
         "term (the LM's reading of the prompt) or the collaborative term ranks alone, and summed; spread = "
         "mean std of a term across a user's candidates.", parts_table(groups)),
        ("## Gate weights", "Mean weight per modality (pooled over seeds; items in brackets).",
         gate_table(groups)),
    )  # fmt: skip
    for title, text, table in sections:
        if table:
            parts += [title, text, table]
    paired, skipped = paired_table(groups)
    if paired or skipped:
        parts += ["## Paired comparisons", PAIRED_TEXT, *([paired] if paired else [])]
        parts += [f"Left out: {note}." for note in skipped]
    pictures = []
    for name, (draw, caption) in PLOTS.items():
        if draw(groups, out / name):
            pictures.append(f"![{caption}]({name})")
            log.info("wrote %s", out / name)
    if pictures:
        parts += ["## Plots", *pictures]
    path = out / "report.md"
    write_text(path, "\n\n".join(parts) + "\n")
    return path
