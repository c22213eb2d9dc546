"""The torch serving export: the query tower and the ranking model as TorchScript programs, the
FAISS index and the id map, in one folder that ``twostage.serving.TorchExport`` loads without
this package. The twin of tfrs_impl/serving.py (the SavedModel of the same two stages).

The programs take positional tensors, the feature spec's encoded columns
(``twostage.serving.QUERY_INPUTS`` / ``RANKING_INPUTS``), so a server needs no dict plumbing;
they are ``torch.jit.trace`` of the trained modules in eval mode on the CPU (``bag_mean``'s CPU
branch), checked by the tracer on batches of other sizes and token widths. The layout and its
manifest are ``twostage.serving``'s (the reader owns the format).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from twostage import io
from twostage import serving as layout
from twostage.data.features import FeatureSpec
from twostage.recipes import HISTORY_LENGTH

from .index import build_index
from .models import QueryModel, RankingModel


class QueryProgram(nn.Module):
    """(user_index [B] int64, ts_bucket [B] int64, ts_norm [B] float32) -> [B, D] float32."""

    def __init__(self, query_model: QueryModel) -> None:
        super().__init__()
        self.query_model = query_model

    def forward(self, user_index: torch.Tensor, ts_bucket: torch.Tensor,
                ts_norm: torch.Tensor) -> torch.Tensor:
        return self.query_model({"user_index": user_index, "ts_bucket": ts_bucket,
                                 "ts_norm": ts_norm})


class HistoryQueryProgram(QueryProgram):
    """The query inputs + history [B, H] int64 title ids (0 = padding; ``model.history``)
    -> [B, D] float32."""

    def forward(self, user_index: torch.Tensor, ts_bucket: torch.Tensor, ts_norm: torch.Tensor,
                history: torch.Tensor) -> torch.Tensor:
        return self.query_model({"user_index": user_index, "ts_bucket": ts_bucket,
                                 "ts_norm": ts_norm, "history": history})


class RankingProgram(nn.Module):
    """The query inputs + (title_index [B] int64, title_tokens [B, L] int64, 0 = padding)
    -> [B] float32 probabilities (the ranking model's sigmoid output)."""

    def __init__(self, ranking_model: RankingModel) -> None:
        super().__init__()
        self.ranking_model = ranking_model

    def forward(self, user_index: torch.Tensor, ts_bucket: torch.Tensor, ts_norm: torch.Tensor,
                title_index: torch.Tensor, title_tokens: torch.Tensor) -> torch.Tensor:
        return self.ranking_model({"user_index": user_index, "ts_bucket": ts_bucket,
                                   "ts_norm": ts_norm, "title_index": title_index,
                                   "title_tokens": title_tokens})[:, 0]


def _inputs(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in keys)


def _examples(spec: FeatureSpec, titles: np.ndarray, max_timestamp: int, n: int
              ) -> dict[str, np.ndarray]:
    """Encoded rows of n known users x catalog titles (cycled), at the latest time, with
    histories of 0..n-1 titles: a trace example (the tracer reruns the program on another size
    to check it generalises)."""
    users = np.resize(np.asarray(spec.user_vocab, dtype=object), n)
    chosen = np.resize(np.asarray(titles, dtype=object), n)
    arrays = spec.encode(users, np.full(n, max_timestamp, np.int64), chosen)
    ids = np.resize(spec.title_index(list(chosen)), HISTORY_LENGTH)
    arrays[layout.HISTORY_INPUT] = np.stack([layout.recent_history(ids[:i]) for i in range(n)])
    return arrays


def trace_programs(query_model: QueryModel, ranking_model: RankingModel, spec: FeatureSpec,
                   titles: np.ndarray, max_timestamp: int) -> dict[str, torch.jit.ScriptModule]:
    """{"query_tower", "ranking_model"}: the CPU models traced in eval mode. The tracer checks
    each program against the eager module on two other batches (other sizes, other padded
    token widths) and raises if they differ."""
    samples = [_examples(spec, titles, max_timestamp, n) for n in (5, 11, 2)]
    programs = {}
    history = query_model.embedding_model.history_embedding is not None
    query = HistoryQueryProgram(query_model) if history else QueryProgram(query_model)
    for name, module, keys in (("query_tower", query, query_keys(history)),
                               ("ranking_model", RankingProgram(ranking_model),
                                layout.RANKING_INPUTS)):
        module = module.cpu().eval()
        with torch.no_grad():
            programs[name] = torch.jit.trace(
                module, _inputs(samples[0], keys),
                check_inputs=[_inputs(s, keys) for s in samples[1:]])
    return programs


def query_keys(history: bool) -> tuple[str, ...]:
    """The query program's inputs: with the history feature, also its history."""
    return layout.HISTORY_QUERY_INPUTS if history else layout.QUERY_INPUTS


def export_programs(directory: Path | str, backend, corpus_titles: np.ndarray, *,
                    max_timestamp: int, num_candidates: int, source: dict,
                    seen=None, categories=None, history=None, force: bool = False) -> Path:
    """Write a torch export of ``backend`` (a CPU ``TorchBackend``) serving ``corpus_titles``
    [M] (the run's corpus: index rows = positions) into ``directory`` atomically
    (``twostage.io.replace_directory``, marker kind ``twostage.serving.TORCH_KIND``; an
    existing folder is replaced only if it is a torch export, ``force``: anything, moved aside).
    ``max_timestamp``: the default query time; ``num_candidates``: C's floor; ``source``:
    recorded in the manifest (run folder, backend); ``seen``: a ``twostage.serving.StoredSeen``
    written as ``seen.npz`` (listed with the other files) for ``exclude_seen``, or None;
    ``categories``: a ``StoredCategories`` (``categories.npz``, for ``filter``) or None;
    ``history``: the ``StoredHistory`` (``history.npz``) the query tower of
    ``config.model.history`` reads, required then."""
    titles = np.asarray(corpus_titles, dtype=object)
    if len(titles) == 0:
        raise ValueError("cannot export an empty catalog")
    config, spec = backend.config, backend.spec
    if config.model.history and history is None:
        raise ValueError("the query tower reads user histories (model.history): pass the "
                         "run's training histories (twostage.serving.StoredHistory)")
    index = build_index(config, backend.candidate_embeddings(titles))
    models = backend.models
    was_training = {stage: model.training for stage, model in models.items()}
    try:
        programs = trace_programs(models["retrieval"].query_model, models["ranking"], spec,
                                  titles, max_timestamp)
    finally:
        for stage, model in models.items():
            model.train(was_training[stage])

    def write(tmp: Path) -> None:
        for name, program in programs.items():
            program.save(str(tmp / layout.FILES[name]))
        index.save(tmp / layout.FILES["index"])
        io.write_json(tmp / layout.FILES["titles"], [str(t) for t in titles])
        spec.save(tmp / layout.FILES["feature_spec"])
        written = list(layout.FILES.values())
        for name, data in ((layout.SEEN_FILE, seen), (layout.CATEGORIES_FILE, categories),
                           (layout.HISTORY_FILE, history if config.model.history else None)):
            if data is not None:
                data.save(tmp / name)
                written.append(name)
        io.write_json(tmp / layout.MANIFEST, {
            "format": layout.FORMAT, "version": layout.VERSION,
            "catalog_size": len(titles), "embedding_dim": int(index.dim),
            "num_candidates": int(num_candidates), "default_timestamp": int(max_timestamp),
            "eval_batch_size": int(config.eval.eval_batch_size),
            "precision": config.train.precision, "index": index.params(),
            "spec_fingerprint": spec.fingerprint(), "torch": torch.__version__,
            "inputs": {"query_tower": list(query_keys(config.model.history)),
                       "ranking_model": list(layout.RANKING_INPUTS)},
            "recipes": {"genres": config.model.genres, "history": config.model.history,
                        "release_date": config.model.release_date},
            "source": source,
            "files": {f: io.sha256_file(tmp / f) for f in written}})
    return io.replace_directory(Path(directory), write, layout.TORCH_KIND, force=force)
