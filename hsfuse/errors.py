"""One error hierarchy for hsfuse, caught once at the CLI boundary.

Library code raises these with the offending file in ``path``; the CLI prints
``hsfuse: error: PATH: message`` on one line and exits with ``exit_code``.
A message that names a parameter writes it ``{name}`` and lists it in ``options``:
the library's text says ``option 'name'``, the CLI's ``--name`` (``oneline(flags=True)``),
so library errors do not talk about a command line their caller may not have.
Exit codes (also in docs/cli.md): 0 ok, 1 a job failed (bad input data, I/O
problem, refused overwrite), 2 bad usage (invalid option values or
combinations), 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class HsfuseError(Exception):
    """Base class: a problem we can explain to the user in one line."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, path: str | Path | None = None, options: tuple[str, ...] = ()):
        self.template = message
        self.options = tuple(options)
        self.path = None if path is None else str(path)
        self.message = self.text()
        super().__init__(self.oneline())

    def text(self, flags: bool = False) -> str:
        """The message with each ``{name}`` of ``options`` as a parameter (or, ``flags``, as its CLI flag)."""
        msg = str(self.template)
        for name in self.options:
            msg = msg.replace("{" + name + "}", cli_flag(name) if flags else f"option '{name}'")
        return msg

    def oneline(self, flags: bool = False) -> str:
        text = " ".join(self.text(flags).split())  # guarantee a single line
        return f"{self.path}: {text}" if self.path else text


def cli_flag(name: str) -> str:
    """The command-line flag of a library parameter (one rule for every command)."""
    return "--" + name.replace("_", "-")


class InputError(HsfuseError, ValueError):
    """An input file is missing, malformed or does not fit the job."""


class FormatError(InputError):
    """Unknown, unsupported or corrupt file format."""


class OutputError(HsfuseError, OSError):
    """The output cannot be written (exists, unwritable directory, disk full)."""


class UsageError(HsfuseError, ValueError):
    """Option values that cannot work together (exit 2)."""

    exit_code = EXIT_USAGE


class ModelError(HsfuseError, ValueError):
    """A model cannot take these inputs, or its weights are missing/corrupt."""
