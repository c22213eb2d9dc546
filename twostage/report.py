"""Write a run's results: results.json, results.md, PNG curves per backend, TensorBoard events.

Curves are plotted per example (the retrieval loss is a SUM over a batch, so a training batch of
2,048 and a validation batch of 4,096 rows would not compare otherwise); TensorBoard gets the
same figures under the same tags from both backends, so their curves overlay.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import io
from .backend import History
from .pipeline import audience_view, flatten

TABLE_ROWS = (
    "retrieval.top_k_accuracy.1", "retrieval.top_k_accuracy.5", "retrieval.top_k_accuracy.10",
    "retrieval.top_k_accuracy.50", "retrieval.top_k_accuracy.100",
    "ranking.binary_accuracy", "ranking.auc", "ranking.log_loss",
    "two_stage.ndcg@10_retrieval", "two_stage.ndcg@10_reranked",
    "two_stage.hit@10_retrieval", "two_stage.hit@10_reranked",
    "two_stage.mrr_retrieval", "two_stage.mrr_reranked",
    "retrieval.top_k_accuracy_exclude_seen.1", "retrieval.top_k_accuracy_exclude_seen.5",
    "retrieval.top_k_accuracy_exclude_seen.10", "retrieval.top_k_accuracy_exclude_seen.50",
    "retrieval.top_k_accuracy_exclude_seen.100",
    "two_stage_exclude_seen.ndcg@10_retrieval", "two_stage_exclude_seen.ndcg@10_reranked",
    "two_stage_exclude_seen.hit@10_retrieval", "two_stage_exclude_seen.hit@10_reranked",
    "two_stage_exclude_seen.mrr_retrieval", "two_stage_exclude_seen.mrr_reranked",
    "timings_s.setup", "timings_s.retrieval_fit", "timings_s.ranking_fit",
    "timings_s.evaluation", "timings_s.total",
)
BASELINE_NAMES = {"random": "random", "popular": "most-popular", "ease": "EASE",
                  "recent": "recent-popular"}
PROTOCOL_SUFFIX = {"seed": "", "exclude_seen": "_exclude_seen"}
SEED_FIGURES = {"retrieval.top_k_accuracy.100": 0.28, "ranking.binary_accuracy": 0.7,
                "two_stage.ndcg@10_retrieval": 0.005736, "two_stage.ndcg@10_reranked": 0.007694}


def table(reports: dict[str, dict], with_seed: bool = True) -> str:
    """Markdown table: one row per metric, one column per backend (+ difference, + seed)."""
    names = list(reports)
    flat = {n: flatten(r) for n, r in reports.items()}
    header = ["metric", *names]
    if len(names) == 2:
        header.append(f"{names[0]} - {names[1]}")
    if with_seed:
        header.append("seed (TFRS article)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in TABLE_ROWS:
        if not any(row in f for f in flat.values()):
            continue
        values = [flat[n].get(row) for n in names]
        cells = [row, *(_fmt(v) for v in values)]
        if len(names) == 2:
            both = None not in values
            cells.append(_fmt(values[0] - values[1], signed=True) if both else "")
        if with_seed:
            cells.append(_fmt(SEED_FIGURES.get(row)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return ""
    return f"{v:+.5f}" if signed else f"{v:.5f}" if abs(v) < 10 else f"{v:.1f}"


def _baselines(reports: dict[str, dict]) -> dict:
    """The baselines of a run (the same for every backend: computed once per run)."""
    return next((r["baselines"] for r in reports.values() if r.get("baselines")), {})


def _ks(reports: dict[str, dict]) -> list[str]:
    first = next(iter(reports.values()), {})
    return list(first.get("retrieval", {}).get("top_k_accuracy", {}))


def _ndcg_name(reports: dict[str, dict]) -> str | None:
    first = next(iter(reports.values()), {})
    return next((n[: -len("_reranked")] for n in first.get("two_stage", {})
                 if n.startswith("ndcg@") and n.endswith("_reranked")), None)


def _with_error(value: float | None, error: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" + (f" ± {error:.4f}" if error is not None else "")


def _column(entry: dict, protocol: str, k: str | None, ndcg: str | None) -> str:
    """One cell: a model report's or a baseline entry's top-k (with its standard error) or
    nDCG (the model's after re-ranking, a baseline's of its own order)."""
    suffix = PROTOCOL_SUFFIX[protocol]
    if entry.get("skipped"):
        return "skipped"
    if k is not None:
        block = entry.get("retrieval", entry)
        value = block.get("top_k_accuracy" + suffix, {}).get(k)
        error = block.get("standard_error", {}).get("top_k_accuracy" + suffix, {}).get(k)
        return _with_error(value, error)
    two = entry.get("two_stage" + suffix) or entry.get("positives" + suffix) or {}
    value = two.get(f"{ndcg}_reranked", two.get(ndcg))
    return "" if value is None else f"{value:.4f}"


def protocol_table(reports: dict[str, dict]) -> str:
    """Markdown: every top-k accuracy (± standard error) and nDCG of each backend and each
    baseline, under both protocols."""
    baselines = _baselines(reports).get("models", {})
    if not baselines and not any("top_k_accuracy_exclude_seen" in r.get("retrieval", {})
                                 for r in reports.values()):
        return ""
    names = [*reports, *baselines]
    header = ["protocol", "metric", *reports,
              *(_baseline_label(n, baselines[n]) for n in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ndcg = _ndcg_name(reports)
    entries = {**reports, **baselines}
    for protocol in PROTOCOL_SUFFIX:
        rows = [(f"top-{k}", k, None) for k in _ks(reports)]
        if ndcg:
            rows.append((f"{ndcg} (re-ranked; baselines: own order)", None, ndcg))
        for label, k, metric in rows:
            cells = [_column(entries[n], protocol, k, metric) for n in names]
            lines.append("| " + " | ".join([protocol, label, *cells]) + " |")
    return "\n".join(lines)


AUDIENCE_LABELS = {"warm": "warm users (>= 1 training rating)",
                   "cold": "cold users (no training rating)",
                   "new_title": "new titles (no training rating)"}


def audience_table(reports: dict[str, dict]) -> str:
    """Markdown: top-10, top-100 and nDCG of each backend and baseline per audience (warm
    users, cold users, new titles) and protocol, with each audience's query count."""
    baselines = _baselines(reports).get("models", {})
    first = next(iter(reports.values()), {})
    if "by_audience" not in first.get("retrieval", {}):
        return ""
    ks = [k for k in _ks(reports) if k in ("10", "100")] or _ks(reports)
    ndcg = _ndcg_name(reports)
    entries = {**reports, **baselines}
    header = ["audience (test ratings)", "protocol", "metric", *reports,
              *(_baseline_label(n, baselines[n]) for n in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for audience, label in AUDIENCE_LABELS.items():
        count = audience_view(first, audience)["num_queries"]
        if not count:
            lines.append(f"| {label}: 0 | | | " + " | ".join("" for _ in entries) + " |")
            continue
        views = {n: audience_view(e, audience) for n, e in entries.items()}
        for protocol in PROTOCOL_SUFFIX:
            rows = [(f"top-{k}", k, None) for k in ks] + ([(ndcg, None, ndcg)] if ndcg else [])
            for metric, k, name in rows:
                cells = [_column(v, protocol, k, name) if v.get("num_queries") else ""
                         for v in views.values()]
                lines.append("| " + " | ".join([f"{label}: {count}", protocol, metric, *cells])
                             + " |")
    return "\n".join(lines)


def _baseline_label(name: str, entry: dict) -> str:
    label = BASELINE_NAMES.get(name, name)
    if "window_days" in entry:
        days = entry["window_days"]
        return f"{label} ({'all' if days is None else f'{days:g} d'})"
    return f"{label} (λ={entry['lambda']:g})" if "lambda" in entry else label


def comparison_table(reports: dict[str, dict]) -> str:
    """Markdown: by how much each backend beats (ratio > 1, difference > 0) or trails each
    baseline, per protocol, from the reports' ``vs_baselines``."""
    ks = [k for k in _ks(reports) if k in ("1", "10", "100")] or _ks(reports)
    ndcg = _ndcg_name(reports)
    figures = [*(f"top_k_accuracy.{k}" for k in ks), *([ndcg] if ndcg else [])]
    header = ["model vs baseline", "protocol",
              *(f"top-{k}" for k in ks), *([f"{ndcg}"] if ndcg else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, report in reports.items():
        for baseline, protocols in report.get("vs_baselines", {}).items():
            for protocol, values in protocols.items():
                cells = [_ratio_cell(values.get(f)) for f in figures]
                lines.append("| " + " | ".join([f"{name} vs {BASELINE_NAMES.get(baseline, baseline)}",
                                                protocol, *cells]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _ratio_cell(value: dict | None) -> str:
    if not value:
        return ""
    ratio = value.get("ratio")
    shown = f"x{ratio:.2f}" if ratio is not None else "x∞"
    return f"{shown} ({value['difference']:+.4f})"


def baseline_notes(reports: dict[str, dict]) -> str:
    """One line per fact a reader needs: sample size, exclusion rule, ties, EASE's lambda or
    why it was skipped."""
    first = next(iter(reports.values()), {})
    sample, base = first.get("eval_sample", {}), _baselines(reports)
    notes = []
    if sample:
        how = (f"a seeded sample (eval_queries={sample['eval_queries']}, seed {sample['seed']})"
               if sample.get("sampled") else "all of them")
        notes.append(f"- Evaluated {sample['num_queries']} of {sample['num_test_rows']} test "
                     f"ratings ({how}); ± is the binomial standard error sqrt(p(1-p)/N).")
        notes.append(f"- exclude_seen removes, {sample['exclude_seen']}.")
    if base:
        notes.append(f"- Baselines rank ties by a fixed order ({base.get('tie_break')}); the "
                     "models keep TFRS's rule (ties in the positive's favour).")
        for name, entry in base.get("models", {}).items():
            if entry.get("skipped"):
                notes.append(f"- {BASELINE_NAMES.get(name, name)} skipped: {entry['skipped']}.")
            elif entry.get("expectation"):
                notes.append(f"- {BASELINE_NAMES.get(name, name)}: the exact expectation over "
                             "uniformly random orders of the corpus rows, not one draw.")
            elif "window_days" in entry:
                v = entry["validation"]
                tried = ", ".join(f"{w}: {acc:.4f}" for w, acc in v["scores"].items())
                days = entry["window_days"]
                notes.append(f"- recent-popular counts each title's ratings in the "
                             f"{'whole past' if days is None else f'{days:g} days'} before each "
                             "query's time (causal: nothing at or after it; the whole rating "
                             f"log), window chosen by {v['metric']} ({v['num_queries']} "
                             "validation ratings, counted from the training split only; "
                             f"tried {tried}).")
            elif "validation" in entry:
                v = entry["validation"]
                tried = ", ".join(f"{lam}: {acc:.4f}" for lam, acc in v["scores"].items())
                notes.append(f"- EASE lambda={entry['lambda']:g}, chosen by {v['metric']} "
                             f"({v['num_queries']} validation ratings carved out of the training "
                             f"split; tried {tried}).")
    return "\n".join(notes)


def results_markdown(reports: dict[str, dict], header: str = "") -> str:
    """The whole results.md: the metric table, then both protocols beside the baselines and the
    model-against-baseline ratios."""
    parts = [header, table(reports)]
    protocols, versus = protocol_table(reports), comparison_table(reports)
    if protocols:
        parts += ["## Both protocols, beside the baselines (the same metric code)", protocols,
                  baseline_notes(reports)]
    if versus:
        parts += ["## The model against each baseline: ratio model / baseline (difference)",
                  versus]
    audiences = audience_table(reports)
    if audiences:
        parts += ["## By audience: warm users, cold users, new titles (the same metric code; "
                  "nDCG counts test positives only)", audiences]
    return "\n\n".join(p for p in parts if p) + "\n"


def _matplotlib_dir() -> Path:
    """Where matplotlib keeps its config and font cache: ``<project cache>/matplotlib``
    (``$TWOSTAGE_CACHE`` or ``~/.cache/twostage``, see twostage.data.download), else, where that
    cannot be created, a temporary folder removed at exit."""
    from .data.download import default_cache_dir
    folder = default_cache_dir() / "matplotlib"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    except OSError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="twostage-matplotlib-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, with matplotlib's files kept out of
    ``$HOME/.config`` and ``$HOME/.cache``: unless ``MPLCONFIGDIR`` says where, it is set to
    :func:`_matplotlib_dir` before matplotlib is first imported (matplotlib reads it once, at
    import: a process that imported it earlier keeps its choice)."""
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(_matplotlib_dir())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(name: str, report: dict, path: Path) -> None:
    """Loss per epoch of both stages and the validation metrics, one PNG per backend."""
    plt = pyplot()

    hist = report["history"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, stage in zip(axes[:2], ("retrieval", "ranking")):
        loss = hist[stage].get("loss_per_example") or []
        ax.plot(range(1, len(loss) + 1), loss, label="training loss per example")
        val_loss = hist[stage]["val"].get("loss_per_example")
        if val_loss:
            ax.plot(*zip(*val_loss), "o-", label="validation loss per example")
        ax.set(title=f"{name}: {stage}", xlabel="epoch", ylabel="loss per example")
        ax.legend()
    for metric, points in {**hist["retrieval"]["val"], **hist["ranking"]["val"]}.items():
        if not metric.startswith("loss") and points:
            axes[2].plot(*zip(*points), "o-", label=metric)
    axes[2].set(title=f"{name}: validation metrics", xlabel="epoch")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def write_results(out: Path, reports: dict[str, dict], header: str = "") -> list[Path]:
    """results.json (backend -> report), results.md and <backend>_curves.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "results.json", json.dumps(reports, indent=1, sort_keys=True))
    io.write_text(out / "results.md", results_markdown(reports, header))
    written = [out / "results.json", out / "results.md"]
    for name, report in reports.items():
        plot_history(name, report, out / f"{name}_curves.png")
        written.append(out / f"{name}_curves.png")
    return written


class TensorBoardWriter:
    """An ``on_epoch`` callback (twostage.backend.EpochCallback) writing TensorBoard scalars.

    Tags, the same for both backends: ``<stage>/loss_per_example``, ``<stage>/loss`` (mean step
    loss), ``<stage>/train/<metric>``, ``<stage>/val/<metric>`` (at validated epochs); the step
    is the 1-based epoch. Written with TensorBoard's own record writer and protos (no TensorFlow
    or torch import), one event file per writer.
    """

    def __init__(self, directory: Path | str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        directory = io.ensure_writable_dir(directory, "--tensorboard")
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.twostage")
        self._file = open(directory / name, "wb")
        self._records = RecordWriter(self._file)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v))
                                       for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def __call__(self, stage: str, epoch: int, history: History) -> None:
        values = {}
        if history.loss_per_example:
            values[f"{stage}/loss_per_example"] = history.loss_per_example[-1]
        if history.loss:
            values[f"{stage}/loss"] = history.loss[-1]
        values.update({f"{stage}/train/{k}": v[-1] for k, v in history.metrics.items() if v})
        values.update({f"{stage}/val/{k}": v[-1][1] for k, v in history.val.items()
                       if v and v[-1][0] == epoch})
        self.scalars(epoch, values)

    def close(self) -> None:
        self._file.close()
