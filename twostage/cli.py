"""The ``twostage`` command line: run (train + evaluate), recommend, export.

Exit codes: 0 success, 1 a runtime failure (no data, bad data, training diverged), 2 bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .config import BACKENDS, INDEX_KINDS, Config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


class UsageError(Exception):
    """Bad flag values or a missing input the user must fix (exit code 2)."""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, "
                                         "e.g. 64,32") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive integers, e.g. 64,32")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twostage", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = Config()

    run = sub.add_parser("run", help="train both stages on a backend, evaluate, write results")
    run.add_argument("--backend", choices=(*BACKENDS, "both"), default="torch")
    run.add_argument("--data-dir", help="folder with u.data/u.item/u.user (else "
                     "TWOSTAGE_DATA_DIR, the cache, then a checksum-verified download)")
    run.add_argument("--retrieval-epochs", type=int, default=d.retrieval_epochs)
    run.add_argument("--ranking-epochs", type=int, default=d.ranking_epochs)
    run.add_argument("--layer-sizes", type=_int_list, default=d.layer_sizes,
                     help="query/candidate tower sizes, e.g. 64,32")
    run.add_argument("--batch-size", type=int, default=d.batch_size)
    run.add_argument("--validation-freq", type=int, default=d.validation_freq)
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--device", default=d.device, help="torch device: cpu or cuda")
    run.add_argument("--index", choices=INDEX_KINDS, default=d.index)
    run.add_argument("--temperature", type=float, default=None)
    run.add_argument("--num-hard-negatives", type=int, default=None)
    run.add_argument("--remove-accidental-hits", action="store_true")
    run.add_argument("--logq", action="store_true", dest="use_sampling_probability",
                     help="logQ correction with in-batch title frequencies")
    run.add_argument("--framework-shuffle", action="store_true",
                     help="each backend shuffles its own batches instead of the shared order")
    run.add_argument("--out", default="runs/latest", help="output directory (default runs/latest)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    rec = sub.add_parser("recommend", help="two-stage recommendations for one user from a run")
    rec.add_argument("--run", required=True, help="a directory written by `twostage run`")
    rec.add_argument("--user", required=True, help="user id as in u.data, e.g. 42")
    rec.add_argument("--timestamp", type=int, default=None,
                     help="query time (unix seconds; default: the latest time in the data)")
    rec.add_argument("-k", type=int, default=10, help="how many recommendations")
    rec.add_argument("--backend", choices=BACKENDS, default=None,
                     help="which saved backend (default: torch if present)")

    exp = sub.add_parser("export", help="export a run's retrieval model to another framework")
    exp.add_argument("--run", required=True)
    exp.add_argument("--to", choices=("tfrs",), default="tfrs")
    exp.add_argument("--out", required=True, help="where the TF SavedModel goes")
    exp.add_argument("-k", type=int, default=100, help="top-k the SavedModel returns (>= 10)")
    return p


def _config(args: argparse.Namespace) -> Config:
    return Config(
        data_dir=args.data_dir, retrieval_epochs=args.retrieval_epochs,
        ranking_epochs=args.ranking_epochs, layer_sizes=tuple(args.layer_sizes),
        batch_size=args.batch_size, validation_freq=args.validation_freq, seed=args.seed,
        device=args.device, index=args.index, temperature=args.temperature,
        num_hard_negatives=args.num_hard_negatives,
        remove_accidental_hits=args.remove_accidental_hits,
        use_sampling_probability=args.use_sampling_probability,
        shared_batches=not args.framework_shuffle, quiet=args.quiet)


def cmd_run(args: argparse.Namespace) -> int:
    from .dataset import load_dataset
    from .pipeline import run_backend
    from .report import table, write_run

    try:
        config = _config(args)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if config.device.startswith("cuda") and args.backend in ("torch", "both"):
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but torch sees no CUDA device; "
                             "use --device cpu")
    out = Path(args.out)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    dataset = load_dataset(config, progress=not args.quiet)
    log(f"data: {dataset.facts()}")
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    reports = {}
    for name in names:
        log(f"[{name}] training retrieval ({config.retrieval_epochs} epochs) and ranking "
            f"({config.ranking_epochs} epochs)")
        _, report, _ = run_backend(name, dataset, config, out_dir=out)
        reports[name] = report
    header = (f"# twostage run ({', '.join(names)}) on {dataset.facts()['source']}, "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    (out / "corpus.json").parent.mkdir(parents=True, exist_ok=True)
    from .report import write_atomic
    write_atomic(out / "corpus.json", json.dumps(
        {"titles": dataset.corpus_titles.tolist(),
         "max_timestamp": int(dataset.timestamp.max())}, ensure_ascii=False))
    written = write_run(out, reports, header)
    print(table(reports))
    log("wrote " + ", ".join(str(p) for p in written) + f" and models under {out}/")
    return 0


def _saved_backend(run: Path, wanted: str | None) -> str:
    if not run.is_dir():
        raise UsageError(f"run directory {run} does not exist; create one with `twostage run "
                         f"--out {run}`")
    present = [b for b in BACKENDS if (run / b).is_dir()]
    if wanted is not None and wanted not in present:
        raise UsageError(f"{run} has no saved {wanted} models (it has: {present or 'none'})")
    if not present:
        raise UsageError(f"{run} holds no saved models (expected {run}/torch or {run}/tfrs)")
    return wanted or present[0]


def cmd_recommend(args: argparse.Namespace) -> int:
    from .pipeline import load_backend

    run = Path(args.run)
    name = _saved_backend(run, args.backend)
    if args.k < 1:
        raise UsageError(f"-k {args.k}: must be >= 1")
    corpus = json.loads((run / "corpus.json").read_text(encoding="utf-8"))
    titles = np.asarray(corpus["titles"], dtype=object)
    backend = load_backend(name, run / name)
    if args.user not in set(backend.spec.user_vocab):
        print(f"warning: user {args.user!r} was not in the training data; the out-of-vocabulary "
              "embedding is used", file=sys.stderr)
    ts = corpus["max_timestamp"] if args.timestamp is None else args.timestamp
    backend.build_index(titles)
    c = min(max(args.k, backend.config.num_candidates), len(titles))
    scores, rows = backend.retrieve(np.array([args.user], dtype=object),
                                    np.array([ts], dtype=np.int64), c)
    cand = titles[rows[0]]
    rank = backend.ranking_scores(np.array([args.user] * c, dtype=object),
                                  np.full(c, ts, dtype=np.int64), cand)
    order = np.argsort(-rank, kind="stable")[: args.k]
    print(f"user {args.user} at {ts} ({name}): {c} retrieved, re-ranked")
    print(f"{'#':>3}  {'retrieval':>9}  {'ranking':>7}  title")
    for i, j in enumerate(order, start=1):
        print(f"{i:>3}  {scores[0, j]:9.4f}  {rank[j]:7.4f}  {cand[j]}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run_to_tfrs

    run = Path(args.run)
    _saved_backend(run, "torch")
    if args.k < 10:
        raise UsageError(f"-k {args.k}: the exported index returns k >= 10")
    path = export_run_to_tfrs(run, Path(args.out), k=args.k)
    print(f"wrote TF SavedModel to {path}")
    return 0


COMMANDS = {"run": cmd_run, "recommend": cmd_recommend, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twostage.data.download import DataNotFoundError
    from twostage.data.movielens import DataFormatError
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"twostage {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (DataNotFoundError, DataFormatError, FloatingPointError, RuntimeError) as e:
        print(f"twostage {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
