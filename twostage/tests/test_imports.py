"""The module graph: no import cycle among the project's modules (function-local imports count:
a local import that hides a cycle is still one), and the framework-agnostic core imports no
backend and no framework except where it says why."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# import name -> folder (pyproject.toml's packages and package-dir)
PACKAGES = {"twostage": REPO / "twostage", "twostage.index": REPO / "twostage" / "index",
            "twostage.data": REPO / "data", "torch_impl": REPO / "torch_impl",
            "tfrs_impl": REPO / "tfrs_impl"}
FRAMEWORKS = {"torch", "tensorflow", "tf_keras", "tensorflow_recommenders", "torch_impl",
              "tfrs_impl"}
# core modules allowed to reach a framework, and why
CORE_EXCEPTIONS = {
    "twostage.export": {"torch_impl", "tfrs_impl"},   # converts a run into either export
    "twostage.serving": {"torch"},                    # loads a TorchScript export it serves
}


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for file in folder.glob("*.py"):
            out[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return out


def imported(name: str, file: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules, top-level packages) that ``file`` imports anywhere in its body."""
    package = name if file.stem == "__init__" else name.rsplit(".", 1)[0]
    project, top = set(), set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
            # `from package import submodule` reads the submodule; the package's __init__
            # (which may re-export the API, as twostage's does) is not what it depends on
            targets = names if all(n in known for n in names) else [base] + names
        else:
            continue
        for target in targets:
            top.add(target.split(".")[0])
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                project.add(target)
    return project, top


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_cycle_hidden_in_a_function(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from . import b\n")
    b.write_text("def f():\n    from .a import x\n")
    known = {"p.a": a, "p.b": b}
    graph = {name: imported(name, file, known)[0] for name, file in known.items()}
    assert cycles(graph) == [["p.a", "p.b"]]


def test_no_import_cycle():
    known = modules()
    assert {"twostage.cli", "twostage.data.parsing", "torch_impl.backend"} <= set(known)
    graph = {name: imported(name, file, known)[0] for name, file in known.items()}
    assert cycles(graph) == []


def test_the_core_imports_no_framework():
    """twostage (twostage.index and twostage.data included) reaches torch, TensorFlow or a
    backend only in CORE_EXCEPTIONS; backends come through registries (pipeline.BACKEND_CLASSES,
    serving.LOADERS), so the torch path never loads TensorFlow and the reverse."""
    known = modules()
    core = [name for name in known if name.split(".")[0] == "twostage"]
    assert "twostage.data.parsing" in core and "twostage.index.flat" in core
    for name in core:
        reached = imported(name, known[name], known)[1] & FRAMEWORKS
        assert reached <= CORE_EXCEPTIONS.get(name, set()), (name, reached)
