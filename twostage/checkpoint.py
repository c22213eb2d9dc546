"""The checkpoint format both backends write and read (numpy only; no torch, no tensorflow).

A checkpoint is a folder, written by :func:`twostage.io.replace_directory` (temporary sibling,
then one rename; an existing folder is replaced only if it is a checkpoint of ours)::

    .twostage          marker {"kind": "checkpoint"}
    meta.json          format, version, backend, spec fingerprint, epochs done, stages
    config.json        Config.to_dict()
    feature_spec.json  FeatureSpec.to_dict()
    retrieval.npz      "weights/<Keras name>" and "accumulators/<Keras name>" (Adagrad state)
    ranking.npz        idem
    recipe.npz         only with model.genres / history / user_features / release_date: the
                       lookups those recipes read (``RecipeData.to_arrays()``: genre table,
                       training ratings by user, every user's side features, release table);
                       its sha256 is in meta.json ("recipe"), so an edited file is refused

Both backends name weights by the Keras attribute path of the seed's models with Dense kernels
[in, out] (``torch_impl.models`` transposes Linear weights), and store the Keras Adagrad
accumulator of every weight under the same name, so a resumed run of either backend continues
the same optimizer state. Everything read back is validated before anything is allocated (an
.npz is read only after its zip directory and .npy headers: members stored uncompressed, each
header's shape matching its bytes, a stage file's values at most the weights and accumulators
of the config's models): every failure is one :class:`CheckpointError` line naming the file,
the field and the fix.

The recipe lookups are data, not weights, but a model of ``genres`` / ``history`` cannot run
without them, so they travel with the weights (both backends write the same arrays) and a
loaded backend has them attached. A loaded model's user history at a query time is therefore
the user's ratings IN THE STORED TRAINING SPLIT strictly before that time
(``twostage.recipes.HistoryIndex``): ``twostage recommend`` at the default time (the latest in
the data) sees every training rating of the user, and none of the test split's.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import io
from .config import FIELD_SECTION, Config
from .data.features import FeatureSpec
from .recipes import NUM_GENRES, NUM_RELEASE_BUCKETS, RecipeData
from .user_features import USER_FEATURES

FORMAT = "twostage-checkpoint"
VERSION = 2
KIND = "checkpoint"
STAGES = ("retrieval", "ranking")
STAGE_FILES = {"retrieval": "retrieval.npz", "ranking": "ranking.npz"}
RECIPE_FILE = "recipe.npz"
WEIGHTS, ACCUMULATORS = "weights/", "accumulators/"
# Config fields that decide parameter shapes or the meaning of the inputs and scores (a model
# built with another value would load silently and compute something else: cosine vs dot).
ARCHITECTURE_FIELDS = ("embedding_dim", "layer_sizes", "ranking_layer_sizes", "num_buckets",
                       "max_tokens", "genres", "history", "normalize", "learn_temperature",
                       "release_date")
# RecipeData.to_arrays() entries and the dtype kind each must have ("i" int, "U" str).
_RECIPE_ARRAYS = {"genres": "i", "history_users": "U", "history_keys": "i",
                  "history_titles": "i", "user_table_ids": "U", "user_table_values": "U",
                  "releases": "i"}
# config.model's recipe field -> the RecipeData field holding its lookups
_RECIPE_FIELDS = {"genres": "genres", "history": "history", "user_features": "users",
                  "release_date": "releases"}
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: far above any MovieLens model
_NPY_HEADER_BYTES = 4096  # allowance per .npz member for its .npy header (np.savez: 128)


class CheckpointError(ValueError):
    """A checkpoint is malformed, or does not belong to the given spec / config / backend."""


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint at the given path."""


@dataclass
class StageState:
    """One model's weights and optimizer accumulators, by Keras name."""

    weights: dict[str, np.ndarray]
    accumulators: dict[str, np.ndarray] | None = None


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    directory: Path
    backend: str
    config: Config
    spec: FeatureSpec
    stages: dict[str, StageState] = field(default_factory=dict)
    epochs_done: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    recipe: RecipeData | None = None  # the genre / history lookups (model.genres / history)


# --- writing ---------------------------------------------------------------------------------
def save_checkpoint(directory: Path | str, *, backend: str, config: Config, spec: FeatureSpec,
                    stages: Mapping[str, StageState], epochs_done: Mapping[str, int],
                    framework: str = "", recipe: RecipeData | None = None) -> Path:
    """Write a checkpoint atomically to ``directory`` (replacing an older checkpoint only).
    ``recipe``: the lookups ``config.model.genres`` / ``history`` need (ValueError, before
    anything is written, when they are missing); ignored when the config uses neither."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; use {STAGES}")
    recipe_arrays = _recipe_arrays(config, recipe)

    def write(tmp: Path) -> None:
        for stage, state in stages.items():
            arrays = {WEIGHTS + k: np.asarray(v) for k, v in state.weights.items()}
            if state.accumulators is not None:
                arrays.update({ACCUMULATORS + k: np.asarray(v)
                               for k, v in state.accumulators.items()})
            io.write_with(tmp / STAGE_FILES[stage], lambda p, a=arrays: _savez(p, a))
        recipe_entry = None
        if recipe_arrays is not None:
            io.write_with(tmp / RECIPE_FILE, lambda p: _savez(p, recipe_arrays))
            recipe_entry = {"file": RECIPE_FILE, "sha256": io.sha256_file(tmp / RECIPE_FILE)}
        io.write_json(tmp / "config.json", config.to_dict())
        io.write_json(tmp / "feature_spec.json", spec.to_dict())
        io.write_json(tmp / "meta.json", {
            "format": FORMAT, "version": VERSION, "backend": backend,
            "spec_fingerprint": spec.fingerprint(), "framework": framework,
            "stages": sorted(stages), "epochs_done": {s: int(epochs_done.get(s, 0))
                                                      for s in STAGES},
            "recipe": recipe_entry})
    return io.replace_directory(Path(directory), write, KIND)


def _recipe_arrays(config: Config, recipe: RecipeData | None) -> dict[str, np.ndarray] | None:
    """What recipe.npz holds for ``config``: the parts of ``recipe`` it uses, or None."""
    wanted = [name for name in _RECIPE_FIELDS if getattr(config.model, name)]
    if not wanted:
        return None
    missing = [name for name in wanted
               if recipe is None or getattr(recipe, _RECIPE_FIELDS[name]) is None]
    if missing:
        raise ValueError(f"cannot save: model.{missing[0]}=True but its lookups are not "
                         "attached (fit the backend on its dataset, or "
                         "backend.attach_recipe_data(RecipeData.from_dataset(dataset, config)) "
                         "before save)")
    return RecipeData(**{_RECIPE_FIELDS[name]: getattr(recipe, _RECIPE_FIELDS[name])
                         for name in wanted}).to_arrays()


def save_models(directory: Path | str, *, backend: str, config: Config, spec: FeatureSpec,
                models: Mapping, optimizers: Mapping, epochs_done: Mapping[str, int],
                stage_state: Callable[[str, Any, Any], StageState], framework: str,
                recipe: RecipeData | None = None) -> Path:
    """:func:`save_checkpoint` of framework models: ``stage_state(stage, model, optimizer)``
    (the backend's ``checkpoint.stage_state``) turns each stage into named numpy arrays;
    ``recipe``: the backend's attached lookups."""
    _recipe_arrays(config, recipe)  # refuse missing lookups before touching the models
    stages = {stage: stage_state(stage, model, optimizers[stage])
              for stage, model in models.items()}
    return save_checkpoint(directory, backend=backend, config=config, spec=spec, stages=stages,
                           epochs_done=epochs_done, framework=framework, recipe=recipe)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# --- reading ---------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing ({what}); the checkpoint is incomplete: "
                              "train and save again") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({e}); train and save again"
                              ) from None


def _check_meta(meta, path: Path, backend: str | None) -> dict:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} v{meta.get('version')!r} "
                              f"is not a {FORMAT} v{VERSION}; retrain with this version")
    if backend is not None and meta.get("backend") != backend:
        raise CheckpointError(f"{path.parent} holds a {meta.get('backend')!r} checkpoint, not "
                              f"{backend}; load it with its own backend (or move its weights "
                              "with twostage.export)")
    stages = meta.get("stages")
    if not isinstance(stages, list) or not set(stages) <= set(STAGES):
        raise CheckpointError(f"{path}: 'stages' must be a list drawn from {list(STAGES)}, "
                              f"got {stages!r}")
    epochs = meta.get("epochs_done")
    if not isinstance(epochs, dict) or not all(
            s in STAGES and isinstance(n, int) and n >= 0 for s, n in epochs.items()):
        raise CheckpointError(f"{path}: 'epochs_done' must map stages to counts >= 0, got "
                              f"{epochs!r}")
    if not isinstance(meta.get("spec_fingerprint"), str):
        raise CheckpointError(f"{path}: 'spec_fingerprint' is missing")
    recipe = meta.get("recipe")
    if recipe is not None and not (isinstance(recipe, dict) and recipe.get("file") == RECIPE_FILE
                                   and isinstance(recipe.get("sha256"), str)):
        raise CheckpointError(f"{path}: 'recipe' must be null or name {RECIPE_FILE!r} with its "
                              f"'sha256', got {recipe!r}; train and save again")
    return meta


def config_differences(stored: Config, given: Config,
                       fields: tuple[str, ...] = ARCHITECTURE_FIELDS) -> dict[str, tuple]:
    """{field: (stored, given)} for the architecture ``fields`` that differ."""
    def get(c: Config, name: str):
        return getattr(getattr(c, _section(name)), name)
    return {f: (get(stored, f), get(given, f)) for f in fields if get(stored, f) != get(given, f)}


def _section(name: str) -> str:
    """The config section of an architecture field (``data``, ``model`` or ``task``)."""
    return FIELD_SECTION[name]


def parameter_count(config: Config, spec: FeatureSpec) -> int:
    """Trainable parameters of both models of ``config`` over ``spec`` (before allocating)."""
    d, m = config.model.embedding_dim, config.model
    tables = spec.num_user_rows + spec.num_bucket_rows  # UserModel
    movie = spec.num_title_rows + spec.max_tokens        # MovieModel
    per_pair = (tables + movie) * d
    # the retrieval towers' recipe tables: history [title rows, d], genres [NUM_GENRES + 1, d],
    # release dates [NUM_RELEASE_BUCKETS, d],
    # the user features [vocabulary + 1, d] each
    users = sum(f.rows for f in USER_FEATURES) * m.user_features
    recipes = (spec.num_title_rows * m.history + (NUM_GENRES + 1) * m.genres + users
               + NUM_RELEASE_BUCKETS * m.release_date) * d

    def mlp(width: int, sizes) -> int:
        total = 0
        for s in sizes:
            total += width * s + s
            width = s
        return total
    towers = mlp((2 + m.history + len(USER_FEATURES) * m.user_features) * d + 1,
                 m.layer_sizes) + mlp((2 + m.genres + m.release_date) * d, m.layer_sizes)
    ranking = mlp(4 * d + 1, [*m.ranking_layer_sizes, 1])
    return 2 * per_pair + recipes + towers + ranking + int(config.task.learn_temperature)


def _check_npz(path: Path, what: str, max_values: int | None) -> None:
    """Read only the zip directory and each member's .npy header of ``path`` and refuse, before
    any array is allocated, what reading would blow up: a member whose header declares more
    bytes than the member holds (a header claiming 2**40 floats of a 4 MB file), a compressed
    member (a zip bomb: 4 MB that unpack to gigabytes; np.savez never compresses), object
    arrays, or (``max_values``) a declared uncompressed size or count of values above what the
    config's models have.

    Raises:
        CheckpointError: naming the file (also for a truncated or non-zip file).
    """
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: {why}; the {what} was edited or is not ours: train "
                               "and save again")
    total, size = 0, path.stat().st_size
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        declared = sum(info.file_size for info in infos)
        if max_values is not None and declared > 4 * max_values + _NPY_HEADER_BYTES * len(infos):
            raise refuse(f"its arrays unpack to {declared:,} bytes, more than the float32 "
                         f"weights and accumulators of config.json's models ({max_values:,} "
                         "values) take")
        for info in infos:
            if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
                raise refuse(f"{info.filename} is compressed or encrypted (np.savez stores "
                             "arrays as they are, so no member can unpack to more than the "
                             "file holds)")
            if info.compress_size != info.file_size or \
                    info.header_offset + info.file_size > size:
                raise refuse(f"the zip directory gives {info.filename} {info.file_size:,} "
                             f"bytes, which the {size:,}-byte file does not hold")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise refuse(f"{info.filename} is a .npy of version {version}")
                header = f.tell()
            if dtype.hasobject:
                raise refuse(f"{info.filename} holds Python objects, not numbers")
            count = math.prod(shape)
            if header + count * dtype.itemsize != info.file_size:
                raise refuse(f"{info.filename} declares shape {shape} of {dtype} "
                             f"({count * dtype.itemsize:,} bytes) but holds "
                             f"{info.file_size - header:,} bytes")
            total += count
    if max_values is not None and total > max_values:
        raise refuse(f"its arrays declare {total:,} values, more than the {max_values:,} "
                     "weights and accumulators of config.json's models")


def _read_npz(path: Path, what: str, max_values: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles), checked by :func:`_check_npz` before any is read.

    Raises:
        CheckpointError: one line naming the file (a truncated or bad zip included).
    """
    try:
        _check_npz(path, what, max_values)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable {what} ({e}); train and save again"
                              ) from None


def _load_stage(path: Path, max_values: int) -> StageState:
    """One stage file; ``max_values``: the most values it may declare (both models'
    parameters, twice: weights and accumulators)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    arrays = _read_npz(path, "weight file", max_values)
    bad = sorted(k for k in arrays if not k.startswith((WEIGHTS, ACCUMULATORS)))
    if bad:
        raise CheckpointError(f"{path}: unexpected entries {bad[:3]} (expected "
                              f"'{WEIGHTS}<name>' and '{ACCUMULATORS}<name>')")
    floats = [k for k, v in arrays.items() if v.dtype != np.float32]
    if floats:
        raise CheckpointError(f"{path}: {floats[0]} has dtype {arrays[floats[0]].dtype}, "
                              "expected float32")
    weights = {k[len(WEIGHTS):]: v for k, v in arrays.items() if k.startswith(WEIGHTS)}
    accs = {k[len(ACCUMULATORS):]: v for k, v in arrays.items() if k.startswith(ACCUMULATORS)}
    if accs and set(accs) != set(weights):
        raise CheckpointError(f"{path}: optimizer accumulators do not match the weights")
    return StageState(weights, accs or None)


def load_checkpoint(directory: Path | str, *, backend: str | None = None,
                    config: Config | None = None, spec: FeatureSpec | None = None
                    ) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    ``backend``: the stored backend must be this one. ``spec``: must have the stored fingerprint.
    ``config``: must agree on ARCHITECTURE_FIELDS; its runtime options (device, epochs, index)
    are used then. Raises CheckpointNotFoundError / CheckpointError.
    """
    directory = Path(directory)
    what = f"a {backend} checkpoint" if backend else "a checkpoint"
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint folder at {directory} (not {what}); "
                                      "train and save one first")
    if not (directory / "meta.json").is_file():
        raise CheckpointNotFoundError(f"{directory} is not {what}: no meta.json; save one "
                                      "with the backend's save()")
    meta = _check_meta(_read_json(directory / "meta.json", "metadata"), directory / "meta.json",
                       backend)
    try:
        stored_spec = FeatureSpec.from_dict(_read_json(directory / "feature_spec.json", "spec"))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'feature_spec.json'}: not a feature spec ({e})"
                              ) from None
    if stored_spec.fingerprint() != meta["spec_fingerprint"]:
        raise CheckpointError(
            f"{directory}: feature_spec.json (fingerprint {stored_spec.fingerprint()}) does not "
            f"match the one the models were trained with ({meta['spec_fingerprint']}); the "
            "checkpoint was edited or mixed up: retrain and save again")
    if spec is not None and spec.fingerprint() != stored_spec.fingerprint():
        raise CheckpointError(
            f"{directory}: the models were trained with feature spec {stored_spec.fingerprint()} "
            f"but spec {spec.fingerprint()} was given (different data, num_buckets or "
            "max_tokens): load without a spec to use the stored one, or retrain")
    stored_config = Config.from_dict(_read_json(directory / "config.json", "config"),
                                     source=str(directory / "config.json"))
    _check_sizes(directory, stored_config, stored_spec)
    if config is not None:
        diff = config_differences(stored_config, config)
        if diff:
            details = ", ".join(f"{_section(k)}.{k}: checkpoint {a!r} vs given {b!r}"
                                for k, (a, b) in diff.items())
            raise CheckpointError(f"{directory}: the checkpoint's architecture differs from the "
                                  f"given config ({details}); load without a config or with "
                                  "matching values")
    recipe = _load_recipe(directory, meta, stored_config, stored_spec)
    limit = 2 * parameter_count(stored_config, stored_spec)  # weights + accumulators
    stages = {s: _load_stage(directory / STAGE_FILES[s], limit) for s in meta["stages"]}
    return Checkpoint(directory=directory, backend=meta.get("backend", ""),
                      config=config or stored_config, spec=stored_spec, stages=stages,
                      epochs_done={**{s: 0 for s in STAGES}, **meta["epochs_done"]}, meta=meta,
                      recipe=recipe)


def _load_recipe(directory: Path, meta: dict, config: Config, spec: FeatureSpec
                 ) -> RecipeData | None:
    """recipe.npz checked against meta.json's checksum, the stored config and spec."""
    path, entry = directory / RECIPE_FILE, meta.get("recipe")
    wanted = {name for name in _RECIPE_FIELDS if getattr(config.model, name)}
    if entry is None:
        if wanted:
            raise CheckpointError(f"{path} is missing: config.json uses model."
                                  f"{sorted(wanted)[0]}, whose lookups a checkpoint of this "
                                  "version stores (saved by an older version?); train and save "
                                  "again")
        return None
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete: train and save "
                              "again")
    if io.sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"{path} changed after it was saved (its sha256 differs from "
                              "meta.json's); restore the file, or train and save again")
    arrays = _read_npz(path, "recipe file")
    _check_recipe_arrays(path, arrays, wanted, spec)
    try:
        return RecipeData.from_arrays(arrays)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}; train and save again") from None


def _check_recipe_arrays(path: Path, arrays: dict[str, np.ndarray], wanted: set[str],
                         spec: FeatureSpec) -> None:
    """Names, dtypes and value ranges of recipe.npz against the config's recipes and the spec
    (title ids must index the title table the towers were built with)."""
    expected = {"genres"} if "genres" in wanted else set()
    if "history" in wanted:
        expected |= {"history_users", "history_keys", "history_titles"}
    if "user_features" in wanted:
        expected |= {"user_table_ids", "user_table_values"}
    if "release_date" in wanted:
        expected |= {"releases"}
    if set(arrays) != expected:
        raise CheckpointError(f"{path}: holds {sorted(arrays)}, config.json's recipes need "
                              f"{sorted(expected)}; the checkpoint was edited or mixed up: "
                              "train and save again")
    for name, v in arrays.items():
        if v.dtype.kind != _RECIPE_ARRAYS[name] or (
                v.ndim != 1 and name not in ("genres", "user_table_values")):
            raise CheckpointError(f"{path}: {name} has dtype {v.dtype} and {v.ndim} dims; "
                                  "train and save again")
    genres = arrays.get("genres")
    if genres is not None and (genres.shape != (spec.num_title_rows, NUM_GENRES) or (
            genres.size and (genres.min() < 0 or genres.max() > NUM_GENRES))):
        raise CheckpointError(f"{path}: genres must be [{spec.num_title_rows}, {NUM_GENRES}] "
                              f"ids in 0..{NUM_GENRES}, got shape {genres.shape}; train and "
                              "save again")
    releases = arrays.get("releases")
    if releases is not None and (releases.shape != (spec.num_title_rows,) or (
            releases.size and (releases.min() < 0 or releases.max() >= NUM_RELEASE_BUCKETS))):
        raise CheckpointError(f"{path}: releases must be [{spec.num_title_rows}] ids in "
                              f"0..{NUM_RELEASE_BUCKETS - 1}, got shape {releases.shape}; "
                              "train and save again")
    titles = arrays.get("history_titles")
    if titles is not None and titles.size and (titles.min() < 0 or
                                               titles.max() >= spec.num_title_rows):
        raise CheckpointError(f"{path}: history_titles must be title ids in "
                              f"0..{spec.num_title_rows - 1}; train and save again")


def stored_config(directory: Path | str) -> Config:
    """The config a checkpoint was saved with (validated), without loading any weight."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointNotFoundError(f"{directory} is not a checkpoint: no config.json")
    return Config.from_dict(_read_json(directory / "config.json", "config"),
                            source=str(directory / "config.json"))


def _check_sizes(directory: Path, config: Config, spec: FeatureSpec) -> None:
    """Refuse a config that would allocate absurd tables for this spec (a hostile or mistyped
    run folder), before any model is built."""
    if len(spec.ts_boundaries) != config.data.num_buckets or \
            spec.max_tokens != config.data.max_tokens:
        raise CheckpointError(f"{directory}: config.json and feature_spec.json disagree "
                              f"(num_buckets {config.data.num_buckets} vs "
                              f"{len(spec.ts_boundaries)} boundaries, max_tokens "
                              f"{config.data.max_tokens} vs {spec.max_tokens}); the checkpoint "
                              "was edited or mixed up: retrain")
    count = parameter_count(config, spec)
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{directory}: config.json asks for {count:,} parameters (more "
                              f"than {MAX_PARAMETERS:,}); the file was edited or is not ours")


def check_weights(directory: Path, stage: str, got: Mapping[str, np.ndarray],
                  expected: Mapping[str, tuple[int, ...]]) -> None:
    """Names and shapes of a stored stage against the model built from its config and spec."""
    path = Path(directory) / STAGE_FILES[stage]
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weight names do not match the {stage} model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, shape in expected.items():
        if tuple(got[name].shape) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {tuple(got[name].shape)}, the "
                                  f"model built from the checkpoint's config needs {shape}")
