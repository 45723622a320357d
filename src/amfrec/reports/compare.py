"""`amfrec compare RUN_A RUN_B`: the paired per-user difference of two models, with its bootstrap interval and
sign-flip p-value, seeds pooled with each user as one cluster, each seed's own difference beside it, and the
verdict ("A beats B" needs the pooled interval above 0 and every seed above 0). `amfrec.runs.ranks` pairs the
ranks files, `amfrec.stats` does the statistics.

A side is a run folder, a comma-separated list of run folders (one per seed, paired with the other side's in
order), or, with `exp`, a model name: every EXP/seed<S>/<MODEL> whose seed both models have.
"""

from __future__ import annotations

import logging
from pathlib import Path

from amfrec.errors import AmfrecError
from amfrec.features.corrupt import parse_corruption
from amfrec.runs.ranks import ALL, load_pairs, paired_result
from amfrec.stats import ClusteredResult, PairedResult

log = logging.getLogger(__name__)

PAIRED_HEADER = (
    "metric", "slice", "seeds", "users", "n", "mean A", "mean B", "A − B", "95% CI", "p", "A − B per seed",
    "verdict",
)  # fmt: skip
SEED_HEADER = ("seed", "n", "mean A", "mean B", "A − B", "95% CI", "p")


def paired_cells(result: ClusteredResult) -> list[str]:
    """One table row's cells (in the order of PAIRED_HEADER): the pooled comparison and its verdict."""
    r = result.pooled
    return [
        r.metric,
        r.slice,
        ",".join(map(str, result.seeds)),
        str(result.n_users),
        str(r.n),
        f"{r.mean_a:.4f}",
        f"{r.mean_b:.4f}",
        f"{r.diff:+.4f}",
        f"[{r.ci_lo:+.4f}, {r.ci_hi:+.4f}]",
        f"{r.p:.3g}",
        " ".join(f"{s.diff:+.4f}" for s in result.per_seed),
        result.verdict.value,
    ]


def seed_cells(seed: int, r: PairedResult) -> list[str]:
    """A row of the per-seed table (SEED_HEADER): one seed's own paired test."""
    return [str(seed), str(r.n), f"{r.mean_a:.4f}", f"{r.mean_b:.4f}", f"{r.diff:+.4f}",
            f"[{r.ci_lo:+.4f}, {r.ci_hi:+.4f}]", f"{r.p:.3g}"]  # fmt: skip


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A markdown table: text columns left-aligned, the others (numbers) right-aligned."""
    left = ("A", "B", "metric", "slice", "seeds", "A − B per seed", "verdict")
    align = ["---" if h in left else "---:" for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def seed_runs(exp: Path, model: str) -> dict[int, Path]:
    """{seed: EXP/seed<S>/<model>} for every seed folder that holds a finished `model` run folder (one with
    its metrics.json; a folder without, still training or failed, is left out with a warning)."""
    out = {}
    for run in exp.glob(f"seed*/{model}"):
        seed = run.parent.name.removeprefix("seed")
        if not (seed.isdigit() and run.is_dir()):
            continue
        if not (run / "metrics.json").is_file():
            log.warning("%s: no metrics.json (still training, or failed); left out", run)
            continue
        out[int(seed)] = run
    return dict(sorted(out.items()))


def resolve_pairs(a: str, b: str, exp: Path | None = None) -> tuple[list[tuple[Path, Path]], str, str]:
    """(pairs of run folders (A, B), label of A, label of B) from the command line's two sides."""
    if exp is not None:
        if not Path(exp).is_dir():
            raise AmfrecError(f"{exp}: experiment folder not found")
        runs_a, runs_b = seed_runs(Path(exp), a), seed_runs(Path(exp), b)
        common = sorted(set(runs_a) & set(runs_b))
        if not common:
            raise AmfrecError(f"{exp}: no seed*/ folder holds both a {a!r} and a {b!r} run")
        for seed in sorted(set(runs_a) ^ set(runs_b)):
            log.warning("seed %d: only one of %s and %s was run; left out", seed, a, b)
        return [(runs_a[s], runs_b[s]) for s in common], a, b
    runs_a = [Path(t.strip()) for t in a.split(",") if t.strip()]
    runs_b = [Path(t.strip()) for t in b.split(",") if t.strip()]
    if not runs_a or len(runs_a) != len(runs_b):
        raise AmfrecError(
            f"RUN_A names {len(runs_a)} run folder(s) and RUN_B {len(runs_b)}: give the same number, "
            "one per seed, in the same seed order"
        )
    return list(zip(runs_a, runs_b, strict=True)), runs_a[0].name, runs_b[0].name


def compare(
    a: str,
    b: str,
    exp: Path | None = None,
    metric: str = "hr@1",
    slice: str = ALL,
    split: str = "test",
    protocol: str | None = None,
    n_resamples: int = 10000,
    seed: int = 0,
    corrupt: str | None = None,
) -> str:
    """The comparison of side A with side B as a small text table (see the module docstring for the sides).
    corrupt: `MODALITY=HOW`: compare what that corruption costs each side (clean minus corrupted, per user;
    the runs' `amfrec evaluate --corrupt` ranks files)."""
    pairs, label_a, label_b = resolve_pairs(a, b, exp)
    loaded = load_pairs(pairs, split, protocol)
    minus = None
    if corrupt is not None:
        if protocol not in (None, "score"):
            raise AmfrecError(f"--corrupt: with the score protocol only, not {protocol!r}")
        name, how = parse_corruption(corrupt)
        minus = load_pairs(pairs, split, f"score_corrupt-{name}-{how.value}")
        cost = f"cost of {name}={how.value} to"
        label_a, label_b = f"{cost} {label_a}", f"{cost} {label_b}"
    result = paired_result(loaded, metric, slice, n_resamples, seed, minus)
    per_seed = [seed_cells(s, r) for s, r in zip(result.seeds, result.per_seed, strict=True)]
    return "\n".join(
        [
            f"A = {label_a}: " + ", ".join(str(p) for (_, p), _ in loaded),
            f"B = {label_b}: " + ", ".join(str(p) for _, (_, p) in loaded),
            "",
            markdown_table(PAIRED_HEADER, [paired_cells(result)]),
            "",
            "Each seed on its own:",
            "",
            markdown_table(SEED_HEADER, per_seed),
            "",
            "Paired by (seed, user). Pooled over seeds with each user one cluster (resampled and "
            "sign-flipped with all of its seeds together); 95% percentile bootstrap interval of the mean "
            f"difference and two-sided sign-flip p-value, {n_resamples} resamples each (seed {seed}). "
            "A verdict of 'A beats B' needs the pooled interval above 0 and every seed's difference above 0.",
        ]
    )
