"""`amfrec experiment`: several models x several seeds on the same candidates -> a mean ± std table.

Per seed the raw data is prepared once (the seed fixes the validation/test candidate sets), every model is
trained and tested on those very candidates, and the table reports test metrics as mean ± std over seeds.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from amfrec.baselines import BASELINES, CONTENT_BASELINES
from amfrec.data.protocol import DEFAULT_NEGATIVES, protocol_of
from amfrec.errors import AmfrecError
from amfrec.io import read_json, write_json

log = logging.getLogger(__name__)

TABLE_KEYS = ("hr@1", "hr@5", "hr@10", "ndcg@10", "mrr")

# The ablations of AMFRec (docs/RESULTS.md, "Ablations"), as named config overrides on top of the experiment's
# config: `--models amfrec:no_llm` trains the recipe with these settings into the run folder `amfrec-no_llm`.
# Title-head variants list the candidates in the prompt (~4x longer prompts; the item_token head's own
# settings and the modality dropout resolve to off with that head) and read every LM layer (the title is the
# LM's own vocabulary); `title` trains 48 steps of 8 windows to fit a CPU budget.
_TITLE = {"model.answer": "title", "model.lm_layers": None}
# The window recipe that every position a target replaced: one prompt per training window, 200 steps of 16.
_LAST = {"model.positions": "last", "train.batch_size": 16, "train.max_steps": 200, "train.eval_every": 50,
         "train.eval_examples": 200}  # fmt: skip
VARIANTS: dict[str, tuple[str, dict]] = {
    "last": ("one prompt per training window, its last position the target (the recipe before)", _LAST),
    "no_llm": (
        "the control: the LM replaced by the mean of the prompt's soft tokens",
        {"model.no_llm": True},
    ),
    "lm_new_items": (
        "items without a trained id scored against the LM's state too (the recipe before new_item_control)",
        {"model.new_item_control": False},
    ),
    "mean": ("mean fusion of the modality projections (no gate)", {"model.fusion": "mean"}),
    "mean_no_llm": (
        "the control with mean fusion (no gate): the gate's robustness at the control's cost",
        {"model.fusion": "mean", "model.no_llm": True},
    ),
    "concat": ("one projector over the concatenated features (no gate)", {"model.fusion": "concat"}),
    "id_only": ("the id modality alone", {"model.fusion": "single", "model.single_modality": "id"}),
    "text_only": ("the text modality alone", {"model.fusion": "single", "model.single_modality": "text"}),
    "image_only": ("the image modality alone", {"model.fusion": "single", "model.single_modality": "image"}),
    "title": (
        "gated soft tokens, LLaRA's title answer (scored by title likelihood)",
        {
            **_TITLE,
            "train.max_steps": 48,
            "train.batch_size": 8,
            "train.eval_every": 16,
            "train.eval_examples": 100,
        },
    ),  # fmt: skip
    "sasrec_user": (
        "the recipe before issue 20: a frozen SASRec as the collaborative net, titles only, no dropout",
        {
            "model.user_token": "sasrec",
            "model.modality_dropout": {},
            "model.item_text": "title",
            "model.item_tokens": 32,
        },
    ),  # fmt: skip
    "zero_shot": (
        "the frozen LM alone: titles only, no soft tokens, no training; scored by title likelihood",
        {**_TITLE, "model.soft_tokens": False, "model.user_token": None, "train.max_steps": 0},
    ),
}


def parse_model(spec: str) -> tuple[str, str | None]:
    """`sasrec` -> ("sasrec", None); `amfrec:no_llm` -> ("amfrec", "no_llm"). Raises AmfrecError."""
    base, sep, variant = spec.partition(":")
    if base not in (*BASELINES, "amfrec") or (sep and base != "amfrec"):
        raise AmfrecError(f"unknown model {spec!r}; choose from {[*BASELINES, 'amfrec', 'amfrec:VARIANT']}")
    if sep and variant not in VARIANTS:
        raise AmfrecError(f"unknown AMFRec variant {variant!r} in {spec!r}; choose from {sorted(VARIANTS)}")
    return base, (variant or None)


def run_name(spec: str) -> str:
    """The run folder and metrics name of a model spec: `amfrec:no_llm` -> `amfrec-no_llm`."""
    return spec.replace(":", "-")


def run_experiment(
    models: list[str],
    data: Path | None,
    features: Path | None,
    config: str | None,
    seeds: list[int],
    out: Path,
    overrides: dict | None = None,
    limit: int | None = None,
    modalities: list[str] | None = None,
    new_items: float = 0.0,
    negatives: int = DEFAULT_NEGATIVES,
) -> str:
    """Train and test every model for every seed under `out`; write results.json/results.md; return the table.

    data: raw data folder (RecBole atomic files; None = obtain ml-100k), prepared once per seed under
    out/seed<S>/data under the protocol `new_items` / `negatives` (amfrec.data.protocol); an existing seed
    folder prepared under another protocol is refused (AmfrecError).
    features: an existing feature folder to use for AMFRec, or None to build one per seed (the `id` modality
    from that seed's SASRec run when SASRec is among the models).
    """
    for spec in models:
        parse_model(spec)
    if not seeds:
        raise AmfrecError("--seeds is empty")
    results: dict[str, list[dict]] = {run_name(m): [] for m in models}
    for seed in seeds:
        root = out / f"seed{seed}"
        prepared = root / "data"
        prepare_seed(data, prepared, seed, new_items, negatives)
        if negatives != DEFAULT_NEGATIVES:  # AMFRec's config must match the candidate count
            overrides = {
                "model.n_candidates": negatives + 1,
                "train.n_negatives": negatives,
                **(overrides or {}),
            }
        for model in models:
            run = root / run_name(model)
            wanted = recipe(model, config, overrides or {}, features, limit, modalities)
            if (run / "metrics.json").exists():
                check_reuse(run, wanted)
                log.info("%s seed %d: reusing %s", model, seed, run)
            else:
                train_one(model, prepared, features, config, seed, run, overrides or {}, limit, modalities)
                write_json(run / RECIPE_FILE, wanted)
            results[run_name(model)].append(read_json(run / "metrics.json"))
    table = format_table(results, seeds)
    write_json(out / "results.json", {"seeds": seeds, "runs": results})
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    return table


RECIPE_FILE = "recipe.json"  # in each run folder: what `amfrec experiment` trained it from


def recipe(
    model: str,
    config: str | None,
    overrides: dict,
    features: Path | None,
    limit: int | None,
    modalities: list[str] | None,
) -> dict:
    """What a run of `model` in an experiment is trained from: the model spec, its config (for AMFRec the
    experiment's config file resolved, every default included, so that a changed default is a changed
    recipe; for a baseline its packaged file's text, which spells out every default), and, where the model
    reads them, the overrides, the feature folder and the modalities; and --limit."""
    from amfrec.config.model import AMFRecConfig
    from amfrec.runs.rundir import PACKAGED_CONFIGS, resolve_config

    name, _ = parse_model(model)
    path = resolve_config(config) if name == "amfrec" else PACKAGED_CONFIGS / f"{name}.yaml"
    if name == "amfrec":
        text = AMFRecConfig.from_yaml(path).to_yaml()
    else:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
    out = {"model": model, "config": text, "limit": limit}
    if name == "amfrec" or name in CONTENT_BASELINES:
        out |= {"features": None if features is None else str(features), "modalities": modalities}
    if name == "amfrec":
        out["overrides"] = overrides
    return out


def check_reuse(run: Path, wanted: dict) -> None:
    """Refuse to reuse `run` when its recipe file says it was trained from another recipe (AmfrecError
    naming the differing fields); a run without one (an older experiment) is reused with a warning."""
    path = run / RECIPE_FILE
    if not path.is_file():
        log.warning("%s: no %s (an older experiment); reused without checking its recipe", run, RECIPE_FILE)
        return
    have = read_json(path)
    differ = sorted(k for k in wanted.keys() | have.keys() if have.get(k) != wanted.get(k))
    if differ:
        raise AmfrecError(
            f"{path}: this run was trained from another recipe ({', '.join(differ)} differ); use another "
            f"--out, or delete {run} to train it again"
        )


def prepare_seed(data: Path | None, prepared: Path, seed: int, new_items: float, negatives: int) -> None:
    """Prepare `data` into `prepared` for `seed` unless it is there already under the same protocol."""
    from amfrec.data.prepare import prepare

    want = {"new_items": float(new_items), "n_negatives": int(negatives)}
    if (prepared / "manifest.json").exists():
        have = protocol_of(read_json(prepared / "manifest.json"))
        if have != want:
            raise AmfrecError(
                f"{prepared / 'manifest.json'}: prepared under protocol {have}, but this experiment asks for "
                f"{want}; use another --out (or delete {prepared.parent})"
            )
        return
    prepare(data, prepared, seed=seed, new_items=new_items, negatives=negatives)


def train_one(
    model: str,
    prepared: Path,
    features: Path | None,
    config: str | None,
    seed: int,
    run: Path,
    overrides: dict,
    limit: int | None,
    modalities: list[str] | None = None,
) -> dict:
    """Train one model (`sasrec`, `amfrec`, `amfrec:VARIANT`) on one prepared split; return its test metrics
    (also in run/metrics.json). A variant's overrides go on top of `overrides`. AMFRec and the content
    baselines read `features`, else the seed's feature folder (`ensure_features`)."""
    from amfrec.runs.baseline_run import ensure_sasrec_run, train_baseline

    model, variant = parse_model(model)
    if model in BASELINES and model not in CONTENT_BASELINES:
        return train_baseline(model, prepared, seed, run, None, limit=limit)
    if model == "amfrec":  # its collaborative user token reads the seed's SASRec run too
        ensure_sasrec_run(prepared, seed, run.parent / "sasrec", limit=limit)
    features = ensure_features(prepared, features, seed, run.parent, modalities, limit)
    if model in CONTENT_BASELINES:
        return train_baseline(model, prepared, seed, run, None, limit=limit, features=features)
    from amfrec.runs.amfrec_run import train_amfrec

    if variant is not None:
        overrides = {**overrides, **VARIANTS[variant][1]}
    overrides = with_collab_run(config, overrides, prepared, features, seed, run.parent, limit)
    name = "amfrec" if variant is None else run_name(f"amfrec:{variant}")
    return train_amfrec(prepared, features, config, seed, run, overrides, limit=limit, name=name)


def with_collab_run(
    config: str | None,
    overrides: dict,
    prepared: Path,
    features: Path,
    seed: int,
    root: Path,
    limit: int | None,
) -> dict:
    """`overrides` plus `model.collab_run` = the seed's sasrec_content run (root/sasrec_content, trained now
    if missing) when the config's user token is sasrec_content and names no run; else `overrides`."""
    from amfrec.config.model import AMFRecConfig
    from amfrec.runs.baseline_run import train_baseline
    from amfrec.runs.rundir import resolve_config

    model = AMFRecConfig.from_yaml(resolve_config(config), overrides).model
    if model.user_token != "sasrec_content" or model.collab_run:
        return overrides
    run = root / "sasrec_content"
    if not (run / "metrics.json").exists():
        train_baseline("sasrec_content", prepared, seed, run, None, limit=limit, features=features)
    return {**overrides, "model.collab_run": str(run)}


def ensure_features(
    prepared: Path,
    features: Path | None,
    seed: int,
    root: Path,
    modalities: list[str] | None = None,
    limit: int | None = None,
) -> Path:
    """`features` when given; else root/features, built (or reused from its cache) from the prepared data:
    `id` from the seed's SASRec run root/sasrec (trained now if missing), text and image (`modalities`)."""
    if features is not None:
        return Path(features)
    from amfrec.features.build import build_features
    from amfrec.runs.baseline_run import ensure_sasrec_run

    sasrec_run = ensure_sasrec_run(prepared, seed, root / "sasrec", limit=limit)
    out = root / "features"
    build_features(prepared, out, modalities=modalities or ["id", "text", "image"], id_from=sasrec_run)
    return out


def format_table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    """Markdown table of test metrics, mean ± std over seeds (std over one seed shown as 0)."""
    head = "| model | " + " | ".join(TABLE_KEYS) + " | n |"
    lines = [f"Test metrics, mean ± std over seeds {seeds}", head, "|---|" + "---:|" * (len(TABLE_KEYS) + 1)]
    for model, runs in results.items():
        cells = []
        for key in TABLE_KEYS:
            values = [r[key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {runs[0]['n']} |")
    return "\n".join(lines)
