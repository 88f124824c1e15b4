"""ferrotune: a fast LLM training pipeline with a Rust data engine.

The data engine (``ferrotune._native``, built from ``rust/``) prepares corpora into Arrow shards;
``ferrotune.data`` is its public Python face. The ``ferrotune`` command wraps both.
"""

from ferrotune._native import __version__
from ferrotune.errors import (
    ConfigError,
    DataError,
    FerrotuneError,
    InputNotFoundError,
    OutputExistsError,
    TemplateError,
    TokenizerError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "FerrotuneError",
    "InputNotFoundError",
    "OutputExistsError",
    "TemplateError",
    "TokenizerError",
    "__version__",
]
