"""The fast-GPU options of issue 12: bf16 autocast, torch.compile'd steps, CUDA-graph-captured
steps and device evaluation. Everything that runs on the CPU is tested here on the CPU; the
tests marked ``cuda`` need a CUDA device and skip without one (``pytest -m cuda``,
``benchmarks/device_check.sh``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity_tests import tolerances as tol
from twostage.backend import UnsupportedOptionError
from twostage.evaluation import num_scoring_higher
from torch_impl.backend import TorchBackend
from torch_impl.models import build_ranking_model, build_retrieval_model
from torch_impl.optim import ACCUMULATOR
from torch_impl.tasks import scoring_higher
from torch_impl.train import (eager_step, fit_ranking, fit_retrieval, loss_and_outputs,
                              make_step, ranking_parts, retrieval_parts)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (none visible to torch here); "
                                       "run benchmarks/device_check.sh on a GPU machine")


# bf16 against fp32 over 2 epochs, per stage: measured 2.6e-2 (retrieval: the towers' rounding
# moves a SUM of 256 cross-entropies) and 1.4e-5 (ranking: a mean of probabilities), so a bf16
# cast reaching the ranking loss or the retrieval score matrix shows up.
BF16_LOSS_RTOL = {"retrieval": 0.05, "ranking": 1e-4}


def _fit(dataset, config, stage, epochs=2):
    build, fit = ((build_retrieval_model, fit_retrieval) if stage == "retrieval"
                  else (build_ranking_model, fit_ranking))
    model = build(dataset.spec, config)
    from torch_impl.optim import make_optimizer
    optimizer = make_optimizer(model, config)
    history = fit(model, dataset, config, optimizer=optimizer, epochs=epochs, validate=False)
    return model, optimizer, history


# --- bf16 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_bf16_trains_close_to_fp32_with_fp32_weights_and_state(synthetic_dataset, small_config,
                                                               stage):
    """bf16 keeps 8 mantissa bits (relative rounding 2**-9 = 0.2%) in the towers (the score
    matrix is fp32: ``fp32_scores``), and the rounding compounds over the steps, so the
    losses agree with fp32 to BF16_LOSS_RTOL over these 2 epochs, not to ulps; the weights,
    gradients and Adagrad accumulators stay fp32."""
    _, _, fp32 = _fit(synthetic_dataset, small_config, stage)
    model, optimizer, bf16 = _fit(synthetic_dataset, small_config.replace(precision="bf16"),
                                  stage)
    assert np.isfinite(bf16.loss).all()
    np.testing.assert_allclose(bf16.loss, fp32.loss, rtol=BF16_LOSS_RTOL[stage])
    for p in model.parameters():
        assert p.dtype == torch.float32
        assert optimizer.state[p][ACCUMULATOR].dtype == torch.float32


def test_bf16_scores_the_towers_in_bf16_and_the_loss_in_fp32(synthetic_dataset, small_config):
    """Under autocast the score matrix is bf16-rounded (the loss differs from fp32), and the
    loss itself is an fp32 scalar."""
    config = small_config.replace(precision="bf16")
    model = build_retrieval_model(synthetic_dataset.spec, config)
    parts, train = retrieval_parts(model, synthetic_dataset, config, validate=False)
    rows = torch.arange(256)
    value, _, _ = eager_step(parts, train)(rows)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    model32 = build_retrieval_model(synthetic_dataset.spec, small_config)
    parts32, train32 = retrieval_parts(model32, synthetic_dataset, small_config, validate=False)
    value32, _, _ = eager_step(parts32, train32)(rows)
    assert value != value32 and abs(float(value) / float(value32) - 1) < 0.02


def test_bf16_keeps_the_score_matrix_in_fp32(synthetic_dataset, small_config):
    """Under bf16 autocast the towers' outputs are bf16 but the in-batch score matrix is the
    fp32 product of them (a bf16 score matrix made the seed's retrieval loss diverge on an H200:
    top-100 0.11 instead of 0.28), and so are the top-k counts' scores.
    Broken on purpose, it fails: fp32_scores run under autocast (a bf16 product is ~2**-9
    relative off, thousands of times the bound)."""
    from torch_impl.tasks import factorized_top_k_hits, fp32_scores, make_retrieval_task
    config = small_config.replace(precision="bf16")
    model = build_retrieval_model(synthetic_dataset.spec, config)
    parts, train = retrieval_parts(model, synthetic_dataset, config, validate=False)
    batch = {k: v[:64] for k, v in train.items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, c = model.query_model(batch), model.candidate_model(batch)
        scores, _ = make_retrieval_task(config).corrected(q, c)
        heads = fp32_scores(torch.stack([q, q], dim=1), c)  # [Q, H, D]: max over the heads
        hits = factorized_top_k_hits(q.float(), c.float(), c.float(), (1, 5, 10))
    assert q.dtype == torch.bfloat16  # the towers do run in bf16
    with torch.no_grad():  # outside autocast: the plain fp32 product of the same embeddings
        reference = q.float() @ c.float().T
        reference_hits = factorized_top_k_hits(q.float(), c.float(), c.float(), (1, 5, 10))
    assert scores.dtype == torch.float32 and heads.dtype == torch.float32
    torch.testing.assert_close(scores, reference, rtol=0, atol=0)      # the same mm: bitwise
    # the heads' einsum is another kernel: fp32 within the cross-kernel bound, while a bf16
    # product would be ~2**-9 relative off (thousands of times the bound)
    atol = tol.cross_kernel_atol(q.shape[1], (q.float().abs() @ c.float().abs().T).max())
    torch.testing.assert_close(heads, reference, rtol=0, atol=atol)
    assert torch.equal(hits, reference_hits)


def test_cuda_graphs_default_on_for_one_cuda_process_only(small_config):
    from torch_impl.train import graphs_enabled
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert small_config.train.cuda_graphs is None
    assert graphs_enabled(small_config, cuda) and not graphs_enabled(small_config, cpu)
    assert not graphs_enabled(small_config.replace(mixed_negatives=8), cuda)
    assert not graphs_enabled(small_config.replace(cuda_graphs=False), cuda)
    assert graphs_enabled(small_config.replace(cuda_graphs=True), cpu)  # refused by check_config


@pytest.mark.bitwise
def test_fp32_default_is_bitwise_the_plain_loss(synthetic_dataset, small_config):
    """precision='fp32' wraps nothing: the stage's loss is the plain compute_loss."""
    from torch_impl.tasks import make_retrieval_task, retrieval_loss
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    parts, train = retrieval_parts(model, synthetic_dataset, small_config, validate=False)
    batch = {k: v[:256] for k, v in train.items()}
    with torch.no_grad():
        assert torch.equal(loss_and_outputs(parts.loss, batch)[0], retrieval_loss(
            model, make_retrieval_task(small_config), batch))


# --- torch.compile ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_compiled_training_equals_eager(synthetic_dataset, small_config, stage):
    """compile=True (forward + loss compiled, dynamic=False; a smaller batch compiles its own
    graph once): 5 steps give the eager losses and weights within 1e-5. Not bitwise: inductor
    fuses and reorders float32 sums (measured: weights 5e-6 apart after 8 steps); over many
    steps the two runs drift apart as any two float orders do. Slow: CPU compile ~15-50 s."""
    import torch._inductor  # noqa: F401  (part of torch: missing means a broken install)
    n = len(synthetic_dataset.split.train)
    rows = [torch.arange(i * 256, i * 256 + 256) % n for i in range(4)] + [torch.arange(100)]
    runs = []
    for config in (small_config, small_config.replace(compile=True)):
        parts, train = _cuda_parts(synthetic_dataset, config, stage)
        losses = _steps(make_step(parts, train, config, 256), parts, rows)
        runs.append((losses, list(parts.model.parameters())))
    (eager, eager_params), (compiled, params) = runs
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- CUDA graphs: refused off CUDA, tested on CUDA ------------------------------------------------

def test_cuda_graphs_are_refused_on_cpu(synthetic_dataset, small_config):
    with pytest.raises(UnsupportedOptionError, match="cuda_graphs=True needs a CUDA device"):
        TorchBackend.check_config(small_config.replace(cuda_graphs=True))
    with pytest.raises(UnsupportedOptionError, match="--device cuda"):
        TorchBackend(small_config.replace(cuda_graphs=True), synthetic_dataset.spec)


def test_make_step_on_cpu_is_eager_or_compiled(synthetic_dataset, small_config):
    """Broken on purpose, it fails: a CPU step that skips the optimizer update, or returns another
    batch's loss."""
    model = build_retrieval_model(synthetic_dataset.spec, small_config)
    parts, train = retrieval_parts(model, synthetic_dataset, small_config, validate=False)
    with pytest.raises(ValueError, match="CUDA device"):
        from torch_impl.train import CudaGraphStep
        CudaGraphStep(parts, train, 256)
    step = make_step(parts, train, small_config, 256)
    twin = build_retrieval_model(synthetic_dataset.spec, small_config)   # same seeded init
    twin_parts, twin_train = retrieval_parts(twin, synthetic_dataset, small_config,
                                             validate=False)
    rows = torch.arange(256)
    value, _, _ = step(rows)                        # the CPU step is the eager one: bitwise
    expected, _, _ = eager_step(twin_parts, twin_train)(rows)
    assert torch.isfinite(value) and torch.equal(value, expected)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name              # and it did update the weights alike


def _cuda_parts(dataset, config, stage):
    build = build_retrieval_model if stage == "retrieval" else build_ranking_model
    make = retrieval_parts if stage == "retrieval" else ranking_parts
    model = build(dataset.spec, config, device=torch.device(config.train.device))
    return make(model, dataset, config, validate=False)


def _steps(step, parts, rows_list):
    losses = []
    for rows in rows_list:
        value, outputs, batch = step(rows)
        for metric in parts.metrics:
            metric.update(batch, outputs)
        losses.append(value.clone())
    return torch.stack(losses)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_graph_captured_training_equals_eager_for_20_steps(synthetic_dataset, small_config,
                                                           stage):
    """Warm-up steps, capture, replays, and one smaller batch through the uncaptured path: the
    step losses and the weights equal the eager run's within 1e-5 (the same kernels; cuBLAS may
    pick another algorithm inside a capture)."""
    config = small_config.replace(device="cuda")
    n = len(synthetic_dataset.split.train)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randperm(n, generator=gen)[:256].cuda() for _ in range(20)]
    rows[10] = rows[10][:100]  # a smaller batch in the middle: the uncaptured step
    eager_parts, eager_train = _cuda_parts(synthetic_dataset, config, stage)
    graph_parts, graph_train = _cuda_parts(synthetic_dataset,
                                           config.replace(cuda_graphs=True), stage)
    eager = _steps(eager_step(eager_parts, eager_train), eager_parts, rows)
    graphed = _steps(make_step(graph_parts, graph_train, config.replace(cuda_graphs=True), 256),
                     graph_parts, rows)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(graph_parts.model.parameters(), eager_parts.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_cuda_step_makes_no_host_sync(synthetic_dataset, small_config, stage, graphs):
    """torch.cuda.set_sync_debug_mode('error') raises on any host synchronisation (.item(),
    nonzero(), a blocking copy) inside the steps; the batch positions are on the device. The
    first 4 steps (with graphs: 3 warm-up steps and the capture, which synchronises once by
    design) run before the check; the checked steps include a smaller, uncaptured batch."""
    config = small_config.replace(device="cuda", cuda_graphs=graphs)
    parts, train = _cuda_parts(synthetic_dataset, config, stage)
    step = make_step(parts, train, config, 256)
    n = len(synthetic_dataset.split.train)
    rows = [torch.arange(i, i + 256, device="cuda") % n for i in range(0, 256 * 10, 256)]
    rows[7] = rows[7][:100]
    _steps(step, parts, rows[:4])
    rows = rows[4:]
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(step, parts, rows)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_cuda_step_equals_cpu_step(synthetic_dataset, small_config, stage):
    """The same batch, the same initial weights: one fp32 step on CUDA and on the CPU give the
    same loss and weights within 1e-5 (different kernels sum in other orders)."""
    cpu_parts, cpu_train = _cuda_parts(synthetic_dataset, small_config, stage)
    cuda_parts, cuda_train = _cuda_parts(synthetic_dataset,
                                         small_config.replace(device="cuda"), stage)
    cuda_parts.model.load_state_dict(cpu_parts.model.state_dict())
    rows = torch.arange(256)
    for _ in range(2):
        a = eager_step(cpu_parts, cpu_train)(rows)[0]
        b = eager_step(cuda_parts, cuda_train)(rows.cuda())[0]
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-5)
    for p, q in zip(cpu_parts.model.parameters(), cuda_parts.model.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-5, atol=1e-5)


# --- device evaluation ----------------------------------------------------------------------------

def _near_ties(q, t, corpus, tol=1e-5):
    """[N] how many corpus scores are within float rounding of the row's positive (a tie with
    the positive's own corpus copy included)."""
    q64, t64, c64 = (np.asarray(a, np.float64) for a in (q, t, corpus))
    pos = (q64 * t64).sum(1)
    scores = q64 @ c64.T
    return (np.abs(scores - pos[:, None]) <= tol * (1 + np.abs(pos[:, None]))).sum(1)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("budget", [4 * 7, 4 * 50 * 33, 1 << 20])
def test_scoring_higher_equals_the_numpy_metric(budget):
    """Counts equal numpy's except on rows whose positive is within float rounding of another
    score (torch's matmul and sum may add in another order than numpy's), where they differ by
    at most the number of such scores; non-finite rows agree (a miss). Chunked by bytes: 1
    row, 33 rows, all."""
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(50, 8)).astype(np.float32)
    truths = rng.normal(size=(200, 8)).astype(np.float32)
    queries = rng.normal(size=(200, 8)).astype(np.float32)
    queries[3, 0] = np.nan
    queries[7] = 0.0  # every score ties with the positive at 0: the tie favours it
    corpus[5, 1] = np.inf  # scores inf or nan in every row with q[:, 1] != 0
    queries[9:12, 1] = 0.0  # ... and nan for those (0 * inf): rows 9-11 non-finite too
    g_np, f_np = num_scoring_higher(queries, truths, corpus)
    g_t, f_t = scoring_higher(torch.from_numpy(queries), torch.from_numpy(truths),
                              torch.from_numpy(corpus), budget_bytes=budget)
    g_t, f_t = g_t.numpy(), f_t.numpy()
    np.testing.assert_array_equal(f_t, f_np)
    assert not f_t.any()  # the inf column makes every row non-finite

    finite_corpus = np.where(np.isfinite(corpus), corpus, 0).astype(np.float32)
    g_np, f_np = num_scoring_higher(queries, truths, finite_corpus)
    g_t, f_t = (a.numpy() for a in scoring_higher(
        torch.from_numpy(queries), torch.from_numpy(truths), torch.from_numpy(finite_corpus),
        budget_bytes=budget))
    np.testing.assert_array_equal(f_t, f_np)
    assert not f_t[3] and f_t[7] and g_t[7] == 0
    ties = _near_ties(queries, truths, finite_corpus)
    ok = f_np & (ties == 0)
    assert ok.sum() > 190
    np.testing.assert_array_equal(g_t[ok], g_np[ok])
    assert (np.abs(g_t[f_np] - g_np[f_np]) <= np.maximum(ties[f_np], 0)).all()


def test_backend_scoring_higher_is_numpy_in_numpy_out(synthetic_dataset, small_config):
    """Broken on purpose, it fails: a device count that drops the finite check or counts ties
    against the positive."""
    backend = TorchBackend(small_config, synthetic_dataset.spec)
    ds = synthetic_dataset
    test = ds.split.test[:64]
    q = backend.query_embeddings(ds.user_id[test], ds.timestamp[test])
    t = backend.candidate_embeddings(ds.movie_title[test])
    corpus = backend.candidate_embeddings(ds.corpus_titles)
    greater, finite = backend.scoring_higher(q, t, corpus, budget_bytes=4 * len(corpus) * 10)
    g_np, f_np = num_scoring_higher(q, t, corpus)
    assert greater.dtype == np.int64 and finite.dtype == bool and greater.shape == (64,)
    np.testing.assert_array_equal(finite, f_np)
    ties = _near_ties(q, t, corpus)  # >= 1: the truth's own corpus copy
    assert (np.abs(greater - g_np)[f_np] <= ties[f_np]).all()
    # positives 1% off their own corpus copy: (almost) no near-tie is left, so the counts
    # must agree exactly (with the truth's copy tying, every row had a tie: 0 rows compared)
    t = (t * np.float32(1.01)).astype(np.float32)
    greater, _ = backend.scoring_higher(q, t, corpus, budget_bytes=4 * len(corpus) * 10)
    g_np, _ = num_scoring_higher(q, t, corpus)
    ties = _near_ties(q, t, corpus)
    assert (ties == 0).sum() >= 50
    np.testing.assert_array_equal(greater[ties == 0], g_np[ties == 0])
