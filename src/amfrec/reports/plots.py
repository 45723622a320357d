"""The report's pictures (matplotlib, no display needed). Each function draws one PNG from the runs that
`amfrec.reports.results.collect_runs` found and returns False when there is nothing to draw.

Every file is written atomically: drawn to a temporary name beside the target, then renamed.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from amfrec.io import atomic_path  # noqa: E402
from amfrec.reports.results import RunRecord, mean_std  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _label(model: str, runs: list[RunRecord], n_max: int) -> str:
    """The x label: model and seed count, plus the test users where a model was tested on fewer (--limit)."""
    n = runs[0].test["n"]
    users = f", {n} users" if n != n_max else ""
    return f"{model}\n({len(runs)} seed{'s' if len(runs) > 1 else ''}{users})"


def plot_metrics(groups: dict[str, list[RunRecord]], path: Path) -> bool:
    """Grouped bars of test hr@1 and ndcg@10 per model, std over seeds as error bars."""
    if not groups:
        return False
    models = list(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(models) + 2), 4.2))
    width = 0.38
    for k, (key, color) in enumerate((("hr@1", "tab:blue"), ("ndcg@10", "tab:orange"))):
        stats = [mean_std([r.test[key] for r in groups[m]]) for m in models]
        xs = [i + (k - 0.5) * width for i in range(len(models))]
        ax.bar(
            xs, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3, label=key, color=color
        )
    n_max = max(r.test["n"] for runs in groups.values() for r in runs)
    labels = [_label(m, groups[m], n_max) for m in models]
    ax.set_xticks(range(len(models)), labels, rotation=30, ha="right")
    ax.set_ylabel("test metric (mean over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("Test metrics on the same candidates (error bars: std over seeds)")
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True


_EVAL_KEYS = ("step", "loss", "targets", "wall_s")  # an eval's bookkeeping; the other key is the metric


def plot_valid_curves(groups: dict[str, list[RunRecord]], path: Path) -> bool:
    """Validation metric (mean over seeds) against training targets seen (left) and training seconds (right),
    one line per AMFRec model: whether a model was still rising when training stopped. Runs from before
    evals counted targets are drawn against the step."""
    curves, metric = {}, None
    for model, runs in groups.items():
        per_step: dict[int, list[tuple[float, float, float]]] = {}
        for r in runs:
            for e in (r.history or {}).get("evals", []):
                key = next((k for k in e if k not in _EVAL_KEYS), None)
                if key is None:
                    continue
                metric = metric or key
                x = e.get("targets") or e["step"]
                per_step.setdefault(int(e["step"]), []).append(
                    (float(x), float(e.get("wall_s") or 0), e[key])
                )
        if per_step:
            rows = [tuple(map(statistics.mean, zip(*per_step[s], strict=True))) for s in sorted(per_step)]
            curves[model] = list(zip(*rows, strict=True))  # (targets, wall, metric) each a tuple
    if not curves:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for model, (seen, wall, values) in curves.items():
        axes[0].plot(seen, values, marker="o", label=model)
        if any(wall):
            axes[1].plot(wall, values, marker="o", label=model)
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"))
    axes[0].set_xlabel("training targets seen (steps for older runs)")
    axes[1].set_xlabel("training seconds (validation excluded)")
    axes[0].set_ylabel(f"validation {metric} (eval subset, mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Validation during training")
    _save(fig, path)
    return True


COLORS = {"id": "#4c72b0", "text": "#dd8452", "image": "#55a868"}  # the web page's colours too


def plot_gate_weights(groups: dict[str, list[RunRecord]], path: Path) -> bool:
    """Box plots of each modality's weight per item, grouped by model (one colour per modality): all items
    (left), items without an image (right)."""
    gated = {m: [r.gate for r in runs if r.gate] for m, runs in groups.items()}
    gated = {m: g for m, g in gated.items() if g and g[0].get("fusion") == "gated"}
    if not gated:
        return False
    mods = list(dict.fromkeys(mod for gates in gated.values() for mod in gates[0]["modalities"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(gated) * 2), 4.4), sharey=True)
    for ax, no_image in zip(axes, (False, True), strict=True):
        for g, gates in enumerate(gated.values()):
            names = gates[0]["modalities"]
            img = names.index("image") if "image" in names else None
            rows = [w for gate in gates for w, p in zip(gate["weights"], gate["present"], strict=True)
                    if not no_image or (img is not None and not p[img])]  # fmt: skip
            for k, mod in enumerate(names):
                values = [w[k] for w in rows]
                if not values:
                    continue
                x = g * (len(mods) + 1) + mods.index(mod)
                color = COLORS.get(mod, "#999999")
                box = ax.boxplot([values], positions=[x], widths=0.7, patch_artist=True, showmeans=True)
                box["boxes"][0].set_facecolor(color)
                jitter = np.random.default_rng(k).uniform(-0.3, 0.3, len(values))  # every item as a dot
                ax.scatter(x + jitter, values, s=4, color=color, alpha=0.25, zorder=3)
        centers = [g * (len(mods) + 1) + (len(mods) - 1) / 2 for g in range(len(gated))]
        ax.set_xticks(centers, list(gated))
        ax.set_title("all items" if not no_image else "items without an image (poster)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("gate weight per item (pooled over seeds)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(m, "#999999")) for m in mods]
    # outside both panels, so that no box is hidden behind it
    axes[1].legend(handles, mods, title="modality", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Modality gate weights per item (box: quartiles; triangle: mean)")
    _save(fig, path)
    return True


def plot_robustness(groups: dict[str, list[RunRecord]], path: Path) -> bool:
    """Test hr@1 clean and under each corruption, grouped by model."""
    models = [m for m, runs in groups.items() if any(r.corrupt for r in runs)]
    if not models:
        return False
    specs = sorted({s for m in models for r in groups[m] for s in r.corrupt})
    series = ["clean", *specs]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) + 2), 4.2))
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        values = []
        for m in models:
            rs = [r for r in groups[m] if r.corrupt]
            hits = [
                r.test["hr@1"] if name == "clean" else r.corrupt[name]["hr@1"]
                for r in rs
                if name == "clean" or name in r.corrupt
            ]
            values.append(statistics.mean(hits) if hits else 0.0)
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(models))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("test hr@1")
    ax.set_title("Test hr@1 with the image features corrupted at test time")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return True
