"""The house rules of the package, read from its source: floors, no import circles.

Floors, bottom to top (docs/ARCHITECTURE.md): the leaves ``hooks``, ``sites``,
``rng``, ``stats``, ``decode_paths`` and ``prompts/`` -> ``models/`` -> ``interventions/`` ->
``engine/`` -> ``metrics/`` -> ``report/`` -> ``experiments/`` -> the command
line and the benchmark runner. (The report comes before the experiments in
imports, though after them in the data flow: it is a function of a run's
table, config and metadata, and the runner calls it when a run ends.) A module
may import its own floor or lower ones, never a higher one, and no two modules
may import each other through any chain. Every import counts, the ones inside functions too: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import transferlab

ROOT = Path(transferlab.__file__).parent

FLOORS = {
    "hooks": 0,
    "sites": 0,
    "rng": 0,
    "timings": 0,
    "decode_paths": 0,
    "engine_settings": 0,
    "atomic": 0,
    "bench_results": 0,
    "suggest": 0,
    "stats": 0,
    "prompts": 0,
    "models": 1,
    "interventions": 2,
    "engine": 3,
    "metrics": 4,
    "report": 5,
    "experiments": 6,
    "bench": 7,
    "bench_path": 7,
    "serve": 7,
    "cli": 7,
    "cli_prompts": 7,
    "cli_models": 7,
    "cli_steer": 7,
    "cli_output": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every transferlab module ``path`` imports (absolute names), at any depth of its code."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("transferlab"):
                continue
            for alias in node.names:  # ``from . import rng`` names a module
                sub = f"{mod}.{alias.name}"
                out.add(
                    sub
                    if (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                    or (ROOT.parent / Path(*sub.split("."))).is_dir()
                    else mod
                )
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("transferlab"))
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_every_room_has_a_floor():
    rooms = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert rooms - set(FLOORS) == set(), "a new module or package needs a floor in FLOORS (and in ARCHITECTURE.md)"


def test_nothing_imports_upward():
    bad = []
    for module, deps in _graph().items():
        mine = _floor(module)
        if mine is None:  # the package's __init__ re-exports the public API
            continue
        for dep in deps:
            theirs = _floor(dep)
            if theirs is not None and theirs > mine:
                bad.append(f"{module} (floor {mine}) imports {dep} (floor {theirs})")
    assert bad == [], "\n".join(sorted(bad))


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ importing its own modules is a re-export, not a dependency of theirs
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if dep not in edges:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == [], "\n".join(cycles)


@pytest.mark.parametrize("rule", ["upward", "circle"])
def test_the_rules_catch_a_violation(rule, tmp_path, monkeypatch):
    """The checks above can fail: a crafted upward import and a crafted circle are found."""
    pkg = tmp_path / "transferlab"
    for sub in ("models", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    if rule == "upward":
        (pkg / "models" / "model.py").write_text("def f():\n    from ..engine import run\n")
        (pkg / "engine" / "run.py").write_text("")
    else:
        (pkg / "engine" / "a.py").write_text("from .b import x\n")
        (pkg / "engine" / "b.py").write_text("def g():\n    from .a import y\n")
    monkeypatch.setattr(f"{__name__}.ROOT", pkg)
    with pytest.raises(AssertionError):
        (test_nothing_imports_upward if rule == "upward" else test_no_import_circles)()
