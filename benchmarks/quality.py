"""Recipes against baselines: does a two-tower recipe beat random, most-popular and EASE?

    python -m benchmarks.quality --dataset 100k --seeds 3 [--recipes seed,logq,...] \
        [--backend torch] [--data-dir DIR] [--out runs/quality] [--resume]

For every recipe of :data:`RECIPES` (config changes on top of the seed's protocol) and seed
i = 0..n-1 (seed 42 + 1000 i: initialisation and batch order; the split stays seed 42's), trains
one backend and scores it with ``twostage.pipeline.evaluate``: top-k accuracy over the whole
corpus under the seed's protocol and under ``exclude_seen`` (titles the user rated in training
removed), and the two-stage nDCG@10 after re-ranking, under both. The baselines
(``twostage.baselines``: random, most-popular, EASE with its L2 weight chosen on a validation
slice of the training split) are scored once by the same code: they depend on the split only.

Prints and writes ``quality.md`` (mean ± std over seeds per recipe, then the baselines; the
docs/results.md's table), ``quality.json`` (every run's figures, rewritten atomically after each run;
``--resume`` continues it) and ``quality.png`` (bars with error bars), and checks issue 15's
targets for the recipe named ``best`` (``--preset best``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from twostage import env
from twostage.config import BACKENDS, DATASETS, PRESETS, Config

SEED_STRIDE = 1000
_20 = {"retrieval_epochs": 20, "ranking_epochs": 20}
# name -> (config changes, what it is). Epochs are part of a recipe: the seed's 100 + 100 over-
# fits the retrieval stage, so the recipes train 20 retrieval epochs (measured best for logQ).
RECIPES: dict[str, tuple[dict, str]] = {
    "seed": ({}, "the article: in-batch softmax, 100 + 100 epochs"),
    "seed-20": (_20, "the seed, 20 + 20 epochs"),
    "logq": ({**_20, "use_sampling_probability": True},
             "logQ correction (in-batch title frequencies)"),
    "cosine": ({**_20, "use_sampling_probability": True, "normalize": True, "temperature": 0.1,
                "learn_temperature": True}, "logQ + L2-normalised towers, learned temperature"),
    "mixed": ({**_20, "use_sampling_probability": True, "mixed_negatives": 512},
              "logQ + 512 uniformly sampled titles per batch as extra negatives"),
    "genres": ({**_20, "use_sampling_probability": True, "genres": True},
               "logQ + genres in the candidate tower"),
    "history": ({**_20, "use_sampling_probability": True, "history": True},
                "logQ + the user's training history in the query tower"),
    "best": (PRESETS["best"], "--preset best: history + genres + logQ + cosine, learned T"),
}
# (column, model figure in flatten(evaluate(...)), baseline figure in evaluate_baselines)
FIGURES: tuple[tuple[str, str, str], ...] = (
    *((f"top-{k}", f"retrieval.top_k_accuracy.{k}", f"top_k_accuracy.{k}") for k in (1, 10, 100)),
    *((f"top-{k} excl. seen", f"retrieval.top_k_accuracy_exclude_seen.{k}",
       f"top_k_accuracy_exclude_seen.{k}") for k in (1, 10, 100)),
    ("nDCG@10", "two_stage.ndcg@10_reranked", "positives.ndcg@10"),
    ("nDCG@10 excl. seen", "two_stage_exclude_seen.ndcg@10_reranked",
     "positives_exclude_seen.ndcg@10"),
)
BASELINES = ("random", "popular", "ease")


def recipe_config(base: Config, name: str, i: int, epochs: int | None = None) -> Config:
    """The recipe's config for seed i (split fixed by ``base.seed``); ``epochs`` overrides both
    stages' epochs (smoke runs)."""
    config = base.replace(**RECIPES[name][0]).replace(seed=base.seed + SEED_STRIDE * i)
    return config if epochs is None else config.replace(retrieval_epochs=epochs,
                                                        ranking_epochs=epochs)


def run_once(backend_name: str, dataset, config: Config) -> dict:
    """Train both stages and evaluate -> {figure: value} plus fit seconds."""
    from twostage.pipeline import evaluate, flatten, make_backend
    backend = make_backend(backend_name, config, dataset)
    start = time.perf_counter()
    backend.fit_retrieval(dataset)
    backend.fit_ranking(dataset)
    fit_s = time.perf_counter() - start
    flat = flatten(evaluate(backend, dataset, config))
    missing = [key for _, key, _ in FIGURES if key not in flat]
    if missing:
        raise KeyError(f"the evaluation report has no {missing}: twostage.pipeline.evaluate "
                       "renamed them; update benchmarks/quality.py FIGURES")
    return {**{col: flat[key] for col, key, _ in FIGURES}, "train_s": fit_s}


def baseline_figures(dataset, config: Config) -> dict[str, dict]:
    """{baseline: {column: value}} from ``twostage.baselines`` (EASE may be skipped)."""
    from twostage.baselines import evaluate_baselines
    from twostage.pipeline import flatten
    models = evaluate_baselines(dataset, config, names=BASELINES)["models"]
    out = {}
    for name, figures in models.items():
        if "skipped" in figures:
            out[name] = {"skipped": figures["skipped"]}
            continue
        flat = flatten(figures)
        out[name] = {col: flat[key] for col, _, key in FIGURES}
        out[name]["train_s"] = float(figures.get("seconds", 0.0))
        if "lambda" in figures:          # EASE: the L2 weight and the validation that chose it
            out[name]["lambda"] = figures["lambda"]
            out[name]["validation"] = figures["validation"]
    return out


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{recipe: {column: (mean, std over seeds)}}."""
    out = {}
    for name, figures in runs.items():
        columns = [c for c in figures[0]] if figures else []
        out[name] = {c: (float(np.mean([f[c] for f in figures])),
                         float(np.std([f[c] for f in figures], ddof=1)) if len(figures) > 1
                         else 0.0) for c in columns}
    return out


def markdown(summary: dict, baselines: dict, seeds: int) -> str:
    """The results table (README, docs/results.md): recipes (mean ± std over seeds), then the
    baselines, then the L2 weight EASE was given and the validation scores that chose it."""
    columns = [c for c, _, _ in FIGURES] + ["train_s"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cells in summary.items():
        shown = [_cell(*cells[c]) if c in cells else "" for c in columns]
        lines.append(f"| {name} ({RECIPES[name][1]}; {seeds} seeds) | " + " | ".join(shown)
                     + " |")
    for name, cells in baselines.items():
        if "skipped" in cells:
            lines.append(f"| {name} (skipped: {cells['skipped']}) |" + " |" * len(columns))
            continue
        lines.append(f"| baseline: {name} | " + " | ".join(
            f"{cells[c]:.4f}" if c != "train_s" else f"{cells[c]:.1f}" for c in columns) + " |")
    for name, cells in baselines.items():
        if "lambda" in cells:
            scores = ", ".join(f"{lam}: {v:.4f}"
                               for lam, v in cells["validation"]["scores"].items())
            lines.append(f"\n{name}: lambda {cells['lambda']:g}, chosen by "
                         f"{cells['validation']['metric']} ({scores})")
    return "\n".join(lines)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.1f}" if mean > 1 else f"{mean:.4f} ± {std:.4f}"


def targets(summary: dict, baselines: dict) -> list[tuple[str, bool]]:
    """Issue 15's targets for ``best`` (needs the seed and best recipes in the summary)."""
    if "best" not in summary or "seed" not in summary:
        return []
    best, seed = summary["best"], summary["seed"]
    out = []
    popular = baselines.get("popular", {})
    if "skipped" not in popular:
        for col, _, _ in FIGURES[:6]:
            out.append((f"best beats most-popular at {col}", best[col][0] > popular[col]))
    ease = baselines.get("ease", {})
    if ease and "skipped" not in ease:
        out.append(("best beats EASE at top-10 excl. seen",
                    best["top-10 excl. seen"][0] > ease["top-10 excl. seen"]))
    out.append(("best's top-10 >= 3x the seed model's", best["top-10"][0] >= 3 * seed["top-10"][0]))
    out.append(("best's re-ranked nDCG@10 >= 5x the seed model's",
                best["nDCG@10"][0] >= 5 * seed["nDCG@10"][0]))
    return out


def plot(summary: dict, baselines: dict, path: Path) -> None:
    """Grouped bars with error bars (std over seeds), one group per figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = [c for c, _, _ in FIGURES]
    names = list(summary) + [b for b in baselines if "skipped" not in baselines[b]]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(12, 5))
    x = np.arange(len(columns))
    for j, name in enumerate(names):
        if name in summary:
            means = [summary[name][c][0] for c in columns]
            errs = [summary[name][c][1] for c in columns]
        else:
            means, errs = [baselines[name][c] for c in columns], None
        ax.bar(x + j * width, means, width, yerr=errs, capsize=2,
               label=name if name in summary else f"baseline: {name}")
    ax.set_xticks(x + 0.4 - width / 2, columns, rotation=20, ha="right")
    ax.set_ylabel("accuracy / nDCG")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="100k")
    p.add_argument("--data-dir", help="folder of the dataset's files (else the usual lookup)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recipes", default=",".join(RECIPES),
                   help=f"comma-separated, from {', '.join(RECIPES)} (default: all)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs of both stages "
                   "(smoke runs; the results table uses the recipes' own)")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--resume", action="store_true", help="continue <out>/quality.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown or args.seeds < 1:
        parser().error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}" if unknown
                       else "--seeds must be >= 1")
    env.setup_process()
    from twostage import io
    from twostage.dataset import load_dataset
    from twostage.pipeline import check_trainable

    base = Config.of(dataset=args.dataset, data_dir=args.data_dir, quiet=True)
    dataset = load_dataset(base, progress=False)
    check_trainable(dataset, base)
    out = Path(args.out)
    path = out / "quality.json"
    settings = {"dataset": args.dataset, "backend": args.backend, "seed": base.seed,
                "epochs": args.epochs,
                "recipes": {r: RECIPES[r][0] for r in recipes}}
    state = _previous(path, settings) if args.resume and path.exists() else {}
    runs: dict[str, list[dict]] = {r: state.get("runs", {}).get(r, [])[:args.seeds]
                                   for r in recipes}
    baselines = state.get("baselines") or baseline_figures(dataset, base)
    started = time.perf_counter()
    for name in recipes:
        for i in range(len(runs[name]), args.seeds):
            print(f"{name} seed {i + 1}/{args.seeds} ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
            runs[name].append(run_once(args.backend, dataset, recipe_config(base, name, i, args.epochs)))
            io.write_json(path, {"settings": settings, "baselines": baselines, "runs": runs})
    summary = summarise(runs)
    table = markdown(summary, baselines, args.seeds)
    checks = targets(summary, baselines)
    lines = [table, ""] + [f"- {'PASS' if ok else 'MISS'}: {what}" for what, ok in checks]
    io.write_text(out / "quality.md", "\n".join(lines) + "\n")
    io.write_json(path, {"settings": settings, "baselines": baselines, "runs": runs,
                         "summary": {r: {c: list(v) for c, v in s.items()}
                                     for r, s in summary.items()},
                         "targets": [{"target": w, "met": ok} for w, ok in checks]})
    plot(summary, baselines, out / "quality.png")
    print("\n".join(lines))
    return 0


def _previous(path: Path, settings: dict) -> dict:
    import json
    state = json.loads(path.read_text())
    old_settings = state.get("settings", {})
    differ = [k for k in ("dataset", "backend", "seed", "epochs")
              if old_settings.get(k) != settings[k]]
    if differ:
        raise SystemExit(f"{path} was written with another {', '.join(differ)}; drop --resume "
                         "or use another --out")
    # A recipe whose changes differ from this version's starts afresh.
    old = state["settings"].get("recipes", {})
    state["runs"] = {r: v for r, v in state.get("runs", {}).items()
                     if old.get(r) == settings["recipes"].get(r)}
    return state


if __name__ == "__main__":
    sys.exit(main())
