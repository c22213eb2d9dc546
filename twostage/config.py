"""One typed configuration for the CLI, the benchmarks and the tests.

Defaults are the seed's protocol (see ``../shared/seed/SUMMARY.md``) and Keras/TFRS defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

BackendName = Literal["torch", "tfrs"]
BACKENDS: tuple[str, ...] = ("torch", "tfrs")
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class Config:
    # data
    data_dir: str | None = None          # None: TWOSTAGE_DATA_DIR, the cache, then download
    seed: int = 42                       # split, batch orders and initialisation
    train_fraction: float = 0.8          # 80,000 / 20,000 on ml-100k
    rating_threshold: float = 4.0        # user_pref = rating >= threshold (ranking label)
    num_buckets: int = 1000              # timestamp bucket boundaries linspace(min, max, n)
    max_tokens: int = 10_000             # TextVectorization max_tokens
    # models
    embedding_dim: int = 32
    layer_sizes: tuple[int, ...] = (64, 32)          # query/candidate tower MLP
    ranking_layer_sizes: tuple[int, ...] = (256, 64)  # ranking MLP before the sigmoid unit
    # retrieval task options (tfrs.tasks.Retrieval; None/False = TFRS default)
    temperature: float | None = None
    use_sampling_probability: bool = False   # logQ correction with in-batch title frequencies
    remove_accidental_hits: bool = False     # candidate id = title
    num_hard_negatives: int | None = None
    # training
    batch_size: int = 2048
    eval_batch_size: int = 4096
    retrieval_epochs: int = 100
    ranking_epochs: int = 100
    validation_freq: int = 10            # validate every N epochs (and after the last)
    learning_rate: float = 0.1           # Adagrad(0.1) as the seed
    initial_accumulator_value: float = 0.1  # Keras Adagrad default (torch's default is 0)
    adagrad_epsilon: float = 1e-7        # Keras Adagrad default (torch's default is 1e-10)
    shared_batches: bool = True          # feed both backends data.split's batch order
    device: str = "cpu"                  # torch only: cpu | cuda
    # evaluation and serving
    top_ks: tuple[int, ...] = (1, 5, 10, 50, 100)
    num_candidates: int = 10             # candidates retrieved per query in the two-stage eval
    ndcg_k: int = 10
    index: str = "flat"                  # flat (exact) | ivf | hnsw  (torch/FAISS)
    ivf_nlist: int = 64
    ivf_nprobe: int = 8
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    quiet: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "eval_batch_size", "embedding_dim", "num_buckets",
                     "num_candidates", "ndcg_k", "validation_freq"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("retrieval_epochs", "ranking_epochs"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if not self.layer_sizes or any(s < 1 for s in self.layer_sizes):
            problems.append(f"layer_sizes={self.layer_sizes} must be positive sizes, e.g. 64,32")
        if any(s < 1 for s in self.ranking_layer_sizes):
            problems.append(f"ranking_layer_sizes={self.ranking_layer_sizes} must be positive")
        if not self.top_ks or any(k < 1 for k in self.top_ks):
            problems.append(f"top_ks={self.top_ks} must be positive")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate={self.learning_rate} must be > 0")
        if self.temperature is not None and self.temperature <= 0:
            problems.append(f"temperature={self.temperature} must be > 0")
        if self.num_hard_negatives is not None and self.num_hard_negatives < 1:
            problems.append(f"num_hard_negatives={self.num_hard_negatives} must be >= 1")
        if self.index not in INDEX_KINDS:
            problems.append(f"index={self.index!r} must be one of {', '.join(INDEX_KINDS)}")
        if self.ndcg_k > self.num_candidates:
            problems.append(f"ndcg_k={self.ndcg_k} exceeds num_candidates={self.num_candidates}")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}")
        tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in d.items()})
