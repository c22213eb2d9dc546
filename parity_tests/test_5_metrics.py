"""Group 5: FactorizedTopK from TFRS and the framework-agnostic evaluation agree; so do the
two-stage nDCG@10 / hit@10 computed through each backend's own index and ranker."""
from . import checks


def test_top_k_semantics_equal_on_same_embeddings(trained_pair, dataset, eval_rows, config):
    u, ts = dataset.user_id[eval_rows], dataset.timestamp[eval_rows]
    t = trained_pair.torch
    checks.check_metric_semantics(t.query_embeddings(u, ts),
                                  t.candidate_embeddings(dataset.movie_title[eval_rows]),
                                  t.candidate_embeddings(dataset.corpus_titles), config.eval.top_ks)


def test_end_to_end_metrics(trained_pair, dataset, eval_rows):
    checks.check_end_to_end_metrics(trained_pair, dataset, eval_rows)
