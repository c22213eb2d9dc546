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


# --- the twins' signatures below the protocol -------------------------------------------------

# Public functions and methods both twins of a file define under the same name share one
# signature (parameter names, order, positional / keyword-only), except where the roles differ;
# each exception says why. Parameters only one twin has for a role the other lacks:
ONE_TWIN_ONLY: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    # a TFRS model holds its task (tfrs.models.Model.task); torch passes it beside the model
    ("train.py", "fit_retrieval"): {"torch_impl": ("task",)},
    ("train.py", "fit_ranking"): {"torch_impl": ("task",)},
}
# Same name, different roles or framework-native inputs (a torch module takes sizes and a
# device, a Keras layer the spec and builds its lookups in the graph): why -> "file:name"s.
DIFFERENT_ROLES_BY_REASON: dict[str, tuple[str, ...]] = {
    "torch encodes ids with the spec, TFRS looks them up in the graph; torch gathers tensors "
    "on a device, TFRS tf.data columns": ("features.py:query_arrays", "features.py:select_rows",
                                          "features.py:to_tensors"),
    "torch indexes embeddings (twostage.index); TFRS builds BruteForce from the towers":
        ("index.py:build_index",),
    "torch layers take sizes (and share the towers' embeddings), Keras layers the spec":
        ("models.py:MovieModel.__init__", "models.py:RankingModel.__init__",
         "models.py:UserModel.__init__"),
    "torch places a model on a device; TFRS attaches the corpus metrics":
        ("models.py:build_ranking_model", "models.py:build_retrieval_model"),
    "torch names weights with a Keras prefix and builds an optimizer over the parameters":
        ("optim.py:get_accumulators", "optim.py:set_accumulators", "optim.py:make_optimizer"),
    "torch gathers sampled titles' inputs on the device, TFRS embeds them in the graph; "
    "torch's retrieval_loss is compute_loss of a batch, TFRS's the task call inside it":
        ("tasks.py:mixed_negatives", "tasks.py:retrieval_loss"),
}
DIFFERENT_ROLES = {tuple(name.split(":")): why
                   for why, names in DIFFERENT_ROLES_BY_REASON.items() for name in names}


def _signatures(path: Path) -> dict[str, list[tuple[str, str]]]:
    """{public function or Class.method: [(parameter, kind)]} of a module, from its source."""
    out = {}

    def params(node: ast.FunctionDef) -> list[tuple[str, str]]:
        a = node.args
        return ([(x.arg, "positional") for x in a.posonlyargs + a.args]
                + [(x.arg, "keyword") for x in a.kwonlyargs])
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            out[node.name] = params(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef) and (
                        sub.name == "__init__" or not sub.name.startswith("_")):
                    out[f"{node.name}.{sub.name}"] = params(sub)
    return out


def signature_drift() -> dict[tuple[str, str], tuple[list, list]]:
    """{(file, name): (torch_impl's parameters, tfrs_impl's)} of the shared names whose
    signatures differ once ONE_TWIN_ONLY's parameters are left out."""
    drift = {}
    for file in sorted(mirror_table()):
        twins = [_signatures(ROOT / package / file) for package in BACKEND_DIRS]
        for name in sorted(set(twins[0]) & set(twins[1])):
            extra = ONE_TWIN_ONLY.get((file, name), {})
            sides = [[p for p in sig[name] if p[0] not in extra.get(package, ())]
                     for package, sig in zip(BACKEND_DIRS, twins)]
            if sides[0] != sides[1]:
                drift[(file, name)] = (sides[0], sides[1])
    return drift


def test_the_twins_share_their_signatures_below_the_protocol():
    """Every function or method both twins define has one signature (the training entry points
    ``train.fit_retrieval`` / ``fit_ranking`` included), but the named exceptions.
    Broken on purpose, it fails: torch's ``fit_retrieval`` back to ``epoch_offset`` (or any
    parameter renamed in one twin only), or an exception left listed once the twins agree."""
    drift = signature_drift()
    unexplained = {k: v for k, v in drift.items() if k not in DIFFERENT_ROLES}
    assert not unexplained, "the twins' signatures drifted (make them one, or say why in " \
        "DIFFERENT_ROLES): " + "; ".join(f"{f}:{n} torch {t} vs tfrs {r}"
                                         for (f, n), (t, r) in unexplained.items())
    stale = sorted(set(DIFFERENT_ROLES) - set(drift))
    assert not stale, f"these twins now agree: drop them from DIFFERENT_ROLES: {stale}"
    for (file, name), extra in ONE_TWIN_ONLY.items():
        for package, names in extra.items():
            got = [p for p, _ in _signatures(ROOT / package / file)[name]]
            assert set(names) <= set(got), f"{package}/{file}:{name} lacks {names}"


@pytest.mark.parametrize("module", ["torch_impl.backend", "tfrs_impl.backend"])
def test_both_backends_share_the_backend_base(module):
    """config, spec, epochs_done, recipe data, index invalidation, the fit wrappers and the
    loss shortcuts live once, in twostage.backend.BackendBase.
    Broken on purpose, it fails: a backend that defines its own fit_retrieval or
    attach_recipe_data again."""
    import importlib

    from twostage.backend import BackendBase
    backend = next(c for c in vars(importlib.import_module(module)).values()
                   if isinstance(c, type) and c.__module__ == module and
                   issubclass(c, BackendBase))
    shared = ("models", "attach_recipe_data", "fit_retrieval", "fit_ranking", "retrieval_loss",
              "ranking_loss", "_towers_changed")
    redefined = [name for name in shared if name in vars(backend)]
    assert not redefined, f"{backend.__name__} redefines BackendBase's {redefined}"
