"""twostage: the framework-agnostic core of the two-stage recommender.

- :mod:`twostage.config`     the one typed configuration shared by the CLI, benchmarks and tests
- :mod:`twostage.dataset`    data + feature spec + split, prepared once for any backend
- :mod:`twostage.backend`    the interface both backends implement (torch_impl, tfrs_impl)
- :mod:`twostage.evaluation` numpy metrics: FactorizedTopK accuracy, ranking metrics, nDCG
- :mod:`twostage.pipeline`   train both stages, evaluate, report
- :mod:`twostage.cli`        the ``twostage`` command
"""
__version__ = "0.1.0"
