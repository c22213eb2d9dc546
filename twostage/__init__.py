"""twostage: the framework-agnostic core of the two-stage recommender.

- :mod:`twostage.config`     the one typed configuration shared by the CLI, benchmarks and tests
- :mod:`twostage.dataset`    data + feature spec + split, prepared once for any backend
- :mod:`twostage.backend`    the interface both backends implement (torch_impl, tfrs_impl)
- :mod:`twostage.evaluation` numpy metrics: FactorizedTopK accuracy, ranking metrics, nDCG
- :mod:`twostage.pipeline`   train both stages, evaluate, report
- :mod:`twostage.owndata`    your own data: load, train, Run (report, recommend, save), load_run
- :mod:`twostage.cli`        the ``twostage`` command

The API (a schema run; ``docs/data.md``)::

    import twostage as ts
    data = ts.load("schema.toml")                 # or ts.Dataset.from_frames(...)
    run = ts.train(data, ts.Config(), backend="torch")
    run.report, run.recommend(["c00001"], k=10), run.save("runs/mine")
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> (module, attribute), imported on first use: ``import twostage.cli`` (``twostage
# --help``) must not pay for pandas, FAISS and the data layer that the API below pulls in
_API = {"Config": ("config", "Config"), "Dataset": ("data.schema_data", "SchemaDataset"),
        "Report": ("owndata", "Report"), "Run": ("owndata", "Run"), "load": ("owndata", "load"),
        "load_run": ("owndata", "load_run"), "train": ("owndata", "train"),
        "Schema": ("schema", "Schema"), "SchemaError": ("schema", "SchemaError")}

if TYPE_CHECKING:  # the same names for type checkers and the import-graph test
    from .config import Config
    from .data.schema_data import SchemaDataset as Dataset
    from .owndata import Report, Run, load, load_run, train
    from .schema import Schema, SchemaError

__all__ = [*sorted(_API), "__version__"]


def __getattr__(name: str):
    """``twostage.<name>`` of the API, imported when first asked for (PEP 562).

    Raises:
        AttributeError: ``name`` is neither in the API nor a submodule.
    """
    if name not in _API:
        raise AttributeError(f"module 'twostage' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
