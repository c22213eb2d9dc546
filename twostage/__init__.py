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
__version__ = "0.1.0"

from .config import Config
from .data.schema_data import SchemaDataset as Dataset
from .owndata import Report, Run, load, load_run, train
from .schema import Schema, SchemaError

__all__ = ["Config", "Dataset", "Report", "Run", "Schema", "SchemaError", "load", "load_run",
           "train", "__version__"]
