"""Exceptions raised by ferrotune, each carrying what a user needs to fix the problem.

The Rust data engine maps every error it can raise to one of these (never a generic
``RuntimeError``), so callers can catch by kind and read ``.path``, ``.line`` and ``.field``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FerrotuneError",
    "InputNotFoundError",
    "OutputExistsError",
    "TemplateError",
    "TokenizerError",
    "did_you_mean",
]


class FerrotuneError(Exception):
    """Base class of every ferrotune error."""


class DataError(FerrotuneError, ValueError):
    """A bad input record or file.

    ``path`` is the input file, ``line`` the 1-based line (the row for Parquet) where the record
    starts, ``field`` the offending field when there is one, and ``reason`` a stable key such as
    ``invalid_json``, ``invalid_utf8``, ``missing_field``, ``wrong_type`` or ``empty``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.field = field
        self.reason = reason


class InputNotFoundError(FerrotuneError, FileNotFoundError):
    """An ``--input`` path or glob that matched no file; ``path`` is the pattern."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class TokenizerError(FerrotuneError, ValueError):
    """The tokenizer path is missing or does not hold a usable tokenizer."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class TemplateError(FerrotuneError, ValueError):
    """A chat template that does not compile, or that refuses or fails on a conversation.

    ``template`` names the template (its file or origin). ``message`` is the template's own
    text when it called ``raise_exception(...)`` (the same text transformers raises as
    ``jinja2.TemplateError``), otherwise the engine's description with the template line.
    """

    def __init__(
        self, text: str, *, template: str | None = None, message: str | None = None
    ) -> None:
        super().__init__(text)
        self.template = template
        self.message = text if message is None else message


class ConfigError(FerrotuneError, ValueError):
    """An option value that cannot work; ``option`` names it as on the command line."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class OutputExistsError(FerrotuneError, FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


def did_you_mean(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the nearest of ``choices``, or ``""``: every "unknown key"
    error names the likeliest intended one."""
    import difflib

    near = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""
