"""Write a run's results: results.json, results.md, PNG curves per backend, TensorBoard events.

Curves are plotted per example (the retrieval loss is a SUM over a batch, so a training batch of
2,048 and a validation batch of 4,096 rows would not compare otherwise); TensorBoard gets the
same figures under the same tags from both backends, so their curves overlay.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from . import io
from .backend import History
from .pipeline import flatten

TABLE_ROWS = (
    "retrieval.top_k_accuracy.1", "retrieval.top_k_accuracy.5", "retrieval.top_k_accuracy.10",
    "retrieval.top_k_accuracy.50", "retrieval.top_k_accuracy.100",
    "ranking.binary_accuracy", "ranking.auc", "ranking.log_loss",
    "two_stage.ndcg@10_retrieval", "two_stage.ndcg@10_reranked",
    "two_stage.hit@10_retrieval", "two_stage.hit@10_reranked",
    "two_stage.mrr_retrieval", "two_stage.mrr_reranked",
    "timings_s.retrieval_fit", "timings_s.ranking_fit", "timings_s.evaluation", "timings_s.total",
)
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


def plot_history(name: str, report: dict, path: Path) -> None:
    """Loss per epoch of both stages and the validation metrics, one PNG per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    io.write_text(out / "results.md", (header + "\n\n" if header else "") + table(reports) + "\n")
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
