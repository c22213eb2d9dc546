"""What the commands import, read from sys.modules at the exit of fresh processes:
``twostage --help`` and ``import twostage`` import no framework and no data layer, a torch run
and ``twostage recommend`` of a torch run never import TensorFlow or ``torch._dynamo``
(issue 25: 0.8 s of dynamo, pulled in by ``torch.optim.Optimizer``'s first method call)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from twostage.data.synthetic import generate

HEAVY = {"tensorflow", "torch", "pandas", "faiss", "numpy", "torch_impl", "tfrs_impl"}
NEVER_ON_TORCH = {"tensorflow", "tf_keras", "tensorflow_recommenders", "tfrs_impl",
                  "torch._dynamo"}


# Runs ``-m MODULE ARGS`` or ``-c CODE`` and writes sys.modules at exit: ``-X importtime``
# misses what importlib.import_module loads (the backend registries), sys.modules does not.
PROBE = """import atexit, json, runpy, sys
out, kind, target, *rest = sys.argv[1:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = [target, *rest]
runpy.run_module(target, run_name="__main__", alter_sys=True) if kind == "-m" else exec(target)
"""


def imported_modules(args: list[str], tmp_path) -> set[str]:
    """sys.modules at the exit of a fresh ``python -m ...`` / ``python -c ...`` process given
    as ``args``; fails on a non-zero exit."""
    out = tmp_path / f"modules-{len(list(tmp_path.iterdir()))}.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set(json.loads(out.read_text()))
    assert "twostage" in names, sorted(names)
    return names


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """(run folder, modules imported) of a one-epoch ``twostage run --backend torch``."""
    root = tmp_path_factory.mktemp("startup")
    data = generate(root / "ml", num_users=80, num_movies=60, num_ratings=2000, seed=5,
                    realistic=True)
    out = root / "run"
    names = imported_modules(["-m", "twostage", "run", "--backend", "torch", "--quiet",
                              "--retrieval-epochs", "1", "--ranking-epochs", "1",
                              "--top-ks", "1,5,10", "--data-dir", str(data), "--out", str(out)],
                             root)
    return out, names


def test_help_imports_no_framework_and_no_data_layer(tmp_path):
    """Breaks if twostage/cli.py imports owndata or pipeline (pandas, FAISS, numpy) at module
    level again, or twostage/__init__.py imports its API eagerly."""
    names = imported_modules(["-m", "twostage", "--help"], tmp_path)
    assert "twostage.cli" in names
    assert not names & HEAVY, sorted(names & HEAVY)


def test_import_twostage_imports_its_api_only_when_used(tmp_path):
    """Breaks if twostage/__init__.py imports owndata (pandas, FAISS) eagerly again; the API
    names still resolve (``ts.train``, ``ts.Dataset``)."""
    bare = imported_modules(["-c", "import twostage"], tmp_path)
    assert not bare & HEAVY, sorted(bare & HEAVY)
    used = imported_modules(["-c", "import twostage as ts; ts.train, ts.Dataset, ts.Schema"],
                            tmp_path)
    assert {"twostage.owndata", "twostage.data.schema_data", "twostage.schema"} <= used


def test_a_torch_run_imports_neither_tensorflow_nor_dynamo(torch_run):
    """Breaks if torch_impl/optim.py's KerasAdagrad goes back to torch.optim.Optimizer's
    ``add_param_group`` / ``zero_grad`` (their ``torch._disable_dynamo`` wrapper imports
    torch._dynamo on the first call), or the core reaches tfrs_impl on a torch run."""
    _, names = torch_run
    assert "torch_impl.backend" in names and "torch" in names
    assert not names & NEVER_ON_TORCH, sorted(names & NEVER_ON_TORCH)


def test_recommend_of_a_torch_run_imports_neither_tensorflow_nor_dynamo(torch_run, tmp_path):
    """Breaks as the torch run's test does (the backend's load builds the optimizer too)."""
    out, _ = torch_run
    names = imported_modules(["-m", "twostage", "recommend", "--run", str(out), "--user", "1",
                              "-k", "5"], tmp_path)
    assert "torch_impl.backend" in names
    assert not names & NEVER_ON_TORCH, sorted(names & NEVER_ON_TORCH)


def test_the_optimizer_alone_imports_no_dynamo(tmp_path):
    """KerasAdagrad built, stepped, zeroed and its state dict read and loaded: no torch._dynamo.
    Breaks if torch_impl/optim.py drops the ``_without_dynamo_import`` methods."""
    code = ("import torch\nfrom torch_impl.optim import KerasAdagrad\n"
            "w = torch.nn.Parameter(torch.ones(3))\no = KerasAdagrad([w], lr=0.1)\n"
            "w.sum().backward()\no.step()\no.zero_grad()\no.load_state_dict(o.state_dict())\n")
    names = imported_modules(["-c", "import twostage\n" + code], tmp_path)
    assert "torch_impl.optim" in names
    assert "torch._dynamo" not in names
