"""Imports flow one way: each package of oyster_jax imports only from the layers below it.

Read from the source with `ast` (nothing is imported), counting imports inside functions too: a
function-level import that dodges a cycle is still an edge. The layers, bottom first:

    core, cli, configs.sharding  safety chain, taxonomy, chat format, record schemas, atomic writes; the
                               argument parser every CLI uses; the sharding recipes (pure data)
    kernels, sharding, distributed, xla_env
    models
    data, convert, infer
    train, llm
    csa
    eval
    entry points               main, demo, demo_real, serve, tools, bench, and the bundled configs

A package may import its own modules and any package of a lower layer, never a package of its own layer
or above. Entry points may also import each other (the benchmarks reuse `main`'s config loading).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "oyster_jax"

LAYERS: list[set[str]] = [
    {"core", "cli", "configs.sharding"},
    {"kernels", "sharding", "distributed", "xla_env"},
    {"models"},
    {"data", "convert", "infer"},
    {"train", "llm"},
    {"csa"},
    {"eval"},
    {"main", "demo", "demo_real", "serve", "tools", "bench", "configs"},
]
ENTRY_LAYER = len(LAYERS) - 1
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _source_files() -> list[tuple[pathlib.Path, str]]:
    """(file, dotted module name) for every module of the package and of the bundled configs."""
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        files.append((path, ".".join(path.relative_to(REPO).with_suffix("").parts)))
    for path in sorted((REPO / "configs").rglob("*.py")):
        files.append((path, "oyster_jax." + ".".join(path.relative_to(REPO).with_suffix("").parts)))
    return files


def _imported_modules(path: pathlib.Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts = parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "oyster_jax":  # `from oyster_jax import models, distributed`
                found += [(node.lineno, f"oyster_jax.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def _top_package(dotted: str) -> str | None:
    """`oyster_jax.core.chat` -> `data`; the repo's `configs.x` -> `configs`; anything else -> None."""
    parts = dotted.split(".")
    if parts[0] == "configs":  # the repository's folder imported by its old name: never allowed
        return "configs"
    if parts[0] != "oyster_jax" or len(parts) < 2:
        return None
    if parts[1:3] == ["configs", "sharding"]:  # a table the sharding layer reads: no imports of its own
        return "configs.sharding"
    return parts[1]


def _violations() -> list[str]:
    problems = []
    for path, module in _source_files():
        own = _top_package(module)
        if own is None or module == "oyster_jax.__init__":
            continue
        for line, target in _imported_modules(path, module):
            other = _top_package(target)
            if other is None or other == own:
                continue
            where = f"{path.relative_to(REPO)}:{line}"
            if own not in RANK or other not in RANK:
                problems.append(f"{where}: {own} or {other} has no layer in LAYERS")
            elif RANK[other] > RANK[own] or (RANK[other] == RANK[own] and RANK[own] != ENTRY_LAYER):
                problems.append(f"{where}: {own} (layer {RANK[own]}) imports {target} (layer {RANK[other]})")
    return problems


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    packages |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert packages - set(RANK) == set(), "add new packages to LAYERS"


def test_imports_flow_downward():
    problems = _violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_no_cycles_between_modules():
    """Inside a package too: no module pair (or longer loop) imports each other, at any depth."""
    graph: dict[str, set[str]] = {}
    for path, module in _source_files():
        name = module.removesuffix(".__init__")
        graph[name] = {t for _, t in _imported_modules(path, module) if t.startswith("oyster_jax.")}
    known = set(graph)

    def resolve(target: str) -> str | None:  # `oyster_jax.core.chat.X` -> the longest known module prefix
        parts = target.split(".")
        for n in range(len(parts), 1, -1):
            if ".".join(parts[:n]) in known:
                return ".".join(parts[:n])
        return None

    edges = {
        m: {r for t in ts if (r := resolve(t)) and r != m and not m.startswith(r + ".")} for m, ts in graph.items()
    }
    # A package's __init__ importing its own submodules (and they it) is how lazy namespaces work: skip
    # edges from a package to its own children.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_hidden_cycle_markers():
    """`noqa: PLC0415` marked function-level imports that hid cycles; with the layers enforced none is needed."""
    marked = [
        f"{path.relative_to(REPO)}:{i}"
        for path, _ in _source_files()
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if "PLC0415" in text
    ]
    assert not marked, "remove these markers (and the cycle they hid):\n" + "\n".join(marked)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from oyster_jax import models\n", "oyster_jax.models"),
        ("from oyster_jax.train import trainer\n", "oyster_jax.train"),
        ("def f():\n    import oyster_jax.eval.common\n", "oyster_jax.eval.common"),
        ("from ..train import step\n", "oyster_jax.train"),
    ],
)
def test_the_scanner_sees_every_import_form(tmp_path, source, expected):
    """The checker itself: module-level, function-level and relative imports are all edges."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    names = [name for _, name in _imported_modules(path, "oyster_jax.models.mod")]
    assert expected in names
