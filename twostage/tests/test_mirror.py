"""The two backends mirror each other file for file, as docs/CONTRIBUTING.md's table says, and
both implement the Backend protocol of twostage/backend.py with the same signatures."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from twostage.backend import Backend

ROOT = Path(__file__).resolve().parents[2]
BACKEND_DIRS = ("torch_impl", "tfrs_impl")


def modules(package: str) -> set[str]:
    return {p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}


def mirror_table() -> dict[str, tuple[str, str]]:
    """{file: (torch_impl twin, tfrs_impl twin)} from the table in docs/CONTRIBUTING.md."""
    text = (ROOT / "docs" / "CONTRIBUTING.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`torch_impl/(\w+\.py)`\s*\|[^|]*\|\s*`tfrs_impl/(\w+\.py)`\s*\|",
                      text, flags=re.M)
    assert rows, "docs/CONTRIBUTING.md has no mirror table rows"
    return {a: (a, b) for a, b in rows}


def test_every_backend_file_has_its_twin_and_the_table_says_so():
    torch_files, tfrs_files = modules("torch_impl"), modules("tfrs_impl")
    assert torch_files == tfrs_files, (f"only in torch_impl: {torch_files - tfrs_files}; "
                                       f"only in tfrs_impl: {tfrs_files - torch_files}")
    table = mirror_table()
    assert set(table) == torch_files, "the CONTRIBUTING table lists other files than exist"
    assert all(a == b for a, b in table.values())


def test_no_module_imports_both_frameworks():
    """Only the parity suite and twostage/export.py may touch both (lazily)."""
    for package in ("twostage", "torch_impl", "tfrs_impl", "data", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if "tests" in path.parts or path.name == "export.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {alias.name.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in (node.names if isinstance(node, ast.Import) else
                                   [ast.alias(node.module or "")])}
            both = {"torch", "tensorflow"} <= names
            assert not both, f"{path.relative_to(ROOT)} imports both torch and tensorflow"


def test_core_never_imports_a_framework_at_module_level():
    for path in (ROOT / "twostage").rglob("*.py"):
        if "tests" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: lazy imports inside functions are fine
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""])
                bad = [m for m in mods if m.split(".")[0] in
                       ("torch", "tensorflow", "tensorflow_recommenders", "torch_impl",
                        "tfrs_impl")]
                assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"


PROTOCOL = [name for name, member in inspect.getmembers(Backend)
            if not name.startswith("_") and callable(member)]


@pytest.mark.parametrize("module, cls", [("torch_impl.backend", "TorchBackend"),
                                         ("tfrs_impl.backend", "TfrsBackend")])
def test_backend_implements_the_protocol_with_the_same_signatures(module, cls):
    import importlib
    backend = getattr(importlib.import_module(module), cls)
    for name in PROTOCOL:
        assert hasattr(backend, name), f"{cls} lacks {name}"
        want = list(inspect.signature(getattr(Backend, name)).parameters)
        got = list(inspect.signature(getattr(backend, name)).parameters)
        assert got == want, f"{cls}.{name}{got} differs from the protocol's {want}"
    load = inspect.signature(backend.load)
    assert list(load.parameters) == ["directory", "config", "spec"], f"{cls}.load{load}"
    assert list(inspect.signature(backend.__init__).parameters) == ["self", "config", "spec"]
    for attribute in ("name", "check_config"):
        assert hasattr(backend, attribute), f"{cls} lacks {attribute}"
