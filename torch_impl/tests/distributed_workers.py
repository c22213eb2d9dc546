"""Launching torch.distributed workers from a test, and what they run (test_distributed.py).

:func:`launch` starts ``nproc`` processes (the spawn start method, a free port on 127.0.0.1, the
environment torchrun would give them), waits for all of them without ending the others when one
fails (so a failing rank must end the rest through the collectives' timeout, as under any
launcher that does not kill them), and returns each rank's exit code and error. A worker writes
its results to a file only when it has finished (atomically, through ``twostage.io``), so a run
that fails leaves nothing half-written.

The workers are module-level functions (the spawn start method imports them by name).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Outcome:
    """What one launch ended with: per rank exit code (None: killed after the deadline) and
    error text (with the time it was raised), and the seconds it took."""

    exit_codes: list
    errors: dict
    seconds: float

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.exit_codes)

    def first_error(self) -> str | None:
        """The error raised first (the launcher's report of a failed run)."""
        if not self.errors:
            return None
        return min(self.errors.values(), key=lambda e: e["time"])["text"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Callable, nproc: int, out: Path, *args, deadline_s: float = 120.0,
           grace_s: float | None = None) -> Outcome:
    """Run ``worker(rank, out, *args)`` in ``nproc`` fresh processes forming one
    torch.distributed group (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set as
    torchrun sets them). Processes still alive after ``deadline_s``, or ``grace_s`` after the
    first one failed, are killed (exit code None); without ``grace_s`` the others must end by
    themselves."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    start = time.monotonic()
    procs = [ctx.Process(target=_entry, args=(worker, rank, nproc, port, out, args))
             for rank in range(nproc)]
    for p in procs:
        p.start()
    first_failure = None
    while any(p.is_alive() for p in procs):
        now = time.monotonic()
        if first_failure is None and any(p.exitcode not in (None, 0) for p in procs):
            first_failure = now
        if now - start > deadline_s or (
                grace_s is not None and first_failure is not None
                and now - first_failure > grace_s):
            break
        time.sleep(0.05)
    codes = []
    for p in procs:
        if p.is_alive():  # hung: end it (only the processes this launch started)
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    errors = {}
    for rank in range(nproc):
        path = out / f"error-{rank}.json"
        if path.exists():
            errors[rank] = json.loads(path.read_text())
    return Outcome(codes, errors, time.monotonic() - start)


def _entry(worker: Callable, rank: int, world: int, port: int, out: Path, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    torch.set_num_threads(1)  # two processes on a shared 2-core machine
    try:
        worker(rank, out, *args)
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, then re-raised
        from twostage import io
        io.write_json(out / f"error-{rank}.json",
                      {"time": time.time(), "type": type(e).__name__,
                       "text": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        raise SystemExit(1) from None
    finally:
        from torch_impl.distributed import shutdown
        shutdown()


# --- what the workers save -----------------------------------------------------------------------

def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as one .npz file, atomically (nothing at ``path`` until it is complete)."""
    from twostage import io

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    io.write_with(path, write)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def state_arrays(backend, stage: str) -> dict[str, np.ndarray]:
    """Weights (``w:``) and Adagrad accumulators (``acc:``) of a stage by Keras name."""
    from torch_impl.models import KERAS_PREFIX
    from torch_impl.optim import get_accumulators
    model = backend.models[stage]
    out = {f"w:{k}": v for k, v in backend.get_weights(stage).items()}
    acc = get_accumulators(backend.optimizers[stage], model, KERAS_PREFIX[stage])
    out.update({f"acc:{k}": v for k, v in acc.items()})
    return out


def make_backend(config, spec, dtype: str = "float32"):
    """A TorchBackend (over the initialised group, if any) whose models and Adagrad state are
    ``dtype``: float64 lets a test compare trajectories at 1e-5 without float32's rounding,
    which 10 Adagrad steps at lr 0.1 amplify (see test_distributed.py)."""
    from torch_impl.backend import TorchBackend
    from torch_impl.optim import make_optimizer
    backend = TorchBackend(config, spec)
    if dtype == "float64":
        for stage, model in backend.models.items():
            model.double()
            backend.optimizers[stage] = make_optimizer(model, config)
        backend.broadcast_state()
    return backend


def first_epoch(backend, stage: str, dataset, config, group=None
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One epoch (absolute epoch 0) of ``stage`` through the fit path, no validation ->
    (the per-step losses [S], summed over the ranks with a group; the state after step 1)."""
    from torch_impl.train import epoch_order, ranking_parts, retrieval_parts, run_epoch, _plan
    make = retrieval_parts if stage == "retrieval" else ranking_parts
    parts, train = make(backend.models[stage], dataset, config, task=backend.tasks[stage],
                        optimizer=backend.optimizers[stage], validate=False, parallel=group)
    batches = epoch_order(_plan(dataset, config), config, 0, backend.device)
    losses, after_first = [], {}
    for piece in (batches[:1], batches[1:]):  # the one epoch loop, of one process or several
        losses.append(run_epoch(parts, train, piece).cpu().numpy()[0].astype(np.float32))
        after_first = after_first or state_arrays(backend, stage)
    return np.concatenate(losses), after_first


# --- workers -------------------------------------------------------------------------------------

def train_variants(rank: int, out: Path, dataset, variants: dict, evaluate: str | None,
                   fit_variant: str | None, uneven: tuple | None = None) -> None:
    """For each ``name: (stage, config, dtype)`` of ``variants``: a fresh backend (rank 0's
    weights), one epoch of its stage -> ``<name>-rank<r>.npz`` (step losses, weights and
    accumulators after the epoch, and after its first step as ``first:...``). ``evaluate``: the
    variant after which ``twostage.pipeline.evaluate`` runs over the group
    (-> ``eval-rank<r>.json``). ``fit_variant``: the variant whose backend runs
    ``fit_retrieval`` + ``fit_ranking`` (2 epochs each, validation every epoch) (->
    ``fit-rank<r>.json``: the histories; ``fit-rank<r>.npz``: the weights after them).
    ``uneven``: (variant name, raw batches) for :func:`train_steps_uneven`
    (-> ``uneven-rank<r>.npz``). Also :func:`probe_collectives` (-> ``collectives-rank<r>.npz``).
    """
    from twostage import io
    from twostage.pipeline import evaluate as evaluate_pipeline
    from torch_impl.distributed import init_from_env

    group = None
    for name, (stage, config, dtype) in variants.items():
        group = group or init_from_env(config)
        backend = make_backend(config, dataset.spec, dtype)
        assert backend.group is backend._torch_group is not None and backend.group.size == 2
        losses, after_first = first_epoch(backend, stage, dataset, config,
                                          backend._torch_group)
        arrays = {"losses": losses, **state_arrays(backend, stage),
                  **{f"first:{k}": v for k, v in after_first.items()}}
        if name == evaluate:
            report = evaluate_pipeline(backend, dataset, config)
            io.write_json(out / f"eval-rank{rank}.json", report)
            arrays.update({f"rank:{k}": v for k, v in backend.get_weights("ranking").items()})
        save_arrays(out / f"{name}-rank{rank}.npz", arrays)
    if fit_variant is not None:
        _, config, dtype = variants[fit_variant]
        backend = make_backend(config, dataset.spec, dtype)
        histories = {"retrieval": backend.fit_retrieval(dataset, epochs=2).to_dict(),
                     "ranking": backend.fit_ranking(dataset, epochs=2).to_dict()}
        for h in histories.values():
            h.pop("epoch_seconds")
        io.write_json(out / f"fit-rank{rank}.json", histories)
        save_arrays(out / f"fit-rank{rank}.npz",
                    {f"{stage}:{k}": v for stage in ("retrieval", "ranking")
                     for k, v in backend.get_weights(stage).items()})
    if uneven is not None:
        name, batches = uneven
        _, config, dtype = variants[name]
        backend = make_backend(config, dataset.spec, dtype)
        save_arrays(out / f"uneven-rank{rank}.npz", train_steps_uneven(backend, batches))
    save_arrays(out / f"collectives-rank{rank}.npz", probe_collectives(group))


def probe_collectives(group) -> dict[str, np.ndarray]:
    """The group's collectives on uneven and empty pieces (rank 0 / rank 1 contributions in the
    comments; test_distributed.py knows the answers)."""
    import torch
    r = group.rank
    out = {
        "sum_int": group.all_sum(np.array([r + 1, 10], dtype=np.int64)),      # [1,10]+[2,10]
        "sum_bool": group.all_sum(np.array([True, r == 1])),                   # counts
        "gather_empty": group.all_gather(np.arange(3 * r, dtype=np.float32)),  # 0 + 3 rows
        "gather_2d": group.all_gather(np.full((2 - r, 2), r, dtype=np.int64)),  # 2 + 1 rows
        "sizes": np.array(group.all_gather_sizes(5 + r)),
    }
    sizes = (2, 1)
    x = torch.full((sizes[r], 2), float(r + 1), dtype=torch.float64, requires_grad=True)
    y = group.gather_with_grad(x, sizes)
    weights = torch.arange(6, dtype=torch.float64).reshape(3, 2) * (r + 1)
    (y * weights).sum().backward()
    out["gathered"], out["grad"] = y.detach().numpy(), x.grad.numpy()
    return out


def train_steps_uneven(backend, batches: list[dict]) -> dict[str, np.ndarray]:
    """``TorchBackend.train_steps`` on raw global batches (sizes that split unevenly, or leave a
    rank nothing) -> the step losses and the retrieval state."""
    losses = backend.train_steps("retrieval", batches)
    return {"losses": np.array(losses), **state_arrays(backend, "retrieval")}


def fail_on_rank_one(rank: int, out: Path, dataset, config, how: str) -> None:
    """Train retrieval over the group; rank 1 raises (``how="raise"``) or stalls
    (``how="stall"``) in its 4th step, before the gradient all_reduce. A rank that finishes
    writes ``done-rank<r>.npz`` (none should)."""
    import torch_impl.distributed as distributed
    from twostage import io
    from torch_impl.backend import TorchBackend

    distributed.init_from_env(config)
    backend = TorchBackend(config, dataset.spec)
    original = distributed.TorchGroup.sum_gradients
    calls = {"n": 0}

    def sum_gradients(self, params):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 4:
            if how == "raise":
                raise RuntimeError("injected failure on rank 1 before the all_reduce of step 4")
            io.write_json(out / "stalled.json", {"time": time.time()})
            time.sleep(120)
        return original(self, params)

    distributed.TorchGroup.sum_gradients = sum_gradients
    losses, _ = first_epoch(backend, "retrieval", dataset, config, backend._torch_group)
    save_arrays(out / f"done-rank{rank}.npz", {"losses": losses})
