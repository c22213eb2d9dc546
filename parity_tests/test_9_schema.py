"""Group 9: schema runs (``twostage.owndata``): the two ``SchemaTrainer`` twins agree.

On shared weights, every feature kind's slot output, both towers' embeddings and the ranking
probabilities agree within the forward tolerance; one batch's losses and gradients within the
loss and gradient tolerances (accidental hits removed too); per-epoch losses of a few epochs of
``fit`` from the same weights within the trajectory tolerance; the weight names are the same.
The broken-on-purpose tests at the end show each check catches what it is there for.

Data: the example schema's generated files (id, category, text, multi_category, the
interactions' timestamp) and a small DataFrame dataset with the rest (numeric with and without
buckets, a timestamp side feature, missing numbers, items with no tag and no token).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from twostage import env

env.setup_tensorflow()  # before TensorFlow is imported below (also done by the root conftest)

import tensorflow as tf  # noqa: E402

from tfrs_impl import features as tf_features  # noqa: E402
from tfrs_impl.owndata import SchemaTrainer as TfrsTrainer  # noqa: E402
from torch_impl import features as torch_features  # noqa: E402
from torch_impl.owndata import SchemaTrainer as TorchTrainer  # noqa: E402
from twostage import owndata  # noqa: E402
from twostage.config import Config  # noqa: E402
from twostage.data.schema_data import SchemaDataset  # noqa: E402
from twostage.data.synthetic_schema import generate  # noqa: E402
from twostage.schedule import BatchPlan  # noqa: E402
from twostage.schema import Schema  # noqa: E402

from . import tolerances as tol  # noqa: E402
from .compare import ParityError, assert_close, assert_weights_close  # noqa: E402

STAGES = ("retrieval", "ranking")
BATCH_SIZE = 256
TRAINED_EPOCHS = 2         # torch's, before its weights are copied: untrained towers are ~0
# Trajectory: TRAJECTORY_STEPS optimizer steps in all, as test_4 (2 fits of one epoch each,
# so the second continues the batch order from epochs_done).
TRAJECTORY_FITS = 2


def schema_config(**changes) -> Config:
    return Config.of(**{"quiet": True, "batch_size": BATCH_SIZE, **changes})


# --- data ---------------------------------------------------------------------------------------
def numeric_frames(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(interactions, items, users) with the kinds the example lacks, some values missing."""
    rng = np.random.default_rng(seed)
    users, items, events = 60, 40, 1500
    age = rng.uniform(18, 80, users)
    age[::7] = np.nan                                           # missing: the mean
    user_frame = pd.DataFrame({"uid": [f"u{i}" for i in range(users)], "age": age,
                               "region": rng.choice(["n", "s", "e"], users)})
    genres = ["|".join(rng.choice(list("abcdef"), rng.integers(0, 3), replace=False))
              for _ in range(items)]                            # some items have no genre
    titles = [f"thing {i} {'big' if i % 3 else 'small'}" for i in range(items)]
    titles[5] = "!!!"                                           # no token: a zero text vector
    item_frame = pd.DataFrame({"iid": np.arange(items), "price": rng.lognormal(3, 1, items),
                               "weight": rng.normal(1.0, 0.3, items),
                               "released": 1_500_000_000 + rng.integers(0, 10**8, items),
                               "genres": genres, "title": titles})
    inter = pd.DataFrame({"user": [f"u{i}" for i in rng.integers(0, users, events)],
                          "item": rng.integers(0, items, events),
                          "ts": 1_600_000_000 + np.sort(rng.integers(0, 10**7, events)),
                          "rating": rng.integers(1, 6, events).astype(float)})
    return inter, item_frame, user_frame


NUMERIC_SCHEMA = {
    "interactions": {"user": "user", "item": "item", "time": "ts",
                     "label": {"column": "rating", "positive_at_least": 4}},
    "items": {"id": "iid", "features": {
        "price": {"kind": "numeric", "buckets": 5}, "weight": "numeric",
        "released": "timestamp", "genres": {"kind": "multi_category", "separator": "|"},
        "title": "text"}},
    "users": {"id": "uid", "features": {"age": "numeric", "region": "category"}},
    "towers": {"query": ["region", "user", "age", "time"],
               "candidate": ["price", "item", "weight", "genres", "released", "title"]},
}


@pytest.fixture(scope="module", params=["example", "numeric"])
def data(request, tmp_path_factory) -> SchemaDataset:
    if request.param == "example":
        return owndata.load(generate(tmp_path_factory.mktemp("schema")), schema_config())
    inter, items, users = numeric_frames()
    return SchemaDataset.from_frames(inter, Schema.from_dict(NUMERIC_SCHEMA), items, users)


def test_the_data_covers_every_kind(tmp_path_factory):
    """Precondition of the forward checks: between them the two datasets hold every kind,
    a numeric slot with buckets and one without."""
    example = owndata.load(generate(tmp_path_factory.mktemp("kinds")), schema_config())
    inter, items, users = numeric_frames()
    numeric = SchemaDataset.from_frames(inter, Schema.from_dict(NUMERIC_SCHEMA), items, users)
    slots = [s for d in (example, numeric) for s in d.query_slots + d.candidate_slots]
    assert {s.kind for s in slots} == {"id", "category", "multi_category", "text", "numeric",
                                       "timestamp"}
    assert {bool(s.rows) for s in slots if s.kind == "numeric"} == {True, False}


# --- pairs --------------------------------------------------------------------------------------
def copy_weights(source, target) -> None:
    for stage in STAGES:
        target.set_weights(stage, source.get_weights(stage))


def make_pair(data: SchemaDataset, config: Config, weights_from=None
              ) -> tuple[TorchTrainer, TfrsTrainer]:
    """(torch, tfrs) trainers with the torch weights (or ``weights_from``'s) on both sides."""
    t, f = TorchTrainer(data, config), TfrsTrainer(data, config)
    if weights_from is not None:
        copy_weights(weights_from, t)
    copy_weights(t, f)
    return t, f


@pytest.fixture(scope="module")
def trained_torch(data) -> TorchTrainer:
    """Torch after TRAINED_EPOCHS of each stage at the seed's rate (weights that score apart)."""
    t = TorchTrainer(data, schema_config())
    for stage in STAGES:
        t.fit(stage, TRAINED_EPOCHS)
    return t


@pytest.fixture(scope="module")
def trained_pair(data, trained_torch):
    return make_pair(data, schema_config(), weights_from=trained_torch)


def trajectory_config(num_examples: int) -> Config:
    """test_4's rate, and the batch size that makes TRAJECTORY_STEPS steps in
    TRAJECTORY_FITS epochs of ``num_examples``."""
    batch = -(-num_examples // (tol.TRAJECTORY_STEPS // TRAJECTORY_FITS))
    return schema_config(learning_rate=tol.TRAJECTORY_LEARNING_RATE, batch_size=batch)


def first_batch(data: SchemaDataset, config: Config) -> np.ndarray:
    """Interaction rows of the first training batch ``fit`` takes."""
    plan = BatchPlan(data.split.train, config.train.batch_size, config.seed)
    return data.split.train[plan.positions(0)[0]]


# --- the checks ---------------------------------------------------------------------------------
def check_slots(t: TorchTrainer, f: TfrsTrainer, data: SchemaDataset, rows: np.ndarray) -> None:
    """Every slot's output (SlotInput) of both towers, named by tower, feature and kind."""
    arrays = data.examples(rows)
    t_batch, f_batch = torch_features.to_tensors(arrays), tf_features.encoded_tensors(arrays)
    for tower in ("query", "candidate"):
        t_concat = getattr(t.models["retrieval"], tower).features
        f_concat = getattr(f.models["retrieval"], tower).features
        for slot, t_layer, f_layer in zip(t_concat.slots, t_concat.inputs, f_concat.inputs):
            assert_close(f"{tower} slot {slot.name} ({slot.kind})",
                         t_layer(t_batch).detach().numpy(), f_layer(f_batch).numpy(),
                         rtol=tol.FORWARD_RTOL, atol=tol.FORWARD_ATOL)


def check_forward(t: TorchTrainer, f: TfrsTrainer, data: SchemaDataset, rows: np.ndarray
                  ) -> None:
    """Query embeddings of ``rows``, every item's candidate embedding, ranking probabilities."""
    corpus = data.candidate_inputs(np.arange(len(data.item_ids)))
    examples = data.examples(rows)
    for what, a, b in (
            ("query embeddings", t.query_embeddings(data.query_inputs(rows)),
             f.query_embeddings(data.query_inputs(rows))),
            ("candidate embeddings", t.candidate_embeddings(corpus),
             f.candidate_embeddings(corpus)),
            ("ranking probabilities", t.ranking_scores(examples), f.ranking_scores(examples))):
        assert_close(what, a, b, rtol=tol.FORWARD_RTOL, atol=tol.FORWARD_ATOL)


def check_loss_and_gradients(t: TorchTrainer, f: TfrsTrainer, stage: str, rows: np.ndarray
                             ) -> None:
    """One batch's loss and every weight's gradient (as checks.check_loss_and_gradients)."""
    t_loss, t_grads = t.loss_and_gradients(stage, rows)
    f_loss, f_grads = f.loss_and_gradients(stage, rows)
    assert_close(f"{stage} loss", t_loss, f_loss, rtol=tol.LOSS_RTOL)
    scale = max(float(np.abs(g).max(initial=0.0)) for g in f_grads.values())
    assert_weights_close(f"{stage} gradient", t_grads, f_grads, rtol=tol.GRAD_RTOL,
                         atol=tol.GRAD_ATOL_OF_MAX * scale)


def check_fit(t: TorchTrainer, f: TfrsTrainer, stage: str, fits: int = TRAJECTORY_FITS,
              examples: dict[str, np.ndarray] | None = None) -> None:
    """``fits`` one-epoch fits on each side (on ``examples``, default the training split):
    per-epoch losses (and per example) within the trajectory tolerance, then the weights."""
    for fit in range(fits):
        th, fh = t.fit(stage, 1, examples), f.fit(stage, 1, examples)
        for what in ("loss", "loss_per_example"):
            assert_close(f"{stage} fit {fit + 1} {what}", getattr(th, what), getattr(fh, what),
                         rtol=tol.TRAJECTORY_RTOL)
    assert_weights_close(f"{stage} weights after {fits} epochs", t.get_weights(stage),
                         f.get_weights(stage), rtol=tol.TRAJECTORY_RTOL,
                         atol=tol.TRAJECTORY_ATOL)


# --- (a) forward --------------------------------------------------------------------------------
def test_forward_initial_weights(data):
    t, f = make_pair(data, schema_config())
    rows = data.split.test
    check_slots(t, f, data, rows)
    check_forward(t, f, data, rows)


def test_forward_trained_weights(data, trained_pair):
    t, f = trained_pair
    check_slots(t, f, data, data.split.test)
    check_forward(t, f, data, data.split.test)


# --- (b) losses and gradients -------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_loss_and_gradients(data, trained_pair, stage):
    t, f = trained_pair
    check_loss_and_gradients(t, f, stage, first_batch(data, t.config))


@pytest.mark.parametrize("option", [{"remove_accidental_hits": True},
                                    {"temperature": 0.2, "num_hard_negatives": 10}])
def test_retrieval_options(data, trained_torch, option):
    config = schema_config(**option)
    rows = first_batch(data, config)
    assert len(np.unique(data.item_row[rows])) < len(rows), \
        "precondition: the batch must hold accidental hits (an item twice)"
    t, f = make_pair(data, config, weights_from=trained_torch)
    check_loss_and_gradients(t, f, "retrieval", rows)


# --- (c) training -------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_fit_trajectory(data, stage):
    """From the same initial weights, TRAJECTORY_STEPS steps at test_4's rate."""
    t, f = make_pair(data, trajectory_config(len(data.split.train)))
    check_fit(t, f, stage)
    assert t.epochs_done == f.epochs_done == {**{s: 0 for s in STAGES}, stage: TRAJECTORY_FITS}


def test_fit_trajectory_of_sampled_negatives(data):
    """The ranker of implicit data trains on ``ranking_examples`` (positives, then seeded
    draws): the same examples and order on both sides."""
    examples = data.ranking_examples(data.split.train, 1, seed=0)
    t, f = make_pair(data, trajectory_config(len(examples["label"])))
    check_fit(t, f, "ranking", examples=examples)


# --- (d) weight names ---------------------------------------------------------------------------
def test_weight_names_and_files(data, trained_pair, tmp_path):
    """The same names and shapes on both sides, every slot's table among them; a weights.npz
    one side saves loads into the other."""
    t, f = trained_pair
    for stage in STAGES:
        tw, fw = t.get_weights(stage), f.get_weights(stage)
        assert sorted(tw) == sorted(fw)
        assert {k: v.shape for k, v in tw.items()} == {k: v.shape for k, v in fw.items()}
    names = set(f.get_weights("retrieval")) | set(f.get_weights("ranking"))
    for tower, slots in (("query", data.query_slots), ("candidate", data.candidate_slots)):
        for slot in slots:
            if slot.rows:
                assert {f"{tower}/{slot.name}/embeddings",
                        f"ranking/{tower}/{slot.name}/embeddings"} <= names
    f.save(tmp_path)
    other = TorchTrainer(data, schema_config())
    with np.load(tmp_path / owndata.WEIGHTS) as arrays:
        other.load_weights({k: arrays[k] for k in arrays.files})
    for stage in STAGES:
        assert_weights_close(f"{stage} saved", other.get_weights(stage), f.get_weights(stage),
                             rtol=0.0)


# --- (e) broken on purpose ----------------------------------------------------------------------
def test_wrong_slot_order_fails_forward_parity(data, trained_torch):
    """Broken on purpose: the TFRS towers read their slots in reverse order (same names and
    shapes, so the weights still copy): the concat feeds the first Dense the wrong columns."""
    config = schema_config()
    t = TorchTrainer(data, config)
    copy_weights(trained_torch, t)
    reversed_data = dataclasses.replace(data, candidate_slots=data.candidate_slots[::-1])
    f = TfrsTrainer(reversed_data, config)
    copy_weights(t, f)
    with pytest.raises(ParityError, match="candidate embeddings"):
        check_forward(t, f, data, data.split.test)


def test_perturbed_weight_fails_forward_parity(data, trained_pair):
    """Broken on purpose: one embedding table differs by 1e-3 relative on the TFRS side."""
    t, _ = trained_pair
    f = TfrsTrainer(data, t.config)
    weights = t.get_weights("retrieval")
    slot = next(s for s in data.candidate_slots if s.kind in ("multi_category", "text"))
    weights[f"candidate/{slot.name}/embeddings"] *= np.float32(1 + 1e-3)
    f.set_weights("retrieval", weights)
    f.set_weights("ranking", t.get_weights("ranking"))
    with pytest.raises(ParityError, match=f"candidate slot {slot.name}"):
        check_slots(t, f, data, data.split.test)
    with pytest.raises(ParityError, match="candidate embeddings"):
        check_forward(t, f, data, data.split.test)


def test_keras_pooling_of_an_empty_row_fails_forward_parity(data, trained_pair):
    """Broken on purpose: Keras' own GlobalAveragePooling1D (0 / 0 = NaN for an item with no
    tag or no token) instead of the zero vector both twins give."""
    t, f0 = trained_pair
    f = TfrsTrainer(data, t.config)
    copy_weights(f0, f)
    concat = f.models["retrieval"].candidate.features
    padded = [layer for layer in concat.inputs if layer.pooling is not None]
    empty = [s.name for s in concat.slots if s.kind in ("multi_category", "text")
             and not data.items[s.name].any(axis=1).all()]
    if not empty:
        pytest.skip("this dataset has no item without a tag or a token")
    for layer in padded:
        layer.pooling = tf.keras.layers.GlobalAveragePooling1D()
    with pytest.raises(ParityError, match="non-finite"):
        check_forward(t, f, data, data.split.test)


def test_kept_accidental_hits_fail_loss_parity(data, trained_torch):
    """Broken on purpose: TFRS keeps the accidental hits that torch removes (the item_index
    candidate ids are what removes them)."""
    rows = first_batch(data, schema_config())
    t, _ = make_pair(data, schema_config(remove_accidental_hits=True), trained_torch)
    f = TfrsTrainer(data, schema_config())
    copy_weights(t, f)
    with pytest.raises(ParityError, match="retrieval loss"):
        check_loss_and_gradients(t, f, "retrieval", rows)


def test_shifted_batch_order_fails_fit_parity(data):
    """Broken on purpose: TFRS trains on the next epoch's batches (epochs_done off by one).
    The epoch's mean loss may not see it (the same rows in another order: on the example data
    it agrees to 1e-4 at this rate); the weights after the epoch do."""
    t, f = make_pair(data, trajectory_config(len(data.split.train)))
    f.epochs_done["retrieval"] = 1
    with pytest.raises(ParityError, match="retrieval fit 1 loss|retrieval weights after"):
        check_fit(t, f, "retrieval", fits=1)
