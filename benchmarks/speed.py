"""Side-by-side speed of the torch and TFRS paths, in one process, medians of repetitions.

    python -m benchmarks.speed --backend both [--epochs 5] [--repeats 5] [--out DIR]
    python -m benchmarks.speed --contention [--epochs 3]

Prints median seconds per training epoch of each stage (first epoch dropped as warm-up),
full-corpus evaluation time, index build time and query throughput at k=10 and k=100, and the
torch/TFRS ratios; writes ``speed.json`` with the machine facts.

Then, on the CPU, each stage's torch step beside its measured floor on this machine
(:mod:`benchmarks.floor`: the step's matrix products, its in-batch softmax and its embedding
gathers and updates, each timed alone at the step's sizes) and the ratio step / floor, with
the TFRS step (its epoch over the same number of steps) and the torch/TFRS ratio per stage;
``step_floor`` in ``speed.json``. ``--no-floor`` skips it.

``--contention``: how each backend's training epochs degrade beside one competing CPU-bound
process (a busy loop, as another user's job would be). Torch is measured with the project's
default (``twostage.env.ThreadGovernor``: threads sized per epoch to the cores other processes
leave free) and with fixed threads, spinning (libgomp's default) or passive
(``OMP_WAIT_POLICY=PASSIVE``). Each measurement runs in a fresh process, because OpenMP reads its
settings once at start-up. Writes ``contention.json`` and prints alone / contended seconds and
the slowdown ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.floor import median_seconds
from twostage import env, io
from twostage.config import BACKENDS, Config


def epoch_times(name: str, dataset, config: Config):
    """Train both stages -> (backend, median seconds per retrieval / ranking epoch, the first
    epoch dropped as warm-up: tracing, allocator)."""
    from twostage.pipeline import make_backend

    backend = make_backend(name, config, dataset)
    r_hist = backend.fit_retrieval(dataset)
    k_hist = backend.fit_ranking(dataset)
    return (backend, statistics.median(r_hist.epoch_seconds[1:] or r_hist.epoch_seconds),
            statistics.median(k_hist.epoch_seconds[1:] or k_hist.epoch_seconds))


def measure(name: str, dataset, config: Config, repeats: int) -> tuple[dict, object]:
    """(figures, the trained backend) of one backend; training epochs come from its own
    per-epoch clock."""
    from twostage.pipeline import evaluate_retrieval

    backend, retrieval_s, ranking_s = epoch_times(name, dataset, config)
    backend.build_index(dataset.corpus_titles)
    test = dataset.split.test
    users, stamps = dataset.user_id[test], dataset.timestamp[test]
    out = {
        "retrieval_epoch_s": retrieval_s,
        "ranking_epoch_s": ranking_s,
        "evaluation_s": median_seconds(lambda: evaluate_retrieval(backend, dataset, config),
                                     repeats),
        "index_build_s": median_seconds(lambda: backend.build_index(dataset.corpus_titles),
                                      repeats),
    }
    for k in (10, 100):
        secs = median_seconds(lambda: backend.retrieve(users, stamps, k), repeats)
        out[f"queries_per_s_k{k}"] = len(test) / secs
    return out, backend


def step_floors(backend, dataset, torch_results: dict, repeats: int) -> dict:
    """{stage: benchmarks.floor.stage_floor of the torch ``backend``} with ``epoch_step_s``
    (the same backend's median epoch of ``torch_results`` over its steps) and ``step_over_epoch``,
    the check that the clocked step is the step the epochs ran (near 1; far from it, something
    else shared the machine or the process while one of them ran).

    Measured right after the torch epochs, before TensorFlow is loaded (clocked after the TFRS
    epochs instead, the step was 1.8x the epoch's: docs/performance.md).
    """
    from benchmarks.floor import stage_floor

    out = {}
    for stage in ("retrieval", "ranking"):
        row = stage_floor(backend, dataset, stage, repeats=max(3, repeats))
        row["epoch_step_s"] = torch_results[f"{stage}_epoch_s"] / row["steps_per_epoch"]
        row["step_over_epoch"] = row["step_s"] / row["epoch_step_s"]
        out[stage] = row
    return out


def add_tfrs_steps(floors: dict, results: dict) -> None:
    """Each stage's TFRS step (its median epoch over as many steps) and ``torch_over_tfrs``
    (the epochs' ratio) beside the torch floors, in place."""
    for stage, row in floors.items():
        row["tfrs_step_s"] = results["tfrs"][f"{stage}_epoch_s"] / row["steps_per_epoch"]
        row["torch_over_tfrs"] = (results["torch"][f"{stage}_epoch_s"]
                                  / results["tfrs"][f"{stage}_epoch_s"])


def print_floors(floors: dict) -> None:
    """The step-floor table: milliseconds per step and the ratios."""
    tfrs = all("tfrs_step_s" in row for row in floors.values())
    print("\ntorch step vs its floor on this machine (ms per step; floor = matmul + softmax + "
          "gather/update, each timed alone at the step's sizes)")
    print(f"{'stage':<10}{'step':>8}{'epoch/n':>8}{'floor':>8}{'matmul':>8}{'softmax':>8}"
          f"{'gath/upd':>9}{'step/floor':>11}"
          + (f"{'tfrs step':>10}{'torch/tfrs':>11}" if tfrs else ""))
    for stage, r in floors.items():
        ms = [1e3 * r[k] for k in ("step_s", "epoch_step_s", "floor_s", "matmul", "softmax",
                                   "gather_update")]
        print(f"{stage:<10}" + "".join(f"{v:>8.2f}" for v in ms[:-1]) + f"{ms[-1]:>9.2f}"
              + f"{r['ratio']:>10.2f}x" + (f"{1e3 * r['tfrs_step_s']:>10.2f}"
                                            f"{r['torch_over_tfrs']:>10.2f}x" if tfrs else ""))
    off = [s for s, r in floors.items() if not 0.8 <= r["step_over_epoch"] <= 1.25]
    if off:
        print(f"warning: the clocked step of {', '.join(off)} is not its epoch's step "
              "(step / (epoch / steps) outside 0.8-1.25): the machine was shared; rerun alone",
              file=sys.stderr)


def machine() -> dict:
    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        import torch
        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return facts


# --- contention ---------------------------------------------------------------------------------
POLICIES = {"adaptive threads (default)": {},
            "fixed threads, spinning": {"TWOSTAGE_ADAPTIVE_THREADS": "0"},
            "fixed threads, passive": {"TWOSTAGE_ADAPTIVE_THREADS": "0",
                                       "OMP_WAIT_POLICY": "PASSIVE"}}
_POLICY_VARIABLES = ("TWOSTAGE_ADAPTIVE_THREADS", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")
BUSY_LOOP = "while True: pass"


def _child(args: list[str], extra_env: dict[str, str], competitor: bool) -> dict:
    """Epoch times measured by a fresh ``--child`` process, alone or beside a busy loop."""
    import subprocess
    environment = {k: v for k, v in os.environ.items() if k not in _POLICY_VARIABLES}
    environment.update(extra_env)
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if competitor else None
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.speed", *args], env=environment,
                              cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def contention(args) -> dict:
    """Alone vs beside one busy process, per backend and (torch) wait policy."""
    common = ["--epochs", str(args.epochs)] + (["--data-dir", args.data_dir] if args.data_dir
                                                else [])
    rows = []
    for name in (BACKENDS if args.backend == "both" else (args.backend,)):
        policies = POLICIES if name == "torch" else {"tf default": {}}
        for policy, extra in policies.items():
            alone = _child(["--child", name, *common], extra, competitor=False)
            busy = _child(["--child", name, *common], extra, competitor=True)
            rows.append({"backend": name, "policy": policy, "alone": alone, "contended": busy,
                         "slowdown": {k: busy[k] / alone[k] for k in alone}})
            print(f"{name:<6} {policy:<24} " + "  ".join(
                f"{k}: {alone[k]:.3f} s alone, {busy[k]:.3f} s contended "
                f"({busy[k] / alone[k]:.1f}x)" for k in alone), flush=True)
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "epochs": args.epochs, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__)
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per stage (>= 2)")
    p.add_argument("--repeats", type=int, default=5, help="repetitions of timed evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=Config().train.batch_size,
                   help="training batch size (default: the tutorial's)")
    p.add_argument("--out", default="runs/speed")
    p.add_argument("--name", default="speed.json",
                   help="file name of the report in --out (default speed.json)")
    p.add_argument("--contention", action="store_true",
                   help="training epochs alone and beside a competing process, in fresh "
                   "processes per backend and OpenMP wait policy")
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the torch step-vs-floor table (CPU only)")
    p.add_argument("--note", default="", help="stored in speed.json (e.g. 'machine shared')")
    args = p.parse_args(argv)
    env.setup_process()
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch is dropped as warm-up)")
    if args.contention:
        io.write_json(Path(args.out) / "contention.json", contention(args))
        return 0
    from twostage.dataset import load_dataset

    config = Config.of(data_dir=args.data_dir, retrieval_epochs=args.epochs,
                       ranking_epochs=args.epochs, validation_freq=10 ** 6, device=args.device,
                       batch_size=args.batch_size, quiet=True)
    dataset = load_dataset(config, progress=False)
    if args.child:  # one measurement for --contention, as one JSON line
        _, retrieval_s, ranking_s = epoch_times(args.child, dataset, config)
        print(json.dumps({"retrieval_epoch_s": retrieval_s, "ranking_epoch_s": ranking_s}))
        return 0
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    results, floors = {}, None
    for name in names:   # torch first: its floors are measured before TensorFlow loads
        print(f"measuring {name} ...", file=sys.stderr)
        results[name], backend = measure(name, dataset, config, args.repeats)
        if name == "torch" and args.floor and args.device == "cpu":
            print("measuring the torch step floors ...", file=sys.stderr)
            floors = step_floors(backend, dataset, results["torch"], args.repeats)
        del backend
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "epochs": args.epochs, "repeats": args.repeats, "batch_size": args.batch_size,
              "note": args.note,
              "load_average": os.getloadavg()[0], "results": results}
    if len(names) == 2:
        t, f = results["torch"], results["tfrs"]
        report["speedup_tfrs_over_torch"] = {k: (f[k] / t[k] if "per_s" not in k else t[k] / f[k])
                                             for k in t}
    rows = sorted({k for r in results.values() for k in r})
    print(f"{'figure':<22}" + "".join(f"{n:>14}" for n in names)
          + (f"{'speed-up':>12}" if len(names) == 2 else ""))
    for key in rows:
        line = f"{key:<22}" + "".join(f"{results[n][key]:>14.4f}" for n in names)
        if len(names) == 2:
            line += f"{report['speedup_tfrs_over_torch'][key]:>11.1f}x"
        print(line)
    if floors is not None:
        if "tfrs" in results:
            add_tfrs_steps(floors, results)
        report["step_floor"] = floors
        print_floors(floors)
    print(f"wrote {io.write_json(Path(args.out) / args.name, report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
