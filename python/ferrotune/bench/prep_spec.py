"""What a data-preparation benchmark is made of: the stages' contenders, the corpora they run
on, one contender's run, and the settings of ``ferrotune bench prep`` (shared by
:mod:`ferrotune.bench.prep`, its stage modules, :mod:`ferrotune.bench.corpora` and
:mod:`ferrotune.bench.prep_cli`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDICALGPT, EXAMPLES, STDLIB = "medicalgpt", "examples", "stdlib"
CORPORA = (MEDICALGPT, EXAMPLES, STDLIB)  # what --corpus names
ENGINES = ("local", "ray", "spark")  # what --engine names


@dataclass(frozen=True)
class Contender:
    """One way to prepare a stage's data, run as ``ferrotune.bench.<child>(**kwargs)``.

    ``child`` is ``"MODULE:FUNCTION"``, or :data:`CLI` for the ``ferrotune prep`` command (its
    ``options`` as flags). A ``bare:`` child runs ``bare.py`` as a script, under ``env``'s
    interpreter (an :data:`ferrotune.bench.envs.ENVS` name) or this one.
    """

    name: str
    child: str
    ours: bool = False
    needs: tuple[str, ...] = ()  # modules it imports beyond ferrotune's dependencies
    options: dict[str, Any] = field(default_factory=dict)  # more child kwargs (engine=...)
    env: str = ""


@dataclass(frozen=True)
class Stage:
    """What a stage module (``prep_pt``, ...) tells the runner."""

    name: str
    subdir: str  # the MedicalGPT folder with this stage's records
    pattern: str  # its source files
    records: str  # what they hold, for messages
    items: str  # what a contender writes: "blocks", "conversations", "pairs"
    default_mb: float
    contenders: tuple[Contender, ...]
    comparable: tuple[tuple[str, str], ...]  # (ours, baseline) that must write the same tokens
    check: Callable[[Sequence[PrepRun], dict[str, Any]], bool]  # prints; False on disagreement
    example: str  # the examples/ subfolder with such records
    keep_blank: bool = False  # keep blank source lines (pt: they are empty documents)
    packages: tuple[str, ...] = ()  # versions worth printing
    child_kwargs: Callable[[Path], dict[str, Any]] = lambda corpus: {}  # for every child
    corpora: tuple[str, ...] = (MEDICALGPT,)  # its default corpora, in order


@dataclass
class PrepRun:
    """One contender on one corpus; ``error`` says why the figures are missing."""

    stage: str
    contender: str
    corpus_mb: float
    workers: int = 1
    records: int = 0  # records read
    items: int = 0  # rows written
    tokens: int = 0  # tokens written (pt: document tokens + EOS, before packing)
    seconds: float = math.nan  # see TIME_NOTE
    wall_seconds: float = math.nan  # the whole subprocess
    peak_rss_mb: float = math.nan  # summed over the subprocess and its descendants, 10^6 bytes
    detail: dict[str, Any] = field(default_factory=dict)  # the stage's own figures
    error: str = ""
    label: str = ""  # how checks name it: the contender, with its workers when several ran

    def __post_init__(self) -> None:
        self.label = self.label or self.contender

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class Settings:
    """What ``ferrotune bench prep`` measures (its options, by name)."""

    stages: Sequence[str] = ()  # empty: every stage whose data is found
    input: Path | None = None
    corpus: Sequence[str] | None = None  # CORPORA names; None: each stage's own
    tokenizer: Path | None = None
    size_mb: Sequence[float] | None = None  # corpus sizes; None: the corpus's (QUICK_MB quick)
    only: Sequence[str] | None = None  # contender names; None: all
    baselines_all_sizes: bool = False  # baselines at every size, not only the first
    workers: Sequence[int] | None = None  # each a run: ferrotune threads, num_proc, Rayon
    setup_envs: bool = False  # create the envs.ENVS environments that are missing
    engine: Sequence[str] = ("local",)  # where ours run: local, ray, spark (prep_engines)
    quick: bool = False


@dataclass(frozen=True)
class Corpus:
    """A stage's source records: ``name`` (a :data:`CORPORA` name or ``--input``'s), files."""

    name: str
    files: tuple[Path, ...]
    natural: bool = False  # default size: the files once, not the stage's default_mb
    suffix: str = ""  # of the corpus file (default: the sources')
    about: str = ""  # what it is, printed (default: the files)
