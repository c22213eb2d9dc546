"""Move weights between the torch and TFRS backends; serving exports of a run folder.

This is the one module of the core that imports both frameworks (lazily, through the backends).
``export_run_to_tfrs`` writes a TF SavedModel (``tfrs_impl.serving``), ``export_run_to_torch`` a
TorchScript + FAISS folder (``torch_impl.serving``, read by ``twostage.serving``); both serve
``twostage recommend``'s two stages from either backend's weights.

Both backends name every weight with the Keras attribute path of the seed's models and hold
Dense kernels as [in, out], so a transfer is a dictionary copy checked name by name and shape by
shape (``set_weights`` refuses anything partial).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import serving
from .data.download import DataNotFoundError, resolve_data_dir
from .data.registry import TFDS_GENRES
from .data.movielens import load_movielens
from .dataset import from_movielens
from .errors import UnsupportedOptionError
from .pipeline import seen_titles
from .recipes import genre_table

STAGES = ("retrieval", "ranking")
log = logging.getLogger("twostage")


def run_dataset(config, fingerprint: str | None):
    """The run's dataset, rebuilt from its data folder.

    Args:
        config: the run's stored Config (its data folder, release, split and seed).
        fingerprint: the run's feature-spec fingerprint: the data must give the same spec.
    Returns:
        (Dataset, "") or (None, why not): no download is attempted (a server or an export
        must not fetch data), and data that gives another feature spec is not the run's.
    """
    try:
        folder = resolve_data_dir(config.data.data_dir, dataset=config.data.dataset,
                                  download=False, progress=False)
        dataset = from_movielens(load_movielens(folder, dataset=config.data.dataset), config)
    except (DataNotFoundError, OSError, ValueError) as e:
        return None, f"the run's data could not be read ({' '.join(str(e).split())})"
    if dataset.spec.fingerprint() != fingerprint:
        return None, (f"the data at {folder} is not the data the run was trained on (feature "
                      "spec fingerprints differ)")
    return dataset, ""


def training_seen(config, fingerprint: str | None) -> tuple[serving.StoredSeen | None, str]:
    """The titles each user rated in the run's training split, rebuilt from its data folder
    (:func:`run_dataset`).

    Returns:
        (StoredSeen, "") or (None, why not).
    """
    dataset, why = run_dataset(config, fingerprint)
    if dataset is None:
        return None, why
    return serving.StoredSeen.from_seen(seen_titles(dataset), dataset.spec.user_vocab), ""


def catalog_genres(config, spec, titles, recipe=None
                   ) -> tuple[serving.StoredCategories | None, str]:
    """The genres of every catalogue row (``filter`` on ``genres``): the genre table the
    candidate tower of ``model.genres`` reads (``recipe.genres``, stored with the checkpoint),
    else ``recipes.genre_table`` of the run's data (:func:`run_dataset`).

    Args:
        config: the run's stored Config; spec: its FeatureSpec (title ids, fingerprint).
        titles: [M] the catalogue (the run's corpus, index-row order).
        recipe: the loaded backend's ``RecipeData`` (or None).
    Returns:
        (StoredCategories with one feature "genres", "") or (None, why not).
    """
    table = getattr(recipe, "genres", None)
    if table is None:
        dataset, why = run_dataset(config, spec.fingerprint())
        if dataset is None:
            return None, why
        movies = dataset.movielens.movies
        table = genre_table(movies["movie_title"].to_numpy(dtype=object),
                            movies["movie_genres"], spec)
    ids = np.asarray(table)[np.asarray(spec.title_index(list(titles)), dtype=np.int64)]
    return serving.StoredCategories.from_lists(
        "genres", TFDS_GENRES, [[g - 1 for g in row if g] for row in ids.tolist()]), ""


def training_history(backend, titles) -> serving.StoredHistory | None:
    """What the query tower of ``model.history`` reads, for an export: the loaded backend's
    training histories (the checkpoint's ``recipe.npz``, as ``twostage recommend`` reads them)
    and the title id of each catalogue row; None without the history feature."""
    if not backend.config.model.history:
        return None
    if backend.recipe is None or backend.recipe.history is None:
        raise ValueError("the run's checkpoint holds no user histories (model.history); train "
                         "and save it again")
    return serving.StoredHistory(backend.recipe.history, np.asarray(
        backend.spec.title_index(list(titles)), dtype=np.int64),
        backend.config.model.history_length)


def _export_data(run, backend) -> dict:
    """What an export stores beside the models: ``seen`` (StoredSeen), ``categories``
    (StoredCategories) and ``history`` (StoredHistory), each None when the run's data cannot
    be read here (said on the log) or the model has no such feature.

    Raises:
        UnsupportedOptionError: ``model.user_features`` (the serving programs take no user
            features yet; serve the run with ``twostage recommend``).
    """
    if backend.config.model.user_features:
        raise UnsupportedOptionError("exports do not carry the user features of "
                                     "model.user_features yet; serve this run with `twostage "
                                     "recommend`, or train without --user-features")
    seen = _export_seen(run, backend.config)
    categories, why = catalog_genres(backend.config, backend.spec, run.corpus_titles,
                                     backend.recipe)
    if categories is None:
        log.warning("the export will not serve filter: %s", why)
    return {"seen": seen, "categories": categories,
            "history": training_history(backend, run.corpus_titles)}


def _export_seen(run, config) -> serving.StoredSeen | None:
    """What an export stores for ``exclude_seen``: the run's training titles per user, or None
    (said on the log) when the run's data cannot be read here."""
    seen, why = training_seen(config, run.spec_fingerprint)
    if seen is None:
        log.warning("the export will not serve exclude_seen: %s", why)
    return seen


def copy_weights(source, target, stages: tuple[str, ...] = STAGES) -> None:
    """Assign every weight of ``source``'s stages to ``target`` (either direction)."""
    if source.spec.fingerprint() != target.spec.fingerprint():
        raise ValueError("the two backends were built from different feature specs; build both "
                         "from the same dataset.spec before moving weights")
    for stage in stages:
        target.set_weights(stage, source.get_weights(stage))


def torch_to_tfrs(torch_backend):
    """A TfrsBackend with the same config, spec and weights as ``torch_backend``."""
    from tfrs_impl.backend import TfrsBackend

    # What TFRS supports (BruteForce, CPU, the fit loss, one replica, fp32, no torch.compile);
    # no weight depends on it.
    config = torch_backend.config.replace(index="flat", device="cpu", ranking_loss="keras_graph",
                                          nproc=1, precision="fp32", compile=False,
                                          cuda_graphs=False)
    tfrs_backend = TfrsBackend(config, torch_backend.spec)
    copy_weights(torch_backend, tfrs_backend)
    tfrs_backend.attach_recipe_data(torch_backend.recipe)   # genre table, histories: data
    return tfrs_backend


def tfrs_to_torch(tfrs_backend):
    """A TorchBackend with the same config, spec and weights as ``tfrs_backend``."""
    from torch_impl.backend import TorchBackend

    torch_backend = TorchBackend(tfrs_backend.config, tfrs_backend.spec)
    copy_weights(tfrs_backend, torch_backend)
    torch_backend.attach_recipe_data(tfrs_backend.recipe)   # genre table, histories: data
    return torch_backend


# --- serving exports of a run folder ---------------------------------------------------------
def load_run_backend(run, backend: str | None = None):
    """The run's saved ``backend`` (default: the first saved, as ``twostage recommend``) loaded
    as ``twostage recommend`` loads it: on the CPU, in this process. ``run``: a RunDir, whose
    :meth:`~twostage.rundir.RunDir.open` already refused what ``recommend`` refuses (a
    checkpoint without both stages included: one rule for both commands)."""
    from .checkpoint import stored_config
    from .pipeline import load_backend

    name, folder = run.backend_dir(backend)
    config = stored_config(folder).replace(device="cpu", nproc=1, compile=False,
                                           cuda_graphs=False)
    return load_backend(name, folder, config)   # with the checkpoint's recipe lookups


def _num_candidates(backend, num_candidates: int | None) -> int:
    n = backend.config.eval.num_candidates if num_candidates is None else int(num_candidates)
    if n < 1:
        raise ValueError(f"num_candidates={n} must be >= 1")
    return n


def export_run_to_tfrs(run, out: Path, *, backend: str | None = None, k: int = 100,
                       num_candidates: int | None = None, force: bool = False) -> Path:
    """A TF SavedModel of the run ``run`` (a validated ``twostage.rundir.RunDir``): the
    retrieval call (BruteForce(k) over the run's corpus) and the ``recommend`` signature of both
    stages (``tfrs_impl.serving``). ``backend``: whose weights (default: the first saved; torch
    weights are moved into the TFRS models). ``num_candidates``: C's floor (default: the run's
    ``eval.num_candidates``, as ``twostage recommend``). ``out`` is replaced only if it is a
    SavedModel export of ours (``force``: anything, moved aside). Load it with
    ``twostage.serving.load(out)`` or ``tf.saved_model.load(out)``."""
    from tfrs_impl.serving import export_saved_model

    titles = run.corpus_titles
    if not 1 <= k <= len(titles):
        raise ValueError(f"k={k} must be in [1, {len(titles)}] (the run's corpus size)")
    source = load_run_backend(run, backend)
    tfrs_backend = source if source.name == "tfrs" else torch_to_tfrs(source)
    if source.config.index.kind != "flat":
        log.warning("the run serves with a %s index; the SavedModel retrieves exactly "
                    "(BruteForce), so its candidates can differ from `twostage recommend`'s",
                    source.config.index.kind)
    if source.config.train.precision != "fp32":
        log.warning("the run infers under %s autocast; the SavedModel computes in float32, so "
                    "its scores differ from `twostage recommend`'s by the rounding of %s",
                    source.config.train.precision, source.config.train.precision)
    return export_saved_model(out, tfrs_backend.retrieval_model, titles, k=k, force=force,
                              ranking_model=tfrs_backend.ranking_model.ranking_model,
                              num_candidates=_num_candidates(source, num_candidates),
                              default_timestamp=run.max_timestamp,
                              user_vocab=source.spec.user_vocab,
                              **_export_data(run, source))


def export_run_to_torch(run, out: Path, *, backend: str | None = None,
                        num_candidates: int | None = None, force: bool = False) -> Path:
    """A torch export of the run ``run`` (a validated RunDir): TorchScript query tower and
    ranking model, the run's index kind over its corpus, the id map and the feature spec
    (``torch_impl.serving``; read by ``twostage.serving.TorchExport`` without the training
    code). ``backend``: whose weights (default: the first saved; TFRS weights are moved into
    the torch models). ``out``: replaced only if it is a torch export (``force``: anything,
    moved aside)."""
    from torch_impl.serving import export_programs

    source = load_run_backend(run, backend)
    torch_backend = source if source.name == "torch" else tfrs_to_torch(source)
    return export_programs(out, torch_backend, run.corpus_titles,
                           max_timestamp=run.max_timestamp,
                           num_candidates=_num_candidates(source, num_candidates),
                           source={"run": str(run.path), "backend": source.name},
                           **_export_data(run, source), force=force)
