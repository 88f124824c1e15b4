"""Data preparation and reading: the Python face of the Rust data engine.

``prep_pt`` writes a folder of Arrow shards that ``datasets.load_from_disk`` reads as is;
``ShardDataset`` reads such a folder memory-mapped, as a ``torch.utils.data.Dataset``.
"""

from ferrotune.data.prep import prep_pt
from ferrotune.data.shards import ShardDataset, read_manifest

__all__ = ["ShardDataset", "prep_pt", "read_manifest"]
