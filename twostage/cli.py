"""The ``twostage`` command line: run (train + evaluate), recommend, export.

Exit codes: 0 success, 1 a runtime failure (no data, bad data, a damaged run folder, training
diverged), 2 bad usage (a bad flag value, a path the project refuses to overwrite), 130 Ctrl-C.
Every failure is one line (argparse's rejections too: the problem and ``see --help``, no usage
block); ``--debug`` adds the traceback. Text that comes from files (titles, paths echoed in
errors) is printed with its control characters escaped (:func:`printable`).

The flags of ``run`` are generated from the field metadata of :mod:`twostage.config`: adding an
option there puts it on the command line, with its help text, choices and parser.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import typing
from pathlib import Path

from . import env, io
from .io import printable
from .config import (BACKENDS, FIELD_SECTION, MAX_SEED, PRESETS, RENAMED_PRESETS, SECTIONS,
                     Config, field_types, flag_of, preset)

# Only the standard library, config, io and env are imported at start-up: `twostage --help`
# stays fast and the commands import numpy, the data layer and a backend when they run (no
# TensorFlow on a torch run, tested by twostage/tests/test_startup.py).
log = logging.getLogger("twostage")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class UsageError(Exception):
    """Bad flag values or a path the user must change (exit code 2)."""




class _Parser(argparse.ArgumentParser):
    """argparse, with its rejections on one line (the problem and where the usage is) instead
    of the usage block: exit 2, as every usage error of the CLI. Subcommands inherit it."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(' '.join(message.split()))}; see "
                     f"`{self.prog} --help`\n")


# --- flags generated from the config ---------------------------------------------------------
def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _parser_of(kind, parse):
    """argparse ``type`` for a field: its own parser, else from its annotation."""
    fn = parse or {int: int, float: _finite_float, str: str}[kind]

    def convert(text: str):
        try:
            return fn(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = getattr(fn, "__name__", "value")
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field with ``cli`` metadata (plus ``--seed``); unset flags keep the
    config default (argparse.SUPPRESS), so ``config_from_args`` only applies what was given."""
    defaults = Config()
    parser.add_argument("--preset", choices=(*PRESETS, *RENAMED_PRESETS), default="tutorial",
                        metavar="{" + ",".join(PRESETS) + "}",
                        help="a named recipe; other flags change it (tutorial: the article's "
                        "protocol, every default below; best: " + _describe(PRESETS["best"])
                        + "; default: tutorial)")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                        help=f"split, batch orders and initialisation, 0 to {MAX_SEED} "
                        f"(default: {defaults.seed})")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} options")
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            md = f.metadata
            if not md.get("cli", False):
                continue
            flag = flag_of(cls, f)
            default = getattr(getattr(defaults, section), f.name)
            kind = types[f.name]
            args = typing.get_args(kind)
            if type(None) in args:
                kind = next(a for a in args if a is not type(None))
            shown = (",".join(map(str, default)) if isinstance(default, tuple) else
                     "off" if default is None else default)
            if kind is bool:  # an optional bool (None = decided at run time): --x / --no-x
                action = (argparse.BooleanOptionalAction if default is None else
                          "store_false" if md["invert"] else "store_true")
                group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                                   action=action, help=md["help"])
                for old in md.get("old_flags", ()):
                    group.add_argument(old, dest=f.name, default=argparse.SUPPRESS, nargs=0,
                                       const=not md["invert"], action=_deprecated(flag),
                                       help=argparse.SUPPRESS)
                continue
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                               choices=md["choices"], metavar=md["metavar"],
                               type=_parser_of(kind, md["parse"]),
                               help=f"{md['help']} (default: {shown})")
            for old in md.get("old_flags", ()):
                group.add_argument(old, dest=f.name, default=argparse.SUPPRESS,
                                   choices=md["choices"], type=_parser_of(kind, md["parse"]),
                                   action=_deprecated(flag), help=argparse.SUPPRESS)


def _deprecated(new_flag: str) -> type[argparse.Action]:
    """An argparse action storing the value as usual and saying once, on stderr, which flag
    replaces the one given (old spellings keep working)."""

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"twostage: {option_string} is deprecated; use {new_flag}", file=sys.stderr)
            setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
    return Deprecated


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of the flags that were given (UsageError naming the bad value otherwise)."""
    given = {k: v for k, v in vars(args).items() if k in FIELD_SECTION or k == "seed"}
    try:
        name = getattr(args, "preset", "tutorial")
        if name in RENAMED_PRESETS:
            print(f"twostage: --preset {name} is deprecated; use --preset "
                  f"{RENAMED_PRESETS[name]}", file=sys.stderr)
            name = RENAMED_PRESETS[name]
        return preset(name, **given)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _describe(changes: dict) -> str:
    """``{"retrieval_epochs": 20}`` -> ``--retrieval-epochs 20`` (flags as the CLI names them)."""
    flags = {f.name: flag_of(cls, f) for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return " ".join(flags[k] if v is True else f"{flags[k]} {v}" for k, v in changes.items())


# --- parser ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="twostage", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train both stages on a backend, evaluate, write a run "
                         "folder")
    run.add_argument("--backend", choices=(*BACKENDS, "both"), default="torch",
                     help="which framework trains (both: one after the other, same data)")
    run.add_argument("--out", default="runs/latest",
                     help="run folder to write (default runs/latest); replaced only if it is a "
                     "run folder of ours; never the current folder, one above it, or a folder "
                     "inside (or holding) the data folder")
    run.add_argument("--force", action="store_true",
                     help="replace --out even if it holds other files (they are moved aside "
                     "to <out>.replaced-<time>, never deleted)")
    run.add_argument("--schema", default=None, metavar="FILE",
                     help="train on your own data: a schema TOML file (docs/data.md) instead "
                     "of a MovieLens --dataset")
    run.add_argument("--drop-unknown-items", action="store_true",
                     help="--schema: drop interactions whose item the items table lacks "
                     "(counted on stderr) instead of refusing them")
    run.add_argument("--ranking-negatives", type=int, default=0, metavar="N",
                     help="--schema with implicit data: train the ranker on each positive "
                     "against N items drawn uniformly from the catalog (0: retrieval only)")
    add_config_flags(run)

    rec = sub.add_parser("recommend", help="two-stage recommendations for one user from a run")
    rec.add_argument("--run", required=True, help="a folder written by `twostage run`")
    rec.add_argument("--user", required=True, help="user id as in the ratings file, e.g. 42")
    rec.add_argument("--timestamp", type=int, default=None,
                     help="query time (unix seconds; default: the latest time in the data); a "
                     "time outside the training data's range is served with a warning")
    rec.add_argument("-k", type=int, default=10, help="how many recommendations (default 10)")
    rec.add_argument("--backend", choices=BACKENDS, default=None,
                     help="which saved backend (default: the first one saved)")
    rec.add_argument("--device", default="cpu",
                     help="torch device to load the models on (default cpu)")

    exp = sub.add_parser("export", help="export a run's two stages for serving: a TF "
                         "SavedModel (tfrs) or TorchScript programs + FAISS index (torch)")
    exp.add_argument("--run", required=True, help="a folder written by `twostage run`")
    exp.add_argument("--to", choices=EXPORT_TARGETS, default="tfrs",
                     help="tfrs: a SavedModel (retrieval call + `recommend` signature); torch: "
                     "TorchScript query tower and ranking model, the FAISS index, the id map "
                     "and the feature spec, loaded by twostage.serving (default tfrs)")
    exp.add_argument("--out", required=True, help="the export folder (replaced only if it is "
                     "an export of ours of the same kind)")
    exp.add_argument("--force", action="store_true",
                     help="replace --out even if it holds other files (moved aside, never "
                     "deleted)")
    exp.add_argument("--backend", choices=BACKENDS, default=None,
                     help="whose saved weights (default: the first one saved, as `twostage "
                     "recommend`); the other backend's are converted")
    exp.add_argument("--num-candidates", type=int, default=None,
                     help="candidates retrieved before re-ranking, at least k (default: the "
                     "run's eval.num_candidates, as `twostage recommend`)")
    exp.add_argument("-k", type=int, default=None,
                     help="tfrs only: top-k of the SavedModel's retrieval-only call (10 <= k <= "
                     "corpus size; default 100, or the corpus size if smaller); `recommend` "
                     "takes k per call")
    _add_serve_parser(sub)
    return p


def _add_serve_parser(sub) -> None:
    """``twostage serve``'s flags (the service itself: twostage.service, imported when run)."""
    srv = sub.add_parser("serve", help="serve a run folder or an export over HTTP (POST "
                         "/recommend; needs the serve extra: pip install 'twostage[serve]')")
    srv.add_argument("path", help="a run folder (`twostage run`) or an export (`twostage export`)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    srv.add_argument("--workers", type=int, default=1, help="processes, each with the model")
    srv.add_argument("--threads", type=int, default=1, help="torch threads per process")
    srv.add_argument("--backend", choices=BACKENDS, default=None,
                     help="a run folder's saved backend (default: the first saved)")
    srv.add_argument("--batch-wait-ms", type=float, default=0.0, help="longest wait of a "
                     "request for others to score with (0 to 1000; default 0: a batch takes "
                     "the requests that queued while the model was busy)")
    srv.add_argument("--batch-users", type=int, default=256, help="users per batch (default 256)")
    srv.add_argument("--request-timeout", type=float, default=10.0, help="seconds a client has "
                     "to send a request's head, then its body (default 10)")
    srv.add_argument("--no-seen", dest="seen", action="store_false", help="do not rebuild a "
                     "run's training split (exclude_seen is then refused)")
    srv.add_argument("--http", choices=("httptools", "h11"), default="httptools",
                     help="HTTP/1.1 parser: httptools (C, default) or h11 (pure Python)")
    srv.add_argument("--no-freeze-heap", dest="freeze_heap", action="store_false",
                     help="leave the loaded model's objects to the garbage collector (default: "
                     "frozen once loaded, so a full collection does not pause requests)")


# --- commands --------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import backend_class
    config = config_from_args(args)
    names = list(BACKENDS) if args.backend == "both" else [args.backend]
    if args.schema is not None:
        return run_schema(args, config, names)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    nproc = config.distributed.nproc
    if nproc > 1 and args.backend == "both":
        raise UsageError(f"--nproc {nproc} runs one backend at a time: pass --backend torch "
                         "(torch.distributed) or --backend tfrs (MirroredStrategy)")
    if world > 1 and names != ["torch"]:
        raise UsageError(f"launched as {world} processes (torchrun), which is for --backend "
                         "torch; the TFRS backend runs its replicas in one process: "
                         "`twostage run --backend tfrs --nproc N`")
    if int(os.environ.get("RANK", "0")) == 0:  # the process that writes: its paths, first
        _check_output_paths(args, config)
    if names == ["torch"] and nproc > 1 and world == 1:
        return backend_class("torch").launch_workers(
            [*(["--debug"] if args.debug else []), *args.argv], nproc)
    _check_backends(names, config)
    if int(os.environ.get("RANK", "0")) > 0:  # one copy of each warning: rank 0's
        logging.getLogger("twostage").setLevel(logging.ERROR)
    if world == 1:
        return _train_and_write(args, config, names, lead=True)
    with backend_class("torch").process_group(config) as group:   # torchrun's workers
        return _train_and_write(args, config, names, lead=group is None or group.rank == 0)


def run_schema(args: argparse.Namespace, config: Config, names: list[str]) -> int:
    """``twostage run --schema FILE``: ``owndata.load``, ``owndata.train`` per backend, one run
    folder (``--out``; with both backends a sub-folder each), the report on stdout."""
    from . import owndata
    from .report import TensorBoardWriter
    if args.ranking_negatives < 0:
        raise UsageError(f"--ranking-negatives {args.ranking_negatives}: must be >= 0")
    _check_output_paths(args, config)
    owndata.check_schema_config(config)
    _check_backends(names, config)
    data = owndata.load(args.schema, config, drop_unknown_items=args.drop_unknown_items)
    config = _top_ks_within(config, len(data.item_ids))
    runs = []
    for name in names:
        writer = (TensorBoardWriter(Path(config.output.tensorboard) / name)
                  if config.output.tensorboard else None)
        try:
            runs.append(owndata.train(data, config, name, on_epoch=writer,
                                      ranking_negatives=args.ranking_negatives))
        finally:
            if writer is not None:
                writer.close()
    out = owndata.save_runs(runs, args.out, force=args.force)
    for run in runs:
        print(run.report.markdown())
    print(f"run folder: {printable(out)}")
    return 0


def _check_output_paths(args: argparse.Namespace, config: Config) -> None:
    """Refuse, before any data is loaded, an ``--out`` or ``--tensorboard`` the run cannot or
    must not write: the current folder or one above it, a folder inside the data folder (or
    one holding it), a ``--tensorboard`` that cannot become a writable folder. Creates
    nothing."""
    _check_not_cwd(args.out, "--out", "runs/latest")
    _check_outside_data(Path(args.out), "--out", config)
    tensorboard = config.output.tensorboard
    if tensorboard:
        _check_outside_data(Path(tensorboard), "--tensorboard", config)
        problem = _unwritable(Path(tensorboard))
        if problem:
            raise UsageError(f"--tensorboard {tensorboard}: {problem}; choose a folder you can "
                             "write to")


def _check_not_cwd(path: str, flag: str, example: str) -> None:
    """UsageError for an output folder that is the current folder or one above it (``.``,
    ``..``, ``a/..``, the working directory by its full path): an output folder is replaced as
    a whole, by a rename beside it, which cannot be done to the folder one stands in."""
    here, target = Path.cwd().resolve(), Path(path).resolve()
    if Path(path).name in ("", ".", "..") or target == here or target in here.parents:
        raise UsageError(f"{flag} {path} is the current folder or one above it, which is "
                         f"replaced as a whole; name a folder of its own, e.g. {flag} {example}")


def _check_outside_data(path: Path, flag: str, config: Config) -> None:
    """UsageError for an output inside the data folder of ``config`` (or holding it): the
    project promises to only read the data folder (its own download cache's included)."""
    from .data.download import data_source_dir
    data = data_source_dir(config.data.data_dir, dataset=config.data.dataset).resolve()
    target = path.resolve()
    if target == data or data in target.parents or target in data.parents:
        where = "holds" if target in data.parents else "is inside"
        raise UsageError(f"{flag} {path} {where} the data folder {data}, which twostage only "
                         f"reads; choose a folder outside it, e.g. {flag} runs/latest")


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot become a writable folder, found without creating anything (the
    nearest existing folder on the way gets a probe file, removed at once); None if it can."""
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.NamedTemporaryFile(dir=existing, prefix=f".probe{io.TMP_TAG}").close()
    except OSError as e:
        return f"{existing} is not writable ({e.strerror or e})"
    return None


def _train_and_write(args: argparse.Namespace, config: Config, names: list[str],
                     lead: bool) -> int:
    """Load, train, evaluate every backend of ``names``; the lead process (the only one, or
    rank 0) locks and checks ``--out`` first and writes the run folder at the end."""
    from . import rundir
    with contextlib.ExitStack() as lock:
        out = Path(args.out)
        if lead:
            try:  # before any data is loaded: a bad --out must not cost a whole training
                out = rundir.prepare(out, force=args.force, lock=lock)
            except (NotADirectoryError, PermissionError) as e:
                raise UsageError(f"--out {args.out}: {e}") from None
        return _train_and_write_locked(args, config, names, lead, out)


def _train_and_write_locked(args: argparse.Namespace, config: Config, names: list[str],
                            lead: bool, out: Path) -> int:
    """:func:`_train_and_write` with ``out`` checked and locked by the lead process."""
    from . import rundir
    from .dataset import load_dataset
    from .pipeline import check_trainable, run_backend
    from .report import TensorBoardWriter, comparison_table, table, write_results

    quiet = config.output.quiet or not lead
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    dataset = load_dataset(config, progress=not quiet)
    say(f"data: {dataset.facts()}")
    try:
        check_trainable(dataset, config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    config = _top_ks_within(config, len(dataset.corpus_titles))
    config = config if lead else config.replace(quiet=True)
    # the baselines are computed once, by the first backend's run_backend after its training
    # (so its first step comes seconds sooner), and shared by every other backend's report
    reports, backends, baselines = {}, {}, None
    for name in names:
        say(f"[{name}] training retrieval ({config.train.retrieval_epochs} epochs) and ranking "
            f"({config.train.ranking_epochs} epochs), evaluating"
            + (", then the baselines: random, most-popular, EASE (lambda on a validation slice "
               "of training)" if baselines is None else ""))
        writer = (TensorBoardWriter(Path(config.output.tensorboard) / name)
                  if config.output.tensorboard and lead else None)
        try:
            backends[name], reports[name], _ = run_backend(name, dataset, config,
                                                           on_epoch=writer,
                                                           baselines=baselines)
        finally:
            if writer is not None:
                writer.close()
        baselines = reports[name]["baselines"]
    if not lead:
        return 0
    header = (f"# twostage run ({', '.join(names)}) on {dataset.facts()['source']}, "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
    rundir.write(out, reports=reports, corpus_titles=dataset.corpus_titles,
                 max_timestamp=int(dataset.timestamp.max()),
                 spec_fingerprint=dataset.spec.fingerprint(), data=dataset.facts(),
                 save_backend=lambda name, path: backends[name].save(path),
                 write_results=lambda tmp: write_results(tmp, reports, header),
                 force=args.force)
    print(table(reports))
    print("\nmodel vs baselines, ratio model / baseline (difference):\n"
          + comparison_table(reports))
    say(f"wrote the run folder {out}/ (results.json, results.md, curves, models)")
    return 0


def _top_ks_within(config: Config, catalogue: int) -> Config:
    """``config`` with only the top-k accuracies a catalogue of ``catalogue`` titles can tell
    apart: a larger k would report 1.0 by construction, so it is dropped with one warning; if
    none is left, UsageError (before training)."""
    ks = config.eval.top_ks
    kept = tuple(k for k in ks if k <= catalogue)
    if kept == ks:
        return config
    shown = ",".join(map(str, ks))
    if not kept:
        raise UsageError(f"--top-ks {shown}: every k exceeds the catalogue of {catalogue} "
                         "titles, where the top-k accuracy is 1.0 by construction; pass k <= "
                         f"{catalogue}, e.g. --top-ks 1,{catalogue}")
    log.warning("--top-ks %s: not reporting k=%s, above the catalogue of %d titles (where the "
                "top-k accuracy is 1.0 by construction); reporting k=%s", shown,
                ",".join(str(k) for k in ks if k > catalogue), catalogue,
                ",".join(map(str, kept)))
    return config.replace(top_ks=kept)


def _check_backends(names: list[str], config: Config) -> None:
    """Refuse, before any data is loaded, what a backend cannot do (no torch/TF import here
    beyond what the chosen backend needs)."""
    from .pipeline import backend_class
    for name in names:
        check = getattr(backend_class(name), "check_config", None)
        if check is not None:
            try:
                check(config)
            except (ValueError, RuntimeError) as e:
                raise UsageError(str(e)) from None


def _query_time(args: argparse.Namespace, default: int) -> int:
    ts = default if args.timestamp is None else args.timestamp
    if not INT64_MIN <= ts <= INT64_MAX:
        raise UsageError(f"--timestamp {ts} does not fit a 64-bit timestamp; pass unix seconds "
                         f"such as {default}")
    return ts


def _warn_outside_data_time(ts: int, boundaries, max_timestamp: int) -> None:
    """One warning line on stderr when the query time is outside the training data's time range
    (the spec's bucket boundaries span it): its time features are then extrapolated."""
    lo, hi = int(min(boundaries)), max(int(max(boundaries)), max_timestamp)
    if not lo <= ts <= hi:
        day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
        print(f"warning: --timestamp {ts} is outside the training data's time range {lo}.."
              f"{hi} ({day(lo)} to {day(hi)} UTC); its time features are extrapolated, so the "
              "recommendations may mean little", file=sys.stderr)


def cmd_recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from . import owndata
    from .checkpoint import stored_config
    from .index.base import check_k
    from .pipeline import load_backend, recommend
    from .rundir import RunDir

    if args.k < 1:
        raise UsageError(f"-k {args.k}: must be >= 1")
    if io.marker_kind(Path(args.run)) in owndata.KINDS:
        return recommend_schema(args)
    run = RunDir.open(args.run)
    name, folder = run.backend_dir(args.backend)
    stored = stored_config(folder)
    try:
        config = stored.replace(device=args.device, nproc=1)  # serve in this process
    except ValueError as e:
        raise UsageError(f"--device {args.device}: {e}") from None
    backend = load_backend(name, folder, config)
    if args.user not in set(backend.spec.user_vocab):
        print(f"warning: user {args.user!r} was not in the training data; the out-of-vocabulary "
              "embedding is used", file=sys.stderr)
    ts = _query_time(args, run.max_timestamp)
    _warn_outside_data_time(ts, backend.spec.ts_boundaries, run.max_timestamp)
    titles = run.corpus_titles
    try:
        check_k(args.k, len(titles), "-k")
    except ValueError as e:
        raise UsageError(str(e)) from None
    backend.build_index(titles)
    c = min(max(args.k, backend.config.eval.num_candidates), len(titles))
    recs = recommend(backend, np.array([args.user], dtype=object), np.array([ts], np.int64), c,
                     titles)
    print(f"user {printable(args.user)} at {ts} ({name}): {c} retrieved, re-ranked")
    print(f"{'#':>3}  {'retrieval':>9}  {'ranking':>7}  title")
    for i, j in enumerate(recs.reranked()[0, : args.k], start=1):
        if recs.rows[0, j] < 0:     # an approximate index found fewer than c candidates
            print(f"{i:>3}  (no more candidates: the index returned fewer; raise --index-nprobe "
                  "or --index-ef-search when training)")
            break
        print(f"{i:>3}  {recs.retrieval_scores[0, j]:9.4f}  {recs.ranking_scores[0, j]:7.4f}  "
              f"{printable(titles[recs.rows[0, j]])}")
    return 0


def recommend_schema(args: argparse.Namespace) -> int:
    """``twostage recommend`` of a ``--schema`` run: the retrieval towers' top k, the user's
    training items excluded."""
    from . import owndata
    run = owndata.load_run(args.run, backend=args.backend)
    if str(args.user) not in set(run.data.user_ids.tolist()):
        print(f"warning: user {args.user!r} was not in the training data; the unknown-user "
              "embedding is used", file=sys.stderr)
    items = run.recommend([args.user], k=min(args.k, len(run.data.item_ids)))[0]
    print(f"user {printable(args.user)} ({run.trainer.name}): top {len(items)}, seen items "
          "excluded")
    for i, item in enumerate(items, start=1):
        print(f"{i:>3}  {printable(item)}")
    return 0


EXPORT_TARGETS = ("tfrs", "torch")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run_to_tfrs, export_run_to_torch
    from .rundir import RunDir
    from .serving import SAVEDMODEL_KIND, TORCH_KIND

    run = RunDir.open(args.run)
    size = len(run.corpus_titles)
    if args.to == "torch" and args.k is not None:
        raise UsageError("-k sets the SavedModel's retrieval-only top-k (--to tfrs); the torch "
                         "export takes k at each recommend call: drop -k")
    k = min(100, size) if args.k is None else args.k
    if args.to == "tfrs" and not 10 <= k <= size:
        raise UsageError(f"-k {k}: the exported index returns 10 <= k <= {size} (the run's "
                         "corpus size)")
    if args.num_candidates is not None and args.num_candidates < 1:
        raise UsageError(f"--num-candidates {args.num_candidates}: must be >= 1")
    run.backend_dir(args.backend)  # a missing backend fails before anything is loaded
    _check_not_cwd(args.out, "--out", "serving")
    out = Path(args.out)
    io.check_replaceable(out, SAVEDMODEL_KIND if args.to == "tfrs" else TORCH_KIND,
                         force=args.force)
    if args.to == "tfrs":
        path = export_run_to_tfrs(run, out, backend=args.backend, k=k,
                                  num_candidates=args.num_candidates, force=args.force)
        print(f"wrote TF SavedModel to {path} (retrieval call and `recommend` signature)")
    else:
        path = export_run_to_torch(run, out, backend=args.backend,
                                   num_candidates=args.num_candidates, force=args.force)
        print(f"wrote torch export to {path}; serve it with twostage.serving.load({str(path)!r})"
              f" or `python -m twostage.serving {path} --user ID`")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from . import service
    except ImportError as e:
        raise UsageError(f"twostage serve needs the serve extra ({e}): pip install "
                         "'twostage[serve]'") from None
    try:
        return service.main(args)
    except service.OptionError as e:
        raise UsageError(str(e)) from None


COMMANDS = {"run": cmd_run, "recommend": cmd_recommend, "export": cmd_export,
            "serve": cmd_serve}


def _project_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors -> exit 2, runtime errors -> exit 1) known to the project."""
    from .backend import UnsupportedOptionError
    from .checkpoint import CheckpointError, CheckpointNotFoundError
    from .data.download import DataNotFoundError
    from .data.movielens import DataFormatError
    from .rundir import RunDirError, RunDirNotFoundError
    usage = (UsageError, io.OwnershipError, UnsupportedOptionError, RunDirNotFoundError)
    runtime = (DataNotFoundError, DataFormatError, CheckpointError, CheckpointNotFoundError,
               RunDirError, FloatingPointError, OSError, ValueError, RuntimeError)
    return usage, runtime


def main(argv: list[str] | None = None) -> int:
    env.setup_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = [a for a in argv if a != "--debug"]  # what --nproc relaunches in each worker
    logging.basicConfig(level=logging.WARNING, format="twostage: %(message)s")
    usage, runtime = _project_errors()
    prefix = f"twostage {args.command}: error:"
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"twostage {args.command}: interrupted; nothing half-written was left in place",
              file=sys.stderr)
        return 130
    except usage as e:
        _report(prefix, e, args.debug)
        return 2
    except runtime as e:
        _report(prefix, e, args.debug)
        return 1
    except Exception as e:  # a bug: still one line unless --debug
        _report(f"{prefix} internal error ({type(e).__name__}; rerun with --debug and report "
                "it):", e, args.debug)
        return 1


def _report(prefix: str, error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
    message = str(error).strip() or type(error).__name__
    print(printable(f"{prefix} {' '.join(message.split())}"), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
