"""Write a run's results: results.json, results.md and PNG curves per backend."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_history(name: str, report: dict, path: Path) -> None:
    """Loss per epoch of both stages and the validation metrics, one PNG per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = report["history"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, stage in zip(axes[:2], ("retrieval", "ranking")):
        loss = hist[stage]["loss"]
        ax.plot(range(1, len(loss) + 1), loss, label="train loss (mean of steps)")
        val_loss = hist[stage]["val"].get("loss")
        if val_loss:
            ax.plot(*zip(*val_loss), "o-", label="validation loss")
        ax.set(title=f"{name}: {stage}", xlabel="epoch", ylabel="loss")
        ax.legend()
    for metric, points in {**hist["retrieval"]["val"], **hist["ranking"]["val"]}.items():
        if metric != "loss" and points:
            axes[2].plot(*zip(*points), "o-", label=metric)
    axes[2].set(title=f"{name}: validation metrics", xlabel="epoch")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def write_run(out: Path, reports: dict[str, dict], header: str = "") -> list[Path]:
    """results.json (backend -> report), results.md and <backend>_curves.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps(reports, indent=1, sort_keys=True))
    write_atomic(out / "results.md", (header + "\n\n" if header else "") + table(reports) + "\n")
    written = [out / "results.json", out / "results.md"]
    for name, report in reports.items():
        plot_history(name, report, out / f"{name}_curves.png")
        written.append(out / f"{name}_curves.png")
    return written
