"""Independent-training parity: how far apart do the backends land, next to seed-to-seed noise?

    python -m benchmarks.seeds --seeds 3 [--retrieval-epochs 100] [--ranking-epochs 100]

Trains both backends from independent initialisations for each seed (the split stays the same;
the seed changes initialisation and batch order), then prints per metric the mean and standard
deviation per backend, the difference of the means, and whether that difference lies within the
seed-to-seed spread (|diff| <= 2 * pooled std). Writes ``seeds.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from twostage import env
from twostage.config import BACKENDS, Config

METRICS = ("retrieval.top_k_accuracy.10", "retrieval.top_k_accuracy.100",
           "ranking.binary_accuracy", "ranking.auc",
           "two_stage.ndcg@10_retrieval", "two_stage.ndcg@10_reranked")


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(per_backend: dict[str, list[dict]]) -> dict:
    out = {}
    for metric in METRICS:
        row = {}
        for name, flats in per_backend.items():
            mean, std = spread([f[metric] for f in flats])
            row[name] = {"mean": mean, "std": std}
        if len(row) == 2:
            a, b = row["torch"], row["tfrs"]
            pooled = ((a["std"] ** 2 + b["std"] ** 2) / 2) ** 0.5
            diff = a["mean"] - b["mean"]
            row["diff"] = diff
            row["within_noise"] = abs(diff) <= 2 * pooled if pooled > 0 else diff == 0
        out[metric] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    p.add_argument("--data-dir")
    p.add_argument("--retrieval-epochs", type=int, default=100)
    p.add_argument("--ranking-epochs", type=int, default=100)
    p.add_argument("--out", default="runs/seeds")
    args = p.parse_args(argv)
    env.setup_process()
    if args.seeds < 2:
        p.error("--seeds must be >= 2 to measure a spread")
    from twostage.dataset import load_dataset
    from twostage.pipeline import flatten, run_backend

    base = Config.of(data_dir=args.data_dir, retrieval_epochs=args.retrieval_epochs,
                  ranking_epochs=args.ranking_epochs, quiet=True)
    dataset = load_dataset(base)
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(args.seeds):
        # The split is fixed by base.seed (dataset); each run re-seeds init and batch order.
        config = base.replace(seed=base.seed + 1000 * (i + 1))
        for name in names:
            print(f"seed {config.seed}: {name}", file=sys.stderr)
            _, report, _ = run_backend(name, dataset, config)
            runs[name].append(flatten(report))
    summary = summarise(runs)
    for metric, row in summary.items():
        cells = "  ".join(f"{n} {row[n]['mean']:.5f}±{row[n]['std']:.5f}" for n in names)
        extra = (f"  diff {row['diff']:+.5f} ({'within' if row['within_noise'] else 'OUTSIDE'} "
                 "seed noise)") if "diff" in row else ""
        print(f"{metric:<32} {cells}{extra}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
