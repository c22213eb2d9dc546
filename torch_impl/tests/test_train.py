"""The fit loop on synthetic data: loss goes down, history layout, determinism, errors, the
batch order, callbacks and progress, and a step that never reads the device."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twostage import backend
from twostage.data.split import Split, epoch_batches
from twostage.schedule import BatchPlan
from torch_impl.models import build_ranking_model, build_retrieval_model
from torch_impl import train as torch_train
from torch_impl.train import epoch_order, fit_ranking, fit_retrieval

TOPK = "factorized_top_k/top_{}_categorical_accuracy"


def test_retrieval_training_lowers_the_loss(synthetic_dataset, small_config):
    config = small_config.replace(validation_freq=2)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=5)
    assert len(history.loss) == len(history.epoch_seconds) == 5
    assert history.loss[-1] < history.loss[0]
    assert [e for e, _ in history.val[TOPK.format(100)]] == [2, 4, 5]  # every 2 and the last
    assert set(history.val) == {TOPK.format(k) for k in config.eval.top_ks} | {
        "loss", "loss_per_example"}
    top = [history.val[TOPK.format(k)][-1][1] for k in config.eval.top_ks]
    assert top == sorted(top) and 0 <= top[0] and top[-1] <= 1


def test_ranking_training_lowers_the_loss(synthetic_dataset, small_config):
    model = build_ranking_model(synthetic_dataset.spec, small_config)
    history = fit_ranking(model, synthetic_dataset, small_config, epochs=4)
    assert history.loss[-1] < history.loss[0]
    assert len(history.metrics["binary_accuracy"]) == 4
    assert set(history.val) == {"binary_accuracy", "loss", "loss_per_example"}
    assert [e for e, _ in history.val["loss"]] == [1, 2, 3, 4]
    assert 0.0 <= history.val["binary_accuracy"][-1][1] <= 1.0


@pytest.mark.parametrize("shared", [True, False])
def test_training_is_deterministic_on_cpu(synthetic_dataset, small_config, shared):
    config = small_config.replace(shared_batches=shared)
    runs = []
    for _ in range(2):
        model = build_retrieval_model(synthetic_dataset.spec, config)
        runs.append(fit_retrieval(model, synthetic_dataset, config, epochs=2,
                                  validate=False).loss)
    assert runs[0] == runs[1]


def test_shared_batches_are_data_split_epoch_batches(small_config):
    config = small_config.replace(batch_size=7)
    plan = BatchPlan(np.arange(100, 130), config.train.batch_size, config.seed)
    got = epoch_order(plan, config, 3, torch.device("cpu"))
    want = epoch_batches(30, 7, seed=config.seed, epoch=3)
    assert [b.tolist() for b in got] == [b.tolist() for b in want]
    other = epoch_order(plan, config.replace(shared_batches=False), 3, torch.device("cpu"))
    assert sorted(torch.cat(other).tolist()) == list(range(30))


def test_retrieval_options_train(synthetic_dataset, small_config):
    """logQ, accidental-hit removal, hard negatives and temperature run end to end."""
    config = small_config.replace(use_sampling_probability=True, remove_accidental_hits=True,
                                  num_hard_negatives=10, temperature=0.5)
    model = build_retrieval_model(synthetic_dataset.spec, config)
    history = fit_retrieval(model, synthetic_dataset, config, epochs=1)
    assert np.isfinite(history.loss[0]) and np.isfinite(history.val["loss"][0][1])


def test_non_finite_loss_names_epoch_and_step(synthetic_dataset, small_config):
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    with torch.no_grad():
        model.query_model.dense_layers[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 1 step 1\b"):
        fit_retrieval(model, synthetic_dataset, small_config, epochs=1)
    ranking = build_ranking_model(synthetic_dataset.spec, small_config)
    with torch.no_grad():
        ranking.ratings[0].bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="ranking loss"):
        fit_ranking(ranking, synthetic_dataset, small_config, epochs=1)


def test_empty_training_split_is_a_clear_error(synthetic_dataset, small_config):
    empty = dataclasses.replace(synthetic_dataset, split=Split(
        train=np.zeros(0, np.int64), test=synthetic_dataset.split.test))
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_retrieval(model, empty, small_config, epochs=1)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_ranking(build_ranking_model(synthetic_dataset.spec, small_config), empty,
                    small_config, epochs=1)


def test_zero_epochs_train_nothing(synthetic_dataset, small_config):
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit_retrieval(model, synthetic_dataset, small_config, epochs=0)
    assert history.loss == [] and history.val == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_history_records_loss_per_example_and_calls_on_epoch(synthetic_dataset, small_config,
                                                           monkeypatch):
    """Broken on purpose, it fails: loss_per_example as the unweighted mean of the batch means."""
    config = small_config.replace(validation_freq=2)
    calls = []

    def on_epoch(stage, epoch, history):
        calls.append((stage, epoch, len(history.loss),
                      {k: list(v) for k, v in history.val.items()}))

    recorded = []
    run_epoch = torch_train.run_epoch

    def spy(parts, train, batches, *args, **kwargs):      # what each epoch of the loop sums
        totals = run_epoch(parts, train, batches, *args, **kwargs)
        recorded.append((totals.cpu().numpy()[0].astype(np.float32), [len(b) for b in batches]))
        return totals
    monkeypatch.setattr(torch_train, "run_epoch", spy)
    model = build_ranking_model(synthetic_dataset.spec, config)
    history = fit_ranking(model, synthetic_dataset, config, epochs=3, on_epoch=on_epoch)
    assert [c[:3] for c in calls] == [("ranking", 1, 1), ("ranking", 2, 2), ("ranking", 3, 3)]
    assert "loss" not in calls[0][3] and [e for e, _ in calls[1][3]["loss"]] == [2]  # after val
    assert len(history.loss_per_example) == 3
    # Ranking: the example-weighted mean of the batch means (batches of 256 and a smaller one).
    plan = BatchPlan(synthetic_dataset.split.train, config.train.batch_size, config.seed)
    assert min(len(b) for b in plan.positions(0)) < config.train.batch_size
    assert history.loss_per_example[0] == pytest.approx(history.loss[0], rel=0.05)
    # bitwise twostage.backend.per_example of the step losses, as the TFRS twin computes it
    assert history.loss_per_example == [backend.per_example("ranking", losses, sizes)
                                        for losses, sizes in recorded]
    for losses, sizes in recorded:
        assert min(abs(np.mean(losses) - v) for v in history.loss) < 1e-6
        assert sorted(sizes) == sorted(len(b) for b in plan.positions(0))
    val = dict(history.val["loss"]), dict(history.val["loss_per_example"])
    assert set(val[0]) == set(val[1]) == {2, 3}
    retrieval = fit_retrieval(build_retrieval_model(synthetic_dataset.spec, config),
                              synthetic_dataset, config, epochs=1)
    steps = plan.steps_per_epoch  # retrieval: the SUM over the epoch / examples
    assert retrieval.loss_per_example[0] == pytest.approx(
        retrieval.loss[0] * steps / len(synthetic_dataset.split.train), rel=1e-6)


def test_one_progress_bar_per_stage(synthetic_dataset, small_config, monkeypatch):
    import torch_impl.train as train

    bars = []

    class Bar:
        def __init__(self, total, desc, disable, **kwargs):
            self.total, self.desc, self.disable, self.n, self.postfix = total, desc, disable, 0, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            self.postfix.append(text)

    monkeypatch.setattr(train, "tqdm", Bar)
    config = small_config.replace(quiet=False)
    fit_ranking(build_ranking_model(synthetic_dataset.spec, config), synthetic_dataset, config,
                epochs=2, validate=False)
    steps = BatchPlan(synthetic_dataset.split.train, config.train.batch_size,
                      config.seed).steps_per_epoch
    assert len(bars) == 1
    bar = bars[0]
    assert (bar.desc, bar.total, bar.n, bar.disable) == ("torch ranking", 2 * steps, 2 * steps, False)
    assert bar.postfix[0] == "epoch 1/2" and bar.postfix[-1].startswith("epoch 2/2, loss ")


def test_a_training_step_never_touches_host_memory(synthetic_dataset, small_config):
    """On the meta device any host read (.item(), float(), nonzero(), a boolean-mask index)
    raises, and the dispatch mode sees every op: none may take a CPU tensor (a host-to-device
    copy). Both stages, every retrieval option."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from torch_impl.optim import make_optimizer
    from torch_impl.tasks import (BinaryAccuracy, make_ranking_task, make_retrieval_task,
                                  ranking_loss, retrieval_loss)
    from torch_impl.train import StageParts, run_epoch, split_tensors
    from twostage.sampling import candidate_sampling_probability

    class HostTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat, _ = tree_flatten((args, kwargs or {}))
            if any(isinstance(a, torch.Tensor) and a.device.type != "meta" for a in flat):
                self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    ds, meta = synthetic_dataset, torch.device("meta")
    config = small_config.replace(use_sampling_probability=True, remove_accidental_hits=True,
                                  num_hard_negatives=10, temperature=0.5)
    batches = [torch.arange(i, i + 256, device=meta) for i in range(0, 1024, 256)]
    retrieval = build_retrieval_model(ds.spec, config, device=meta)
    task = make_retrieval_task(config)
    ranking = build_ranking_model(ds.spec, config, device=meta)
    rtask = make_ranking_task(config)
    stages = [
        (StageParts("retrieval", retrieval, make_optimizer(retrieval, config),
                    loss=lambda b: (retrieval_loss(retrieval, task, b, True), None)),
         split_tensors(ds, ds.split.train, meta, candidate_sampling_probability(ds))),
        (StageParts("ranking", ranking, make_optimizer(ranking, config),
                    loss=lambda b: ranking_loss(ranking, rtask, b), metrics=[BinaryAccuracy()]),
         split_tensors(ds, ds.split.train, meta))]
    for parts, train in stages:
        mode = HostTensors()
        with mode:
            losses = run_epoch(parts, train, batches)
        assert losses.shape == (2, 4) and losses.device == meta  # step losses, example sums
        assert mode.ops == set(), f"{parts.stage}: ops on host tensors {sorted(mode.ops)}"


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_validation_takes_the_eval_queries_sample(synthetic_dataset, small_config, stage,
                                                  monkeypatch):
    """With eval_queries the fit validates on the seeded sample the evaluation uses
    (twostage.schedule.validation_rows), the TFRS backend's rows too."""
    from torch_impl import train as train_module
    from twostage.schedule import validation_rows
    ds = synthetic_dataset
    config = small_config.replace(eval_queries=37)
    seen = []
    real = train_module.split_tensors
    monkeypatch.setattr(train_module, "split_tensors",
                        lambda dataset, rows, *a, **k: seen.append(rows) or real(dataset, rows,
                                                                                 *a, **k))
    build = build_retrieval_model if stage == "retrieval" else build_ranking_model
    parts_of = (train_module.retrieval_parts if stage == "retrieval"
                else train_module.ranking_parts)
    parts, _ = parts_of(build(ds.spec, config), ds, config)
    np.testing.assert_array_equal(seen[-1], validation_rows(ds.split.test, config))
    assert len(seen[-1]) == 37
    assert set(parts.validate()) >= {"loss", "loss_per_example"}


def test_per_example_weights_ranking_batches_by_size_and_sums_retrieval():
    """Ranking: the example-weighted mean of batch means (an unweighted mean would give 2.0
    here); retrieval: the SUM over the epoch per example."""
    assert backend.per_example("ranking", [1.0, 3.0], [256, 44]) == pytest.approx(
        (256 * 1.0 + 44 * 3.0) / 300)
    assert backend.per_example("retrieval", [512.0, 88.0], [256, 44]) == pytest.approx(2.0)
    assert backend.per_example("ranking", [], []) == 0.0
