"""One typed configuration, grouped by concern, shared by the CLI, the benchmarks and the tests.

Defaults are the article's protocol (``docs/seed.md``) and Keras/TFRS defaults.

Every field carries its command-line help (and, where needed, its choices and parser) in its
metadata, so ``twostage.cli`` generates the flags from this file: adding an option is one field
here plus its use. A flag is always its field's name (:func:`flag_of`); renamed flags stay
accepted through ``old_flags`` with a deprecation line. ``Config.to_dict`` is versioned;
``Config.from_dict`` reads the current layout and the flat layout of version 1 run folders, and
names the file's bad field otherwise.

Access is by section: ``config.train.batch_size``, ``config.index.kind``. ``Config.of(**flat)``
and ``config.replace(**flat)`` accept field names without their section (they are unique), which
is what tests and benchmarks use to state a variant in one line.

Each section validates its own fields when it is built (``__post_init__``: a builder may take
one section alone); ``Config`` adds what needs two sections (the batch split over processes).
Every problem is listed in one ``ValueError("invalid configuration: ...")``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

BackendName = Literal["torch", "tfrs"]
BACKENDS: tuple[str, ...] = ("torch", "tfrs")
INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq", "sq")
EMPTY_TITLE_MODES: tuple[str, ...] = ("zero", "nan")
RANKING_LOSSES: tuple[str, ...] = ("keras_graph", "keras_eager", "logits")
NEGATIVES: tuple[str, ...] = ("replica", "global")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
# The MovieLens releases TFDS knows (its ``movielens/<name>-ratings`` configs).
DATASETS: tuple[str, ...] = ("100k", "1m", "20m", "25m", "latest-small")
DEMOGRAPHIC_DATASETS: tuple[str, ...] = ("100k", "1m")  # the releases with a user table
SPLITS: tuple[str, ...] = ("random", "temporal")
CONFIG_VERSION = 2
# Sizes a configuration may ask for (a hostile or mistyped run folder must fail before it
# allocates): far above any MovieLens model, far below what would exhaust a machine.
MAX_WIDTH = 65_536
MAX_BUCKETS = 10_000_000
MAX_TOKENS = 10_000_000
# The largest --seed: numpy's legacy seed range (2**32 - 1, tf.keras.utils.set_random_seed in
# the TFRS backend) less one, as the ranking model is initialised from seed + 1.
MAX_SEED = 2**32 - 2


def option(default: Any, help: str, *, choices: tuple | None = None,
           parse: Callable[[str], Any] | None = None, invert: bool = False,
           cli: bool = True, metavar: str | None = None, old_flags: tuple[str, ...] = ()
           ) -> Any:
    """A config field with its command-line description (its flag is :func:`flag_of`).

    ``invert``: a bool that defaults to True, cleared by ``--no-<name>``; ``parse``: how the
    CLI reads the text (default: from the field's type); ``cli=False``: not on the command
    line; ``old_flags``: earlier spellings, still accepted with a deprecation line.
    """
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "parse": parse, "invert": invert, "cli": cli,
                                            "metavar": metavar, "old_flags": old_flags})


def flag_of(section: type, f: dataclasses.Field) -> str:
    """The CLI flag of field ``f`` of a config section: ``--`` + the section's ``FLAG_PREFIX``
    + the field name with dashes (``--no-`` before it for an ``invert`` field).

    One rule, no per-field spellings: a flag names what it sets (``--normalize`` sets
    ``task.normalize``; ``--index-nprobe`` sets ``index.nprobe``).
    """
    name = getattr(section, "FLAG_PREFIX", "") + f.name.replace("_", "-")
    return f"--no-{name}" if f.metadata.get("invert") else f"--{name}"


def int_list(text: str) -> tuple[int, ...]:
    """'64,32' -> (64, 32); a clear message otherwise (used by the CLI for tuple fields)."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of integers, e.g. 64,32"
                         ) from None
    if not values:
        raise ValueError(f"{text!r} holds no integer, e.g. 64,32")
    return values


# --- sections --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("100k", "MovieLens release, named as TFDS' movielens/<name>-ratings",
                          choices=DATASETS)
    split: str = option("random", "random: the seed's seeded shuffle, first 80%% train; "
                        "temporal: the earliest 80%% of ratings by timestamp train",
                        choices=SPLITS)
    data_dir: str | None = option(None, "folder with the MovieLens files (else "
                                  "TWOSTAGE_DATA_DIR, the cache, then a verified download)")
    train_fraction: float = option(0.8, "share of the shuffled ratings used for training "
                                   "(80,000 / 20,000 on ml-100k)")
    rating_threshold: float = option(4.0, "ranking label: rating >= threshold")
    num_buckets: int = option(1000, "timestamp buckets: boundaries linspace(min, max, n) "
                              "(Keras Discretization)")
    max_tokens: int = option(10_000, "title vocabulary size incl. padding and OOV "
                             "(Keras TextVectorization max_tokens)")

    def __post_init__(self) -> None:
        _validate(self, _data_problems)


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = option(32, "width of every embedding table")
    layer_sizes: tuple[int, ...] = option((64, 32), "query/candidate tower sizes, e.g. 64,32",
                                          parse=int_list, metavar="N,N")
    ranking_layer_sizes: tuple[int, ...] = option(
        (256, 64), "ranking MLP sizes before the sigmoid unit, e.g. 256,64", parse=int_list,
        metavar="N,N")
    empty_title: str = option("zero", "pooling of a title with no token: zero vector, or NaN "
                              "as Keras' GlobalAveragePooling1D", choices=EMPTY_TITLE_MODES)
    genres: bool = option(False, "candidate tower: add the movie's genres (embedded, "
                          "mean-pooled)")
    history: bool = option(False, "query tower: add the masked mean of the embeddings of the "
                           "titles the user rated in training before the query's timestamp")
    history_length: int = option(50, "--history: the most recent N titles a history holds "
                                 "(YouTube's candidate model: 50)")
    user_features: bool = option(False, "query tower: add embeddings of the user's gender, age "
                                 "group, occupation and zip prefix (ml-100k / ml-1m "
                                 "demographics; twostage.user_features), so cold users get "
                                 "them too")
    release_date: bool = option(False, "candidate tower: add an embedding of the title's "
                                "release quarter (ml-100k's u.item date, else the title's "
                                "year), which the query's time features can match (the "
                                "title's age at query time)")

    def __post_init__(self) -> None:
        _validate(self, _model_problems)


@dataclass(frozen=True)
class TaskConfig:
    temperature: float | None = option(None, "divide retrieval logits by T (TFRS Retrieval)")
    use_sampling_probability: bool = option(False, "logQ correction with in-batch title "
                                            "frequencies (TFRS Retrieval's "
                                            "candidate_sampling_probability)",
                                            old_flags=("--logq",))
    remove_accidental_hits: bool = option(False, "mask in-batch negatives that share the "
                                          "positive's title")
    num_hard_negatives: int | None = option(None, "keep only the N highest-scoring negatives "
                                            "per row (TFRS HardNegativeMining)")
    normalize: bool = option(False, "L2-normalise query and candidate embeddings (cosine "
                             "scores); pair with --temperature", old_flags=("--cosine",))
    learn_temperature: bool = option(False, "learn the temperature: a trainable scalar started "
                                     "at --temperature (or 1)")
    mixed_negatives: int = option(0, "add N titles sampled uniformly from the corpus per batch "
                                  "as shared extra negatives, corrected for their sampling "
                                  "probability (Yang et al. 2020); 0: in-batch only")
    ranking_loss: str = option("keras_graph", "ranking BCE: what Keras fit computes "
                               "(keras_graph), eager Keras (keras_eager), or from logits; "
                               "the TFRS backend supports keras_graph only",
                               choices=RANKING_LOSSES)

    def __post_init__(self) -> None:
        _validate(self, _task_problems)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = option(2048, "training batch size (>= 2: in-batch negatives)")
    retrieval_epochs: int = option(100, "epochs of the retrieval stage")
    ranking_epochs: int = option(100, "epochs of the ranking stage")
    learning_rate: float = option(0.1, "Adagrad learning rate (the seed's 0.1)")
    initial_accumulator_value: float = option(0.1, "Adagrad accumulator start (Keras 0.1; "
                                              "torch's own default is 0)", cli=False)
    adagrad_epsilon: float = option(1e-7, "Adagrad epsilon inside the square root (Keras "
                                    "1e-7; torch's own is 1e-10 outside it)", cli=False)
    shared_batches: bool = option(True, "both backends read the shared batch order; "
                                  "--no-shared-batches: each shuffles its own", invert=True,
                                  old_flags=("--framework-shuffle",))
    validation_freq: int = option(10, "validate every N epochs (and after the last)")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:N (the TFRS backend runs "
                         "on cpu only)")
    precision: str = option("fp32", "torch towers in fp32, or under bf16 autocast (the score "
                            "matrix, softmax, losses and optimizer state stay fp32)",
                            choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the training step of both stages (torch)")
    cuda_graphs: bool | None = option(None, "capture the full training step (forward, "
                                      "backward, Adagrad) as a CUDA graph where shapes are "
                                      "static (torch); default: on for a one-process CUDA run "
                                      "without mixed negatives (measured 3x faster, same "
                                      "figures), off elsewhere")
    user_dropout: float = option(0.0, "retrieval training: this seeded share of the training "
                                 "ratings gets the OOV user id (the same rows on both "
                                 "backends; twostage.recipes.user_dropout_view), so the row "
                                 "cold users are served from is trained; 0: off")
    dropout_keeps_history: bool = option(False, "user-id dropout (--user-dropout) forgets a "
                                         "dropped rating's user id but keeps its history, as "
                                         "a cold user with --live-history is asked (the OOV "
                                         "row learns beside a history); off: a dropped "
                                         "rating has no history")

    def __post_init__(self) -> None:
        _validate(self, _train_problems)


@dataclass(frozen=True)
class EvalConfig:
    eval_batch_size: int = option(4096, "batch size of inference and evaluation")
    top_ks: tuple[int, ...] = option((1, 5, 10, 50, 100), "k of the top-k accuracies; a k "
                                     "above the catalogue size (whose accuracy would be 1.0 by "
                                     "construction) is dropped with a warning, and none left "
                                     "is refused before training",
                                     parse=int_list, metavar="K,K")
    num_candidates: int = option(10, "candidates retrieved per query, then re-ranked")
    ndcg_k: int = option(10, "k of nDCG@k / hit@k (<= num_candidates)")
    eval_queries: int | None = option(None, "evaluate a seeded sample of N test rows (results "
                                      "report N and each accuracy's standard error); default: "
                                      "every test row")
    prior_beta: float = option(0.0, "evaluation: add beta * log q(title) to every retrieval "
                               "score (q: the title's share of the training ratings; "
                               "twostage.prior), the popularity that logQ training removes; "
                               "0: off")
    live_history: bool = option(False, "evaluation: the history recipe reads every rating "
                                "strictly before the query's time (the whole log, earlier "
                                "test-period ratings included, as a live service's would) "
                                "instead of the training split's only; needs --history "
                                "(twostage.recipes.live_recipe)")
    recent_beta: float = option(0.0, "evaluation: add beta * log(1 + the title's ratings in the "
                                "recent_window_days before the query's time, read from the "
                                "whole log: recent-popular's causal counts) to the retrieval "
                                "scores of users with a training rating (twostage.prior."
                                "RecentBackend); 0: off")
    recent_beta_cold: float | None = option(None, "the same for users without a training "
                                            "rating; default: --recent-beta")
    recent_window_days: float = option(90.0, "days of ratings --recent-beta counts before "
                                       "each query's time; 0: every earlier rating")
    cold_as_oov: bool = option(False, "evaluation: users without a training rating ask through "
                               "the OOV user row (trained by --user-dropout) instead of their "
                               "own never-trained row; their live histories stay theirs")

    def __post_init__(self) -> None:
        _validate(self, _eval_problems)

    @property
    def recent_betas(self) -> tuple[float, float]:
        """(warm, cold) betas of the recent-popularity prior; cold defaults to warm's."""
        cold = self.recent_beta if self.recent_beta_cold is None else self.recent_beta_cold
        return self.recent_beta, cold


@dataclass(frozen=True)
class IndexConfig:
    FLAG_PREFIX: ClassVar[str] = "index-"  # --index-kind, --index-nprobe: flags name the index
    kind: str = option("flat", "candidate index: flat (exact), ivf, hnsw, ivfpq or sq "
                       "(FAISS, torch backend; the TFRS backend serves with BruteForce = flat)",
                       choices=INDEX_KINDS, old_flags=("--index",))
    nlist: int | None = option(None, "ivf/ivfpq: number of k-means cells (default: the FAISS "
                               "guideline 4*sqrt(N), N the catalog size)",
                               old_flags=("--ivf-nlist",))
    nprobe: int = option(8, "ivf: cells searched per query", old_flags=("--ivf-nprobe",))
    hnsw_m: int = option(32, "hnsw: links per node", old_flags=("--hnsw-m",))
    ef_search: int = option(128, "hnsw: candidates explored per query",
                            old_flags=("--hnsw-ef-search",))
    ef_construction: int = option(40, "hnsw: candidates explored per insertion while building",
                                  old_flags=("--hnsw-ef-construction",))
    mips: bool = option(True, "hnsw: build the graph on the MIPS-to-L2 augmentation (default; "
                        "on trained embeddings recall@100 0.896 against 0.321 raw at efSearch "
                        "128) or on raw inner products (see twostage/index/hnsw.py)",
                        invert=True, old_flags=("--hnsw-raw-ip",))
    pq_bytes: int = option(8, "ivfpq: bytes per vector (one code per D / pq_bytes dims)",
                           old_flags=("--pq-bytes",))

    def __post_init__(self) -> None:
        _validate(self, _index_problems)


@dataclass(frozen=True)
class DistributedConfig:
    nproc: int = option(1, "processes on this machine: torch.distributed workers (torch, "
                        "launched with torch's own launcher; under torchrun the launcher "
                        "decides) or MirroredStrategy replicas on logical CPU devices (tfrs)")
    cross_process_negatives: str = option(
        "replica", "semantics across processes: replica = TFRS under MirroredStrategy "
        "(in-batch negatives from each process's own slice; the ranking loss a mean per "
        "slice, gradients summed); global = the single-process losses (every process's "
        "candidates as negatives; the ranking mean over the whole batch)", choices=NEGATIVES,
        old_flags=("--negatives",))
    timeout_s: int = option(300, "seconds a process waits for the others before the run fails")

    def __post_init__(self) -> None:
        _validate(self, _distributed_problems)


@dataclass(frozen=True)
class OutputConfig:
    quiet: bool = option(False, "no progress bars or log lines")
    tensorboard: str | None = option(None, "write TensorBoard event files of both stages "
                                     "under DIR/<backend>/", metavar="DIR")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "task": TaskConfig,
                             "train": TrainConfig, "eval": EvalConfig, "index": IndexConfig,
                             "distributed": DistributedConfig, "output": OutputConfig}
# Flat names that are not field names: ``replace(index="hnsw")`` sets ``index.kind``.
ALIASES = {"index": "kind", "negatives": "cross_process_negatives"}
# Version 1 (flat) names that changed in version 2.
_V1_RENAMES = {"index": ("index", "kind"), "ivf_nlist": ("index", "nlist"),
               "ivf_nprobe": ("index", "nprobe"), "hnsw_ef_search": ("index", "ef_search"),
               "negatives": ("distributed", "cross_process_negatives")}
# Fields renamed within version 2, per section: stored configurations keep loading.
_FIELD_RENAMES = {"distributed": {"negatives": "cross_process_negatives"}}


def _field_sections() -> dict[str, str]:
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in out or f.name == "seed":
                raise TypeError(f"config field {f.name!r} is defined twice")
            out[f.name] = section
    return out


FIELD_SECTION: dict[str, str] = _field_sections()


@dataclass(frozen=True)
class Config:
    """The whole configuration: ``seed`` (split, batch orders and initialisation) and one
    section per concern."""

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _validate(self, _config_problems)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def of(cls, **changes: Any) -> "Config":
        """``Config().replace(**changes)``: e.g. ``Config.of(batch_size=256, quiet=True)``."""
        return cls().replace(**changes)

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes``: ``seed``, whole sections, or field names of any section."""
        top: dict[str, Any] = {}
        per_section: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if name in ALIASES and not isinstance(value, SECTIONS.get(name, ())):
                name = ALIASES[name]
            if name == "seed" or name in SECTIONS:
                top[name] = value
            elif name in FIELD_SECTION:
                per_section.setdefault(FIELD_SECTION[name], {})[name] = value
            else:
                raise ValueError(f"unknown configuration field {name!r}; known: "
                                 f"seed, {', '.join(sorted(FIELD_SECTION))}")
        for section, fields in per_section.items():
            base = top.get(section, getattr(self, section))
            top[section] = dataclasses.replace(base, **fields)
        return dataclasses.replace(self, **top)

    # --- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"version": 2, "seed": ..., "<section>": {field: value}}`` (JSON-ready)."""
        out: dict[str, Any] = {"version": CONFIG_VERSION, "seed": self.seed}
        for section in SECTIONS:
            out[section] = {f.name: _jsonable(getattr(getattr(self, section), f.name))
                            for f in dataclasses.fields(SECTIONS[section])}
        return out

    @classmethod
    def from_dict(cls, d: Any, source: str = "configuration") -> "Config":
        """Read :meth:`to_dict` output (or the flat version 1 layout). Every problem (unknown
        key, wrong type, bad value) raises ValueError naming ``source`` and the field."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a configuration is a JSON object, got "
                             f"{type(d).__name__}")
        version = d.get("version", 1)
        if version == 1:
            d = _from_v1(d, source)
        elif version != CONFIG_VERSION:
            raise ValueError(f"{source}: configuration version {version!r} is not supported "
                             f"(this twostage reads 1 and {CONFIG_VERSION}); retrain with this "
                             "version")
        unknown = sorted(set(d) - {"version", "seed", *SECTIONS})
        if unknown:
            raise ValueError(f"{source}: unknown configuration keys {unknown}; known sections: "
                             f"seed, {', '.join(SECTIONS)}")
        kwargs: dict[str, Any] = {}
        if "seed" in d:
            kwargs["seed"] = _coerce(source, "seed", int, d["seed"])
        for section, cls_ in SECTIONS.items():
            if section in d:
                stored = {_FIELD_RENAMES.get(section, {}).get(k, k): v
                          for k, v in d[section].items()} if isinstance(d[section], dict) \
                    else d[section]
                kwargs[section] = _section_from_dict(cls_, stored, f"{source}: {section}")
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


# --- presets ---------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # The article's protocol (docs/seed.md): every default above.
    "tutorial": {},
    # The strongest recipe measured (docs/results.md; ``python -m benchmarks.quality``): on
    # ml-100k, 20 retrieval epochs, seed protocol, one seed: history + genres + logQ + cosine
    # with a learned temperature top-10 0.120 / top-100 0.604; + 512 mixed negatives 0.121 /
    # 0.608 at 2.3x the time; history + genres + logQ 0.108 / 0.565; logQ alone 0.064 / 0.439.
    "best": {"history": True, "genres": True, "use_sampling_probability": True,
             "normalize": True, "temperature": 0.1, "learn_temperature": True,
             "retrieval_epochs": 20, "ranking_epochs": 20},
}
# For a live service, where a user's earlier ratings and recent popularity are known at query
# time (issue 26; docs/results.md): best with 200-title live histories, user-id dropout that
# keeps histories, cold users through the OOV row, recent popularity (beta 0.1, 365 days:
# what benchmarks.quality's best-live chose on the temporal split's validation slice in 3 of 3
# seeds for cold users and 2 of 3 for warm ones), and the titles' release quarters (warm users'
# means up, within the seed noise, the rest level: benchmarks.quality's preset-live against
# preset-live-no-release, docs/results.md).
PRESETS["live"] = {**PRESETS["best"], "history_length": 200, "live_history": True,
                   "user_dropout": 0.2, "dropout_keeps_history": True, "cold_as_oov": True,
                   "recent_beta": 0.1, "recent_beta_cold": 0.1, "recent_window_days": 365.0,
                   "release_date": True}


# Earlier preset names, still accepted with a FutureWarning naming the new one ("seed" was
# both the article and the random seed).
RENAMED_PRESETS: dict[str, str] = {"seed": "tutorial"}


def preset(name: str, **changes: Any) -> Config:
    """``Config.of(**PRESETS[name], **changes)``: a named recipe, with explicit changes on top
    (a flag given beside ``--preset`` wins).

    Raises:
        ValueError: an unknown name (the known ones listed). A name of ``RENAMED_PRESETS``
        works and warns (FutureWarning) with its new name.
    """
    if name in RENAMED_PRESETS:
        warnings.warn(f"preset {name!r} is now called {RENAMED_PRESETS[name]!r}; the old name "
                      "will go", FutureWarning, stacklevel=2)
        name = RENAMED_PRESETS[name]
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return Config.of(**{**PRESETS[name], **changes})


# --- validation ------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _positive(**values: int | None) -> list[str]:
    """``name=value must be >= 1`` for each given value below 1 (None: not set, not checked)."""
    return [f"{k}={v} must be >= 1" for k, v in values.items() if v is not None and v < 1]


def _choice(**values: tuple[str, tuple[str, ...]]) -> list[str]:
    """``name='value' must be one of ...`` for each (value, choices) outside its choices."""
    return [f"{k}={v!r} must be one of {', '.join(choices)}"
            for k, (v, choices) in values.items() if v not in choices]


def _at_most(**values: tuple[int, int]) -> list[str]:
    """``name=value exceeds the limit L`` for each (value, limit) above its limit."""
    return [f"{k}={v} exceeds the limit {limit}" for k, (v, limit) in values.items() if v > limit]


def _data_problems(d: DataConfig) -> list[str]:
    problems = _positive(num_buckets=d.num_buckets)
    problems += _at_most(num_buckets=(d.num_buckets, MAX_BUCKETS),
                         max_tokens=(d.max_tokens, MAX_TOKENS))
    if d.max_tokens < 3:
        problems.append(f"max_tokens={d.max_tokens} must be >= 3 (padding, OOV, one token)")
    if not 0.0 < d.train_fraction < 1.0:
        problems.append(f"train_fraction={d.train_fraction} must be strictly between 0 and 1")
    return problems + _choice(dataset=(d.dataset, DATASETS), split=(d.split, SPLITS))


def _model_problems(m: ModelConfig) -> list[str]:
    problems = _positive(embedding_dim=m.embedding_dim, history_length=m.history_length)
    for name, sizes in (("layer_sizes", m.layer_sizes),
                        ("ranking_layer_sizes", m.ranking_layer_sizes)):
        if (name == "layer_sizes" and not sizes) or any(s < 1 or s > MAX_WIDTH for s in sizes):
            problems.append(f"{name}={sizes} must be sizes from 1 to {MAX_WIDTH}, e.g. 64,32")
    problems += _at_most(embedding_dim=(m.embedding_dim, MAX_WIDTH))
    return problems + _choice(empty_title=(m.empty_title, EMPTY_TITLE_MODES))


def _task_problems(t: TaskConfig) -> list[str]:
    problems = []
    if t.mixed_negatives < 0:
        problems.append(f"mixed_negatives={t.mixed_negatives} must be >= 0 (0: off)")
    if t.temperature is not None and t.temperature <= 0:
        problems.append(f"temperature={t.temperature} must be > 0")
    problems += _positive(num_hard_negatives=t.num_hard_negatives)
    return problems + _choice(ranking_loss=(t.ranking_loss, RANKING_LOSSES))


def _train_problems(t: TrainConfig) -> list[str]:
    problems = _positive(batch_size=t.batch_size, validation_freq=t.validation_freq)
    if t.batch_size == 1:
        problems.append("batch_size=1 must be >= 2: with one row the in-batch softmax has no "
                        "negative and the retrieval loss is exactly 0")
    problems += [f"{k}={v} must be >= 0" for k, v in (("retrieval_epochs", t.retrieval_epochs),
                                                     ("ranking_epochs", t.ranking_epochs))
                 if v < 0]
    if t.learning_rate <= 0:
        problems.append(f"learning_rate={t.learning_rate} must be > 0")
    if not 0.0 <= t.user_dropout < 1.0:
        problems.append(f"user_dropout={t.user_dropout} must be in [0, 1) (0: off)")
    if t.dropout_keeps_history and not t.user_dropout:
        problems.append("dropout_keeps_history=True changes user-id dropout, which is off; add "
                        "--user-dropout RATE or drop --dropout-keeps-history")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", t.device):
        problems.append(f"device={t.device!r} must be cpu, cuda or cuda:N")
    return problems + _choice(precision=(t.precision, PRECISIONS))


def _eval_problems(e: EvalConfig) -> list[str]:
    problems = _positive(eval_batch_size=e.eval_batch_size, num_candidates=e.num_candidates,
                         ndcg_k=e.ndcg_k, eval_queries=e.eval_queries)
    if not e.top_ks or any(k < 1 for k in e.top_ks):
        problems.append(f"top_ks={e.top_ks} must be positive")
    if e.ndcg_k > e.num_candidates:
        problems.append(f"ndcg_k={e.ndcg_k} exceeds num_candidates={e.num_candidates}")
    negative = {k: v for k, v in (("recent_beta", e.recent_beta),
                                  ("recent_beta_cold", e.recent_beta_cold),
                                  ("recent_window_days", e.recent_window_days))
                if v is not None and v < 0}
    problems += [f"{k}={v} must be >= 0" for k, v in negative.items()]
    if e.prior_beta and any(e.recent_betas):
        problems.append("prior_beta and recent_beta are two popularity priors; choose one "
                        "(--prior-beta or --recent-beta)")
    return problems


def _index_problems(i: IndexConfig) -> list[str]:
    problems = _positive(nprobe=i.nprobe, hnsw_m=i.hnsw_m, ef_search=i.ef_search,
                         ef_construction=i.ef_construction, pq_bytes=i.pq_bytes, nlist=i.nlist)
    if i.kind not in INDEX_KINDS:   # worded as twostage.index.base.index_class words it
        problems.append(f"unknown index kind {i.kind!r} (config index.kind, --index-kind); valid "
                        f"kinds: {', '.join(INDEX_KINDS)}")
    return problems


def _distributed_problems(d: DistributedConfig) -> list[str]:
    problems = []
    if d.nproc < 1 or d.timeout_s < 1:
        problems.append(f"nproc={d.nproc} and timeout_s={d.timeout_s} must be >= 1")
    return problems + _choice(cross_process_negatives=(d.cross_process_negatives, NEGATIVES))


def _config_problems(c: Config) -> list[str]:
    """What no single section can see: the batch split over processes, the seed's range, user
    features of a release without demographics, a live history without the history recipe."""
    problems = []
    if c.model.user_features and c.data.dataset not in DEMOGRAPHIC_DATASETS:
        problems.append(f"user_features=True needs user demographics, which --dataset "
                        f"{c.data.dataset} lacks; use --dataset 100k or 1m, or drop "
                        "--user-features")
    if c.eval.live_history and not c.model.history:
        problems.append("live_history=True reads the history recipe's input, which is off; add "
                        "--history (or --preset best) or drop --live-history")
    t, n = c.train, c.distributed.nproc
    if n >= 1 and t.batch_size >= 1 and t.batch_size % n:
        problems.append(f"batch_size={t.batch_size} does not divide into nproc={n} equal "
                        f"slices; use --batch-size {t.batch_size - t.batch_size % n or n} or "
                        "another --nproc")
    if not 0 <= c.seed <= MAX_SEED:
        problems.append(f"seed={c.seed} must be from 0 to {MAX_SEED} (the range every backend "
                        "can seed)")
    return problems


def _validate(section: Any, check: Callable[[Any], list[str]]) -> None:
    """Raise ``ValueError("invalid configuration: ...")`` listing ``check(section)``'s problems;
    non-finite floats are reported alone (every other check would read them wrongly)."""
    problems = [f"{name}={value!r} is not a finite number" for name, value in _floats(section)
                if not math.isfinite(value)] or check(section)
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


def _floats(section: Any) -> list[tuple[str, float]]:
    """(field name, value) of a section's float fields that are set."""
    return [(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)
            if isinstance(getattr(section, f.name), float)]


S = typing.TypeVar("S")


def section_of(config: Any, cls: type[S], builder: str) -> S:
    """The ``cls`` section of ``config``: ``config`` itself when it is one, else its section.

    Builders take the section whose few values they use (``make_optimizer(config.train)``);
    a whole Config is accepted too, so a one-line test needs no unpacking.

    Raises:
        TypeError: ``config`` is neither a Config nor a ``cls`` (named with ``builder``).
    """
    if isinstance(config, cls):
        return config
    if isinstance(config, Config):
        return getattr(config, next(n for n, c in SECTIONS.items() if c is cls))
    raise TypeError(f"{builder} takes a twostage.config.Config (or its {cls.__name__}), got "
                    f"{type(config).__name__}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a section (``from __future__`` keeps them as strings)."""
    return typing.get_type_hints(cls)


def _coerce(source: str, name: str, kind: Any, value: Any) -> Any:
    """``value`` as the field's type, or ValueError naming ``source`` and the field."""
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str)}
    if kind in ok:
        if not ok[kind]:
            raise ValueError(f"{source}: {name} must be {kind.__name__}"
                             f"{' or null' if optional else ''}, got {value!r}")
        return float(value) if kind is float else value
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{source}: {name} must be a list of integers, got {value!r}")
        return tuple(value)
    raise TypeError(f"unsupported config field type {kind!r} for {name}")


def _section_from_dict(cls: type, d: Any, source: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{source} must be a JSON object, got {type(d).__name__}")
    types = field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ValueError(f"{source}: unknown configuration keys {unknown}; known: "
                         f"{', '.join(types)}")
    values = {k: _coerce(source, k, types[k], v) for k, v in d.items()}
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _from_v1(d: dict, source: str) -> dict:
    """The flat version 1 layout -> the sectioned one (old run folders keep loading)."""
    out: dict[str, Any] = {"version": CONFIG_VERSION}
    unknown = []
    for key, value in d.items():
        if key in ("version", "seed"):
            out[key] = value if key == "seed" else CONFIG_VERSION
        elif key in _V1_RENAMES:
            section, name = _V1_RENAMES[key]
            out.setdefault(section, {})[name] = value
        elif key in FIELD_SECTION:
            out.setdefault(FIELD_SECTION[key], {})[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: unknown configuration keys {sorted(unknown)}")
    return out
