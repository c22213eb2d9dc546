"""How training throughput scales with the number of processes (torch.distributed) or replicas
(TFRS MirroredStrategy), in one run.

    python -m benchmarks.scaling --nproc 1 2 [--backend both] [--epochs 3] [--cross-process-negatives replica]

For each process count: examples per second of each stage (median of the epochs after the
first), the time per step, and for torch its split into communication (the gradient all-reduce
and, with --cross-process-negatives global, the candidate all-gather, timed inside torch_impl.distributed) and
the rest (compute). Each configuration runs in fresh processes (torch: the workers of torch's own
launcher; TFRS: one process whose logical CPU devices are set at start-up). Writes
``scaling.json`` and prints the table. On a 2-core machine two processes cannot be faster than
one: the benchmark shows the overhead, to be run on bigger machines.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from twostage import env
from twostage.config import BACKENDS, NEGATIVES, Config

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> dict:
    """Train both stages in this process (one rank of a torch launch, or a TFRS process with
    ``args.nproc`` replicas) -> figures, from rank 0 only."""
    from twostage.dataset import load_dataset
    from twostage.pipeline import make_backend

    config = Config.of(data_dir=args.data_dir, retrieval_epochs=args.epochs,
                       ranking_epochs=args.epochs, validation_freq=10 ** 6, quiet=True,
                       nproc=args.nproc[0], cross_process_negatives=args.negatives,
                       batch_size=args.batch_size)
    group = None
    if args.worker == "torch" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from torch_impl.distributed import init_from_env
        group = init_from_env(config)
    dataset = load_dataset(config, progress=False)
    backend = make_backend(args.worker, config, dataset)
    out = {}
    for stage, fit in (("retrieval", backend.fit_retrieval), ("ranking", backend.fit_ranking)):
        comm_before = getattr(group, "comm_seconds", 0.0)
        history = fit(dataset)
        seconds = history.epoch_seconds[1:] or history.epoch_seconds
        steps = -(-len(dataset.split.train) // config.train.batch_size)
        comm = (getattr(group, "comm_seconds", 0.0) - comm_before) / max(len(history.loss), 1)
        epoch = statistics.median(seconds)
        out[stage] = {"examples_per_s": len(dataset.split.train) / epoch,
                      "step_s": epoch / steps, "communication_s_per_step": comm / steps,
                      "compute_s_per_step": (epoch - comm) / steps}
    if group is not None:
        from torch_impl.distributed import shutdown
        rank = group.rank
        shutdown()
        if rank != 0:
            return {}
    return out


def _measure(backend: str, nproc: int, args) -> dict:
    common = ["-m", "benchmarks.scaling", "--worker", backend, "--nproc", str(nproc),
              "--epochs", str(args.epochs), "--cross-process-negatives", args.negatives,
              "--batch-size", str(args.batch_size)]
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    if backend == "torch" and nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(nproc), "-m", "--", *common[1:]]
    else:
        command = [sys.executable, *common]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{backend} with {nproc} process(es) failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2],
                   help="process (torch) / replica (TFRS) counts to compare")
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    p.add_argument("--data-dir", help="MovieLens folder (else the usual lookup)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per stage (>= 2)")
    p.add_argument("--batch-size", type=int, default=2048, help="the global batch")
    p.add_argument("--cross-process-negatives", "--negatives", dest="negatives",
                   choices=NEGATIVES, default="replica",
                   help="torch retrieval negatives (TFRS: replica only)")
    p.add_argument("--out", default="runs/scaling", help="where scaling.json goes")
    p.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    env.setup_process()
    if args.worker:
        figures = worker(args)
        if figures:
            print(json.dumps(figures), flush=True)
        return 0
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is dropped as warm-up)")
    rows = []
    for backend in (BACKENDS if args.backend == "both" else (args.backend,)):
        for n in args.nproc:
            print(f"measuring {backend} with {n} process(es)/replica(s) ...", file=sys.stderr)
            rows.append({"backend": backend, "nproc": n, **_measure(backend, n, args)})
    print(f"{'backend':<7}{'n':>3} {'stage':<10}{'examples/s':>12}{'step ms':>10}"
          f"{'compute ms':>12}{'comm ms':>10}")
    for row in rows:
        for stage in ("retrieval", "ranking"):
            f = row[stage]
            print(f"{row['backend']:<7}{row['nproc']:>3} {stage:<10}{f['examples_per_s']:>12.0f}"
                  f"{1e3 * f['step_s']:>10.1f}{1e3 * f['compute_s_per_step']:>12.1f}"
                  f"{1e3 * f['communication_s_per_step']:>10.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
         "negatives": args.negatives, "epochs": args.epochs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
