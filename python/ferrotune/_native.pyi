"""Type stubs of the private extension module built from ``rust/python``."""

from os import PathLike

__version__: str

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
