"""Benchmarks: speed (``python -m benchmarks.speed``) and seed-to-seed spread
(``python -m benchmarks.seeds``); ``python -m benchmarks`` is the ``twostage`` command."""
