"""The options several commands share: one spelling of each flag, its default and its short form.

Each command still says in its own words what the option does there (``help=``), so ``--help``
reads naturally per command while a flag's name and default cannot drift between commands.
"""

from __future__ import annotations

from typing import Any

import typer


def json_flag(help: str = "Print one JSON object on stdout.") -> Any:  # noqa: A002 - typer's name
    return typer.Option(False, "--json", help=help)


def quiet_flag(help: str = "No messages (errors still go to stderr).") -> Any:  # noqa: A002
    return typer.Option(False, "-q", "--quiet", help=help)


def overwrite_flag(help: str = "Replace existing outputs.") -> Any:  # noqa: A002
    return typer.Option(False, "--overwrite", help=help)


def protocol_option(help: str, short: bool = True) -> Any:  # noqa: A002
    flags = ("--protocol", "-p") if short else ("--protocol",)
    return typer.Option(None, *flags, help=help)


def psf_option(help: str, default: str | None = None) -> Any:  # noqa: A002
    return typer.Option(default, "--psf", help=help)


def sigma_option(help: str) -> Any:  # noqa: A002
    return typer.Option(None, "--sigma", help=help)


def form_option(help: str) -> Any:  # noqa: A002
    return typer.Option("conv", "--form", help=help)


def srf_option(help: str, default: str | None = None) -> Any:  # noqa: A002
    return typer.Option(default, "--srf", help=help)
