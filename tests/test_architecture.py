"""The house rules, read from the source: imports only run down the layers (data -> features ->
contract -> baselines -> config -> llm -> model -> training -> runs -> serve -> reports -> experiments ->
bench -> cli), no import cycles, no source file over 400 lines, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "amfrec"
# Lowest first. A module may import its own layer (without cycles) and every layer below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "metrics", "hardware", "io", "seeds", "stats"),  # ground floor: no domain types
    ("data",),  # raw files -> prepared splits and candidates
    ("features",),  # prepared items -> modality matrices
    (
        "recommender",
        "evaluate",
        "evaluate_full",
    ),  # the one model contract; any Recommender on a split -> metrics
    ("baselines",),  # popularity, SASRec, GRU4Rec, BERT4Rec, content baselines
    ("config",),  # AMFRec's configuration: dataclasses, enums, validators, overrides
    ("llm",),  # the frozen backbone: loading, fast decoder, hybrid prompt
    ("model",),  # AMFRec's trainable parts: projectors, gate, adapter, heads, collaborative net
    ("training",),  # the training loop: batches and negatives, distributed, checkpoints
    ("runs",),  # a run's lifecycle: train, evaluate, reload, rank, live catalogue
    ("serve",),  # the HTTP API and web page over a run
    ("reports",),  # results read back, paired comparisons, report and plots
    ("experiments",),  # models x seeds, tuning, quickstart
    ("bench",),  # every benchmark: training, DDP, targets, scale ladder, serving load, scoring
    ("cli", "__main__"),  # the only readers of argv
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for k, names in enumerate(LAYERS):
        if top in names:
            return k
    raise AssertionError(f"amfrec.{module} is in no layer: add it to LAYERS")


def imports_of(path: Path) -> set[str]:
    """amfrec modules imported anywhere in the file (function-level imports included), without 'amfrec.'."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from amfrec.runs import catalogue` imports the module amfrec.runs.catalogue
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [
                node.module,
                *(s for s in subs if (SRC.parent / s.replace(".", "/")).with_suffix(".py").is_file()),
            ]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "amfrec":
                found.add("__init__")
            elif name.startswith("amfrec."):
                found.add(name.removeprefix("amfrec."))
    return found


SOURCES = sorted(SRC.rglob("*.py"))
GRAPH = {module_of(p): {m for m in imports_of(p) if m != module_of(p)} for p in SOURCES}


def test_every_import_runs_down_the_layers() -> None:
    upward = [
        f"amfrec.{a} (layer {layer_of(a)}) imports amfrec.{b} (layer {layer_of(b)})"
        for a, deps in GRAPH.items()
        for b in deps
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    known = {m: {d for d in deps if d in GRAPH} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(known[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d) :], m, d]))
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(known):
        if m not in state:
            visit(m, [])


def test_files_and_functions_are_small() -> None:
    big = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            big.append(f"{path.relative_to(SRC)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not big, "\n".join(big)


def test_the_checks_see_a_violation() -> None:
    """The rules bite: a made-up upward import is found, and every real module sits in a layer."""
    assert layer_of("model.model") > layer_of("data.dataset")
    assert {"recommender", "metrics"} <= GRAPH["evaluate"]
    assert all(isinstance(layer_of(m), int) for m in GRAPH)
