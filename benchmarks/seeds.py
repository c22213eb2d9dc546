r"""Training parity in distribution: do the torch and TFRS backends land on the same metrics?

    python -m benchmarks.seeds --seeds 10 --retrieval-epochs 20 --ranking-epochs 20  # paired
    python -m benchmarks.seeds --mode independent --seeds 20 \
        --retrieval-epochs 20 --ranking-epochs 20
    python -m benchmarks.seeds --backend torch --seeds 3     # one backend's spread
    python -m benchmarks.seeds ... --resume                  # continue <out>/seeds.json

Defaults: 3 seeds, 100 + 100 epochs, ``--out runs/seeds``.

Run i = 1..n uses seed 42 + 1000 i (the split stays that of seed 42; the seed changes the
initialisation and the batch order, which both backends share: ``shared_batches``). Every
backend trains both stages and is scored by the same function, ``twostage.pipeline.evaluate``:
top-k accuracy over the whole corpus (k = 1, 5, 10, 50, 100), ranking binary accuracy, AUC and
log loss, two-stage nDCG@10 in retrieval order and re-ranked.

``--mode paired`` (the default with both backends): the TFRS backend starts from the torch
backend's initial weights of both stages (``twostage.export.torch_to_tfrs`` before any
training), so each seed gives one torch-minus-TFRS difference per metric. Tests per metric:
paired t, sign-flip permutation (exact up to 20 seeds, seeded Monte Carlo beyond), exact sign
test; effect size d_z. ``--mode independent``: each backend draws its own initial weights from
the seed. Tests: Welch's t and a two-sample permutation test; effect size Cohen's d.
``--backend torch|tfrs`` trains one backend (independent mode, the default then) and prints its
mean and spread without tests.

Each test is Holm-corrected across the metrics. The table prints per metric both means, the
difference (torch - TFRS), the effect size, raw and Holm p-values, the smallest difference the
seeds could detect (two-sided alpha 0.05, power 0.8, from the paired t / Welch test) and the
verdict (``benchmarks.stats.verdict``: "DIFFERENT" when any test's Holm p < 0.05).
``<out>/seeds.json`` is rewritten atomically after every seed (settings, per-seed metrics and
initial-weight digests, the summary so far); ``--resume`` continues it when its settings equal
this command's (more ``--seeds`` than it holds extends it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from twostage import env
from twostage.config import BACKENDS, Config

from . import stats

MODES = ("paired", "independent")
SEED_STRIDE = 1000
# The flattened report (``twostage.pipeline.flatten``) names of what is compared; top-k uses
# config.eval.top_ks, nDCG config.eval.ndcg_k (defaults 1, 5, 10, 50, 100 and 10).
RANKING_METRICS = ("ranking.binary_accuracy", "ranking.auc", "ranking.log_loss")


def metric_names(config: Config) -> tuple[str, ...]:
    k = config.eval.ndcg_k
    return (*(f"retrieval.top_k_accuracy.{t}" for t in config.eval.top_ks), *RANKING_METRICS,
            f"two_stage.ndcg@{k}_retrieval", f"two_stage.ndcg@{k}_reranked")


def seed_of(base: Config, i: int) -> int:
    """The seed of run i (0-based)."""
    return base.seed + SEED_STRIDE * (i + 1)


def weights_digest(backend) -> str:
    """sha256 of every weight of both stages (names, shapes, float32 values): equal digests mean
    equal initial weights."""
    h = hashlib.sha256()
    for stage in ("retrieval", "ranking"):
        for name, value in sorted(backend.get_weights(stage).items()):
            value = np.ascontiguousarray(value, dtype=np.float32)
            h.update(f"{stage}/{name}{value.shape}".encode())
            h.update(value.tobytes())
    return h.hexdigest()


# --- one seed ----------------------------------------------------------------------------------
def build_backends(dataset, config: Config, mode: str, names: list[str]) -> dict:
    """Untrained backends of one seed: paired, the TFRS one a copy of the torch one's initial
    weights; independent, each its own initialisation."""
    from twostage.pipeline import make_backend
    if mode == "paired":
        from twostage.export import torch_to_tfrs
        torch_backend = make_backend("torch", config, dataset)
        return {"torch": torch_backend, "tfrs": torch_to_tfrs(torch_backend)}
    return {name: make_backend(name, config, dataset) for name in names}


def train_and_evaluate(backend, dataset, metrics: tuple[str, ...]) -> dict:
    """Fit both stages, evaluate with ``twostage.pipeline.evaluate`` (the backend's own config:
    ``torch_to_tfrs`` pins the TFRS one to what TFRS supports) -> {"metrics", "fit_s"}."""
    from twostage.pipeline import evaluate, flatten
    start = time.perf_counter()
    backend.fit_retrieval(dataset)
    backend.fit_ranking(dataset)
    fit_s = time.perf_counter() - start
    flat = flatten(evaluate(backend, dataset, backend.config))
    missing = [m for m in metrics if m not in flat]
    if missing:
        raise KeyError(f"the evaluation report has no {missing}; twostage.pipeline.evaluate "
                       "changed its names: update benchmarks/seeds.py metric_names")
    return {"metrics": {m: flat[m] for m in metrics}, "fit_s": fit_s}


def run_seed(dataset, base: Config, i: int, mode: str, names: list[str],
             metrics: tuple[str, ...]) -> dict:
    """Train and evaluate every backend for seed i -> the per-seed record of seeds.json."""
    config = base.replace(seed=seed_of(base, i))
    backends = build_backends(dataset, config, mode, names)
    record = {"seed": config.seed, "initial_weights": {}, "fit_s": {}, "metrics": {}}
    for name, backend in backends.items():
        record["initial_weights"][name] = weights_digest(backend)
    for name, backend in backends.items():
        print(f"  seed {config.seed}: training {name}", file=sys.stderr, flush=True)
        result = train_and_evaluate(backend, dataset, metrics)
        record["metrics"][name], record["fit_s"][name] = result["metrics"], result["fit_s"]
    if mode == "paired" and len(set(record["initial_weights"].values())) != 1:
        raise RuntimeError(f"seed {config.seed}: the paired backends did not start from the "
                           "same weights (twostage.export.torch_to_tfrs); the comparison would "
                           "not be paired")
    return record


# --- summary -----------------------------------------------------------------------------------
def summarise(per_seed: list[dict], names: list[str], mode: str,
              metrics: tuple[str, ...]) -> dict:
    """Per metric: each backend's values, mean and std; with two backends and >= 2 seeds the
    tests of the mode (``stats.compare``), Holm-corrected across metrics, and the verdict."""
    out: dict[str, dict] = {}
    for metric in metrics:
        row: dict = {}
        for name in names:
            values = [r["metrics"][name][metric] for r in per_seed]
            row[name] = {"values": values, "mean": float(np.mean(values)),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        out[metric] = row
    if len(names) < 2 or len(per_seed) < 2:
        return out
    compared = {m: stats.compare(out[m]["torch"]["values"], out[m]["tfrs"]["values"],
                                 paired=mode == "paired") for m in metrics}
    for metric, row in stats.holm_across(compared).items():
        out[metric].update(row, tests={t: r.to_dict() for t, r in row["tests"].items()},
                           effect_size=_json_number(row["effect_size"]),
                           mde=_json_number(row["mde"]))
    return out


def _json_number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _p(x: float) -> str:
    return f"{x:.3g}"


def print_table(summary: dict, names: list[str], mode: str, n: int) -> None:
    """One line of numbers per metric, the verdict under it."""
    tests = stats.PAIRED_TESTS if mode == "paired" else stats.INDEPENDENT_TESTS
    two = len(names) == 2 and n >= 2
    head = f"{'metric':<32}" + "".join(f"{name + ' mean±std':>22}" for name in names)
    if two:
        head += f"{'diff':>10}{'effect':>8}" + "".join(f"{t + ' p/Holm':>20}" for t in tests)
        head += f"{'MDE':>9}"
    print(f"{mode} mode, {n} seeds" + (", diff = torch - tfrs" if two else ""))
    print(head)
    for metric, row in summary.items():
        line = f"{metric:<32}" + "".join(
            f"{row[name]['mean']:>12.5f}±{row[name]['std']:<9.5f}" for name in names)
        if two:
            effect = row["effect_size"]
            line += f"{row['diff']:>+10.5f}" + (f"{effect:>8.2f}" if effect is not None
                                                else f"{'inf':>8}")
            line += "".join(f"{_p(row['tests'][t]['p']) + '/' + _p(row['p_holm'][t]):>20}"
                            for t in tests)
            line += f"{row['mde']:>9.2g}" if row["mde"] is not None else f"{'-':>9}"
            line += f"\n{'':<4}-> {row['verdict']}"
        print(line)


def markdown(summary: dict, names: list[str], mode: str, n: int) -> str:
    """docs/results.md's table: means ± std per backend, the difference, the tests' Holm-corrected
    p-values, the smallest detectable difference and the verdict (``stats.verdict``'s words)."""
    tests = stats.PAIRED_TESTS if mode == "paired" else stats.INDEPENDENT_TESTS
    two = len(names) == 2 and n >= 2
    head = ["metric", *(f"{name} (mean ± std, {n} seeds)" for name in names)]
    if two:
        head += ["torch - tfrs", *(f"{t} p (Holm)" for t in tests), "smallest detectable",
                 "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, row in summary.items():
        cells = [metric, *(f"{row[name]['mean']:.5f} ± {row[name]['std']:.5f}" for name in names)]
        if two:
            cells += [f"{row['diff']:+.5f}",
                      *(f"{_p(row['tests'][t]['p'])} ({_p(row['p_holm'][t])})" for t in tests),
                      f"{row['mde']:.2g}" if row["mde"] is not None else "-",
                      "DIFFERENT" if row["verdict"].startswith("DIFFERENT") else "none detected"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------
def settings_of(base: Config, mode: str, names: list[str]) -> dict:
    """What must match for --resume to continue a seeds.json (the number of seeds may grow)."""
    return {"mode": mode, "backends": names, "seed_stride": SEED_STRIDE,
            "config": base.to_dict()}


def load_previous(path: Path, settings: dict) -> list[dict]:
    """The finished seeds of ``path`` when its settings equal ``settings`` (else a ValueError
    naming what differs)."""
    previous = json.loads(path.read_text())
    old = previous.get("settings", {})
    if old != json.loads(json.dumps(settings)):
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ValueError(f"{path} was written with other settings ({', '.join(differ)} "
                         "differ); rerun with that file's settings, or drop --resume / choose "
                         "another --out to start afresh")
    return previous.get("per_seed", [])


def run(dataset, base: Config, seeds: int, mode: str, names: list[str], out: Path,
        resume: bool = False) -> dict:
    """Train ``seeds`` seeds (continuing ``out/seeds.json`` with ``resume``), rewriting the JSON
    after each; returns its final content."""
    from twostage import io
    if mode == "paired" and not base.train.shared_batches:
        raise ValueError("paired mode feeds both backends the same batches: keep "
                         "config.train.shared_batches=True (no --no-shared-batches)")
    metrics = metric_names(base)
    settings = settings_of(base, mode, names)
    path = out / "seeds.json"
    per_seed = load_previous(path, settings)[:seeds] if resume and path.exists() else []
    if per_seed:
        print(f"resuming {path}: {len(per_seed)} of {seeds} seeds done", file=sys.stderr)
    elif path.exists():
        print(f"{path} will be replaced (pass --resume to continue it)", file=sys.stderr)
    started, first = time.perf_counter(), len(per_seed)
    for i in range(first, seeds):
        print(f"seed {i + 1}/{seeds} ({seed_of(base, i)}){_eta(started, i - first, seeds - i)}",
              file=sys.stderr, flush=True)
        per_seed.append(run_seed(dataset, base, i, mode, names, metrics))
        io.write_json(path, report_of(settings, per_seed, seeds, names, mode, metrics))
    return report_of(settings, per_seed, seeds, names, mode, metrics)


def _eta(started: float, done: int, left: int) -> str:
    """', 120 s elapsed, about 360 s left' from the seeds this process has finished."""
    elapsed = time.perf_counter() - started
    if not done:
        return ""
    return f", {elapsed:.0f} s elapsed, about {elapsed / done * left:.0f} s left"


def report_of(settings: dict, per_seed: list[dict], seeds: int, names: list[str], mode: str,
              metrics: tuple[str, ...]) -> dict:
    """The content of seeds.json (``complete``: all ``seeds`` seeds are in)."""
    return {"settings": settings, "complete": len(per_seed) == seeds, "per_seed": per_seed,
            "summary": summarise(per_seed, names, mode, metrics)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES,
                   help="paired: TFRS starts from torch's initial weights (the default with "
                        "both backends); independent: each backend its own initialisation "
                        "(the default with one)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (>= 2)")
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both",
                   help="one backend: its spread only (independent mode)")
    p.add_argument("--data-dir", help="MovieLens folder (else the usual lookup)")
    p.add_argument("--retrieval-epochs", type=int, default=100)
    p.add_argument("--ranking-epochs", type=int, default=100)
    p.add_argument("--out", default="runs/seeds", help="folder of seeds.json")
    p.add_argument("--resume", action="store_true",
                   help="continue <out>/seeds.json when it has the same settings")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds must be >= 2 to measure a spread")
    args.mode = args.mode or ("paired" if args.backend == "both" else "independent")
    if args.mode == "paired" and args.backend != "both":
        p.error("--mode paired compares both backends; use --mode independent with --backend "
                f"{args.backend}")
    env.setup_process()
    from twostage.dataset import load_dataset
    from twostage.pipeline import check_trainable

    base = Config.of(data_dir=args.data_dir, retrieval_epochs=args.retrieval_epochs,
                     ranking_epochs=args.ranking_epochs, quiet=True)
    dataset = load_dataset(base)
    check_trainable(dataset, base)
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    report = run(dataset, base, args.seeds, args.mode, names, Path(args.out), args.resume)
    print_table(report["summary"], names, args.mode, len(report["per_seed"]))
    from twostage import io
    io.write_text(Path(args.out) / "seeds.md", markdown(report["summary"], names, args.mode,
                                                        len(report["per_seed"])) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
