"""The fused losses and log-probs of ``ferrotune-kernels``, under the ferrotune name.

They live in their own pure-Python package (``kernels/`` in the repository) so that they install
without a Rust toolchain; see ``ferrotune_kernels`` for the documentation.
"""

import ferrotune_kernels
from ferrotune_kernels import *  # noqa: F403  (the same public names, nothing added)

__all__ = list(ferrotune_kernels.__all__)
