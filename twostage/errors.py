"""The project's option error, in a leaf module so that any core module can raise it
(``twostage.backend`` re-exports it; ``twostage.recipes`` raises it and ``backend`` imports
``recipes``, so defining it in ``backend`` would close an import cycle)."""
from __future__ import annotations


class UnsupportedOptionError(ValueError):
    """A backend was given a configuration value it cannot honour (never silently ignored)."""
