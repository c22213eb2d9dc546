"""Comparisons that say which tensor, where, and by how much when they fail."""
from __future__ import annotations

import numpy as np


class ParityError(AssertionError):
    """The two backends disagree beyond a named tolerance."""


def assert_close(name: str, torch_value, tfrs_value, *, rtol: float, atol: float = 0.0) -> None:
    """|torch - tfrs| <= atol + rtol * |tfrs| element-wise, else ParityError with the worst spot."""
    a = np.asarray(torch_value, dtype=np.float64)
    b = np.asarray(tfrs_value, dtype=np.float64)
    if a.shape != b.shape:
        raise ParityError(f"{name}: shapes differ: torch {a.shape} vs tfrs {b.shape}")
    if a.size == 0:
        return
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        bad = np.argwhere(~(np.isfinite(a) & np.isfinite(b)))[0]
        raise ParityError(f"{name}: non-finite value at {tuple(bad)}: torch {a[tuple(bad)]}, "
                          f"tfrs {b[tuple(bad)]}")
    diff = np.abs(a - b)
    excess = diff - (atol + rtol * np.abs(b))
    if (excess > 0).any():
        where = np.unravel_index(int(np.argmax(excess)), a.shape)
        n_bad = int((excess > 0).sum())
        rel = diff[where] / max(abs(b[where]), 1e-30)
        raise ParityError(
            f"{name}: {n_bad} of {a.size} elements differ beyond rtol={rtol:g}, atol={atol:g}; "
            f"worst at index {tuple(int(i) for i in where)}: torch {a[where]:.9g} vs tfrs "
            f"{b[where]:.9g} (abs diff {diff[where]:.3g}, rel diff {rel:.3g})")


def assert_equal(name: str, torch_value, tfrs_value) -> None:
    """Exact equality (integers, ids), else ParityError with the first mismatch."""
    a, b = np.asarray(torch_value), np.asarray(tfrs_value)
    if a.shape != b.shape:
        raise ParityError(f"{name}: shapes differ: torch {a.shape} vs tfrs {b.shape}")
    mismatch = a != b
    if mismatch.any():
        where = tuple(int(i) for i in np.argwhere(mismatch)[0])
        raise ParityError(f"{name}: {int(mismatch.sum())} of {a.size} elements differ; first at "
                          f"index {where}: torch {a[where]!r} vs tfrs {b[where]!r}")


def assert_weights_close(what: str, torch_weights: dict, tfrs_weights: dict, *, rtol: float,
                         atol: float = 0.0) -> None:
    """Every named weight (Keras layout) within tolerance; names must match exactly."""
    if set(torch_weights) != set(tfrs_weights):
        raise ParityError(f"{what}: weight names differ: only torch "
                          f"{sorted(set(torch_weights) - set(tfrs_weights))}, only tfrs "
                          f"{sorted(set(tfrs_weights) - set(torch_weights))}")
    for name in sorted(torch_weights):
        assert_close(f"{what}[{name}]", torch_weights[name], tfrs_weights[name],
                     rtol=rtol, atol=atol)
