"""Save / load the torch backend: state dicts + FeatureSpec JSON + Config JSON + spec fingerprint.

Layout of a checkpoint directory (written into a temporary sibling directory, then renamed into
place, so a reader never sees a half-written checkpoint)::

    meta.json           format, version, backend, spec fingerprint, torch version, extras
    config.json         Config.to_dict()
    feature_spec.json   FeatureSpec.to_dict()
    retrieval.pt        {"model": state_dict, "optimizer": state_dict | None}
    ranking.pt          idem
    index.npz           optional FAISS index (FaissIndex.save), with index_titles.json

Loading checks that the stored spec matches its fingerprint, and that a caller-supplied spec or
config agrees with the stored one (spec: same fingerprint; config: same ARCHITECTURE_FIELDS),
raising ``CheckpointMismatchError`` with the differences and the fix.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from twostage.data.features import FeatureSpec
from twostage.config import Config

FORMAT = "twostage-torch-checkpoint"
VERSION = 1
MODEL_FILES = {"retrieval": "retrieval.pt", "ranking": "ranking.pt"}
# Config fields that decide parameter shapes or the meaning of the inputs.
ARCHITECTURE_FIELDS = ("embedding_dim", "layer_sizes", "ranking_layer_sizes", "num_buckets",
                       "max_tokens")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not belong to the given spec / config (or is inconsistent)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns: config, spec, per-model {"model", "optimizer"}
    state dicts, and meta (including the caller's ``extra`` dict from :func:`save_checkpoint`)."""

    directory: Path
    config: Config
    spec: FeatureSpec
    states: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed after,
    so ``final`` is always either the old or the new complete checkpoint."""
    if not final.exists():
        os.replace(tmp, final)
        return
    if not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory; choose another path")
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / "ckpt")
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old / "ckpt", final)  # put the old checkpoint back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(directory: Path | str, *, config: Config, spec: FeatureSpec,
                    models: Mapping[str, torch.nn.Module],
                    optimizers: Optional[Mapping[str, Optional[torch.optim.Optimizer]]] = None,
                    index=None, index_titles=None, extra: Optional[dict] = None) -> Path:
    """Write a checkpoint atomically to ``directory`` (replacing an old one) and return it.
    ``models`` keys are "retrieval" / "ranking"; ``index`` a FaissIndex (optional)."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        optimizers = optimizers or {}
        for name, model in models.items():
            if name not in MODEL_FILES:
                raise ValueError(f"unknown model name {name!r}; use {sorted(MODEL_FILES)}")
            opt = optimizers.get(name)
            torch.save({"model": model.state_dict(),
                        "optimizer": None if opt is None else opt.state_dict()},
                       tmp / MODEL_FILES[name])
        _write_json(tmp / "config.json", config.to_dict())
        _write_json(tmp / "feature_spec.json", spec.to_dict())
        if index is not None:
            index.save(tmp / "index.npz")
            _write_json(tmp / "index_titles.json", [str(t) for t in index_titles])
        _write_json(tmp / "meta.json", {
            "format": FORMAT, "version": VERSION, "backend": "torch",
            "spec_fingerprint": spec.fingerprint(), "torch_version": torch.__version__,
            "models": sorted(models), "extra": extra or {}})
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path.parent} is not a torch checkpoint: no {path.name} "
                                f"({what}); save one with TorchBackend.save") from e
    except json.JSONDecodeError as e:
        raise CheckpointMismatchError(f"{path}: unreadable {what} ({e})") from e


def config_differences(stored: Config, given: Config,
                       fields: tuple[str, ...] = ARCHITECTURE_FIELDS) -> dict[str, tuple]:
    """{field: (stored, given)} for the ``fields`` that differ."""
    return {f: (getattr(stored, f), getattr(given, f)) for f in fields
            if getattr(stored, f) != getattr(given, f)}


def load_checkpoint(directory: Path | str, *, config: Optional[Config] = None,
                    spec: Optional[FeatureSpec] = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` and check its consistency.

    ``spec``: must have the stored fingerprint (same vocabularies and statistics). ``config``:
    must agree on ARCHITECTURE_FIELDS (runtime options such as device, epochs or index may
    differ; the caller's config is returned then). Raises CheckpointMismatchError otherwise.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    meta = _read_json(directory / "meta.json", "metadata")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointMismatchError(
            f"{directory}: format {meta.get('format')!r} v{meta.get('version')!r} is not a "
            f"{FORMAT} v{VERSION} (written by another backend or version?)")
    stored_spec = FeatureSpec.from_dict(_read_json(directory / "feature_spec.json", "spec"))
    if stored_spec.fingerprint() != meta.get("spec_fingerprint"):
        raise CheckpointMismatchError(
            f"{directory}: feature_spec.json (fingerprint {stored_spec.fingerprint()}) does not "
            f"match the one the models were trained with ({meta.get('spec_fingerprint')}); "
            "the checkpoint was edited or mixed up: retrain and save again")
    if spec is not None and spec.fingerprint() != stored_spec.fingerprint():
        raise CheckpointMismatchError(
            f"{directory}: the models were trained with feature spec {stored_spec.fingerprint()} "
            f"but spec {spec.fingerprint()} was given (different data, num_buckets or "
            "max_tokens): load without a spec to use the stored one, or retrain")
    stored_config = Config.from_dict(_read_json(directory / "config.json", "config"))
    if config is not None:
        diff = config_differences(stored_config, config)
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs given {b!r}" for k, (a, b) in
                                diff.items())
            raise CheckpointMismatchError(
                f"{directory}: the checkpoint's architecture differs from the given config "
                f"({details}); load without a config or with matching values")
    states = {}
    for name in meta.get("models", []):
        path = directory / MODEL_FILES[name]
        if not path.is_file():
            raise CheckpointMismatchError(f"{directory}: meta lists model {name!r} but "
                                          f"{path.name} is missing")
        states[name] = torch.load(path, map_location=map_location, weights_only=True)
    return Checkpoint(directory=directory, config=config or stored_config, spec=stored_spec,
                      states=states, meta=meta)


def load_state(model: torch.nn.Module, state: dict, name: str, directory: Path) -> None:
    """``model.load_state_dict(state)`` with an error that says which checkpoint/model failed."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointMismatchError(
            f"{directory}: the {name} weights do not fit the model built from the checkpoint's "
            f"config and spec ({str(e).splitlines()[0]} ...); the checkpoint is inconsistent"
        ) from e
