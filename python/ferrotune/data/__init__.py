"""Data preparation and reading: the Python face of the Rust data engine.

``render_chat_template`` renders a conversation as transformers' ``apply_chat_template`` does.
``prep_pt``, ``prep_sft``, ``prep_rm``, ``prep_dpo`` and ``prep_ppo`` write a folder of Arrow
shards that ``datasets.load_from_disk`` reads as is; ``read_manifest`` reads its manifest.
``ShardDataset`` reads such a folder memory-mapped, as a ``torch.utils.data.Dataset``; it is
imported on first use, so the CLI's prep commands start without torch. ``Tokenizer`` is a
``tokenizer.json`` as the engine loads it (``Tokenizer(path, engine="auto")``): ``encode_batch``,
``encode_batch_with_offsets`` (character offsets) and ``engine_report`` (which engine encoded how
many texts), the very encoder the ``prep_*`` stages run. ``Transform`` is a stage as an Arrow
batch transform (Ray Data's ``map_batches``, Spark's ``mapInArrow``; ``ferrotune.data.ray``
reads records and writes the folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferrotune._native import Tokenizer
from ferrotune.data.manifest import read_manifest
from ferrotune.data.prep import prep_dpo, prep_ppo, prep_pt, prep_rm, prep_sft
from ferrotune.data.template import builtin_templates, render_chat_template
from ferrotune.data.transform import Transform

if TYPE_CHECKING:
    from ferrotune.data.shards import ShardDataset

__all__ = [
    "ShardDataset",
    "Tokenizer",
    "Transform",
    "builtin_templates",
    "prep_dpo",
    "prep_ppo",
    "prep_pt",
    "prep_rm",
    "prep_sft",
    "read_manifest",
    "render_chat_template",
]


def __getattr__(name: str) -> Any:
    if name == "ShardDataset":
        from ferrotune.data.shards import ShardDataset

        return ShardDataset
    raise AttributeError(f"module 'ferrotune.data' has no attribute {name!r}")
