"""Multi-process training (torch_impl.distributed) against one process, on CPU with gloo.

Two processes (torch_impl/tests/distributed_workers.py launches them, once for all of these)
train on the synthetic data; each saves its per-step losses, weights and Adagrad accumulators,
and the tests compare them with references computed here in one process:

- ``cross_process_negatives="global"``: one epoch (10 steps of 256) equals one process at the
  same global batch, for the plain task and each of logQ, accidental-hit removal, temperature
  and hard negatives;
- ``cross_process_negatives="replica"``: equals one process whose step loss is the SUM of the
  two half-batch in-batch losses (TFRS under MirroredStrategy), written out below;
- ranking: "replica" = the sum of the two half-batch means (what Keras computes per replica,
  gradients summed), "global" = the single-process mean;
- fit (2 epochs of each stage, validated every epoch): the same History as one process;
- ``twostage.pipeline.evaluate`` over the group equals one process exactly on the same weights;
- a rank that raises, or stalls, ends the run within the timeout and leaves no output.

Precision. The trajectories are compared in float64 (models and Adagrad state converted), at
1e-5: the semantics are what is tested. In float32 the summed gradients equal one process's
only up to rounding (another summation order), and 10 Adagrad steps at lr 0.1 amplify that: in
ONE process, computing the same loss as two row blocks instead of one moves the float32 state
after 10 steps by up to 7e-4 * (1 + |x|) (accumulators reach 1e5), after 1 step by 1e-6; in
float64 by 1e-13. So the float32 run (the production dtype) is checked at 1e-5 on the per-step
losses of all 10 steps and on the state after the first step.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist

from parity_tests import tolerances as tol
from torch_impl.backend import TorchBackend
from torch_impl.tasks import Retrieval, ranking_loss, retrieval_loss
from torch_impl.train import epoch_order, select_rows, split_tensors, _plan
from torch_impl.tests.distributed_workers import (fail_on_rank_one, first_epoch, launch,
                                                  load_arrays, make_backend, state_arrays,
                                                  train_variants)

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

RTOL = 1e-5
RETRIEVAL_OPTIONS = {"plain": {}, "logq": {"use_sampling_probability": True},
                     "hits": {"remove_accidental_hits": True}, "temperature": {"temperature": 0.5},
                     "hard": {"num_hard_negatives": 10}}
ALL_OPTIONS = {"use_sampling_probability": True, "remove_accidental_hits": True,
               "temperature": 0.5, "num_hard_negatives": 10}


def _config(small_config, negatives, **options):
    return small_config.replace(nproc=2, cross_process_negatives=negatives, timeout_s=60, **options)


@pytest.fixture(scope="module")
def variants(small_config):
    """name -> (stage, config, dtype)."""
    f64 = "float64"
    out = {f"global-{name}": ("retrieval", _config(small_config, "global", **opts), f64)
           for name, opts in RETRIEVAL_OPTIONS.items()}
    out["replica-plain"] = ("retrieval", _config(small_config, "replica"), f64)
    out["replica-all"] = ("retrieval", _config(small_config, "replica", **ALL_OPTIONS), f64)
    out["global-all"] = ("retrieval", _config(small_config, "global", **ALL_OPTIONS), f64)
    out["ranking-replica"] = ("ranking", _config(small_config, "replica"), f64)
    out["ranking-global"] = ("ranking", _config(small_config, "global"), f64)
    # eval_batch_size=1 for the exact evaluation check (see that test)
    out["global-all-f32"] = ("retrieval", _config(small_config, "global", eval_batch_size=1,
                                                  **ALL_OPTIONS), "float32")
    return out


UNEVEN_SIZES = (255, 7, 1)  # 128 + 127, 4 + 3, and 1 + nothing on rank 1


@pytest.fixture(scope="module")
def uneven_batches(synthetic_dataset):
    """Raw global batches of UNEVEN_SIZES rows (the start of the training split)."""
    from twostage.sampling import SAMPLING_PROBABILITY, candidate_sampling_probability
    ds = synthetic_dataset
    probability = candidate_sampling_probability(ds)
    out, start = [], 0
    for n in UNEVEN_SIZES:
        rows = ds.split.train[start:start + n]
        start += n
        out.append({"user_id": ds.user_id[rows], "timestamp": ds.timestamp[rows],
                    "movie_title": ds.movie_title[rows], "label": ds.label[rows],
                    SAMPLING_PROBABILITY: probability[rows]})
    return out


@pytest.fixture(scope="module")
def run(variants, synthetic_dataset, uneven_batches, tmp_path_factory):
    """One launch of 2 processes runs every variant, the evaluation (float32), the fits
    (float64), train_steps on uneven batches and the collectives probe."""
    out = tmp_path_factory.mktemp("distributed")
    outcome = launch(train_variants, 2, out, synthetic_dataset, variants, "global-all-f32",
                     "global-plain", ("global-all", uneven_batches), deadline_s=240)
    assert outcome.ok, f"{outcome.exit_codes}: {outcome.errors}"
    return out


def _ranks(run, name):
    return [load_arrays(run / f"{name}-rank{r}.npz") for r in range(2)]


def _compare(got: dict, losses: np.ndarray, state: dict, prefix: str = "",
             later_rtol: float = RTOL) -> None:
    """The first step's loss within RTOL relative, later ones within ``later_rtol``; every
    weight and accumulator within RTOL (relative, and absolute for values near 0)."""
    np.testing.assert_allclose(got["losses"][:1], losses[:1], rtol=RTOL, atol=0)
    np.testing.assert_allclose(got["losses"], losses, rtol=later_rtol, atol=0)
    assert state
    for key, want in state.items():
        np.testing.assert_allclose(got[prefix + key], want, rtol=RTOL, atol=RTOL, err_msg=key)


def _both_ranks_agree(ranks) -> None:
    """The replicas hold bitwise the same weights and accumulators, and report the same
    losses."""
    first, second = ranks
    for key in first:
        if not key.startswith("rank:"):
            np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def _single(stage, config, dtype, dataset, first: bool = False):
    """One process, the same code path -> (step losses, state after the epoch [or after its
    first step])."""
    backend = make_backend(config, dataset.spec, dtype)
    assert backend.group.size == 1
    losses, after_first = first_epoch(backend, stage, dataset, config)
    return losses, after_first if first else state_arrays(backend, stage)


def _half_batches(stage, config, dtype, dataset):
    """One process, one epoch, each step's loss = the SUM of the two half-batch losses (the
    halves in np.array_split order: what 2 replicas compute, gradients summed). Retrieval:
    each half's in-batch softmax SUM; ranking: each half's mean."""
    backend = make_backend(config, dataset.spec, dtype)
    model, optimizer = backend.models[stage], backend.optimizers[stage]
    sampling = None
    if stage == "retrieval" and config.task.use_sampling_probability:
        from twostage.sampling import candidate_sampling_probability
        sampling = candidate_sampling_probability(dataset)
    train = split_tensors(dataset, dataset.split.train, backend.device, sampling)
    losses = []
    for rows in epoch_order(_plan(dataset, config), config, 0, backend.device):
        optimizer.zero_grad(set_to_none=True)
        halves = [select_rows(train, half) for half in rows.tensor_split(2)]
        if stage == "retrieval":
            loss = sum(retrieval_loss(model, backend.retrieval_task, h,
                                      config.task.use_sampling_probability) for h in halves)
        else:
            loss = sum(ranking_loss(model, backend.ranking_task, h)[0] for h in halves)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return np.array(losses, dtype=np.float32), state_arrays(backend, stage)


# --- global negatives: the single-process loss ----------------------------------------------------

@pytest.mark.parametrize("option", list(RETRIEVAL_OPTIONS))
def test_global_negatives_equal_one_process(run, variants, synthetic_dataset, option):
    name = f"global-{option}"
    ranks = _ranks(run, name)
    _both_ranks_agree(ranks)
    assert len(ranks[0]["losses"]) == 10
    losses, state = _single(*variants[name], synthetic_dataset)
    _compare(ranks[0], losses, state)


def test_global_negatives_in_float32(run, variants, synthetic_dataset):
    """The production dtype, every correction at once: the first step's loss and the state
    after it within 1e-5; the later losses within ``TRAJECTORY_RTOL`` (float32 rounding of
    another summation order compounds through Adagrad: 1.2e-5 at step 5 on an avx2 kernel;
    see the module docstring). A replica counting its own shard alone fails both."""
    ranks = _ranks(run, "global-all-f32")
    _both_ranks_agree(ranks)
    losses, after_first = _single(*variants["global-all-f32"], synthetic_dataset, first=True)
    _compare(ranks[0], losses, after_first, prefix="first:", later_rtol=tol.TRAJECTORY_RTOL)


def test_uneven_and_empty_slices_through_train_steps(run, variants, uneven_batches,
                                                    synthetic_dataset):
    """TorchBackend.train_steps over the group with global batches that split 128 + 127,
    4 + 3 and 1 + 0 (rank 1 holds nothing but still takes part in the gathers), every
    correction: the single-process steps."""
    ranks = [load_arrays(run / f"uneven-rank{r}.npz") for r in range(2)]
    _both_ranks_agree(ranks)
    _, config, dtype = variants["global-all"]
    backend = make_backend(config, synthetic_dataset.spec, dtype)
    losses = backend.train_steps("retrieval", uneven_batches)
    assert losses[-1] == 0.0  # one row: only its own positive
    _compare(ranks[0], np.array(losses), state_arrays(backend, "retrieval"))


def test_collectives_on_uneven_and_empty_pieces(run):
    for rank in range(2):
        got = load_arrays(run / f"collectives-rank{rank}.npz")
        assert got["sum_int"].tolist() == [3, 20] and got["sum_int"].dtype == np.int64
        assert got["sum_bool"].tolist() == [2, 1]
        assert got["gather_empty"].tolist() == [0.0, 1.0, 2.0]
        assert got["gather_empty"].dtype == np.float32
        assert got["gather_2d"].tolist() == [[0, 0], [0, 0], [1, 1]]
        assert got["sizes"].tolist() == [5, 6]
        assert got["gathered"].tolist() == [[1, 1], [1, 1], [2, 2]]
        # each row's gradient: the sum over ranks of what their losses sent it, 3 x arange
        want = 3 * np.arange(6.0).reshape(3, 2)
        np.testing.assert_array_equal(got["grad"], want[:2] if rank == 0 else want[2:])


# --- replica negatives: TFRS per replica ----------------------------------------------------------

@pytest.mark.parametrize("name", ["replica-plain", "replica-all"])
def test_replica_negatives_equal_the_sum_of_half_batch_losses(run, variants, synthetic_dataset,
                                                              name):
    ranks = _ranks(run, name)
    _both_ranks_agree(ranks)
    losses, state = _half_batches(*variants[name], synthetic_dataset)
    _compare(ranks[0], losses, state)
    # and it is not the single-process loss: each half sees only its own negatives (step 1:
    # the same weights; later the trajectories differ)
    single, _ = _single(*variants[name], synthetic_dataset)
    assert ranks[0]["losses"][0] < single[0]


# --- ranking --------------------------------------------------------------------------------------

def test_ranking_replica_is_what_keras_computes_per_replica(run, variants, synthetic_dataset):
    """Keras under MirroredStrategy (reduction SUM/NONE, the only ones it accepts there): each
    replica's loss is its slice's mean, the gradients are summed."""
    ranks = _ranks(run, "ranking-replica")
    _both_ranks_agree(ranks)
    losses, state = _half_batches(*variants["ranking-replica"], synthetic_dataset)
    _compare(ranks[0], losses, state)


def test_ranking_global_is_the_single_process_mean(run, variants, synthetic_dataset):
    ranks = _ranks(run, "ranking-global")
    _both_ranks_agree(ranks)
    losses, state = _single(*variants["ranking-global"], synthetic_dataset)
    _compare(ranks[0], losses, state)
    replica = _ranks(run, "ranking-replica")[0]["losses"]
    np.testing.assert_allclose(replica[0], 2 * losses[0], rtol=1e-3)  # 2 x the mean, roughly


# --- fit and evaluation ---------------------------------------------------------------------------

def test_fit_records_the_single_process_history(run, variants, synthetic_dataset):
    """fit_retrieval + fit_ranking (2 epochs each, validated every epoch; the validation sharded
    over the ranks) give both ranks one History, that of one process: the weights after 20 + 20
    steps (float64) within 1e-9, losses within 1e-5, the accuracies within ties flipped by
    rounding (FactorizedTopK counts a candidate only when STRICTLY above the positive, and the
    positive's own corpus copy ties it up to the last bit: 1e-13 apart in the weights flips up
    to 10 of 600 test queries at top-50 of this 50-movie corpus), and on the same weights the
    last validation equals one process's exactly."""
    from torch_impl.train import split_tensors, to_tensors, validate_ranking, validate_retrieval

    ranks = [json.loads((run / f"fit-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    _, config, dtype = variants["global-plain"]
    backend = make_backend(config, synthetic_dataset.spec, dtype)
    single = {"retrieval": backend.fit_retrieval(synthetic_dataset, epochs=2).to_dict(),
              "ranking": backend.fit_ranking(synthetic_dataset, epochs=2).to_dict()}
    for stage, want in single.items():
        got = ranks[0][stage]
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=RTOL)
        np.testing.assert_allclose(got["loss_per_example"], want["loss_per_example"], rtol=RTOL)
        for name, values in want["metrics"].items():
            np.testing.assert_allclose(got["metrics"][name], values, atol=1e-9)
        assert set(got["val"]) == set(want["val"])
        for name, points in want["val"].items():
            assert [e for e, _ in got["val"][name]] == [e for e, _ in points] == [1, 2]
            tol = dict(rtol=RTOL) if "loss" in name else dict(atol=0.05)
            np.testing.assert_allclose([v for _, v in got["val"][name]],
                                       [v for _, v in points], err_msg=f"{stage} {name}", **tol)
    # the weights, then the last validation again, in one process, on the ranks' weights
    weights = load_arrays(run / "fit-rank0.npz")
    for stage in ("retrieval", "ranking"):
        for name, want in backend.get_weights(stage).items():
            np.testing.assert_allclose(weights[f"{stage}:{name}"], want, rtol=1e-9, atol=1e-9,
                                       err_msg=name)
        _assign_float64(backend, stage, {k.split(":", 1)[1]: v for k, v in weights.items()
                                         if k.startswith(stage + ":")})
    ds, device = synthetic_dataset, backend.device
    test = split_tensors(ds, ds.split.test, device)
    corpus = to_tensors(ds.corpus_features, device, keys=("title_index", "title_tokens"))
    again = {"retrieval": validate_retrieval(backend.retrieval_model, backend.retrieval_task,
                                             test, corpus, config),
             "ranking": validate_ranking(backend.ranking_model, backend.ranking_task, test,
                                         config)}
    for stage, values in again.items():
        values.pop("last_batch_loss")
        assert {k: v[-1][1] for k, v in ranks[0][stage]["val"].items()} == values, stage


def _assign_float64(backend, stage, weights) -> None:
    """set_weights without its float32 cast (models.assign_from_keras): the exact float64
    values, Keras layout -> torch layout."""
    from torch_impl.models import KERAS_PREFIX, keras_weight_names
    model = backend.models[stage]
    params = dict(model.named_parameters())
    names = keras_weight_names(model, KERAS_PREFIX[stage])
    assert set(names) == set(weights)
    with torch.no_grad():
        for keras, (name, transposed) in names.items():
            value = torch.from_numpy(weights[keras])
            params[name].copy_(value.T if transposed else value)


def test_distributed_evaluation_equals_one_process_exactly(run, variants, synthetic_dataset):
    """``twostage.pipeline.evaluate`` over the group (float32 weights after 10 steps) equals one
    process's on the same weights, every figure. With eval_batch_size=1 every row is computed
    alone in both: the pipeline shards rows with np.array_split (here 300 + 300 test rows,
    221 + 221 positives), and a row computed in a batch of another size may round differently
    (measured: 1 of 600 ranking probabilities in the last bit with eval_batch_size=512, which
    moves log_loss in the 9th digit); shards aligned to whole evaluation batches would make it
    exact at any eval_batch_size (a twostage.pipeline change)."""
    from twostage.pipeline import evaluate

    reports = [json.loads((run / f"eval-rank{r}.json").read_text()) for r in range(2)]
    assert reports[0] == reports[1]
    _, config, _ = variants["global-all-f32"]
    weights = _ranks(run, "global-all-f32")[0]
    backend = TorchBackend(config, synthetic_dataset.spec)
    backend.set_weights("retrieval", {k[2:]: v for k, v in weights.items()
                                      if k.startswith("w:")})
    backend.set_weights("ranking", {k[5:]: v for k, v in weights.items()
                                    if k.startswith("rank:")})
    single = json.loads(json.dumps(evaluate(backend, synthetic_dataset, config)))
    assert reports[0] == single


# --- failures -------------------------------------------------------------------------------------

def test_a_rank_that_raises_ends_the_run_with_its_error(small_config, synthetic_dataset,
                                                        tmp_path):
    timeout = 10
    config = small_config.replace(nproc=2, timeout_s=timeout)
    outcome = launch(fail_on_rank_one, 2, tmp_path, synthetic_dataset, config, "raise",
                     deadline_s=90)
    assert outcome.exit_codes == [1, 1], outcome.errors
    assert "injected failure on rank 1" in outcome.first_error()
    failed_at = outcome.errors[1]["time"]
    assert outcome.errors[0]["time"] - failed_at < timeout  # rank 0 ended through gloo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error-0.json", "error-1.json"]


def test_a_stalled_rank_ends_the_others_after_the_timeout(small_config, synthetic_dataset,
                                                          tmp_path):
    timeout = 3
    config = small_config.replace(nproc=2, timeout_s=timeout)
    outcome = launch(fail_on_rank_one, 2, tmp_path, synthetic_dataset, config, "stall",
                     deadline_s=90, grace_s=1.0)
    assert outcome.exit_codes[0] == 1 and outcome.exit_codes[1] is None  # 1: killed
    stalled = json.loads((tmp_path / "stalled.json").read_text())["time"]
    waited = outcome.errors[0]["time"] - stalled
    assert timeout - 0.5 < waited < timeout + 5, waited
    assert "Timed out" in outcome.errors[0]["text"]
    assert not list(tmp_path.glob("done-*")) and not list(tmp_path.glob(".*"))


# --- in one process: set-up refusals and the pieces -----------------------------------------------

@pytest.fixture
def torchrun_env(monkeypatch):
    def set_env(world, **extra):
        env = {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", **extra}
        for key, value in env.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
    return set_env


def test_init_from_env_refuses_what_it_cannot_run(small_config, torchrun_env, monkeypatch):
    from torch_impl.distributed import DistributedError, init_from_env
    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_from_env(small_config) is None  # one process, nothing to join
    with pytest.raises(DistributedError, match="not started by torch's launcher"):
        init_from_env(small_config.replace(nproc=2))
    torchrun_env(4)
    with pytest.raises(DistributedError, match=r"nproc=2 .* WORLD_SIZE=4; pass --nproc 4"):
        init_from_env(small_config.replace(nproc=2))
    torchrun_env(3)
    with pytest.raises(DistributedError, match=r"batch_size=256 does not divide into 3"):
        init_from_env(small_config)
    torchrun_env(2, MASTER_ADDR=None)
    with pytest.raises(DistributedError, match="MASTER_ADDR not set"):
        init_from_env(small_config)
    assert not dist.is_initialized()


def test_offset_positives_split_the_single_process_loss():
    """Rows offset.. of the global batch against all candidates, with their positives at
    columns offset + i: the blocks' losses and gradients add up to the whole batch's, with
    every correction.
    Broken on purpose, it fails: positives taken at column i instead of offset + i (every
    block's loss moves by O(1))."""
    torch.manual_seed(0)
    q, c = torch.randn(12, 4), torch.randn(12, 4)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 0, 5, 6, 7, 1, 8])
    p = torch.rand(12) * 0.5 + 0.01
    for task in (Retrieval(), Retrieval(temperature=0.3), Retrieval(num_hard_negatives=3),
                 Retrieval(remove_accidental_hits=True, temperature=0.7, num_hard_negatives=5)):
        kw = dict(candidate_sampling_probability=p,
                  candidate_ids=ids if task.remove_accidental_hits else None)
        qa, ca = q.clone().requires_grad_(), c.clone().requires_grad_()
        whole = task(qa, ca, **kw)
        whole.backward()
        qb, cb = q.clone().requires_grad_(), c.clone().requires_grad_()
        parts = [task(qb[s:s + n], cb, positive_offset=s, **kw)
                 for s, n in ((0, 5), (5, 5), (10, 2))]
        torch.stack(parts).sum().backward()
        torch.testing.assert_close(sum(parts), whole, rtol=1e-6, atol=1e-6)
        # each gradient element sums 12 terms |p - y| |x| <= |x| in another kernel's order
        torch.testing.assert_close(qb.grad, qa.grad, rtol=1e-5,
                                   atol=tol.cross_kernel_atol(12, c.abs().sum(0).max()))
        torch.testing.assert_close(cb.grad, ca.grad, rtol=1e-5,
                                   atol=tol.cross_kernel_atol(12, q.abs().sum(0).max()))


def test_shard_is_array_split_order():
    from torch_impl.distributed import Shard

    class Group:
        size = 3

        def __init__(self, rank):
            self.rank = rank

    rows = torch.arange(10)
    slices = [Shard.of(Group(r), 10).take(rows).tolist() for r in range(3)]
    assert slices == [a.tolist() for a in np.array_split(np.arange(10), 3)]
    assert [Shard.of(Group(r), 10).offset for r in range(3)] == [0, 4, 7]
