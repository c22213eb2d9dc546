"""The configured index: ``config.index`` -> an empty :class:`~twostage.index.Index`."""
from __future__ import annotations

from twostage.config import Config, IndexConfig, section_of

from .base import Index, index_class


def make_index(config: Config | IndexConfig) -> Index:
    """An empty index of ``config.index.kind`` with that kind's settings from ``config.index``
    (ivf: nlist, nprobe; hnsw: hnsw_m, ef_search; flat: none). Pass a whole ``Config`` or its
    ``IndexConfig`` section. ValueError for an unknown kind or impossible settings (e.g. ivf
    nprobe > nlist)."""
    section = section_of(config, IndexConfig, "make_index")
    cls = index_class(section.kind)
    # mips_radius is state learnt by the first add, not a setting
    return cls(**{name: getattr(section, name) for name in cls.PARAMS if hasattr(section, name)})
