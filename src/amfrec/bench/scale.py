"""`amfrec bench-scale`: how each stage's time and memory grow with the data (issue 19's scale curve).

For each size of the ladder (interactions; items = interactions / 10 unless given), synthetic RecBole files
(`scale_stages.write_synthetic`) go through: data preparation, the id features (a SASRec trained for a fixed
number of batches, its table, `build_features`), one training step of every model (`fit` for the models
that train nothing), and one catalogue ranking; the ranking is also timed alone at larger catalogues
(`rank_items`, e.g. 10^6 items, on a synthetic item table). Every stage runs in a fresh process
(multiprocessing spawn), so its peak memory (`ru_maxrss`) is its own. The growth exponent of a stage is the
least-squares slope of log(seconds) against log(interactions) (against log(items) for the ranking alone).
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amfrec.baselines import BASELINES
from amfrec.bench.scale_stages import make_tiny_lm, measure, write_synthetic
from amfrec.errors import AmfrecError
from amfrec.io import atomic_path, read_json, write_json, write_text

log = logging.getLogger(__name__)

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_RANK_ITEMS = (1_000_000,)
SASREC_LIKE = ("sasrec", "gru4rec", "bert4rec", "sasrec_content")  # one optimiser step of the shared trainer
FIT_ONLY = ("popularity", "content_knn")  # nothing to train: `fit` is the step
# what the forkserver imports once (every stage's process starts with them: the "imports alone" memory)
PRELOAD = ["torch", "transformers", "amfrec.runs.amfrec_run", "amfrec.bench.scale_stages"]
PLOT_FILE, TABLE_FILE, JSON_FILE = "scale.png", "scale.md", "scale.json"


@dataclass
class Measurement:
    seconds: float
    peak_mib: float
    grew_mib: float


@dataclass
class ScaleResult:
    """sizes: the ladder's [{"interactions", "items", "users"}] (as prepared); stages: stage -> one
    Measurement per size; rank: [(items, Measurement)] of the ranking alone; floor: the imports' MiB."""

    sizes: list[dict] = field(default_factory=list)
    stages: dict[str, list[Measurement]] = field(default_factory=dict)
    rank: list[tuple[int, Measurement]] = field(default_factory=list)
    floor_mib: float = 0.0


def growth_exponent(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x); None with fewer than two distinct x."""
    if len(set(x)) < 2:
        return None
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.maximum(np.asarray(y, dtype=float), 1e-9))
    return float(np.polyfit(lx, ly, 1)[0])


def _context() -> multiprocessing.context.BaseContext:
    """A fresh process per stage: forked from a forkserver that has only imported torch and the stages
    (where the platform has one: a stage then skips the ~2 s of imports), else spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _run_stage(stage: str, threads: int, **kwargs) -> Measurement:
    """Run scale_stages.STAGES[stage](**kwargs) in a fresh process (`_context`); AmfrecError if it fails."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=measure, args=(stage, {**kwargs, "threads": threads}, child))
    proc.start()
    child.close()
    try:
        reply = parent.recv()
    except EOFError:
        reply = {"error": "the process died without an answer (out of memory?)"}
    proc.join()
    if "error" in reply:
        raise AmfrecError(f"bench-scale stage {stage} {kwargs}: failed in its process:\n{reply['error']}")
    return Measurement(reply["seconds"], reply["peak_mib"], reply["grew_mib"])


def _stage_jobs(work: Path, steps: int, batch_size: int) -> list[tuple[str, str, dict]]:
    """(label, stage, kwargs) of every stage of one size, in order (later ones read earlier outputs)."""
    prepared, features = str(work / "prepared"), str(work / "features")
    jobs = [
        ("prepare", "prepare", {"raw": str(work / "raw"), "prepared": prepared}),
        ("features (id)", "features",
         {"prepared": prepared, "features": features, "work": str(work), "batch_size": batch_size}),
    ]  # fmt: skip
    for name in BASELINES:
        if name not in SASREC_LIKE + FIT_ONLY:
            log.warning("bench-scale: no step defined for baseline %s; skipped", name)
            continue
        label = f"{'fit' if name in FIT_ONLY else 'step'} {name}"
        jobs.append((label, "step", {"model": name, "prepared": prepared, "features": features,
                                     "steps": steps, "batch_size": batch_size}))  # fmt: skip
    for label, no_llm in (("step amfrec no_llm", True), ("step amfrec (tiny LM)", False)):
        kw = {"prepared": prepared, "features": features, "backbone": str(work.parent / "lm"), "steps": steps}
        jobs.append((label, "amfrec_step", {**kw, "no_llm": no_llm}))
    return jobs


def _parse_ladder(sizes: list[int], items: list[int] | None) -> list[tuple[int, int]]:
    if not sizes or any(s < 100 for s in sizes):
        raise AmfrecError(f"--sizes: every size must be >= 100 interactions, got {sizes}")
    items = items or [max(s // 10, 50) for s in sizes]
    if len(items) != len(sizes) or any(i < 50 for i in items):
        raise AmfrecError(f"--items: one count >= 50 per size ({len(sizes)}), got {items}")
    return list(zip(sorted(sizes), sorted(items), strict=True))


def measure_scale(
    sizes: list[int], items: list[int] | None = None, rank_items: list[int] | None = None,
    steps: int = 3, batch_size: int = 256, threads: int | None = None,
) -> ScaleResult:  # fmt: skip
    """Time and measure every stage at every size (see the module doc); returns the raw measurements."""
    import torch

    threads = threads or torch.get_num_threads()
    result = ScaleResult()
    with tempfile.TemporaryDirectory(prefix="amfrec-scale-") as tmp:
        make_tiny_lm(Path(tmp) / "lm")
        result.floor_mib = _run_stage("floor", threads).peak_mib
        for n, n_items in _parse_ladder(sizes, items):
            work = Path(tmp) / f"n{n}"
            write_synthetic(work / "raw", n, n_items)
            t0 = time.perf_counter()
            for label, stage, kwargs in _stage_jobs(work, steps, batch_size):
                m = _run_stage(stage, threads, **kwargs)
                result.stages.setdefault(label, []).append(m)
                log.info("%d interactions: %s %.3f s, peak %.0f MiB", n, label, m.seconds, m.peak_mib)
            counts = read_json(work / "prepared" / "manifest.json")["counts"]
            result.sizes.append({k: counts[k] for k in ("interactions", "items", "users")})
            m = _run_stage("rank", threads, n_items=counts["items"])
            result.stages.setdefault("rank catalogue", []).append(m)
            result.rank.append((counts["items"], m))
            log.info("size %d done in %.0f s", n, time.perf_counter() - t0)
        for n_items in sorted(rank_items or []):
            result.rank.append((n_items, _run_stage("rank", threads, n_items=n_items)))
    return result


def _exp_cell(e: float | None) -> str:
    return "–" if e is None else f"{e:.2f}" + (" **>1.2**" if e > 1.2 else "")


def format_scale(result: ScaleResult) -> str:
    """The markdown tables: stage x size (seconds, peak MiB) + exponent; the ranking alone vs items."""
    x = [s["interactions"] for s in result.sizes]
    head = [f"{s['interactions']:,} inter. / {s['items']:,} items" for s in result.sizes]
    lines = [
        f"Each cell: seconds, peak MiB of the stage's process (the imports alone: {result.floor_mib:.0f} "
        "MiB). Steps and ranking: the median of the timed repetitions after a warm-up one. exponent: "
        "slope of log seconds vs log interactions.",
        "",
        "| stage | " + " | ".join(head) + " | exponent |",
        "|---|" + "---:|" * (len(head) + 1),
    ]
    for label, ms in result.stages.items():
        cells = [f"{m.seconds:.4g} s, {m.peak_mib:.0f} MiB" for m in ms]
        e = growth_exponent(x, [m.seconds for m in ms])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_exp_cell(e)} |")
    if result.rank:
        e = growth_exponent([n for n, _ in result.rank], [m.seconds for _, m in result.rank])
        lines += ["", f"Catalogue ranking alone (exponent vs items: {_exp_cell(e)})", "",
                  "| items | seconds | peak MiB |", "|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {n:,} | {m.seconds:.4g} | {m.peak_mib:.0f} |" for n, m in result.rank]
    return "\n".join(lines)


def plot_scale(result: ScaleResult, path: Path) -> Path:
    """Log-log plot of seconds per stage against interactions (the ranking alone against items)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["interactions"] for s in result.sizes]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    for label, ms in result.stages.items():
        ax.plot(x, [max(m.seconds, 1e-6) for m in ms], marker="o", label=label)
    if len(x) > 1:  # the linear reference through the first point of the slowest stage
        y0 = max(ms[0].seconds for ms in result.stages.values())
        ax.plot(x, [y0 * xi / x[0] for xi in x], "k--", lw=1, label="linear (exponent 1)")
    ax.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds", title="stages vs data size")
    ax.legend(fontsize=7)
    ax2.plot([n for n, _ in result.rank], [max(m.seconds, 1e-6) for _, m in result.rank], marker="o")
    ax2.set(xscale="log", yscale="log", xlabel="items", ylabel="seconds", title="one catalogue ranking")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def run_scale_bench(
    sizes: list[int] = DEFAULT_SIZES, out: Path | None = None, items: list[int] | None = None,
    rank_items: list[int] | None = DEFAULT_RANK_ITEMS, steps: int = 3, batch_size: int = 256,
    threads: int | None = None,
) -> str:  # fmt: skip
    """Measure the ladder; with `out`, write OUT/scale.md, scale.json and scale.png. Returns the table."""
    if steps < 1 or batch_size < 1 or (threads is not None and threads < 1):
        raise AmfrecError(
            f"--steps, --batch-size, --threads must be >= 1, got {steps}, {batch_size}, {threads}"
        )
    result = measure_scale(list(sizes), items, rank_items, steps, batch_size, threads)
    table = format_scale(result)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / TABLE_FILE, table + "\n")
        write_json(out / JSON_FILE, _as_json(result))
        plot_scale(result, out / PLOT_FILE)
        table += f"\n\nwritten: {out / TABLE_FILE}, {out / JSON_FILE}, {out / PLOT_FILE}"
    return table


def _as_json(result: ScaleResult) -> dict:
    x = [s["interactions"] for s in result.sizes]
    stages = {
        label: {"seconds": [m.seconds for m in ms], "peak_mib": [m.peak_mib for m in ms],
                "grew_mib": [m.grew_mib for m in ms], "exponent": growth_exponent(x, [m.seconds for m in ms])}
        for label, ms in result.stages.items()
    }  # fmt: skip
    rank = [{"items": n, "seconds": m.seconds, "peak_mib": m.peak_mib} for n, m in result.rank]
    return {"format": "amfrec-scale/1", "floor_mib": result.floor_mib, "sizes": result.sizes,
            "stages": stages, "rank": rank}  # fmt: skip
