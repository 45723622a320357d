"""An experiment folder's results, read back: run records, and the report's markdown tables.

An experiment folder (`amfrec experiment --out DIR`) holds DIR/seed<S>/<run>/ per model and seed. Each run
has metrics.json (test, with the slices train<=K, cold, warm[, new] under "slices") and may have
train_history.json (AMFRec: the validation curve), gate_weights.json (AMFRec: every item's modality weights),
test_score_corrupt-<modality>-<how>_metrics.json (`amfrec evaluate --corrupt`), test_parts_metrics.json
(`amfrec evaluate --protocol parts`) and test_ranks.json (per-user ranks, for the paired comparisons). The
tables here show what was found, mean ± std over seeds (paired tables: seeds pooled); `amfrec.reports.plots`
draws it and `amfrec.reports.report` writes both out.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amfrec.errors import AmfrecError
from amfrec.io import read_json
from amfrec.reports.compare import PAIRED_HEADER, markdown_table, paired_cells
from amfrec.runs.ranks import ALL, common_slices, load_pairs, paired_result, ranks_path

ORDER = (
    "popularity",
    "sasrec",
    "gru4rec",
    "bert4rec",
    "sasrec_content",
    "content_knn",
    "amfrec",
)  # then the AMFRec variants, by name
CORRUPT_FILE = re.compile(r"test_score_corrupt-(?P<modality>[^-]+)-(?P<how>\w+)_metrics\.json")


@dataclass
class RunRecord:
    """What one run folder holds for the report (None / empty where a file is absent)."""

    model: str  # the run folder's name, e.g. "amfrec-no_llm"
    seed: int
    test: dict
    history: dict | None = None  # train_history.json: {"losses": [...], "evals": [{"step", metric...}]}
    gate: dict | None = None  # gate_weights.json: {"modalities", "weights" (n, M), "present" (n, M)}
    corrupt: dict[str, dict] = field(default_factory=dict)  # "image=noise" -> test record
    parts: dict | None = None  # test_parts_metrics.json: {"content": metrics, "collab": ..., "full": ...}
    path: Path | None = None  # the run folder (its test_ranks.json feeds the paired comparisons)


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def collect_runs(exp: Path) -> list[RunRecord]:
    """Every DIR/seed<S>/<run>/metrics.json, in model order then seed. Raises AmfrecError when none."""
    exp = Path(exp)
    if not exp.is_dir():
        raise AmfrecError(f"{exp}: experiment folder not found")
    runs = []
    for metrics in sorted(exp.glob("seed*/*/metrics.json")):
        run, seed_dir = metrics.parent, metrics.parent.parent
        seed = seed_dir.name.removeprefix("seed")
        if not seed.isdigit():
            continue
        corrupt = {}
        for path in sorted(run.glob("test_score_corrupt-*_metrics.json")):
            m = CORRUPT_FILE.fullmatch(path.name)
            if m:
                corrupt[f"{m['modality']}={m['how']}"] = read_json(path)
        runs.append(
            RunRecord(
                model=run.name,
                seed=int(seed),
                test=legacy_slices(read_json(metrics), seed_dir),
                history=_optional_json(run / "train_history.json"),
                gate=_optional_json(run / "gate_weights.json"),
                corrupt=corrupt,
                parts=_optional_json(run / "test_parts_metrics.json"),
                path=run,
            )
        )
    if not runs:
        raise AmfrecError(f"{exp}: no seed*/<run>/metrics.json inside (not an experiment folder?)")
    rank = {name: k for k, name in enumerate(ORDER)}
    return sorted(runs, key=lambda r: (rank.get(r.model, len(ORDER)), r.model, r.seed))


def by_model(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by model, in the order of `runs`."""
    out: dict[str, list[RunRecord]] = {}
    for r in runs:
        out.setdefault(r.model, []).append(r)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std); the std of one value is 0."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.4f} ± {std:.4f}"


def image_weight(gate: dict, without_image: bool = False) -> float | None:
    """The mean weight on the image modality over the catalogue (or over items without an image)."""
    if "image" not in gate["modalities"]:
        return None
    m = gate["modalities"].index("image")
    rows = [w for w, p in zip(gate["weights"], gate["present"], strict=True) if not without_image or not p[m]]
    return statistics.mean(w[m] for w in rows) if rows else None


# ---------------------------------------------------------------------------------------------- tables
def metrics_table(groups: dict[str, list[RunRecord]], keys: tuple[str, ...]) -> str:
    head = "| model | seeds | " + " | ".join(keys) + " | n |"
    lines = [head, "|---|---|" + "---:|" * (len(keys) + 1)]
    for model, runs in groups.items():
        cells = " | ".join(_cell([r.test[k] for r in runs]) for k in keys)
        seeds = ",".join(str(r.seed) for r in runs)
        lines.append(f"| {model} | {seeds} | {cells} | {runs[0].test['n']} |")
    return "\n".join(lines)


def slices_table(groups: dict[str, list[RunRecord]]) -> str:
    """hr@1 / ndcg@10 per model on all test users and on each slice of its metrics files (train<=K, cold,
    warm, new: `PreparedData.slices`), with the slice's size (distinct sizes over seeds joined by /)."""
    lines = [
        "| model | slice | hr@1 | ndcg@10 | users |",
        "|---|---|---:|---:|---:|",
    ]
    for model, runs in groups.items():
        names = [
            n for n in runs[0].test.get("slices", {}) if all(n in r.test.get("slices", {}) for r in runs)
        ]
        if not names:
            continue
        lines.append(
            f"| {model} | all | {_cell([r.test['hr@1'] for r in runs])} | "
            f"{_cell([r.test['ndcg@10'] for r in runs])} | {runs[0].test['n']} |"
        )
        for name in names:
            sl = [r.test["slices"][name] for r in runs]
            sizes = "/".join(map(str, sorted({s["n"] for s in sl})))
            if not all("hr@1" in s for s in sl):  # an empty slice in some seed
                lines.append(f"| {model} | {name} | – | – | {sizes} of {runs[0].test['n']} |")
                continue
            cells = f"{_cell([s['hr@1'] for s in sl])} | {_cell([s['ndcg@10'] for s in sl])}"
            lines.append(f"| {model} | {name} | {cells} | {sizes} of {runs[0].test['n']} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def legacy_slices(metrics: dict, seed_dir: Path) -> dict:
    """Metrics written before the popularity slices named the threshold slice "cold" (and had no "warm"):
    rename it "train<=K", K = the seed's prepared `cold_threshold` (5 when unknown). Returns `metrics`."""
    slices = metrics.get("slices")
    if isinstance(slices, dict) and "cold" in slices and "warm" not in slices:
        manifest = seed_dir / "data" / "manifest.json"
        k = read_json(manifest).get("cold_threshold", 5) if manifest.is_file() else 5
        metrics["slices"] = {(f"train<={k}" if n == "cold" else n): m for n, m in slices.items()}
    return metrics


def parts_table(groups: dict[str, list[RunRecord]]) -> str:
    """Per model with `--protocol parts` files: test hr@1 of each score term alone and summed, and spreads."""
    lines = [
        "| model | seeds | content hr@1 | collab hr@1 | sum hr@1 | content spread | collab spread |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, runs in groups.items():
        runs = [r for r in runs if r.parts is not None and "collab" in r.parts]
        if not runs:
            continue
        cells = [_cell([r.parts[t]["hr@1"] for r in runs]) for t in ("content", "collab", "full")]
        cells += [_cell([r.parts[t]["spread"] for r in runs]) for t in ("content", "collab")]
        lines.append(f"| {model} | {','.join(str(r.seed) for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _mean_or_dash(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" if values else "–"


def robustness_table(groups: dict[str, list[RunRecord]]) -> str:
    """Per model and corruption: hr@1 clean and corrupted, the drop, and the mean image weight both ways."""
    lines = [
        "| model | corruption | seeds | hr@1 clean | hr@1 corrupted | drop | img weight clean | corrupted |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, runs in groups.items():
        for spec in sorted({s for r in runs for s in r.corrupt}):
            rs = [r for r in runs if spec in r.corrupt]
            clean = [r.test["hr@1"] for r in rs]
            bad = [r.corrupt[spec]["hr@1"] for r in rs]
            w_clean = [w for r in rs if r.gate and (w := image_weight(r.gate)) is not None]
            w_bad = [
                r.corrupt[spec]["gate_mean"]["image"]
                for r in rs
                if "image" in r.corrupt[spec].get("gate_mean", {})
            ]
            lines.append(
                f"| {model} | {spec} | {','.join(str(r.seed) for r in rs)} | {statistics.mean(clean):.4f} | "
                f"{statistics.mean(bad):.4f} | {statistics.mean(clean) - statistics.mean(bad):+.4f} | "
                f"{_mean_or_dash(w_clean)} | {_mean_or_dash(w_bad)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


GATE_ROWS = ("all", "without image", "new, with image")


def _gate_item(label: str, present: list[bool], trained: bool | None, image: int | None) -> bool:
    """Whether an item (its modality flags, whether it had training interactions) is in gate row `label`."""
    if label == "all":
        return True
    if image is None:
        return False
    return not present[image] if label == "without image" else present[image] and trained is False


def gate_table(groups: dict[str, list[RunRecord]]) -> str:
    """Mean weight per modality over all items, items without an image and new items (no training
    interactions) with an image, pooled over seeds."""
    lines = ["| model | items (count) | mean weight per modality |", "|---|---|---|"]
    for model, runs in groups.items():
        gates = [r.gate for r in runs if r.gate]
        if not gates:
            continue
        mods = gates[0]["modalities"]
        image = mods.index("image") if "image" in mods else None
        for label in GATE_ROWS:
            rows = [
                w
                for g in gates
                for k, (w, p) in enumerate(zip(g["weights"], g["present"], strict=True))
                if _gate_item(label, p, g["trained"][k] if "trained" in g else None, image)
            ]
            if not rows:
                continue
            means = ", ".join(f"{m} {statistics.mean(w[k] for w in rows):.3f}" for k, m in enumerate(mods))
            lines.append(f"| {model} | {label} ({len(rows) // len(gates)}) | {means} |")
    return "\n".join(lines) if len(lines) > 2 else ""


PAIRED_METRICS = ("hr@1", "ndcg@10")


def paired_pairs(groups: dict[str, list[RunRecord]]) -> list[tuple[str, str]]:
    """The report's comparisons (A, B): every model against sasrec, and amfrec against amfrec-no_llm."""
    pairs = [(m, "sasrec") for m in groups if m != "sasrec" and "sasrec" in groups]
    if "amfrec" in groups and "amfrec-no_llm" in groups:
        pairs.append(("amfrec", "amfrec-no_llm"))
    return pairs


def paired_table(
    groups: dict[str, list[RunRecord]], n_resamples: int = 10000, seed: int = 0
) -> tuple[str, list[str]]:
    """(markdown table, notes on the pairs left out): each pair of `paired_pairs` on hr@1 and ndcg@10, on
    all test users and on every slice of the ranks files, seeds pooled with users as clusters, with bootstrap
    interval, sign-flip p-value, each seed's difference and the verdict. A pair is left out (with a note)
    when a run lacks test_ranks.json or the runs do not pair."""
    rows, notes = [], []
    for model_a, model_b in paired_pairs(groups):
        runs_a = {r.seed: r for r in groups[model_a]}
        runs_b = {r.seed: r for r in groups[model_b]}
        seeds = sorted(set(runs_a) & set(runs_b))
        runs = [(runs_a[s].path, runs_b[s].path) for s in seeds]
        lacking = [str(p) for pair in runs for p in pair if p is None or not ranks_path(p).is_file()]
        if lacking or not runs:
            notes.append(f"{model_a} vs {model_b}: no test_ranks.json in {', '.join(lacking) or 'any run'}")
            continue
        try:
            loaded = load_pairs(runs)
        except AmfrecError as e:
            notes.append(f"{model_a} vs {model_b}: {e}")
            continue
        for name in (ALL, *common_slices(loaded)):
            if name != ALL and not any(a["slices"][name] for (a, _), _ in loaded):
                continue  # an empty slice
            for metric in PAIRED_METRICS:
                result = paired_result(loaded, metric, name, n_resamples, seed)
                rows.append([model_a, model_b, *paired_cells(result)])
    return (markdown_table(("A", "B", *PAIRED_HEADER), rows) if rows else ""), notes
