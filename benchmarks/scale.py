"""How the data layer and both backends scale with the MovieLens release: time and memory.

    python -m benchmarks.scale --dataset 25m --backend both --synthetic-ratings 25000000
    python -m benchmarks.scale --dataset 1m --backend both [--data-dir DIR] [--epochs 1]

For the chosen release (real files: ``--data-dir``, else the cache or a verified download; or a
generated folder of its layout: ``--synthetic-ratings N``, written once into the cache under
``synthetic/ml-<name>-<N>/`` with the release's shape scaled to N ratings, and labelled
synthetic in every output), each measurement runs in a fresh process so that its peak resident
memory is its own:

- ``tfds``: TFDS' own parsing functions (``tensorflow_datasets.structured.movielens_parsing``)
  reading every record of the same files (the reference of the 10x loading target);
- ``data``: our loading (files -> records) and feature fitting (spec + encoded arrays + split);
- ``torch`` / ``tfrs``: the same loading, then training examples/s of each stage over a fixed
  number of steps (``--steps``, after one warm-up pass of as many) or whole epochs
  (``--epochs``), the index build, and evaluation time (``--eval-queries`` test rows, default
  all), with the peak resident memory after each phase.

Writes ``scale-<name>-<ratings>[-synthetic].json`` into ``--out`` and redraws ``scale.png`` there
from every such JSON (time and memory against the number of ratings), then prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from twostage import env
from twostage.config import BACKENDS, DATASETS

# Ratings, users and movies of each release (TFDS' descriptions), the shape a synthetic folder
# of another size is scaled from.
SHAPES = {"100k": (100_000, 943, 1_682), "1m": (1_000_209, 6_040, 3_883),
          "20m": (20_000_263, 138_493, 27_278), "25m": (25_000_095, 162_541, 62_423),
          "latest-small": (100_836, 610, 9_742)}
LAYOUT = {"100k": "100k", "1m": "1m", "20m": "csv", "25m": "csv", "latest-small": "csv"}
KINDS = ("tfds", "data", *BACKENDS)


# --------------------------------------------------------------------------- the folder


def synthetic_shape(dataset: str, num_ratings: int) -> tuple[int, int]:
    """(users, movies) for ``num_ratings``: users in proportion (their activity stays that of
    the release), movies with the square root (catalogs grow slower than activity), enough of
    both for one rating per pair."""
    ratings, users, movies = SHAPES[dataset]
    scale = num_ratings / ratings
    num_users = max(2, round(users * scale))
    num_movies = max(2, round(movies * scale ** 0.5))
    while num_users * num_movies < 2 * num_ratings:
        num_movies *= 2
    return num_users, num_movies


def synthetic_folder(dataset: str, num_ratings: int, cache: Path | None = None,
                     seed: int = 0) -> Path:
    """The generated folder of ``dataset``'s layout and ``num_ratings`` ratings in the cache,
    written once (atomically: a killed run leaves no half folder to be reused)."""
    from twostage import io
    from twostage.data.download import default_cache_dir
    from twostage.data.registry import variant
    from twostage.data.synthetic import generate

    target = (cache or default_cache_dir()) / "synthetic" / f"{variant(dataset).folder}-{num_ratings}"
    if io.marker_kind(target) == "synthetic MovieLens":
        return target
    num_users, num_movies = synthetic_shape(dataset, num_ratings)
    print(f"generating {num_ratings} ratings ({num_users} users, {num_movies} movies) in the "
          f"{LAYOUT[dataset]} layout into {target} ...", file=sys.stderr, flush=True)
    io.replace_directory(target, lambda tmp: generate(
        tmp, layout=LAYOUT[dataset], realistic=True, num_users=num_users, num_movies=num_movies,
        num_ratings=num_ratings, seed=seed, progress=True), kind="synthetic MovieLens",
        extra_marker={"dataset": dataset, "num_ratings": num_ratings, "seed": seed})
    return target


def locate(args) -> tuple[Path, bool]:
    """(folder, synthetic?) the measurements read."""
    if args.synthetic_ratings:
        cache = Path(args.cache_dir) if args.cache_dir else None
        return synthetic_folder(args.dataset, args.synthetic_ratings, cache), True
    from twostage.data.download import resolve_data_dir
    return resolve_data_dir(args.data_dir, dataset=args.dataset), False


# --------------------------------------------------------------------------- measurements


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure_tfds(folder: Path, dataset: str) -> dict:
    """Seconds for TFDS' parsers to yield every ratings record (and, apart, every movie)."""
    from tensorflow_datasets.structured import movielens_parsing as parsing
    names = {"100k": "100k", "1m": "1m", "csv": "current"}[LAYOUT[dataset]]
    ratings = getattr(parsing, f"parse_{names}_ratings_data")
    movies = getattr(parsing, f"parse_{names}_movies_data")
    count, ratings_s = _timed(lambda: sum(1 for _ in ratings(str(folder))))
    _, movies_s = _timed(lambda: sum(1 for _ in movies(str(folder))))
    return {"records": count, "ratings_s": ratings_s, "movies_s": movies_s,
            "peak_rss_mb": peak_rss_mb()}


def _config(args, folder: Path):
    from twostage.config import Config
    epochs = args.epochs or 2  # --steps: one warm-up pass, one measured
    return Config.of(dataset=args.dataset, data_dir=str(folder), retrieval_epochs=epochs,
                     ranking_epochs=epochs, batch_size=args.batch_size,
                     validation_freq=10 ** 9, eval_queries=args.eval_queries, quiet=True)


def load(folder: Path, config) -> tuple[object, dict]:
    """(Dataset, figures): loading and feature fitting timed apart, memory after each."""
    from twostage.data.movielens import load_movielens
    from twostage.dataset import from_movielens
    ml, load_s = _timed(lambda: load_movielens(folder, dataset=config.data.dataset))
    rss_load = peak_rss_mb()
    dataset, features_s = _timed(lambda: from_movielens(ml, config))
    facts = dataset.facts()
    return dataset, {"load_s": load_s, "features_s": features_s,
                     "peak_rss_mb": {"after_load": rss_load, "after_features": peak_rss_mb()},
                     "num_ratings": facts["num_ratings"], "num_users": facts["num_users"],
                     "num_movies": facts["num_movies"], "num_tokens": facts["num_tokens"]}


def training_view(dataset, args):
    """The dataset a stage trains on: ``--steps`` batches of the training split (all of it
    with ``--epochs``), and a one-batch test split so that the validation after the last epoch
    costs nothing (evaluation is timed on its own)."""
    from twostage.data.split import Split
    train = dataset.split.train
    if not args.epochs:
        train = train[: args.steps * args.batch_size]
    return dataclasses.replace(dataset, split=Split(train=train,
                                                    test=dataset.split.test[: args.batch_size]))


def _examples_per_s(history, examples: int) -> dict:
    seconds = history.epoch_seconds[1:] or history.epoch_seconds  # the first one warms up
    return {"examples_per_s": examples / statistics.median(seconds),
            "epoch_seconds": list(history.epoch_seconds), "examples_per_epoch": examples}


def measure_backend(name: str, folder: Path, args) -> dict:
    """Load, fit, train both stages, build the index and evaluate with one backend."""
    from twostage.pipeline import evaluate_retrieval, make_backend
    config = _config(args, folder)
    dataset, out = load(folder, config)
    view = training_view(dataset, args)
    backend = make_backend(name, config, dataset)
    examples = len(view.split.train)
    out["retrieval"] = _examples_per_s(backend.fit_retrieval(view), examples)
    out["ranking"] = _examples_per_s(backend.fit_ranking(view), examples)
    out["peak_rss_mb"]["after_training"] = peak_rss_mb()
    _, out["index_build_s"] = _timed(lambda: backend.build_index(dataset.corpus_titles))
    _, out["evaluation_s"] = _timed(lambda: evaluate_retrieval(backend, dataset, config))
    out["eval_queries"] = args.eval_queries or len(dataset.split.test)
    out["peak_rss_mb"]["after_evaluation"] = peak_rss_mb()
    return out


def measure(kind: str, folder: Path, args) -> dict:
    if kind == "tfds":
        return measure_tfds(folder, args.dataset)
    if kind == "data":
        return load(folder, _config(args, folder))[1]
    return measure_backend(kind, folder, args)


def _child(kind: str, folder: Path, args) -> dict:
    """``measure`` in a fresh process (its own peak memory), as one JSON line on stdout."""
    argv = [sys.executable, "-m", "benchmarks.scale", "--child", kind, "--folder", str(folder),
            *args.passthrough]
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} measurement failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def machine() -> dict:
    import platform
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}


def summarise(results: dict) -> dict:
    """The figures the issue's targets are stated in."""
    out = {}
    data, tfds = results.get("data"), results.get("tfds")
    if data and tfds:
        ours = data["load_s"] + data["features_s"]
        out["loading_speedup_over_tfds"] = tfds["ratings_s"] / ours
    for stage in ("retrieval", "ranking"):
        if "torch" in results and "tfrs" in results:
            out[f"{stage}_torch_over_tfrs"] = (results["torch"][stage]["examples_per_s"]
                                               / results["tfrs"][stage]["examples_per_s"])
    for name in BACKENDS:
        if name in results:
            out[f"{name}_peak_rss_gib"] = max(results[name]["peak_rss_mb"].values()) / 1024
    return out


def print_table(report: dict) -> None:
    results = report["results"]
    label = "synthetic" if report["synthetic"] else "real"
    print(f"MovieLens {report['dataset']} ({label}), {report['num_ratings']} ratings")
    if "tfds" in results:
        print(f"  TFDS parsing functions: {results['tfds']['ratings_s']:.2f} s "
              f"(peak {results['tfds']['peak_rss_mb']:.0f} MB)")
    for kind in ("data", *BACKENDS):
        if kind not in results:
            continue
        r = results[kind]
        line = (f"  {kind:<6} load {r['load_s']:.2f} s, features {r['features_s']:.2f} s, "
                f"peak {max(r['peak_rss_mb'].values()):.0f} MB")
        if kind != "data":
            line += (f", retrieval {r['retrieval']['examples_per_s']:.0f} ex/s, ranking "
                     f"{r['ranking']['examples_per_s']:.0f} ex/s, index {r['index_build_s']:.2f}"
                     f" s, evaluation {r['evaluation_s']:.2f} s ({r['eval_queries']} queries)")
        print(line)
    for key, value in report["summary"].items():
        print(f"  {key}: {value:.2f}")


def plot(out: Path) -> Path:
    """scale.png from every scale-*.json in ``out``: seconds, examples/s and peak memory
    against the number of ratings, one line per measurement."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from twostage import io

    reports = sorted((json.loads(p.read_text()) for p in out.glob("scale-*.json")),
                     key=lambda r: r["num_ratings"])
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def add(panel: str, name: str, x: int, y: float) -> None:
        series.setdefault((panel, name), []).append((x, y))

    for r in reports:
        n, res = r["num_ratings"], r["results"]
        if "tfds" in res:
            add("seconds", "TFDS parsing", n, res["tfds"]["ratings_s"])
        for kind in ("data", *BACKENDS):
            if kind not in res:
                continue
            add("peak resident memory (GiB)", kind, n, max(res[kind]["peak_rss_mb"].values()) / 1024)
            if kind == "data":
                add("seconds", "load + features", n, res[kind]["load_s"] + res[kind]["features_s"])
            else:
                add("seconds", f"{kind} evaluation", n, res[kind]["evaluation_s"])
                for stage in ("retrieval", "ranking"):
                    add("training examples/s", f"{kind} {stage}", n,
                        res[kind][stage]["examples_per_s"])
    panels = ("seconds", "training examples/s", "peak resident memory (GiB)")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, panel in zip(axes, panels):
        for (where, name), points in sorted(series.items()):
            if where == panel:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("ratings")
        ax.set_title(panel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    synthetic = {r["dataset"] for r in reports if r["synthetic"]}
    fig.suptitle("MovieLens scale" + (f" (synthetic: {', '.join(sorted(synthetic))})"
                                      if synthetic else ""))
    fig.tight_layout()
    path = out / "scale.png"
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry point


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="100k")
    p.add_argument("--backend", choices=(*BACKENDS, "both", "none"), default="both",
                   help="none: the data measurements only")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir", help="an unpacked folder of the release")
    source.add_argument("--synthetic-ratings", type=int, metavar="N",
                        help="generate (once, in the cache) a folder of the release's layout "
                        "with N ratings and measure on it")
    p.add_argument("--cache-dir", help="where --synthetic-ratings folders live (default: the "
                   "data cache, $TWOSTAGE_CACHE or ~/.cache/twostage)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=50,
                        help="training steps measured per stage, after as many warm-up steps")
    budget.add_argument("--epochs", type=int, help="whole epochs per stage instead of --steps "
                        "(the first is the warm-up when there are two or more)")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--eval-queries", type=int, metavar="N",
                   help="evaluate a seeded sample of N test rows (default: all)")
    p.add_argument("--no-tfds", action="store_true", help="skip timing TFDS' parsers")
    p.add_argument("--out", default="runs/scale")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    env.setup_process()
    for name in ("steps", "epochs", "batch_size", "eval_queries", "synthetic_ratings"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.child:  # one measurement, as one JSON line
        print(json.dumps(measure(args.child, Path(args.folder), args)))
        return 0
    folder, synthetic = locate(args)
    args.passthrough = ["--dataset", args.dataset, "--batch-size", str(args.batch_size),
                        *(["--epochs", str(args.epochs)] if args.epochs else
                          ["--steps", str(args.steps)]),
                        *(["--eval-queries", str(args.eval_queries)] if args.eval_queries
                          else [])]
    kinds = ([] if args.no_tfds else ["tfds"]) + ["data"] + (
        list(BACKENDS) if args.backend == "both" else [] if args.backend == "none"
        else [args.backend])
    results = {}
    for kind in kinds:
        print(f"measuring {kind} on {folder} ...", file=sys.stderr, flush=True)
        results[kind] = _child(kind, folder, args)
    report = {"machine": machine(), "dataset": args.dataset, "folder": str(folder),
              "synthetic": synthetic, "num_ratings": results["data"]["num_ratings"],
              "options": vars(args) | {"passthrough": None}, "results": results}
    report["summary"] = summarise(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from twostage import io
    name = f"scale-{args.dataset}-{report['num_ratings']}{'-synthetic' if synthetic else ''}"
    io.write_json(out / f"{name}.json", report)
    png = plot(out)
    print_table(report)
    print(f"wrote {out / (name + '.json')} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
