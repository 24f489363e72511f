"""The package's imports run one way: no cycles, and no layer imports a higher one (not even lazily).

Layers, lowest first (DESIGN.md): spec -> layers -> models -> detection -> zoo -> data -> train ->
measure -> search -> deploy -> cli. ``effml.errors`` and ``effml.files`` (OS errors in words, atomic
writes) sit under all of them; the top-level ``effml`` package and ``effml.__main__`` are facades
over everything. ``measure`` (timing, latency, latency tables, the ONNX Runtime session, the int8
recipe, OpenVINO's loading) is below both search and deploy, so neither imports the other's
measuring code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import effml

ROOT = Path(effml.__file__).parent
LAYERS = ["errors", "files", "spec", "layers", "models", "detection", "zoo", "data", "train", "measure", "search", "deploy", "cli"]
FACADES = {"effml", "effml.__main__"}


def _module_name(path: Path) -> str:
    parts = ("effml",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported effml module, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from effml.x import y` imports the submodule effml.x.y when there is one (its
            # package is then only the implicit parent, as for any submodule import), else
            # names from effml.x itself.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found += [(n, id(node) in top_level) for n in names if n == "effml" or n.startswith("effml.")]
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    graph = {}
    for name, path in MODULES.items():
        graph[name] = [(m, top) for m, top in _imports(path, name) if m in MODULES and m != name]
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer():
    strays = [m for m in _graph() if m not in FACADES and _layer(m) is None]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


# Layers that share a floor: neither imports the other (search ranks what deploy ships by measuring
# it with ``measure``, never by importing deploy; deploy times with ``measure``, never with search).
SIBLINGS = [("search", "deploy")]


def _violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    bad = []
    for module, imports in graph.items():
        if module in FACADES:
            continue
        for target, _ in imports:
            if target in FACADES:
                if _layer(module) != LAYERS.index("cli"):  # the command line may read __version__
                    bad.append(f"{module} imports the facade {target}")
            elif _layer(target) > _layer(module):
                bad.append(f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})")
            elif {LAYERS[_layer(module)], LAYERS[_layer(target)]} in [set(s) for s in SIBLINGS]:
                bad.append(f"{module} ({LAYERS[_layer(module)]}) imports its sibling {target}")
    return bad


def test_no_layer_imports_a_higher_one():
    bad = _violations(_graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, target", [
    ("effml.measure.latency", "effml.search.study.runner"),  # measuring must not know the search
    ("effml.train.trainer", "effml.measure.latency"),
    ("effml.files", "effml.spec"),  # the ground floor imports nothing of effml's but errors
    ("effml.deploy.benchmark", "effml.search.study.cost"),  # siblings
    ("effml.search.study.cost", "effml.deploy.quantize"),
])
def test_an_injected_upward_import_is_caught(module, target):
    graph = _graph()
    assert module in graph and target in graph, "the test names modules that no longer exist"
    graph[module] = graph[module] + [(target, False)]  # even a lazy import inside a function
    assert any(module in line and target in line for line in _violations(graph))


def test_module_level_imports_have_no_cycle():
    edges = {m: sorted({t for t, top in imports if top}) for m, imports in _graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, []):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
