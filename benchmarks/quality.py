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
from twostage.data.split import SPLITS

SEED_STRIDE = 1000
_20 = {"retrieval_epochs": 20, "ranking_epochs": 20}
# issue 26's recipe for a live service: the history recipe reads every earlier rating
_LIVE = {**PRESETS["best"], "user_dropout": 0.2, "dropout_keeps_history": True,
         "history_length": 200, "live_history": True}
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
    "best-prior": (PRESETS["best"], "--preset best + the popularity prior at inference "
                   "(score + beta log q, beta chosen on the training split's validation slice)"),
    "logq-prior": ({**_20, "use_sampling_probability": True},
                   "logQ + the popularity prior at inference (beta on validation)"),
    "best-prior-dropout": ({**PRESETS["best"], "user_dropout": 0.2},
                           "best-prior + user-id dropout 0.2 (the OOV user row trained)"),
    "best-prior-users": ({**PRESETS["best"], "user_features": True},
                         "best-prior + the user side features (gender, age group, occupation, "
                         "zip prefix) in the query tower"),
    "best-recent": ({**PRESETS["best"], "user_dropout": 0.2},
                    "--preset best with user-id dropout 0.2, cold users served through the "
                    "trained OOV row, + recent popularity at inference (score + beta log(1 + the "
                    "title's ratings in a window before the query's time); window and a beta "
                    "per audience on validation; scored by the baselines' rule)"),
    "best-users-recent": ({**PRESETS["best"], "user_features": True},
                          "best-recent + the user side features in the query tower"),
    "live": (_LIVE, "--preset best with live histories of 200 titles (every rating before the "
             "query's second, test-period ones included: --live-history --history-length 200) "
             "and user-id dropout 0.2 that keeps the dropped ratings' histories "
             "(--dropout-keeps-history), the model alone"),
    "best-live": (_LIVE, "live + recent popularity at inference as best-recent (cold users "
                  "through the OOV row, with their own earlier ratings as history)"),
    "preset-live": (PRESETS["live"], "--preset live: live + cold users through the OOV row + "
                    "recent popularity with the fixed beta 0.1 and window 365 days, in the "
                    "pipeline's own evaluation (twostage run), + the titles' release quarters "
                    "in the candidate tower (--release-date)"),
    "preset-live-no-release": ({**PRESETS["live"], "release_date": False},
                               "--preset live without the release quarters (its first "
                               "version)"),
    "best-release": ({**PRESETS["best"], "release_date": True},
                     "--preset best + the title's release quarter in the candidate tower "
                     "(--release-date)"),
}
# the recipes of live histories, held to the random split's targets too (live_targets)
LIVE_RECIPES = ("live", "best-live", "preset-live", "preset-live-no-release")
# recipes whose prior_beta is chosen by twostage.pipeline.select_prior_beta before training
PRIOR_RECIPES = frozenset({"best-prior", "logq-prior", "best-prior-dropout", "best-prior-users"})
# recipes scored as model + recent popularity (twostage.hybrid), beta and window on validation:
# name -> whether cold users ask through the OOV row (not with user features: an unknown user
# has unknown features too)
HYBRID_RECIPES: dict[str, bool] = {"best-recent": True, "best-users-recent": False,
                                   "best-live": True}
# (column, model figure in flatten(evaluate(...)), baseline figure in evaluate_baselines)
FIGURES: tuple[tuple[str, str, str], ...] = (
    *((f"top-{k}", f"retrieval.top_k_accuracy.{k}", f"top_k_accuracy.{k}") for k in (1, 10, 100)),
    *((f"top-{k} excl. seen", f"retrieval.top_k_accuracy_exclude_seen.{k}",
       f"top_k_accuracy_exclude_seen.{k}") for k in (1, 10, 100)),
    ("nDCG@10", "two_stage.ndcg@10_reranked", "positives.ndcg@10"),
    ("nDCG@10 excl. seen", "two_stage_exclude_seen.ndcg@10_reranked",
     "positives_exclude_seen.ndcg@10"),
)
BASELINES = ("random", "popular", "ease", "recent", "ease-live")
AUDIENCES = ("warm", "cold", "new_title")
# per audience (twostage.evaluation.AUDIENCES), seen titles excluded: (column, model figure,
# baseline figure); an audience with no test rating (cold users under the random split) is NaN
AUDIENCE_FIGURES: tuple[tuple[str, str, str], ...] = tuple(
    figure for a in AUDIENCES for figure in (
        (f"{a}: n", f"retrieval.by_audience.{a}.num_queries", f"by_audience.{a}.num_queries"),
        *((f"{a}: top-{k}", f"retrieval.by_audience.{a}.top_k_accuracy_exclude_seen.{k}",
           f"by_audience.{a}.top_k_accuracy_exclude_seen.{k}") for k in (10, 100)),
        (f"{a}: nDCG@10", f"two_stage_exclude_seen.by_audience.{a}.ndcg@10_reranked",
         f"by_audience.{a}.positives_exclude_seen.ndcg@10")))


def recipe_config(base: Config, name: str, i: int, epochs: int | None = None) -> Config:
    """The recipe's config for seed i (split fixed by ``base.seed``); ``epochs`` overrides both
    stages' epochs (smoke runs)."""
    config = base.replace(**RECIPES[name][0]).replace(seed=base.seed + SEED_STRIDE * i)
    return config if epochs is None else config.replace(retrieval_epochs=epochs,
                                                        ranking_epochs=epochs)


def run_once(backend_name: str, dataset, config: Config, prior: bool = False,
             hybrid: str | None = None) -> dict:
    """Train both stages and evaluate -> {figure: value} (the audiences' too) plus fit
    seconds; ``prior``: first choose ``prior_beta`` on the training split's validation slice
    (one more retrieval training, counted in train_s), recorded as ``prior_beta`` and
    ``prior_validation``; ``hybrid`` (a name of HYBRID_RECIPES): :func:`run_hybrid` instead."""
    from twostage.pipeline import (evaluate, fit_retrieval, flatten, make_backend,
                                   select_prior_beta)
    if hybrid:
        return run_hybrid(backend_name, dataset, config, HYBRID_RECIPES[hybrid])
    start = time.perf_counter()
    chosen = select_prior_beta(backend_name, dataset, config) if prior else None
    if chosen:
        config = config.replace(prior_beta=chosen["beta"])
    backend = make_backend(backend_name, config, dataset)
    fit_retrieval(backend, dataset, config)
    backend.fit_ranking(dataset)
    fit_s = time.perf_counter() - start
    flat = flatten(evaluate(backend, dataset, config))
    figures = {**_columns(flat, FIGURES, 1), **_columns(flat, AUDIENCE_FIGURES, 1, optional=True),
               "train_s": fit_s}
    if chosen:
        figures.update(prior_beta=chosen["beta"], prior_validation=chosen)
    return figures


def run_hybrid(backend_name: str, dataset, config: Config, cold_as_oov: bool = False) -> dict:
    """Model + recent popularity (``twostage.hybrid``): beta and the window chosen on the
    training split's validation slice (one more retrieval training, counted in train_s), the
    retrieval model trained on the whole training split, then scored by the baselines' code
    ``cold_as_oov``: cold users ask through the OOV row (``hybrid.scorer_for``).
    -> {column: value} in the baselines' layout, plus ``prior_beta_warm``,
    ``prior_beta_cold`` and ``prior_validation`` (the window and the validation scores)."""
    from twostage import hybrid
    from twostage.pipeline import fit_retrieval, flatten, make_backend
    start = time.perf_counter()
    chosen = hybrid.select(backend_name, dataset, config, cold_as_oov=cold_as_oov)
    backend = make_backend(backend_name, config, dataset)
    fit_retrieval(backend, dataset, config)
    fit_s = time.perf_counter() - start
    flat = flatten(hybrid.evaluate(backend, dataset, config, chosen["beta_warm"],
                                   chosen["beta_cold"], chosen["window_days"],
                                   cold_as_oov=cold_as_oov))
    return {**_columns(flat, FIGURES, 2), **_columns(flat, AUDIENCE_FIGURES, 2, optional=True),
            "train_s": fit_s, "prior_beta_warm": chosen["beta_warm"],
            "prior_beta_cold": chosen["beta_cold"], "prior_validation": chosen}


def _columns(flat: dict, figures, which: int, optional: bool = False) -> dict[str, float]:
    """{column: flat[figure[which]]} (1: the model's key, 2: a baseline's); a missing key is
    NaN when ``optional``, else a KeyError naming it."""
    missing = [f[which] for f in figures if f[which] not in flat]
    if missing and not optional:
        raise KeyError(f"the evaluation report has no {missing}: twostage.pipeline.evaluate "
                       "renamed them; update benchmarks/quality.py FIGURES")
    return {f[0]: flat.get(f[which], float("nan")) for f in figures}


def baseline_figures(dataset, config: Config, names: tuple[str, ...] = BASELINES
                     ) -> dict[str, dict]:
    """{baseline: {column: value}} from ``twostage.baselines`` (EASE may be skipped)."""
    from twostage.baselines import evaluate_baselines
    from twostage.pipeline import flatten
    models = evaluate_baselines(dataset, config, names=names)["models"]
    out = {}
    for name, figures in models.items():
        if "skipped" in figures:
            out[name] = {"skipped": figures["skipped"]}
            continue
        flat = flatten(figures)
        out[name] = {**_columns(flat, FIGURES, 2),
                     **_columns(flat, AUDIENCE_FIGURES, 2, optional=True)}
        out[name]["train_s"] = float(figures.get("seconds", 0.0))
        for chosen in ("lambda", "window_days"):   # EASE's L2 weight, recent-popular's window
            if chosen in figures:
                out[name][chosen] = figures[chosen]
                out[name]["validation"] = figures["validation"]
    return out


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """{recipe: {column: (mean, std over seeds)}}."""
    out = {}
    for name, figures in runs.items():
        columns = [c for c, v in figures[0].items() if isinstance(v, (int, float))
                   ] if figures else []
        out[name] = {c: (float(np.mean([f[c] for f in figures])),
                         float(np.std([f[c] for f in figures], ddof=1)) if len(figures) > 1
                         else 0.0) for c in columns}
    return out


def markdown(summary: dict, baselines: dict, seeds: int,
             runs: dict[str, list[dict]] | None = None) -> str:
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
    lines += ["", audience_markdown(summary, baselines, seeds), ""]
    for name, cells in baselines.items():
        for chosen in ("lambda", "window_days"):
            if chosen in cells:
                scores = ", ".join(f"{x}: {v:.4f}"
                                   for x, v in cells["validation"]["scores"].items())
                value = "all" if cells[chosen] is None else f"{cells[chosen]:g}"
                lines.append(f"\n{name}: {chosen} {value}, chosen by "
                             f"{cells['validation']['metric']} ({scores})")
    lines += [f"\n{line}" for line in prior_notes(runs or {})]
    return "\n".join(lines)


def prior_notes(runs: dict[str, list[dict]]) -> list[str]:
    """One line per seed of a prior recipe: the beta chosen and the validation scores."""
    out = []
    for name, figures in runs.items():
        for i, f in enumerate(figures):
            if "prior_validation" not in f:
                continue
            v = f["prior_validation"]
            if "window_days" not in v:                          # the static prior's beta
                tried = ", ".join(f"{b}: {acc:.4f}" for b, acc in v["scores"].items())
                out.append(f"{name} seed {i}: beta {v['beta']:g}, chosen by {v['metric']} "
                           f"({v['num_queries']} ratings; tried {tried})")
                continue
            window = "all" if v["window_days"] is None else f"{v['window_days']:g}d"
            out.append(f"{name} seed {i}: window {window}, beta {v['beta_warm']:g} for warm "
                       f"users ({v['num_queries']['warm']} ratings), {v['beta_cold']:g} for "
                       f"cold users ({v['num_queries']['cold']}), chosen by {v['metric']}")
    return out


def audience_markdown(summary: dict, baselines: dict, seeds: int) -> str:
    """Per audience (warm users, cold users, new titles), seen titles excluded: top-10,
    top-100 and nDCG@10 of each recipe (mean ± std over seeds) and baseline, and the count of
    test ratings of each audience."""
    columns = [c for c, _, _ in AUDIENCE_FIGURES]
    lines = ["| model (seen titles excluded) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, cells in summary.items():
        lines.append(f"| {name} ({seeds} seeds) | " + " | ".join(
            "" if c not in cells else _count(cells[c][0]) if c.endswith(": n")
            else _cell(*cells[c]) for c in columns) + " |")   # runs older than audiences: ""
    for name, cells in baselines.items():
        if "skipped" not in cells:
            lines.append(f"| baseline: {name} | " + " | ".join(
                _count(cells.get(c, float("nan"))) if c.endswith(": n") else _value(cells.get(c))
                for c in columns) + " |")
    return "\n".join(lines)


def _count(value: float) -> str:
    return "0" if value != value else f"{value:.0f}"     # NaN: an empty audience


def _value(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def _cell(mean: float, std: float) -> str:
    if mean != mean:
        return ""                                        # NaN: an empty audience
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


def live_targets(summary: dict, baselines: dict, seeds: int) -> list[tuple[str, bool]]:
    """Issue 26's random-split target for the live recipes measured: each figure of FIGURES
    (every k, both protocols, nDCG@10) beyond 2 standard errors over seeds above every
    baseline's, EASE on live histories included."""
    out = []
    for name in (n for n in LIVE_RECIPES if n in summary):
        for base, theirs in baselines.items():
            if "skipped" in theirs or base == "random":
                continue
            for col, _, _ in FIGURES:
                mean, std = summary[name][col]
                margin = 2 * std / np.sqrt(max(seeds, 1))
                out.append((f"{name} beats {base} at {col} ({mean:.4f} vs {theirs[col]:.4f})",
                            bool(mean - margin > theirs[col])))
    return out


TIME_TARGET_COLUMNS = ("top-10 excl. seen", "top-100 excl. seen", "nDCG@10 excl. seen")


def time_targets(summary: dict, baselines: dict, seeds: int) -> list[tuple[str, bool]]:
    """Issue 26's targets (``--split temporal``) for every prior / best recipe measured: its
    mean beyond 2 standard errors over seeds (std / sqrt(seeds)) above most-popular,
    recent-popular and EASE at top-10, top-100 and nDCG@10 (seen titles excluded) on the whole
    test set and on warm users; on cold users above most-popular, and at least
    recent-popular's (minus 2 standard errors)."""
    out = []
    for name in (n for n in dict.fromkeys(("best", "best-release", *LIVE_RECIPES,
                                            *sorted(PRIOR_RECIPES), *sorted(HYBRID_RECIPES)))
                 if n in summary):
        cells = summary[name]
        live = RECIPES[name][0].get("live_history", False)   # then EASE reads them too
        for base in ("popular", "recent", "ease") + (("ease-live",) if live else ()):
            theirs = baselines.get(base, {})
            if "skipped" in theirs or not theirs:
                continue
            audiences = {"": "", "warm: ": "warm users' "}
            if not base.startswith("ease"):
                audiences["cold: "] = "cold users' "
            for prefix, label in audiences.items():
                for col in TIME_TARGET_COLUMNS:
                    short = col.replace(" excl. seen", "")
                    key = f"{prefix}{short}" if prefix else col
                    mean, std = cells[key]
                    margin = 2 * std / np.sqrt(max(seeds, 1))
                    if prefix == "cold: " and base == "recent":
                        out.append((f"{name} matches recent-popular at cold users' {short} "
                                    f"(difference {mean - theirs[key]:+.4f} ± {margin / 2:.4f})",
                                    bool(mean + margin >= theirs[key])))
                        continue
                    out.append((f"{name} beats {base} at {label}{short} ({mean:.4f} vs "
                                f"{theirs[key]:.4f})", bool(mean - margin > theirs[key])))
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
    p.add_argument("--split", choices=SPLITS, default="random",
                   help="random: the seed's shuffle; temporal: the earliest 80%% of the ratings "
                   "train, the rest test (issue 26's targets are checked then)")
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

    base = Config.of(dataset=args.dataset, data_dir=args.data_dir, split=args.split, quiet=True)
    dataset = load_dataset(base, progress=False)
    check_trainable(dataset, base)
    out = Path(args.out)
    path = out / "quality.json"
    settings = {"dataset": args.dataset, "split": args.split, "backend": args.backend,
                "seed": base.seed,
                "epochs": args.epochs,
                "recipes": {r: RECIPES[r][0] for r in recipes}}
    state = _previous(path, settings) if args.resume and path.exists() else {}
    runs: dict[str, list[dict]] = {r: state.get("runs", {}).get(r, [])[:args.seeds]
                                   for r in recipes}
    baselines = state.get("baselines", {})
    missing = tuple(b for b in BASELINES if b not in baselines)
    if missing:                          # a resumed file keeps the baselines it has
        baselines = {**baselines, **baseline_figures(dataset, base, missing)}
        baselines = {b: baselines[b] for b in BASELINES}
    started = time.perf_counter()
    for name in recipes:
        for i in range(len(runs[name]), args.seeds):
            print(f"{name} seed {i + 1}/{args.seeds} ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
            runs[name].append(run_once(args.backend, dataset,
                                       recipe_config(base, name, i, args.epochs),
                                       prior=name in PRIOR_RECIPES,
                                       hybrid=name if name in HYBRID_RECIPES else None))
            io.write_json(path, {"settings": settings, "baselines": baselines, "runs": runs})
    summary = summarise(runs)
    table = markdown(summary, baselines, args.seeds, runs)
    checks = (time_targets(summary, baselines, args.seeds) if args.split == "temporal"
              else targets(summary, baselines) + live_targets(summary, baselines, args.seeds))
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
    differ = [k for k in ("dataset", "split", "backend", "seed", "epochs")
              if old_settings.get(k, "random" if k == "split" else None) != settings[k]]
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
