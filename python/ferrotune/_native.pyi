"""Type stubs of the private extension module built from ``rust/python``."""

from os import PathLike
from typing import Literal

__version__: str

class Tokenizer:
    """A HF tokenizer (a model folder or ``tokenizer.json``) as the data engine loads it, encoding
    through the engines ``engine`` picks: ``auto`` (the fast engine where it is proven exact, the
    reference elsewhere), ``fast`` or ``reference``."""

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        engine: Literal["auto", "fast", "reference"] = "auto",
    ) -> None: ...
    def encode_batch(self, texts: list[str], *, add_special_tokens: bool = True) -> list[list[int]]:
        """The ids of each text; with ``add_special_tokens``, those the post-processor adds."""
    def encode_batch_with_offsets(
        self, texts: list[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """The ids and character offsets of each text, no special tokens added."""
    def engine_report(self) -> str:
        """Which engines ran and how many texts each encoded, as the manifest records it (JSON:
        ``requested``, ``fast``, ``reference``, ``fast_proven``, ``why_not_proven``, ``texts``)."""

def prep_pt(
    tokenizer: str | PathLike[str],
    inputs: list[str],
    out: str | PathLike[str],
    *,
    block_size: int = 1024,
    workers: int = 0,
    text_field: str = "text",
    doc_sep: str = "line",
    last_block: str = "pad",
    eos: bool = True,
    eos_token: str | None = None,
    empty: str = "skip",
    skip_bad: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_size: str = "500MB",
    input_format: str | None = None,
    engine: str = "auto",
) -> str: ...
def render_chat_template(
    template: str,
    messages_json: str,
    *,
    tools_json: str | None = None,
    add_generation_prompt: bool = False,
    special_tokens_json: str | None = None,
    kwargs_json: str | None = None,
    documents_json: str | None = None,
    name: str = "chat_template",
) -> tuple[str, list[tuple[int, int]]]: ...
def prep_chat(stage: str, options_json: str) -> str: ...
def builtin_templates() -> list[tuple[str, str]]: ...
def tokenizer_fingerprint(path: str | PathLike[str]) -> str:
    """SHA-256 (hex) over what decides a tokenizer's ids (vocabulary, merges, added tokens and
    their flags, normaliser, pre-tokeniser, post-processor, decoder, the model's options), the
    same for a ``tokenizer.json`` that ``save_pretrained`` re-serialised; ``path`` is a model
    folder or a ``tokenizer.json``. The manifest records it as ``tokenizer.fingerprint``."""
